"""THE way datamates runs sharded work: probing, scoring and unit training all go through `run`.

A **job** is a list of shards with deterministic ids 0..n-1 (shard i is fixed before any worker
starts: e.g. probe candidates [i x chunk, (i + 1) x chunk)). Each shard has one result path; a
shard is finished when that path exists (a folder: when it holds a `DONE` marker), so

    results written atomically (temporary name, then rename: run_dir.atomic_write_bytes, or the
                                artifact's own atomic folder)
    restart                    finished shards are skipped, only the missing ones are computed
    merge                      by shard index, never by arrival: the caller reads paths[0..n-1]

Every backend runs the same worker code on the same shard, so a result does not depend on the
backend or on how many workers there are (with the same torch thread count per worker: float
sums depend on it).

Backends (`backend=`):
    inline    this process, in shard order (the default with one worker; a caller may hand in an
              already built worker: the probe stage reuses its loaded training state)
    local     `workers` spawned processes, each builds the worker once (worker w gets cuda:w mod
              n_gpus on CUDA, else `threads` torch threads, default cpu_count / workers); shards go
              to whichever process is free
    ray       `workers` Ray actors (`num_cpus` / `num_gpus` each) on a running Ray (ray.init by the
              caller, or `ray_address`: an existing cluster), else a local Ray this call starts and
              stops. Keep actors fewer than the CPUs Ray knows, or it may wait forever for a free CPU
              (ray-project/ray#44687). Results are written by the actors: the job's folder must be
              on a filesystem every node sees.
    torchrun  the torchrun world: of the shards not finished when the job starts (listed once, by
              rank 0), rank r takes every world-th from position r (on a fresh job: the shards i
              with i % world == r; after a resume the remainder is split evenly, so no rank idles
              while another still has a backlog), then reports through a marker file. Chosen automatically for every job submitted
              inside `lead` under torchrun, whatever the stage's own backend says.

`lead(fn, mailbox)` is how a torchrun program runs a serial step that contains sharded jobs (a
selector: probe -> fit -> score -> select): rank 0 runs `fn`; the other ranks *serve*: they poll
the mailbox folder for the jobs rank 0 posts (a `Job` as JSON, never pickle: its worker and save
function by the "module:qualname" they were registered under with `worker`, configs as dataclasses
of the datamates package, arrays as .npy files with allow_pickle=False; each file signed with
HMAC-SHA256 under a key rank 0 draws per `lead` call and sends to the other ranks over the process
group, never through the file system: a file anyone else wrote into the run folder fails the
check and is never decoded), run their shards, and return `fn`'s
result when rank 0 posts it. They wait on files, with a heartbeat line in their log every `heartbeat_s`, never inside a collective, so a long serial step
on rank 0 (the ridge fit, the Gumbel-top-k merge, an evaluation) cannot hit the process-group
timeout (config: `distributed.timeout_minutes`, default 30; only training's collectives and one
token broadcast per `lead` call remain). A user error on rank 0 is raised on every rank.

Each rank logs which shards it ran (`<job>: rank 1 of 2 ran shards [1, 3] (2 of 4) in 2.1 s`),
into its own log file (logs/<verb>.rank1.log). Fault hook for the kill tests:
DATAMATES_FAULT=shard:<job>:<rank> kills that rank (SIGKILL) after its first shard of the job.

docs/executor.md describes the design and how to choose a backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import hmac
import importlib
import io
import json
import multiprocessing as mp
import os
import secrets
import shutil
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from datamates.config.executor import ExecutorConfig
from datamates.core.train_loop import dist_setup
from datamates.errors import ConfigError, DatamatesError
from datamates.log import get_logger, progress_bar
from datamates.run_dir import DONE, atomic_write_bytes, fault_point

log = get_logger(__name__)

BACKENDS = ("inline", "local", "ray", "torchrun")


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: its index among `workers`, its device, its torch threads (0: leave
    the process's setting)."""

    index: int = 0
    workers: int = 1
    device: str = "cpu"
    threads: int = 0


