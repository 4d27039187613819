"""The executor (datamates/executor.py): shards -> atomic results -> merge by index, finished shards
skipped, errors named by shard, the same results from every backend; and `lead` over a 2-rank gloo
world (rank r takes shards i % 2 == r, every rank returns rank 0's result, a user error on either
rank reaches both). Real processes, no mocks: spawned workers and a real torch.distributed group."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from datamates import executor
from datamates.config.executor import ExecutorConfig
from datamates.errors import DatamatesError, InputError
from datamates.run_dir import atomic_write_bytes

# ----------------------------------------------------------------------------- tiny workers (picklable)


def save_json(path: Path, res) -> None:
    atomic_write_bytes(path, json.dumps(res).encode())


def load_json(path: Path):
    return json.loads(Path(path).read_text())


class Square:
    """shard i -> {"i", "v": sum of squares of its block}; records every call in calls/ (one file
    per call, so concurrent workers never share a file); fails on `bad` shards."""

    def __init__(self, folder: Path, bad: dict[int, str] | None = None):
        self.folder, self.bad = Path(folder), bad or {}

    def __call__(self, slot: executor.Slot):
        def fn(i: int):
            (self.folder / "calls").mkdir(exist_ok=True)
            (self.folder / "calls" / f"{i}-{os.getpid()}").write_text(str(slot.index))
            if i in self.bad:
                if self.bad[i] == "user":
                    raise InputError(f"shard input {i} is bad; fix it")
                raise ValueError(f"boom at {i}")
            x = np.arange(10 * i, 10 * i + 10, dtype=np.float64)
            return {"i": i, "v": float((x * x).sum()), "threads": _threads()}

        return fn


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _job(folder: Path, n: int = 6, save=save_json, **kw) -> executor.Job:
    folder.mkdir(parents=True, exist_ok=True)
    return executor.Job("sq", [folder / f"shard_{i:03d}.json" for i in range(n)], Square(folder, **kw), save=save)


def _calls(folder: Path) -> list[int]:
    return sorted(int(f.name.split("-")[0]) for f in (folder / "calls").iterdir()) if (folder / "calls").exists() else []


def _expected(n: int) -> list[float]:
    return [float((np.arange(10 * i, 10 * i + 10, dtype=np.float64) ** 2).sum()) for i in range(n)]


# ----------------------------------------------------------------------------- in-process and local processes


@pytest.mark.parametrize("backend,workers", [("inline", 1), pytest.param("local", 2, marks=pytest.mark.slow)])
def test_results_are_merged_by_shard_index(tmp_path, backend, workers):
    job = _job(tmp_path / "w")
    executor.run(job, ExecutorConfig(backend=backend, workers=workers, threads=1), device="cpu", progress=False)
    got = [load_json(p) for p in job.paths]
    assert [g["i"] for g in got] == list(range(6))
    assert [g["v"] for g in got] == _expected(6)  # the hand computation, in index order
    assert _calls(tmp_path / "w") == list(range(6))  # each shard computed once
    if backend == "local":
        assert {g["threads"] for g in got} == {1}  # the slot's torch threads


def test_local_processes_write_the_same_bytes_as_inline(tmp_path):
    """The one non-slow multi-process test (a spawn costs a torch import per worker); the other
    local-process variants above are marked slow."""
    a, b = _job(tmp_path / "a", n=5), _job(tmp_path / "b", n=5)
    executor.run(a, progress=False)
    executor.run(b, ExecutorConfig(backend="local", workers=2, threads=1), device="cpu", progress=False)
    for pa, pb in zip(a.paths, b.paths):
        ja, jb = load_json(pa), load_json(pb)
        assert jb["threads"] == 1
        ja.pop("threads"), jb.pop("threads")
        assert ja == jb
    assert _calls(tmp_path / "b") == list(range(5))


@pytest.mark.parametrize("backend,workers", [("inline", 1), pytest.param("local", 2, marks=pytest.mark.slow)])
def test_finished_shards_are_skipped_on_restart(tmp_path, backend, workers):
    job = _job(tmp_path / "w")
    executor.run(job, progress=False)
    job.paths[2].unlink()
    job.paths[4].unlink()
    keep = job.paths[0].read_bytes()
    save_json(job.paths[0], {"i": 0, "v": -1.0})  # a finished shard is never recomputed
    for f in (tmp_path / "w" / "calls").iterdir():
        f.unlink()
    executor.run(job, ExecutorConfig(backend=backend, workers=workers, threads=1), device="cpu", progress=False)
    assert _calls(tmp_path / "w") == [2, 4]
    assert load_json(job.paths[0])["v"] == -1.0 and keep != job.paths[0].read_bytes()
    assert [load_json(p)["v"] for p in job.paths[1:]] == _expected(6)[1:]
    assert executor.run(job, progress=False) == {}  # all finished: nothing to do


@pytest.mark.parametrize("backend,workers", [("inline", 1), pytest.param("local", 2, marks=pytest.mark.slow)])
def test_an_error_names_the_shard_and_leaves_no_result(tmp_path, backend, workers):
    job = _job(tmp_path / "w", bad={3: "bug"})
    with pytest.raises(executor.ShardFailed, match=r"sq shard 3 failed: ValueError: boom at 3"):
        executor.run(job, ExecutorConfig(backend=backend, workers=workers, threads=1), device="cpu", progress=False)
    assert not job.paths[3].exists()
    assert not [f for f in (tmp_path / "w").iterdir() if ".tmp" in f.name]  # no half-written file
    # a user error keeps its type (one line and exit code 2 at the CLI), with the shard in the message
    job = _job(tmp_path / "u", bad={1: "user"})
    with pytest.raises(InputError, match=r"^sq shard 1: shard input 1 is bad; fix it$"):
        executor.run(job, ExecutorConfig(backend=backend, workers=workers, threads=1), device="cpu", progress=False)
    # fixed input: a re-run computes the missing shards only
    done_before = {i for i in range(6) if job.paths[i].exists()}
    job.worker.bad = {}
    executor.run(job, ExecutorConfig(backend=backend, workers=workers, threads=1), device="cpu", progress=False)
    assert [load_json(p)["v"] for p in job.paths] == _expected(6)
    assert 1 not in done_before


@pytest.mark.slow
def test_results_written_by_the_shard_itself_come_back(tmp_path):
    """save=None: fn(i) writes its own result (a checkpoint folder: finished when it holds DONE)
    and its return value comes back to the caller, keyed by shard."""
    folder = tmp_path / "ckpts"
    job = executor.Job("dirs", [folder / f"m{i}" for i in range(3)], _DirWorker(folder), save=None)
    (folder / "m1").mkdir(parents=True)  # a folder without DONE (a killed writer) is not finished
    out = executor.run(job, ExecutorConfig(backend="local", workers=2, threads=1), device="cpu", progress=False)
    assert out == {0: "m0", 1: "m1", 2: "m2"}
    assert all(executor.shard_done(p) for p in job.paths)
    assert executor.run(job, progress=False) == {}


class _DirWorker:
    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, slot):
        def fn(i: int) -> str:
            d = self.folder / f"m{i}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "DONE").write_text("{}")
            return d.name

        return fn


def test_torchrun_backend_outside_a_world_is_refused(tmp_path):
    with pytest.raises(DatamatesError, match="torchrun backend needs a torchrun world"):
        executor.run(_job(tmp_path / "w"), ExecutorConfig(backend="torchrun"), progress=False)
    with pytest.raises(DatamatesError, match="not one of"):
        executor.run(_job(tmp_path / "x"), ExecutorConfig(backend="threads"), progress=False)


# ----------------------------------------------------------------------------- lead over a gloo world

_WORLD_SCRIPT = r'''
import os, sys, json, datetime
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import torch.distributed as dist
from datamates import executor
from datamates.config.executor import ExecutorConfig
from datamates.errors import InputError
from datamates.log import setup_logging
import test_executor as T

rank, root, case = int(os.environ["RANK"]), Path(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
setup_logging(root / "logs" / "lead.log")
job = T._job(root / "w", n=5, bad={1: "user"} if case == "user" else None)

def serial():
    executor.run(job, progress=False)
    return {"v": [T.load_json(p)["v"] for p in job.paths], "who": os.getpid()}

try:
    out = executor.lead(serial, root / "mailbox", poll_s=0.05)
    (root / f"out{rank}.json").write_text(json.dumps(out))
except InputError as e:
    (root / f"out{rank}.json").write_text(json.dumps({"error": str(e)}))
dist.destroy_process_group()
'''


def _world(tmp_path: Path, case: str) -> list[dict]:
    import subprocess

    script = tmp_path / "world.py"
    script.write_text(_WORLD_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DATAMATES_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + (os.getpid() % 300)), str(script), str(tmp_path), case, str(Path(__file__).parent)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((tmp_path / f"out{k}.json").read_text()) for k in (0, 1)]


@pytest.mark.slow
def test_lead_shares_the_shards_over_the_world(tmp_path):
    zero, one = _world(tmp_path, "ok")
    assert zero == one and zero["v"] == _expected(5)  # every rank returns rank 0's result
    by_pid: dict[str, list[int]] = {}
    for f in (tmp_path / "w" / "calls").iterdir():
        i, pid = f.name.split("-")
        by_pid.setdefault(pid, []).append(int(i))
    assert sorted(sorted(v) for v in by_pid.values()) == [[0, 2, 4], [1, 3]]  # i % world == rank, each once
    log1 = (tmp_path / "logs" / "lead.rank1.log").read_text()
    assert "sq: rank 1 of 2 ran shards [1, 3] (2 of 5)" in log1
    assert "sq: rank 0 of 2 ran shards [0, 2, 4] (3 of 5)" in (tmp_path / "logs" / "lead.log").read_text()


@pytest.mark.slow
def test_a_user_error_on_another_rank_reaches_every_rank(tmp_path):
    zero, one = _world(tmp_path, "user")
    assert zero == one == {"error": "sq shard 1 (rank 1): shard input 1 is bad; fix it"}
