"""`datamates run / probe / score` under torchrun (2 CPU ranks, gloo) share the selection work
(datamates.executor): the same selected ids in every stage and the same final weights as one
process with the same global batch (2 ranks x micro 2 == 1 process x micro 2 x accumulation 2),
both ranks' logs show disjoint halves of the probe and score shards, and a rank killed mid-stage
(DATAMATES_FAULT=shard:probe:1, SIGKILL after its first probe shard) resumes from the finished
shards when the command is run again. Fails on the old code, where rank 0 alone probed and scored
(the other rank's log has no shard lines) and `datamates probe` under torchrun had every rank
write the same folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from datamates.core.checkpoint import load_model
from datamates.run_dir import RunDir

pytestmark = pytest.mark.slow

PROBE_CHUNKS, SCORE_SHARD = 8, 24  # 32 probes -> 4 chunks; a 96-candidate block -> 4 score shards


def _cfg(tmp: Path, name: str, grad_accum: int) -> Path:
    cfg = {
        "name": name,
        "runs_root": str(tmp / "runs"),
        "pool": {"seq_len": 64, "tokenizer": {"vocab_size": 512}},
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2, "context": 128},
        "train": {"micro_batch_size": 2, "grad_accum": grad_accum, "lr": 3.0e-3, "warmup_steps": 2, "device": "cpu",
                  "log_every": 100, "checkpoint_every": 2},
        "eval": {"tasks": [], "limit": 8, "batch_size": 16},
        "mates": {
            "selectors": ["mates"], "stages": 2, "stage_steps": 3, "heldout_per_domain": 8,
            "decay_steps": 0, "curve_reference_size": 8, "candidates_per_stage": 96,
            "probe": {"mode": "exact", "n_probes": 32, "reference_size": 8, "chunk_size": PROBE_CHUNKS},
            "fit": {"mode": "frozen", "encoder": {"max_tokens": 64, "chunk_len": 64}, "min_labels": 8},
            "score": {"shard_size": SCORE_SHARD, "device": "cpu"},
            "select": {"temperature": 0.1},
        },
    }
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _datamates(args: list[str], nproc: int, port: int, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DATAMATES_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DATAMATES_FAULT", None)
    if fault:
        env["DATAMATES_FAULT"] = fault
    pre = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    cmd = [*(pre if nproc > 1 else [sys.executable]), "-m", "datamates", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _run(tmp: Path, name: str, tiny_pool, nproc: int, port: int, fault: str | None = None):
    f = _cfg(tmp, name, grad_accum=2 if nproc == 1 else 1)
    dst = tmp / "runs" / name / "pool"
    if not dst.exists():
        shutil.copytree(tiny_pool.path, dst)
    return _datamates(["run", "-c", str(f), "--no-report"], nproc, port, fault), RunDir(tmp / "runs" / name)


@pytest.fixture(scope="module")
def runs(tiny_pool, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    one, rd1 = _run(tmp, "one", tiny_pool, 1, 0)
    assert one.returncode == 0, one.stderr[-3000:]
    two, rd2 = _run(tmp, "two", tiny_pool, 2, 29641)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, rd1, rd2


def _shards(log: str, job: str, rank: int) -> list[list[int]]:
    """Every `<job>: rank r of 2 ran shards [...]` line of a log, as lists."""
    pat = rf"{job}: rank {rank} of 2 ran shards \[([0-9, ]*)\]"
    return [[int(x) for x in m.split(",") if x.strip()] for m in re.findall(pat, log)]


def test_two_ranks_select_the_same_ids_and_train_the_same_weights(runs):
    _, rd1, rd2 = runs
    for branch, stage in (("warmup", 1), ("mates", 2)):
        a = np.load(rd1.branch(branch).selected(stage) / "ids.npy")
        b = np.load(rd2.branch(branch).selected(stage) / "ids.npy")
        np.testing.assert_array_equal(a, b, err_msg=f"{branch} stage {stage}")
    la = np.asarray(pq.read_table(
        rd1.branch("mates").probe(2) / "labels.parquet").column("ref_loss_delta"))
    lb = np.asarray(pq.read_table(
        rd2.branch("mates").probe(2) / "labels.parquet").column("ref_loss_delta"))
    np.testing.assert_allclose(la, lb, rtol=1e-3, atol=1e-6)  # DDP's weights differ in the last float bits
    a, b = load_model(rd1.branch("mates").checkpoint(2)), load_model(rd2.branch("mates").checkpoint(2))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def test_both_ranks_probe_and_score_disjoint_halves(runs):
    _, _, rd2 = runs
    log0 = (rd2.logs / "run.log").read_text()
    log1 = (rd2.logs / "run.rank1.log").read_text()
    for job in ("probe", "score"):
        r0, r1 = _shards(log0, job, 0), _shards(log1, job, 1)
        assert r0 and r1, f"{job}: no shard lines in the logs"
        assert r0[-1] == [0, 2] and r1[-1] == [1, 3], (job, r0, r1)  # i % world == rank, 4 shards


def test_probe_and_score_alone_under_torchrun(runs):
    tmp, rd1, _ = runs
    br = rd1.branch("mates")
    ckpt = rd1.branch("warmup").checkpoint(1)
    ids = tmp / "probe_ids.npy"
    np.save(ids, np.asarray(pq.read_table(
        br.probe(2) / "labels.parquet").column("seq_id")))
    cfg = str(tmp / "one.yaml")
    common = ["-c", cfg, "--run-dir", str(tmp / "alone")]
    probe_args = ["probe", *common, "-k", str(ckpt), "--pool", str(rd1.pool), "--candidates", str(ids)]
    r = _datamates([*probe_args, "--out", str(tmp / "alone" / "probe1")], 1, 0)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _datamates([*probe_args, "--out", str(tmp / "alone" / "probe")], 2, 29643)
    assert r.returncode == 0, r.stderr[-3000:]
    want = pq.read_table(tmp / "alone" / "probe1" / "labels.parquet")
    got = pq.read_table(tmp / "alone" / "probe" / "labels.parquet")
    for c in ("seq_id", "ref_loss_delta", "loss", "grad_norm"):  # the same checkpoint: bit for bit
        np.testing.assert_array_equal(np.asarray(want.column(c)), np.asarray(got.column(c)), err_msg=c)
    logs = tmp / "alone" / "logs"
    assert _shards((logs / "probe.log").read_text(), "probe", 0)[-1] == [0, 2]
    assert _shards((logs / "probe.rank1.log").read_text(), "probe", 1)[-1] == [1, 3]

    cand = tmp / "cand.npy"
    from datamates.selection.scores_io import read_scores

    sid, sc = read_scores(br.scores(2))
    np.save(cand, sid)
    r = _datamates(["score", *common, "--model", str(br.influence_model(2)), "--pool", str(rd1.pool),
                    "--ids", str(cand), "--out", str(tmp / "alone" / "scores")], 2, 29645)
    assert r.returncode == 0, r.stderr[-3000:]
    sid2, sc2 = read_scores(tmp / "alone" / "scores")
    np.testing.assert_array_equal(sid, sid2)
    np.testing.assert_array_equal(sc, sc2)
    assert _shards((logs / "score.log").read_text(), "score", 0)[-1] == [0, 2]
    assert _shards((logs / "score.rank1.log").read_text(), "score", 1)[-1] == [1, 3]


def test_a_rank_killed_mid_probe_resumes_from_the_finished_shards(runs, tiny_pool):
    tmp, _, rd2 = runs
    cut, rd = _run(tmp, "cut", tiny_pool, 2, 29647, fault="shard:probe:1")
    assert cut.returncode != 0
    part = rd.branch("mates").probe(2).with_name("probe.partial") / "chunks"
    finished = sorted(p.name for p in part.glob("*.npz"))
    assert "000001.npz" in finished and len(finished) < 4, finished  # rank 1 died after its first shard
    again, rd = _run(tmp, "cut", tiny_pool, 2, 29649)
    assert again.returncode == 0, again.stderr[-3000:]
    log0 = (rd.logs / "run.log").read_text()
    assert re.search(rf"probe: {len(finished)} of 4 shards already finished", log0), log0[-2000:]
    np.testing.assert_array_equal(np.load(rd.branch("mates").selected(2) / "ids.npy"),
                                  np.load(rd2.branch("mates").selected(2) / "ids.npy"))
