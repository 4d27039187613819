"""A killed scoring run resumes at the first missing shard and gives the same bytes as an
uninterrupted one; an interrupted run of another plan is refused."""

from __future__ import annotations

import numpy as np
import pytest

from datamates.baselines._common import write_scores
from datamates.errors import IncompatibleArtifacts
from datamates.run_dir import partial_path


def _fn(calls, fail_at=None):
    def score_fn(part):
        calls.append(int(part[0]))
        if fail_at is not None and int(part[0]) == fail_at:
            raise KeyboardInterrupt  # the run is killed while scoring this shard
        return np.sin(part.astype(np.float64))
    return score_fn


def test_resume_gives_the_same_bytes(tiny_pool, tmp_path):
    ids = np.arange(100, dtype=np.int64)
    plan = {"pool_id": tiny_pool.pool_id, "model_hash": "h", "method": "test"}
    meta = lambda: {"label_mean": 0.0, "label_std": 1.0}  # noqa: E731
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        write_scores(tmp_path / "a", tiny_pool, ids, plan, 30, _fn(calls, fail_at=60), meta)
    assert not (tmp_path / "a").exists() and partial_path(tmp_path / "a").exists()
    calls.clear()
    write_scores(tmp_path / "a", tiny_pool, ids, plan, 30, _fn(calls), meta)
    assert calls == [60, 90]  # only the missing shards were scored
    write_scores(tmp_path / "b", tiny_pool, ids, plan, 30, _fn([]), meta)
    for name in ("shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet", "shard_00003.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # a killed run of another plan is not mixed in
    with pytest.raises(KeyboardInterrupt):
        write_scores(tmp_path / "c", tiny_pool, ids, plan, 30, _fn([], fail_at=30), meta)
    with pytest.raises(IncompatibleArtifacts, match="model_hash"):
        write_scores(tmp_path / "c", tiny_pool, ids, {**plan, "model_hash": "other"}, 30, _fn([]), meta)
