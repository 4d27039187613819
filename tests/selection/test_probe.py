"""Oracle probing: the closed-form AdamW step against torch.optim.AdamW, exact labels against the
naive reference procedure (fp32 and fp64), the output contract, resume, and bad input."""

import copy
import math

import numpy as np
import pytest
import torch

from datamates.config.probe import ProbeConfig
from datamates.core.checkpoint import export_hf, load_model
from datamates.core.loss import load_lambada, reference_loss
from datamates.core.reference import ReferenceBatches, load_reference
from datamates.core.train_loop import lm_loss, make_optimizer
from datamates.errors import ArtifactMissing, IncompatibleArtifacts, InputError, NumericalError
from datamates.selection.probe import (
    SIGN,
    ProbeState,
    adamw_update_,
    checkpoint_hash,
    naive_reference_nll,
    oracle,
    probe,
    read_labels,
    read_labels_table,
    read_meta,
    sample_probe_set,
)

CANDIDATES = np.array([1, 3, 5, 777, 2001])  # odd ids: held out from the tiny checkpoint's training


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref(tiny_pool, lambada_path):
    return load_reference(str(lambada_path), tiny_pool.tokenizer(), size=12, seed=0)


def cfg(**kw) -> ProbeConfig:
    base = dict(mode="exact", device="cpu", chunk_size=2, batch_size=5)
    base.update(kw)
    return ProbeConfig(**base)


# ----------------------------------------------------------------------------- the step


@pytest.mark.parametrize("wd,step", [(0.1, 7.0), (0.0, 0.0)])
def test_adamw_update_is_bit_identical_to_torch(wd, step):
    g = torch.Generator().manual_seed(0)
    theta, grad = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) * 1e-2
    m, v = torch.randn(50, 3, generator=g) * 1e-3, torch.rand(50, 3, generator=g) * 1e-5
    p = torch.nn.Parameter(theta.clone())
    opt = torch.optim.AdamW([p], lr=2e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd, foreach=False)
    opt.state[p] = {"step": torch.tensor(step), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    p.grad = grad.clone()
    opt.step()
    out = torch.empty_like(theta)
    adamw_update_(out, theta, grad, m, v, step=step, lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=wd,
                  buf_m=torch.empty_like(m), buf_v=torch.empty_like(v))
    assert torch.equal(out, p.data)


def test_probe_step_equals_training_step(tiny_ckpt, tiny_pool, ref):
    """theta'(x) of ProbeState is bit-identical to a deep copy stepped by the training loop's AdamW,
    and its reference loss is the foundation's reference_loss of that model."""
    state = ProbeState.from_checkpoint(tiny_ckpt)
    x = torch.from_numpy(tiny_pool.tokens([3])[0])
    state.clipped_grad(x)
    work = state.write_update()
    model = copy.deepcopy(load_model(tiny_ckpt))
    opt = make_optimizer(model, state.train_cfg)
    oracle.load_optimizer_state(tiny_ckpt, model, opt)
    for gr in opt.param_groups:
        gr["lr"] = state.hyper.lr
    lm_loss(model, x[None]).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), state.train_cfg.grad_clip)
    opt.step()
    for a, b in zip(work.parameters(), model.parameters()):
        assert torch.equal(a, b)
    rb = ReferenceBatches(ref.examples, max_len=128, batch_size=5)
    assert math.isclose(rb.loss(work), reference_loss(model, ref.examples), rel_tol=1e-6)
    assert state.hyper.lr == pytest.approx(3e-3) and state.hyper.lr_source == "schedule at the next step"


def test_probe_takes_the_next_training_step(tiny_pool, tiny_model_cfg, tmp_path):
    """The probe simulates the step training would take next: from a checkpoint after N steps, the
    exact probe's theta'(x) on the (N+1)-th batch is bit-identical to the weights after N + 1 real
    steps, under a warmup schedule whose lr changes every step (issue 11, defect 4: the probe used
    the lr of step N, the last one taken)."""
    from datamates_testing import tiny_train_cfg

    from datamates.core.train_loop import DataOrder, lr_at, train

    ids = np.arange(0, 400, 2)
    kw = dict(micro_batch_size=1, lr=3e-3, warmup_steps=10, checkpoint_every=100, seed=0)
    n = 3
    a = train(tiny_train_cfg(steps=n, **kw), tiny_model_cfg, tiny_pool, ids, tmp_path / "a")
    b = train(tiny_train_cfg(steps=n + 1, **kw), tiny_model_cfg, tiny_pool, ids, tmp_path / "b")
    state = ProbeState.from_checkpoint(a)
    assert state.hyper.lr == lr_at(tiny_train_cfg(steps=n + 1, **kw), n, 0, n + 1) == pytest.approx(3e-3 * 4 / 10)
    nxt = DataOrder(ids, 0).take(n, 1)  # the (N+1)-th global batch of one sequence
    state.clipped_grad(torch.from_numpy(tiny_pool.tokens(nxt)[0]))
    work = state.write_update()
    real = dict(load_model(b).named_parameters())
    for name, p in work.named_parameters():
        assert torch.equal(p, real[name]), name


