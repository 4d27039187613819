"""Fixtures of the influence-model tests (fit / score / select): planted-signal labels on the tiny
pool and a frozen-trunk influence model fitted on them once per session. Names start with `im_`
so they cannot collide with the probe tests' fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from datamates.config import load_config
from datamates.config.influence import EncoderConfig, FitConfig, ScoreConfig
from datamates.run_dir import RunDir, atomic_dir, meta_record
from datamates.selection.score import read_scores, score

SIGN = "ref_loss_delta = L_ref(after) - L_ref(before); lower is better"

# short inputs keep MiniLM cheap on 2 shared cores: 64-token LM sequences -> ~50 WordPiece tokens
IM_ENCODER = EncoderConfig(backbone="minilm", max_tokens=128, chunk_len=64)


def write_labels(folder: Path, ids: np.ndarray, y: np.ndarray, pool_id: str | None = None) -> Path:
    """A probe folder in the contract's format (labels.parquet + meta.json + DONE)."""
    meta = meta_record("test", sign=SIGN, mode="planted", **({"pool_id": pool_id} if pool_id else {}))
    with atomic_dir(folder, meta) as tmp:
        pq.write_table(pa.table({"seq_id": np.asarray(ids, np.int64), "ref_loss_delta": np.asarray(y, np.float64)}),
                       tmp / "labels.parquet")
    return folder


def planted_signal(pool, ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A label that depends on the text: science (arXiv) sequences help (negative delta), wiki
    sequences hurt, plus noise; in ref_loss_delta units (~1e-3)."""
    dom = np.asarray(pool.domain_of(ids))
    names = np.asarray(pool.domains)[dom]
    base = np.where(names == "science", -1.0, np.where(names == "wiki", 1.0, 0.0))
    return 1e-3 * (base + 0.3 * np.random.default_rng(seed).standard_normal(len(ids)))


@pytest.fixture
def im_one_thread(one_thread):
    """MiniLM on 2 shared, oversubscribed cores is several times faster on one thread."""
    yield


@pytest.fixture(scope="session")
def im_label_ids(tiny_pool) -> np.ndarray:
    """160 labelled sequences, 40 per domain (odd ids: unseen by tiny_ckpt)."""
    rng = np.random.default_rng(7)
    out = []
    for d in tiny_pool.domains:
        cand = tiny_pool.ids_in_domain(d)
        cand = cand[cand % 2 == 1]
        out.append(rng.choice(cand, 40, replace=False))
    return np.sort(np.concatenate(out))


@pytest.fixture(scope="session")
def im_labels(tiny_pool, im_label_ids, tmp_path_factory) -> Path:
    y = planted_signal(tiny_pool, im_label_ids)
    return write_labels(tmp_path_factory.mktemp("im") / "probe", im_label_ids, y, tiny_pool.pool_id)


@pytest.fixture(scope="session")
def im_cache(tmp_path_factory) -> Path:
    """One encoder cache for the session (the pool fixture's folder is shared, keep it clean)."""
    return tmp_path_factory.mktemp("im_cache")


@pytest.fixture(scope="session")
def im_frozen_model(tiny_pool, im_labels, im_cache, tmp_path_factory) -> Path:
    from datamates.selection.fit import fit

    cfg = FitConfig(mode="frozen", encoder=IM_ENCODER, val_fraction=0.25, embed_batch_size=32, device="cpu")
    return fit(cfg, [im_labels], tiny_pool, tmp_path_factory.mktemp("im") / "influence_model", cache_dir=im_cache)


def scores_one_and_sharded(model: Path, pool, cand: np.ndarray, tmp_path: Path) -> dict[str, np.ndarray]:
    """Scores of `cand` by the influence model at `model`, with one shard and with shards of 7, in id order."""
    runs = {}
    for name, cfg in {"one": ScoreConfig(device="cpu"), "shards": ScoreConfig(device="cpu", shard_size=7)}.items():
        sid, sc = read_scores(score(cfg, model, pool, cand, tmp_path / f"scores_{name}"))
        runs[name] = sc[np.argsort(sid)]
    return runs


def tiny_run(tiny_pool, tmp_path, name: str, mates: dict, n_layers: int = 2, limit: int = 8):
    """(config, RunDir) of a tiny MATES run on the tiny pool (its pool copied in), `mates` its section."""
    cfg = {"name": name, "runs_root": str(tmp_path / "runs"),
           "pool": {"seq_len": 64, "tokenizer": {"vocab_size": 512}},
           "model": {"preset": "tiny", "n_layers": n_layers, "d_model": 32, "n_heads": 2, "context": 128},
           "train": {"micro_batch_size": 4, "lr": 3.0e-3, "warmup_steps": 2, "device": "cpu", "log_every": 100,
                     "checkpoint_every": 2},
           "eval": {"tasks": ["arc_easy"], "limit": limit, "batch_size": 16},
           "mates": mates}
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    shutil.copytree(tiny_pool.path, tmp_path / "runs" / name / "pool")
    c = load_config(str(f))
    return c, RunDir(c.run_dir)
