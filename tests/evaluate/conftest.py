"""Fixtures of the evaluation tests: the tiny checkpoint loaded once, helpers to write a task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True)
def _one_thread(tiny_ckpt):
    """The tiny model gains nothing from a second thread, and on a shared 2-core machine two
    spinning OpenMP threads per process slow every small op down; the checkpoint is built first,
    with the suite's thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    from datamates.core.checkpoint import load_model

    return load_model(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_tok(tiny_ckpt):
    from datamates.core.tokenizer import load_tokenizer

    return load_tokenizer(tiny_ckpt)


def write_task(folder: Path, records: list, spec: dict, name: str = "toy") -> Path:
    """A JSONL file and an lm-eval task YAML pointing at it (relative path, test split,
    multiple_choice unless `spec` says otherwise); returns the task file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                                  for r in records))
    spec = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
            "test_split": "test", "output_type": "multiple_choice", **spec}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