# ----------------------------------------------------------------------------- exact == naive


def test_exact_equals_naive_fp32(tiny_ckpt, tiny_pool, ref, tmp_path):
    a = read_labels_table(probe(cfg(mode="naive"), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "naive", reference=ref))
    b = read_labels_table(probe(cfg(), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "exact", reference=ref))
    assert a.column("seq_id").to_pylist() == b.column("seq_id").to_pylist() == CANDIDATES.tolist()
    before = read_meta(tmp_path / "exact")["ref_loss_before"]
    assert math.isclose(before, read_meta(tmp_path / "naive")["ref_loss_before"], rel_tol=1e-6)
    after_a, after_b = a.column("ref_loss_after").to_numpy(), b.column("ref_loss_after").to_numpy()
    np.testing.assert_allclose(after_b, after_a, rtol=1e-5)
    d_a, d_b = a.column("ref_loss_delta").to_numpy(), b.column("ref_loss_delta").to_numpy()
    # the delta is a difference of two nearly equal fp32 losses: equal to 1e-5 of the loss itself
    np.testing.assert_allclose(d_b, d_a, rtol=0, atol=1e-5 * before)
    assert np.abs(d_a).min() > 1e-4  # ... which is far below the labels' size
    np.testing.assert_array_equal(a.column("loss").to_numpy(), b.column("loss").to_numpy())
    np.testing.assert_array_equal(a.column("grad_norm").to_numpy(), b.column("grad_norm").to_numpy())


def test_exact_equals_naive_fp64(tiny_ckpt, tiny_pool, ref):
    """In float64 the evaluation noise vanishes and the two procedures agree to 1e-9 relative."""
    state = ProbeState.from_checkpoint(tiny_ckpt, dtype=torch.float64)
    rb = ReferenceBatches(ref.examples, max_len=128, batch_size=5)
    pad = tiny_pool.eos_id
    before_naive = float(naive_reference_nll(state.model, ref.examples, batch_size=5, pad_id=pad).sum() / rb.n_tokens.sum())
    before_exact = rb.loss(state.model)
    for i in CANDIDATES[:3]:
        x = torch.from_numpy(tiny_pool.tokens([i])[0])
        nll, _, _ = oracle.naive_probe(state, x, ref.examples, 5, pad)
        naive = float(nll.sum() / rb.n_tokens.sum()) - before_naive
        state.clipped_grad(x)
        exact = rb.loss(state.write_update()) - before_exact
        assert math.isclose(exact, naive, rel_tol=1e-9), (i, exact, naive)


# ----------------------------------------------------------------------------- the artifact


def test_output_contract_and_skip(tiny_ckpt, tiny_pool, ref, tmp_path):
    out = probe(cfg(reference_halves=True), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "p", reference=ref)
    assert (out / "DONE").exists() and not (out / "chunks").exists()
    ids, y = read_labels(out)
    assert ids.dtype == np.int64 and y.dtype == np.float64 and ids.tolist() == CANDIDATES.tolist()
    meta = read_meta(out)
    assert meta["sign"] == SIGN and meta["mode"] == "exact" and meta["n_probes"] == len(CANDIDATES)
    assert meta["lr"] == pytest.approx(3e-3) and meta["global_step"] == 30
    assert meta["pool_id"] == tiny_pool.pool_id and meta["checkpoint_hash"] == checkpoint_hash(tiny_ckpt)
    assert meta["reference"]["size"] == 12 and meta["reference"]["seed"] == 0
    assert meta["reference"]["ref_loss_before"] == meta["ref_loss_before"]
    t = read_labels_table(out)
    # the whole-set label is the token-weighted mix of the two halves' labels
    h = ref.halves()
    n_tok = np.array([len(e.target) for e in ref.examples])
    na, nb = n_tok[h == 0].sum(), n_tok[h == 1].sum()
    mix = (na * t.column("ref_loss_delta_a").to_numpy() + nb * t.column("ref_loss_delta_b").to_numpy()) / (na + nb)
    np.testing.assert_allclose(mix, y, rtol=1e-9, atol=1e-12)
    stamp = (out / "DONE").read_text()
    probe(cfg(reference_halves=True), tiny_ckpt, tiny_pool, CANDIDATES, out, reference=ref)
    assert (out / "DONE").read_text() == stamp  # same inputs: kept as it is
    with pytest.raises(IncompatibleArtifacts, match="other inputs"):
        probe(cfg(reference_halves=True), tiny_ckpt, tiny_pool, CANDIDATES[:2], out, reference=ref)


