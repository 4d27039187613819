"""The training loop against a hand-written reference loop, exact resume, schedules, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datamates_testing import tiny_train_cfg

from datamates.core.checkpoint import load_model, load_optimizer_state, trainer_state
from datamates.core.lm import build_model
from datamates.core.train_loop import DataOrder, lr_at, make_optimizer, read_train_log, train


def _all_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_matches_plain_torch_loop(tiny_pool, tiny_model_cfg, tmp_path):
    """4 steps with accumulation 2 and clipping == torch.optim.AdamW in a hand-written loop."""
    cfg = tiny_train_cfg(steps=4, micro_batch_size=3, grad_accum=2, warmup_steps=0, grad_clip=0.5)
    ids = np.arange(100, 160)
    out = train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "ck")

    ref = build_model(tiny_model_cfg, tiny_pool.vocab_size, tiny_pool.eos_id, cfg.seed)
    opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(ids))
    losses = []
    for step in range(4):
        batch = ids[order[step * 6 : step * 6 + 6]]
        total = 0.0
        for a in range(2):
            x = torch.from_numpy(tiny_pool.tokens(batch[a * 3 : a * 3 + 3]))
            logits = ref(input_ids=x).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
            (loss / 2).backward()
            total += loss.item() / 2
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        losses.append(total)
    got = load_model(out)
    for (n, p), q in zip(ref.named_parameters(), got.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    log = read_train_log(out)
    np.testing.assert_allclose([r["loss"] for r in log], losses, rtol=1e-5)
    # the saved AdamW state is the reference optimizer's state
    opt2 = make_optimizer(got, cfg)
    load_optimizer_state(out, got, opt2)
    for p_ref, p_got in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(opt.state[p_ref]["exp_avg_sq"], opt2.state[p_got]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
        assert float(opt2.state[p_got]["step"]) == 4.0
    assert trainer_state(out)["global_step"] == 4


def test_killed_run_resumes_exactly(tiny_pool, tiny_model_cfg, tmp_path):
    """N steps + kill + resume + N steps == 2N uninterrupted steps, bit for bit."""
    cfg = tiny_train_cfg(steps=6, checkpoint_every=3, schedule="cosine", warmup_steps=2, total_steps=6)
    ids = np.arange(0, 400, 3)
    full = train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "full")

    class Kill(Exception):
        pass

    def die(step, rec):
        if step == 4:  # after the step-3 checkpoint: step 4 is lost and redone
            raise Kill

    with pytest.raises(Kill):
        train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut", callback=die)
    assert not (tmp_path / "cut").exists()
    assert (tmp_path / "cut.partial" / "step_00000003" / "DONE").exists()
    resumed = train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut")
    assert _all_equal(load_model(full), load_model(resumed))
    assert (Path(full) / "optimizer.safetensors").read_bytes() == (Path(resumed) / "optimizer.safetensors").read_bytes()
    assert [r["loss"] for r in read_train_log(full)] == [r["loss"] for r in read_train_log(resumed)]
    assert not (tmp_path / "cut.partial").exists()
    # a finished run is not redone
    assert train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut") == resumed


def test_continuing_from_a_checkpoint_keeps_optimizer_state(tiny_pool, tiny_model_cfg, tiny_ckpt, tmp_path):
    cfg = tiny_train_cfg(steps=2, warmup_steps=0)
    out = train(cfg, tiny_model_cfg, tiny_pool, np.arange(1, 200, 2), tmp_path / "next", init=tiny_ckpt)
    st = trainer_state(out)
    assert st["global_step"] == trainer_state(tiny_ckpt)["global_step"] + 2 == 32
    m = load_model(out)
    opt = make_optimizer(m, cfg)
    load_optimizer_state(out, m, opt)
    assert all(float(s["step"]) == 32.0 for s in opt.state.values())


def test_schedules_by_hand():
    c = tiny_train_cfg(lr=1.0, warmup_steps=4, schedule="constant")
    assert [lr_at(c, s, 0, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    c = tiny_train_cfg(lr=1.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.1, total_steps=10)
    assert lr_at(c, 0, 0, 10) == pytest.approx(1.0)
    assert lr_at(c, 5, 0, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(c, 10, 0, 10) == pytest.approx(0.1)
    c = tiny_train_cfg(lr=1.0, warmup_steps=0, schedule="wsd", decay_steps=4, min_lr_ratio=0.0, total_steps=10)
    assert [round(lr_at(c, s, 0, 10), 3) for s in range(5, 10)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    c = tiny_train_cfg(lr=1e-3, schedule="exp_decay", decay_half_life=50)
    assert lr_at(c, 150, 100, 300) == pytest.approx(5e-4)  # MATES: halves every 50 steps of the decay


def test_data_order_is_seeded_and_wraps():
    ids = np.arange(10, 20)
    o = DataOrder(ids, seed=7)
    first = o.take(0, 10)
    assert sorted(first) == list(ids)
    both = o.take(5, 10)  # crosses into epoch 1
    np.testing.assert_array_equal(both[:5], first[5:])
    assert sorted(o.take(10, 10)) == list(ids)
    np.testing.assert_array_equal(DataOrder(ids, 7).take(3, 4), first[3:7])


def _run_cli_train(args: list[str], env_extra: dict, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", "29517", "-m", "datamates", *args]
    else:
        cmd = [sys.executable, "-m", "datamates", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_processes_match_one(tiny_pool, tmp_path):
    """torchrun 2 CPU processes (gloo) x micro 2 == 1 process x micro 2 x accumulation 2."""
    common = ["train", "--pool", str(tiny_pool.path), "--ids", str(_ids_file(tmp_path)),
              "--set", "train.steps=4", "--set", "train.micro_batch_size=2", "--set", "train.device=cpu",
              "--set", "train.warmup_steps=0", "--set", "model.n_layers=2", "--set", "model.d_model=32",
              "--set", "model.n_heads=2", "--set", "model.context=128", "--run-dir", str(tmp_path / "run")]
    one = _run_cli_train([*common, "--set", "train.grad_accum=2", "--out", str(tmp_path / "one")], {})
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run_cli_train([*common, "--out", str(tmp_path / "two")], {}, nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    l1 = [json.loads(x)["loss"] for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    a, b = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def _ids_file(tmp_path: Path) -> Path:
    f = tmp_path / "ids.npy"
    np.save(f, np.arange(50, 90))
    return f
