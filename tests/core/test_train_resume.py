"""Training state that must survive a kill and a stage boundary: every rank's RNG (dropout), one
learning-rate schedule over the whole run, and outputs that are refused when they are stale."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from datamates_testing import tiny_train_cfg

from datamates.config.run import RunConfig
from datamates.core.checkpoint import load_model, save_checkpoint
from datamates.core.lm import build_model
from datamates.core.train_loop import read_train_log, train
from datamates.errors import ConfigError, IncompatibleArtifacts, OutputConflict


def _dropout_init(tiny_pool, tiny_model_cfg, path: Path) -> Path:
    """A fresh tiny GPT-NeoX whose config has dropout 0.1 (attention and hidden), as a checkpoint."""
    model = build_model(tiny_model_cfg, tiny_pool.vocab_size, tiny_pool.eos_id, seed=0)
    model.config.attention_dropout = 0.1
    model.config.hidden_dropout = 0.1
    save_checkpoint(path, model, None, {"global_step": 0, "tokenizer_hash": tiny_pool.tokenizer_hash})
    assert load_model(path).config.hidden_dropout == 0.1
    return path


def _same_files(a: Path, b: Path, names=("model.safetensors", "optimizer.safetensors", "rng.safetensors")) -> None:
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


_DDP_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    sys.path.insert(0, sys.argv[3])
    from datamates_testing import tiny_train_cfg
    from datamates.config.core import ModelConfig
    from datamates.core.pool import Pool
    from datamates.core.train_loop import train

    torch.set_num_threads(1)
    pool, root = Pool(sys.argv[1]), Path(sys.argv[2])
    mcfg = ModelConfig(preset="test", n_layers=2, d_model=32, n_heads=2, context=128)
    cfg = tiny_train_cfg(steps=6, checkpoint_every=3, micro_batch_size=2, schedule="cosine", warmup_steps=2,
                         total_steps=6, init_optimizer=False)
    ids = np.arange(0, 400, 3)
    init = root / "init"
    train(cfg, mcfg, pool, ids, root / "full", init=init)

    class Kill(Exception):
        pass

    def die(step, rec):
        if step == 4:  # after the step-3 checkpoint: step 4 is lost and redone
            raise Kill

    try:
        train(cfg, mcfg, pool, ids, root / "cut", init=init, callback=die)
        raise SystemExit("not interrupted")
    except Kill:
        pass
    assert (root / "cut.partial" / "step_00000003" / "DONE").exists()
    train(cfg, mcfg, pool, ids, root / "cut", init=init)
''')


@pytest.mark.slow
def test_two_rank_dropout_run_resumes_bit_for_bit(tiny_pool, tiny_model_cfg, tmp_path):
    """torchrun 2 CPU ranks (gloo), dropout 0.1: kill after step 4 + resume == uninterrupted.
    Fails on the old loop, which reseeded after restoring (and saved rank 0's RNG only)."""
    _dropout_init(tiny_pool, tiny_model_cfg, tmp_path / "init")
    script = tmp_path / "ddp_resume.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DATAMATES_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(script), str(tiny_pool.path), str(tmp_path), str(Path(__file__).parents[1])]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_files(tmp_path / "full", tmp_path / "cut")
    assert [x["loss"] for x in read_train_log(tmp_path / "full")] == [x["loss"] for x in read_train_log(tmp_path / "cut")]
    from safetensors.torch import load_file

    rng = load_file(str(tmp_path / "full" / "rng.safetensors"))
    assert {"rank0.torch_cpu", "rank1.torch_cpu"} <= set(rng)
    assert not torch.equal(rng["rank0.torch_cpu"], rng["rank1.torch_cpu"])  # seeded per rank


def test_one_rank_dropout_run_resumes_bit_for_bit(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    init = _dropout_init(tiny_pool, tiny_model_cfg, tmp_path / "init")
    cfg = tiny_train_cfg(steps=6, checkpoint_every=3, init_optimizer=False)
    ids = np.arange(0, 400, 3)
    full = train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "full", init=init)

    class Kill(Exception):
        pass

    def die(step, rec):
        if step == 4:
            raise Kill

    with pytest.raises(Kill):
        train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut", init=init, callback=die)
    cut = train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut", init=init)
    _same_files(full, cut)


def test_three_stages_follow_one_cosine(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    """The lr of a 3-stage run (each stage one `train` call, AdamW state carried) is one cosine over
    the run's 3 x 4 steps; the old loop decayed to each call's end (3 cosines)."""
    from datamates.pipelines import stage_train_config

    cfg = RunConfig()
    cfg.train = tiny_train_cfg(schedule="cosine", warmup_steps=2, lr=1e-3, min_lr_ratio=0.1, checkpoint_every=100)
    cfg.mates.stages, cfg.mates.warmup_stages, cfg.mates.stage_steps = 3, 1, 4
    ckpt, lrs = None, []
    for s in (1, 2, 3):
        ckpt = train(stage_train_config(cfg, s), tiny_model_cfg, tiny_pool, np.arange(s * 100, s * 100 + 64),
                     tmp_path / f"stage_{s}", init=ckpt)
        lrs += [r["lr"] for r in read_train_log(ckpt)]
    # by hand: linear warmup over global steps 0, 1; cosine from 1e-3 to 1e-4 over steps 2..12
    expect = [1e-3 * (g + 1) / 2 if g < 2 else 1e-4 + 0.9e-3 * 0.5 * (1 + np.cos(np.pi * (g - 2) / 10))
              for g in range(12)]
    np.testing.assert_allclose(lrs, expect, rtol=1e-12)
    assert [r["global_step"] for r in read_train_log(ckpt)] == [9, 10, 11, 12]


def test_decaying_schedule_without_a_total_is_refused(tiny_pool, tiny_model_cfg, tmp_path):
    for schedule in ("cosine", "wsd"):
        cfg = tiny_train_cfg(schedule=schedule, decay_steps=2)
        with pytest.raises(ConfigError, match="train.total_steps"):
            train(cfg, tiny_model_cfg, tiny_pool, np.arange(10), tmp_path / schedule)
        assert not (tmp_path / f"{schedule}.partial").exists()


def test_stale_checkpoint_and_stale_partial_are_refused_unless_force(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    """The old loop returned a finished output trained on other ids, and resumed a partial with
    another lr, batch or seed (checking the ids only)."""
    cfg = tiny_train_cfg(steps=4, checkpoint_every=2)
    ids = np.arange(0, 200, 2)
    out = train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "ck")
    assert train(cfg, tiny_model_cfg, tiny_pool, ids, out) == out  # same inputs: reused
    with pytest.raises(IncompatibleArtifacts, match=r"ck: this checkpoint was made from other inputs \(ids: .*--force"):
        train(cfg, tiny_model_cfg, tiny_pool, ids + 1, out)
    with pytest.raises(IncompatibleArtifacts, match=r"train.lr: 0.003 -> 0.001"):
        train(tiny_train_cfg(steps=4, checkpoint_every=2, lr=1e-3), tiny_model_cfg, tiny_pool, ids, out)
    train(cfg, tiny_model_cfg, tiny_pool, ids + 1, out, force=True)  # redone on the new ids
    np.testing.assert_array_equal(read_train_log(out)[0]["step"], 1)

    class Kill(Exception):
        pass

    def die(step, rec):
        if step == 3:
            raise Kill

    with pytest.raises(Kill):
        train(cfg, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut", callback=die)
    other = tiny_train_cfg(steps=4, checkpoint_every=2, seed=5)
    with pytest.raises(IncompatibleArtifacts, match=r"cut.partial: the interrupted checkpoint .*train.seed: 0 -> 5"):
        train(other, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut")
    fresh = train(other, tiny_model_cfg, tiny_pool, ids, tmp_path / "fresh")
    forced = train(other, tiny_model_cfg, tiny_pool, ids, tmp_path / "cut", force=True)
    _same_files(fresh, forced, names=("model.safetensors", "optimizer.safetensors"))


def test_out_at_a_user_folder_is_refused_before_training(tiny_pool, tiny_model_cfg, tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "paper.tex").write_text("keep me")
    with pytest.raises(OutputConflict, match="not a datamates artifact"):
        train(tiny_train_cfg(steps=2), tiny_model_cfg, tiny_pool, np.arange(10), mine)
    assert (mine / "paper.tex").read_text() == "keep me"
    assert not (tmp_path / "results.partial").exists()


def test_a_second_writer_of_the_same_checkpoint_is_refused(tiny_pool, tiny_model_cfg, tmp_path):
    from datamates.run_dir import Lock

    out = tmp_path / "ck"
    with Lock(out), pytest.raises(OutputConflict, match=f"another datamates process \\(pid {os.getpid()}\\)"):
        train(tiny_train_cfg(steps=2), tiny_model_cfg, tiny_pool, np.arange(10), out)
    assert not out.exists()