def test_killed_run_resumes_by_chunk(tiny_ckpt, tiny_pool, ref, tmp_path, monkeypatch):
    full = read_labels(probe(cfg(), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "full", reference=ref))[1]
    real_write, written = oracle._write_chunk, []

    def dies_after_two(path, res):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path.name)
        real_write(path, res)

    monkeypatch.setattr(oracle, "_write_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        probe(cfg(), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "p", reference=ref)
    assert not (tmp_path / "p").exists() and len(list((tmp_path / "p.partial" / "chunks").iterdir())) == 2
    monkeypatch.setattr(oracle, "_write_chunk", real_write)
    labelled = []
    real_run = oracle.ProbeWorker.run
    monkeypatch.setattr(oracle.ProbeWorker, "run", lambda self, ids: labelled.append(len(ids)) or real_run(self, ids))
    out = probe(cfg(), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "p", reference=ref)
    assert labelled == [1]  # only the last chunk was probed again
    np.testing.assert_array_equal(read_labels(out)[1], full)
    assert read_meta(out)["probes_this_run"] == 1


# ----------------------------------------------------------------------------- bad input


def test_bad_input(tiny_ckpt, tiny_pool, ref, tmp_path):
    weights_only = export_hf(tiny_ckpt, tmp_path / "export")
    with pytest.raises(ArtifactMissing, match="no optimizer state"):
        probe(cfg(), weights_only, tiny_pool, CANDIDATES, tmp_path / "a", reference=ref)
    with pytest.raises(InputError, match="empty"):
        probe(cfg(), tiny_ckpt, tiny_pool, [], tmp_path / "a", reference=ref)
    with pytest.raises(InputError, match=f"sequence id {len(tiny_pool)} is not in the pool"):
        probe(cfg(), tiny_ckpt, tiny_pool, [1, len(tiny_pool)], tmp_path / "a", reference=ref)
    with pytest.raises(InputError, match="listed 2 times"):
        probe(cfg(), tiny_ckpt, tiny_pool, [3, 3], tmp_path / "a", reference=ref)
    with pytest.raises(NumericalError, match="candidate sequence 1 is nan"):
        probe(cfg(lr=1e30), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "nan", reference=ref)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "a").exists()


def test_cli(tiny_ckpt, tiny_pool, lambada_path, tmp_path, capsys):
    from datamates.cli import main

    ids = tmp_path / "ids.txt"
    ids.write_text("1\n3\n")
    base = ["probe", "--checkpoint", str(tiny_ckpt), "--pool", str(tiny_pool.path), "--run-dir", str(tmp_path),
            "--reference", str(lambada_path), "--reference-size", "4"]
    assert main([*base, "--candidates", str(ids), "--out", str(tmp_path / "p")]) == 0
    assert "probed 2 sequences (exact)" in capsys.readouterr().out
    assert read_labels(tmp_path / "p")[0].tolist() == [1, 3]
    assert main([*base, "--candidates", str(ids), "--checkpoint", str(export_hf(tiny_ckpt, tmp_path / "e"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("datamates probe: error:") and "no optimizer state" in err and "\n" not in err
    # no candidate list: a probe set is sampled outside --exclude
    excl = tmp_path / "train_ids.npy"
    np.save(excl, np.arange(0, len(tiny_pool), 2))
    assert main([*base, "--exclude", str(excl), "--set", "mates.probe.n_probes=2", "--stage", "1"]) == 0
    got = read_labels(tmp_path / "stage_01" / "probe")[0]
    assert len(got) == 2 and np.all(got % 2 == 1)


# ----------------------------------------------------------------------------- probe sets


def test_sample_probe_set(tiny_pool):
    train = np.arange(0, len(tiny_pool), 2)
    a = sample_probe_set(tiny_pool, 50, seed=1, exclude=train, stage=1)
    assert len(a) == 50 and np.all(np.diff(a) > 0) and not np.intersect1d(a, train).size
    assert np.array_equal(a, sample_probe_set(tiny_pool, 50, seed=1, exclude=train, stage=3))  # same set every stage
    b = sample_probe_set(tiny_pool, 50, seed=1, exclude=train, stage=3, resample_each_stage=True)
    assert not np.array_equal(a, b)
    with pytest.raises(InputError, match="only"):
        sample_probe_set(10, 11)


def test_lambada_default_reference(tiny_ckpt, tiny_pool, lambada_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMATES_DATA", str(lambada_path.parents[1]))
    out = probe(cfg(reference_size=6, reference_seed=2), tiny_ckpt, tiny_pool, CANDIDATES[:1], tmp_path / "p")
    meta = read_meta(out)
    assert meta["reference"]["name"] == "lambada_openai" and meta["reference"]["size"] == 6
    ex = load_lambada(lambada_path, tiny_pool.tokenizer(), n=6, seed=2)
    assert math.isclose(meta["ref_loss_before"], reference_loss(load_model(tiny_ckpt), ex), rel_tol=1e-6)
