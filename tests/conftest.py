"""Shared fixtures: a small pool of real text, a tiny GPT-NeoX, a trained tiny checkpoint.

Everything is built once per session in a temporary folder, offline, on CPU. The pool uses real
files from $DATAMATES_DATA (web, wiki, science, mixed domains; books are left out for speed) and a
512-token BPE trained on them, so a 2-layer model trains in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import torch  # noqa: E402
from datamates_testing import tiny_pool_config, tiny_train_cfg  # noqa: E402,F401

from datamates.config.base import data_dir  # noqa: E402
from datamates.config.core import ModelConfig  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

SMALL_INPUTS = {
    "web": ["pretrain/web/c4_100_domains_theguardian_10.jsonl.gz", "pretrain/web/dolma_cc_en_head-0091.jsonl.gz",
            "pretrain/web/dolma_cc_en_head-0174.jsonl.gz"],
    "wiki": ["pretrain/wiki/nq_open_oracle_wikipedia_passages.jsonl.gz"],
    "science": ["pretrain/science/arxiv_samples.jsonl.gz"],
    "mixed": ["pretrain/domain_samples/datajuicer_domain_samples.jsonl.gz"],
}


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread; on shared cores, spinning OpenMP threads make
    small ops several times slower. Restores the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


NO_DATA = ("sample data bundle not found at {} (needs pretrain/ and eval/): put it there or set DATAMATES_DATA "
           "to its folder")


@pytest.fixture(scope="session")
def data() -> Path:
    """The sample data bundle; every test that needs it is skipped, with one line saying where to put it,
    when it is missing."""
    d = data_dir()
    if not (d / "pretrain").is_dir() or not (d / "eval").is_dir():
        pytest.skip(NO_DATA.format(d))
    return d


@pytest.fixture(scope="session")
def small_corpus(data: Path, tmp_path_factory) -> Path:
    """A folder of real JSONL.gz files, one sub-folder per domain (symlinks into the data bundle)."""
    root = tmp_path_factory.mktemp("corpus")
    for domain, files in SMALL_INPUTS.items():
        (root / domain).mkdir()
        for f in files:
            (root / domain / Path(f).name).symlink_to(data / f)
    return root


@pytest.fixture(scope="session")
def tiny_pool(small_corpus: Path, tmp_path_factory):
    """~19k sequences of 64 tokens (web, wiki, science, mixed), BPE vocab 512."""
    from datamates.core.pool import Pool, build_pool

    out = tmp_path_factory.mktemp("pool") / "pool"
    build_pool(tiny_pool_config([str(small_corpus)]), out)
    return Pool(out)


@pytest.fixture(scope="session")
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(preset="test", n_layers=2, d_model=32, n_heads=2, context=128)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_pool, tiny_model_cfg, tmp_path_factory) -> Path:
    """A checkpoint after 30 AdamW steps on the tiny pool, with optimizer state."""
    from datamates.core.train_loop import train

    out = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    ids = np.arange(0, len(tiny_pool), 2)  # even ids; odd ids stay unseen (held out)
    train(tiny_train_cfg(steps=30, checkpoint_every=100, lr=3e-3), tiny_model_cfg, tiny_pool, ids, out)
    return out


@pytest.fixture(scope="session")
def lambada_path(data: Path) -> Path:
    return data / "eval" / "lambada_openai.jsonl"