@dataclass
class Job:
    """A sharded piece of work.

    name     for logs and errors ("probe", "score", "train-units")
    paths    the result path of every shard, in shard order (n shards = len(paths))
    worker   factory `worker(slot) -> fn` (picklable for local / Ray; an instance of a class registered
             with `executor.worker` to be shared over a torchrun world), called once per worker
             process / actor / rank;
             `fn(i)` computes shard i and returns its result (None: only `run(local_worker=...)`
             in this process)
    save     `save(path, result)` (a function registered with `executor.worker`) writing atomically, run where the shard was computed;
             None: `fn(i)` writes `paths[i]` itself (e.g. a checkpoint folder) and its (small,
             picklable) return value is handed back to the caller
    sizes    optional work per shard (e.g. sequences) for the progress bar"""

    name: str
    paths: list[Path]
    worker: Callable[[Slot], Callable[[int], Any]] | None
    save: Callable[[Path, Any], None] | None = None
    sizes: list[int] | None = None
    unit: str = "shard"

    @property
    def n_shards(self) -> int:
        return len(self.paths)

    def done(self, i: int) -> bool:
        return shard_done(self.paths[i])

    def todo(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.done(i)]


def shard_done(path: str | Path) -> bool:
    """A shard's result exists: a file, or a folder holding a DONE marker."""
    p = Path(path)
    if p.is_dir():
        return (p / DONE).exists()
    return p.exists()


class ShardFailed(RuntimeError):
    """A shard raised something other than a user error (DatamatesError); the message names the
    job, the shard and carries the worker's traceback."""


@dataclass
class _Failure:
    """A shard's exception, carried across processes as plain data."""

    job: str
    shard: int
    cls: type | None  # the exception class when it is a DatamatesError (re-raised as such)
    message: str
    tb: str = ""
    rank: int | None = None

    def exception(self) -> BaseException:
        where = f"{self.job} shard {self.shard}" + (f" (rank {self.rank})" if self.rank is not None else "")
        if self.cls is not None:
            try:
                return self.cls(f"{where}: {self.message}")
            except Exception:  # noqa: BLE001 - an exception class with another signature
                return DatamatesError(f"{where}: {self.message}")
        return ShardFailed(f"{where} failed: {self.message}\n{self.tb}")


def _failure(job: str, i: int, e: BaseException, rank: int | None = None) -> _Failure:
    if isinstance(e, DatamatesError):
        return _Failure(job, i, type(e), str(e), rank=rank)
    return _Failure(job, i, None, f"{type(e).__name__}: {e}", traceback.format_exc(), rank=rank)


def _compute(job: Job, fn: Callable[[int], Any], i: int) -> Any:
    """Shard i through fn, saved at its path; returns what goes back to the caller."""
    res = fn(i)
    if job.save is not None:
        job.save(job.paths[i], res)
        return None
    return res


def device_for(spec: str, index: int) -> str:
    """The device of worker `index` for a device setting: auto / cuda -> cuda:index mod n_gpus
    when CUDA is there (auto: else cpu); anything else as it is."""
    import torch

    if spec in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    return "cpu" if spec == "auto" else spec


# ----------------------------------------------------------------------------- the entry point


def run(job: Job, ex: ExecutorConfig | None = None, *, device: str = "auto",
        local_worker: Callable[[], Callable[[int], Any]] | None = None, progress: str | bool | None = None,
        share: bool = True) -> dict[int, Any]:
    """Compute every unfinished shard of `job`; returns {shard: returned value} of the shards this
    call computed when `job.save` is None (else {}). Afterwards every `job.paths[i]` is finished.

    `ex`: the stage's executor section (workers, threads, backend, Ray address and resources; the
    stage resolves its own defaults first); None: inline, in this process. Ray resources left null
    here: `ray_cpus` = threads (at least 1), `ray_gpus` = 0.

    Inside `lead` under torchrun the job is shared over the world, whatever `backend` says, unless
    `share` is False (a job whose worker is not a registered `worker` class, e.g. a closure: it runs
    in this process).
    `local_worker`: a zero-argument factory of `fn` for the shards this process computes (inline,
    or rank 0 of a torchrun world), e.g. one that reuses state the caller has loaded already."""
    ex = ex or ExecutorConfig(backend="inline")
    backend, workers, threads = ex.backend, ex.workers, ex.threads
    if backend not in BACKENDS:
        raise ConfigError(f"executor backend {backend!r} is not one of {', '.join(BACKENDS)}")
    todo = job.todo()
    if len(todo) < job.n_shards:
        log.info("%s: %d of %d shards already finished; skipping them", job.name, job.n_shards - len(todo),
                 job.n_shards)
    if not todo:
        return {}
    world = _World.current() if share else None
    if world is not None:
        return world.run(job, todo, device=device, local_worker=local_worker, progress=progress)
    if backend == "torchrun":
        raise ConfigError(f"{job.name}: the torchrun backend needs a torchrun world (WORLD_SIZE > 1) and a caller "
                          "inside executor.lead")
    t0 = time.time()
    with _Progress(job, todo, progress) as bar:
        if backend == "ray":
            out = _run_ray(job, todo, workers, device, ex.ray_address,
                           ex.ray_cpus if ex.ray_cpus is not None else max(1, threads),
                           ex.ray_gpus if ex.ray_gpus is not None else 0.0, bar)
        elif backend == "local" and workers > 1 and len(todo) > 1:
            out = _run_local(job, todo, workers, device, threads, bar)
        else:
            out = _run_inline(job, todo, device, threads, local_worker, bar)
    log.info("%s: %d shard(s) computed in %.1f s (%s)", job.name, len(todo), time.time() - t0,
             backend if backend != "local" or workers > 1 else "inline")
    return out


class _Progress:
    """A progress bar over the shards (by `job.sizes` when given)."""

    def __init__(self, job: Job, todo: list[int], desc: str | None):
        self.job = job
        sizes = job.sizes or [1] * job.n_shards
        self.sizes = sizes
        unit = job.unit if job.sizes else "shard"
        self.bar = None if desc is False else progress_bar(desc or job.name, total=sum(sizes), unit=unit)
        if self.bar is not None:
            self.bar.update(sum(sizes) - sum(sizes[i] for i in todo))

    def done(self, i: int) -> None:
        if self.bar is not None:
            self.bar.update(self.sizes[i])

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_inline(job: Job, todo: list[int], device: str, threads: int, local_worker, bar: _Progress) -> dict[int, Any]:
    out = {}
    with _threads(threads):
        fn = local_worker() if local_worker is not None else job.worker(Slot(0, 1, device_for(device, 0), threads))
        for i in todo:
            try:
                res = _compute(job, fn, i)
            except Exception as e:
                raise _failure(job.name, i, e).exception() from (None if isinstance(e, DatamatesError) else e)
            if job.save is None:
                out[i] = res
            bar.done(i)
    return out


# ----------------------------------------------------------------------------- local processes

_LOCAL: tuple[Job, Callable[[int], Any]] | None = None  # the job and worker of a local worker process


def _local_init(job: Job, slots) -> None:
    global _LOCAL
    import torch

    os.environ["DATAMATES_PROGRESS"] = "0"
    slot = slots.get()
    if slot.threads > 0:
        torch.set_num_threads(slot.threads)
    _LOCAL = (job, job.worker(slot))


def _local_shard(i: int) -> tuple[int, Any, _Failure | None]:
    job, fn = _LOCAL
    try:
        return i, _compute(job, fn, i), None
    except Exception as e:  # noqa: BLE001 - carried back as data, raised by the caller
        return i, None, _failure(job.name, i, e)


def _run_local(job: Job, todo: list[int], workers: int, device: str, threads: int, bar: _Progress) -> dict[int, Any]:
    n = min(workers, len(todo))
    threads = threads or max(1, (os.cpu_count() or 1) // n)
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for w in range(n):
        slots.put(Slot(w, n, device_for(device, w), threads))
    log.info("%s: %d shard(s) on %d local processes (%d torch threads each)", job.name, len(todo), n, threads)
    out: dict[int, Any] = {}
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_local_init, initargs=(job, slots)) as ex:
        pending = {ex.submit(_local_shard, i) for i in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    i, res, err = f.result()
                    if err is not None:
                        raise err.exception()
                    if job.save is None:
                        out[i] = res
                    bar.done(i)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return out


# ----------------------------------------------------------------------------- Ray


class _RayActor:
    """A Ray actor holding one worker (the class is wrapped with ray.remote at run time, so Ray
    stays optional)."""

    def __init__(self, job: Job, slot: Slot):
        import torch

        os.environ.setdefault("DATAMATES_PROGRESS", "0")
        if slot.threads > 0:
            torch.set_num_threads(slot.threads)
        self.job = job
        self.fn = job.worker(slot)

    def shard(self, i: int) -> tuple[int, Any, _Failure | None]:
        try:
            return i, _compute(self.job, self.fn, i), None
        except Exception as e:  # noqa: BLE001 - carried back as data
            return i, None, _failure(self.job.name, i, e)


def _run_ray(job: Job, todo: list[int], workers: int, device: str, address: str | None, cpus: float, gpus: float,
             bar: _Progress) -> dict[int, Any]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ConfigError(f"{job.name}: backend 'ray' needs Ray: pip install 'datamates[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
        started = True
    n = min(workers, len(todo))
    log.info("%s: %d shard(s) on %d Ray actors (%g CPU%s each)", job.name, len(todo), n, cpus,
             f", {gpus:g} GPU" if gpus else "")
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus or None)(_RayActor)
    job_ref = ray.put(job)
    dev = "cuda" if gpus else ("cpu" if device == "auto" else device)  # Ray hands each actor its own GPU
    actors = [actor_cls.remote(job_ref, Slot(w, n, dev, max(1, int(cpus)))) for w in range(n)]
    out: dict[int, Any] = {}
    try:
        pool = ActorPool(actors)
        for i in todo:
            pool.submit(lambda a, i: a.shard.remote(i), i)
        while pool.has_next():
            try:
                i, res, err = pool.get_next_unordered()
            except ray.exceptions.RayTaskError as e:  # the actor's constructor failed
                cause = getattr(e, "cause", None)
                if isinstance(cause, DatamatesError):
                    raise type(cause)(f"{job.name}: {cause}") from None
                raise
            if err is not None:
                raise err.exception()
            if job.save is None:
                out[i] = res
            bar.done(i)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    return out


# ----------------------------------------------------------------------------- the torchrun world


def world_size() -> int:
    """Ranks of the initialised torch.distributed group (1 without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


# ----------------------------------------------------------------------------- the mailbox codec
# A mailbox file is JSON, never pickle: plain values as themselves, tuples / paths / non-string-keyed
# dicts tagged, dataclasses of the datamates package field by field with their "module:qualname",
# numpy arrays (and CPU tensors) as .npy files beside it (allow_pickle=False, their sha256 inside
# the signed JSON), and a job's worker / save function only by the name it was registered under
# with `worker` (WORKERS). Decoding resolves names only inside the datamates package: a registered
# worker, a dataclass, or a DatamatesError class (a user error re-raised on every rank).

WORKERS: dict[str, Any] = {}  # "module:qualname" -> a class or function a mailbox job may name
_TAGS = ("__tuple__", "__path__", "__npy__", "__tensor__", "__items__", "__ref__", "__dataclass__", "__worker__")


def worker(obj: Any) -> Any:
    """Register a worker class (its instances are a Job's `worker`, sent as their `__dict__`) or a
    save function of the datamates package as a name a torchrun mailbox job may carry."""
    WORKERS[_name(obj)] = obj
    return obj


def _name(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _encode(obj: Any, arrays: list[np.ndarray]) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return {"__path__": str(obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("an object array cannot go through the torchrun mailbox")
        arrays.append(obj)
        return {"__npy__": len(arrays) - 1}
    if "torch" in sys.modules and isinstance(obj, sys.modules["torch"].Tensor):
        arrays.append(obj.detach().cpu().numpy())
        return {"__tensor__": len(arrays) - 1}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, type) and issubclass(obj, DatamatesError) or (
            hasattr(obj, "__qualname__") and WORKERS.get(_name(obj)) is obj):
        return {"__ref__": _name(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and _name(type(obj)).startswith("datamates."):
        return {"__dataclass__": _name(type(obj)),
                "fields": {f.name: _encode(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)}}
    if WORKERS.get(_name(type(obj))) is type(obj):
        return {"__worker__": _name(type(obj)), "state": _encode(obj.__getstate__(), arrays)}
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} cannot go through the torchrun mailbox as JSON "
                    "(register a worker class with executor.worker, or send a dataclass of the datamates package)")


def _resolve(name: str) -> Any:
    """A "module:qualname" inside the datamates package (importing its module registers its
    workers); anything else is refused before any import."""
    mod, _, qual = str(name).partition(":")
    if not (mod == "datamates" or mod.startswith("datamates.")) or not qual:
        raise ShardFailed(f"the torchrun mailbox names {name!r}, which is not part of datamates")
    if name in WORKERS:
        return WORKERS[name]
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj


def _decode(obj: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = next((t for t in _TAGS if t in obj), None)
    if tag is None:
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if tag == "__tuple__":
        return tuple(_decode(v, arrays) for v in obj[tag])
    if tag == "__path__":
        return Path(obj[tag])
    if tag == "__npy__":
        return arrays[obj[tag]]
    if tag == "__tensor__":
        import torch

        return torch.from_numpy(arrays[obj[tag]])
    if tag == "__items__":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in obj[tag]}
    target = _resolve(obj[tag])
    if tag == "__ref__":
        if WORKERS.get(obj[tag]) is target or isinstance(target, type) and issubclass(target, DatamatesError):
            return target
    elif tag == "__dataclass__":
        if isinstance(target, type) and dataclasses.is_dataclass(target):
            values = {k: _decode(v, arrays) for k, v in obj["fields"].items()}
            init = {f.name for f in dataclasses.fields(target) if f.init}
            out = target(**{k: v for k, v in values.items() if k in init})
            for k, v in values.items():
                if k not in init:
                    object.__setattr__(out, k, v)
            return out
    elif tag == "__worker__" and WORKERS.get(obj[tag]) is target:
        out = target.__new__(target)
        out.__dict__.update(_decode(obj["state"], arrays))
        return out
    raise ShardFailed(f"the torchrun mailbox names {obj[tag]!r}, which is not a registered executor worker, a "
                      "dataclass or an error of datamates")


def _post(path: Path, obj: Any, key: bytes) -> None:
    """A mailbox file: `<path>` holds HMAC-SHA256(key, text) in hex, a newline, then the JSON text;
    its arrays are `<stem>.<i>.npy` beside it (written first; their sha256 is in the signed text)."""
    arrays: list[np.ndarray] = []
    body = _encode(obj, arrays)
    digests = []
    for i, a in enumerate(arrays):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        atomic_write_bytes(path.with_name(f"{path.stem}.{i}.npy"), buf.getvalue())
        digests.append(hashlib.sha256(buf.getvalue()).hexdigest())
    text = json.dumps({"arrays": digests, "body": body}).encode()
    atomic_write_bytes(path, hmac.new(key, text, hashlib.sha256).hexdigest().encode() + b"\n" + text)


def _read(path: Path, key: bytes) -> Any:
    """A mailbox file, decoded only when its signature is this `lead` call's: the key exists only
    in the ranks' memory. Nothing in it is ever unpickled (JSON, and .npy with allow_pickle=False),
    and it names code only through the WORKERS registry of the datamates package."""
    with open(path, "rb") as fh:
        blob = fh.read()
    sig, _, text = blob.partition(b"\n")
    if not hmac.compare_digest(sig, hmac.new(key, text, hashlib.sha256).hexdigest().encode()):
        raise ShardFailed(f"{path}: a mailbox file not written by this run's rank 0 (its signature does not match); "
                          "something else writes into the run folder: stop it and re-run the command")
    msg = json.loads(text)
    arrays = []
    for i, digest in enumerate(msg["arrays"]):
        data = path.with_name(f"{path.stem}.{i}.npy").read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ShardFailed(f"{path}: its array file {i} changed after rank 0 wrote it; re-run the command")
        arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
    return _decode(msg["body"], arrays)


@dataclass
class _World:
    """Rank 0's view while it leads: where to post jobs, how many ranks serve them."""

    folder: Path
    rank: int
    world: int
    heartbeat_s: float
    poll_s: float
    key: bytes = b""
    jobs: int = 0

    @classmethod
    def current(cls) -> _World | None:
        return _CURRENT[0]

    def run(self, job: Job, todo: list[int], *, device: str, local_worker, progress) -> dict[int, Any]:
        n = self.jobs
        self.jobs += 1
        _post(self.folder / f"job_{n:04d}.json", {"job": job, "todo": todo, "device": device}, self.key)
        t0 = time.time()
        with _Progress(job, todo, progress) as bar:
            out = _serve_job(job, todo, self.rank, self.world, device, local_worker, self.folder, n, bar, self.key)
            # wait for the other ranks' markers: files, not a collective
            last = time.time()
            waiting = set(range(1, self.world))
            while waiting:
                for r in sorted(waiting):
                    if (self.folder / f"job_{n:04d}.rank{r}.error").exists():
                        raise _read(self.folder / f"job_{n:04d}.rank{r}.error", self.key).exception()
                    if (self.folder / f"job_{n:04d}.rank{r}.done").exists():
                        waiting.discard(r)
                        for i in _read(self.folder / f"job_{n:04d}.rank{r}.done", self.key)["shards"]:
                            bar.done(i)
                if waiting:
                    if time.time() - last > self.heartbeat_s:
                        log.info("%s: rank 0 waits for rank(s) %s (%.0f s)", job.name, sorted(waiting), time.time() - t0)
                        last = time.time()
                    time.sleep(self.poll_s)
        missing = job.todo()
        if missing:
            raise ShardFailed(f"{job.name}: shards {missing[:10]} have no result after every rank reported done; "
                              f"is {job.paths[missing[0]].parent} on a filesystem every rank sees?")
        log.info("%s: %d shard(s) computed by %d ranks in %.1f s", job.name, len(todo), self.world, time.time() - t0)
        return out


_CURRENT: list[_World | None] = [None]


def _serve_job(job: Job, todo: list[int], rank: int, world: int, device: str, local_worker, folder: Path, n: int,
               bar: _Progress | None, key: bytes) -> dict[int, Any]:
    """This rank's share of a job: every world-th of the unfinished shards, from position `rank`
    (shard i % world == rank on a fresh job; balanced after a resume too), then its marker file. Rank 0 raises a
    shard's error; another rank posts it (rank 0 raises it and ends the `lead` call, so every rank
    leaves with the same error) and goes on serving."""
    mine = todo[rank::world]
    t0 = time.time()
    out: dict[int, Any] = {}
    tag = f"job_{n:04d}.rank{rank}"
    try:
        with _threads(0):  # whatever a worker sets, training afterwards runs with this rank's threads
            fn = None
            if mine:
                fn = local_worker() if local_worker is not None else job.worker(Slot(rank, world, _rank_device(device), 0))
            for k, i in enumerate(mine):
                try:
                    res = _compute(job, fn, i)
                except Exception as e:
                    fail = _failure(job.name, i, e, rank=rank)
                    if rank != 0:
                        _post(folder / f"{tag}.error", fail, key)
                        log.error("%s", fail.exception())
                        return out
                    raise fail.exception() from (None if isinstance(e, DatamatesError) else e)
                if job.save is None:
                    out[i] = res
                if bar is not None:
                    bar.done(i)
                if k == 0:
                    fault_point(f"shard:{job.name}:{rank}")
    except Exception as e:  # building the worker failed
        if rank == 0:
            raise
        _post(folder / f"{tag}.error", _failure(job.name, mine[0], e, rank=rank), key)
        log.error("%s: rank %d could not start its shards: %s", job.name, rank, e)
        return out
    log.info("%s: rank %d of %d ran shards %s (%d of %d) in %.1f s", job.name, rank, world, _short(mine), len(mine),
             len(todo), time.time() - t0)
    if rank != 0:
        _post(folder / f"{tag}.done", {"shards": mine, "seconds": time.time() - t0}, key)
    return out


def _short(ids: list[int]) -> str:
    return str(ids) if len(ids) <= 12 else f"[{', '.join(map(str, ids[:6]))}, ..., {', '.join(map(str, ids[-3:]))}]"


def _rank_device(spec: str) -> str:
    """A rank's device: its LOCAL_RANK GPU under auto / cuda (torchrun's one GPU per rank)."""
    import torch

    if spec in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu" if spec == "auto" else spec


def lead_ranks(fn: Callable[[], Any], *, device: str, logs: str | Path, distributed: Any) -> Any:
    """A command's torchrun wiring, written once: set up the process group (when run under torchrun)
    for `device` with the run's `distributed` settings (timeout_minutes, heartbeat_seconds), then
    `lead(fn)` with the run's `<logs>/ranks` mailbox: rank 0 runs `fn`, the other ranks serve its
    jobs. A single process just runs `fn`. Every rank returns `fn`'s result."""
    dist_setup(device, timeout_minutes=distributed.timeout_minutes)
    return lead(fn, Path(logs) / "ranks", heartbeat_s=distributed.heartbeat_seconds,
                timeout_s=60 * distributed.timeout_minutes)


def lead(fn: Callable[[], Any], mailbox: str | Path, *, heartbeat_s: float = 60.0, poll_s: float = 0.2,
         timeout_s: float = 1800.0) -> Any:
    """Run `fn` on rank 0 while the other ranks serve the jobs it submits (see the module
    docstring); every rank returns `fn`'s result (which must be JSON through the mailbox codec: plain values, paths, arrays, dataclasses of datamates). A single process, or
    a call inside another `lead`: just `fn()`.

    The mailbox is a folder every rank sees (a run's logs/ranks); each call uses a fresh
    sub-folder named by a token rank 0 broadcasts (the only collective here: all ranks arrive at a
    `lead` call together), so files of a killed earlier run are never read. Rank 0 touches
    `<folder>/alive` every few seconds from a background thread; a serving rank that sees it go
    stale for `timeout_s` (rank 0 died without torchrun stopping the job) stops with an error
    instead of waiting forever."""
    import torch.distributed as dist

    if world_size() == 1 or _World.current() is not None:
        return fn()
    rank, world = dist.get_rank(), dist.get_world_size()
    # the folder token and the signing key of this call's mailbox files: sent over the process group
    box = [(uuid.uuid4().hex[:12], secrets.token_bytes(32)) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    token, key = box[0]
    mailbox = Path(mailbox)
    folder = mailbox / token
    if rank == 0:
        for old in mailbox.glob("*") if mailbox.exists() else []:
            if old.is_dir() and old.name != token:  # every rank is past the previous call's end
                shutil.rmtree(old, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        _CURRENT[0] = _World(folder, rank, world, heartbeat_s, poll_s, key)
        stop = threading.Event()
        beat = threading.Thread(target=_alive, args=(folder / "alive", min(heartbeat_s, 5.0), stop), daemon=True)
        beat.start()
        try:
            result = fn()
        except DatamatesError as e:
            _post(folder / "end.json", ("user", type(e), str(e)), key)
            raise
        except BaseException as e:
            _post(folder / "end.json", ("error", None, f"rank 0 failed: {type(e).__name__}: {e}"), key)
            raise
        finally:
            _CURRENT[0] = None
            stop.set()
        try:
            _post(folder / "end.json", ("ok", result, ""), key)
        except TypeError as e:  # the other ranks must not wait for a result that cannot be sent
            _post(folder / "end.json", ("error", None, f"rank 0's result cannot be sent to the other ranks: {e}"), key)
            raise ShardFailed(f"rank 0's result cannot be sent to the other ranks: {e}") from None
        return result
    return _serve(folder, rank, world, heartbeat_s, poll_s, timeout_s, key)


def _alive(path: Path, every: float, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            path.touch()
        stop.wait(every)


def _serve(folder: Path, rank: int, world: int, heartbeat_s: float, poll_s: float, timeout_s: float, key: bytes) -> Any:
    n = 0
    t0 = last = time.time()
    while True:
        jf = folder / f"job_{n:04d}.json"
        if jf.exists():
            msg = _read(jf, key)
            _serve_job(msg["job"], msg["todo"], rank, world, msg["device"], None, folder, n, None, key)
            n += 1
            last = time.time()
            continue
        end = folder / "end.json"
        if end.exists():
            kind, value, text = _read(end, key)
            if kind == "ok":
                return value
            if kind == "user":
                raise value(text)
            raise ShardFailed(text)
        if time.time() - last > heartbeat_s:
            log.info("rank %d: waiting for rank 0's serial step (%.0f s)", rank, time.time() - t0)
            last = time.time()
            alive = folder / "alive"
            seen = alive.stat().st_mtime if alive.exists() else t0
            if time.time() - seen > timeout_s:
                raise ShardFailed(f"rank {rank}: rank 0 has given no sign of life for {time.time() - seen:.0f} s "
                                  f"({alive}); it probably died: re-run the command to resume")
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- the run's world

_LEAD: dict[str, Any] = {"mailbox": Path("runs") / "logs" / "ranks", "heartbeat_s": 60.0, "timeout_s": 1800.0}


def set_world(mailbox: str | Path, *, heartbeat_s: float, timeout_s: float) -> None:
    """Where and how `on_rank0` coordinates the ranks of a torchrun world (a run's logs/ranks and
    its cfg.distributed knobs); set once per run."""
    _LEAD.update(mailbox=Path(mailbox), heartbeat_s=heartbeat_s, timeout_s=timeout_s)


def on_rank0(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """`fn(*args, **kw)` on rank 0 (selection, evaluation); under torchrun the other ranks serve the
    sharded jobs it submits (probe, score: `lead`) and wait for the rest on files, with a heartbeat,
    never inside a collective; then every rank gets its result. Single process: just the call."""
    return lead(functools.partial(fn, *args, **kw), _LEAD["mailbox"], heartbeat_s=_LEAD["heartbeat_s"],
                timeout_s=_LEAD["timeout_s"])
