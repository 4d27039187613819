"""Running probe chunks: in this process, in local worker processes, or on Ray actors.

Chunks are fixed before any worker starts (`chunk_size` consecutive candidates) and every chunk is
labelled by the same code from the same inputs, so the labels do not depend on how many workers
there are or which one took a chunk; results come back tagged with their chunk index and the
coordinator writes them in place (the merge is by index, not by arrival). Per-checkpoint work
(L_ref before the step, the first-order reference gradient) is done once by the coordinator and
shipped in the `WorkSpec`.

local: `workers` spawned processes (CPU threads = `threads`, default cpu_count / workers; on CUDA,
worker i takes cuda:i mod n_gpus). ray: `workers` actors, each reserving `threads` CPUs (and one GPU
on CUDA); an already running Ray (e.g. `ray.init(address=...)`) is used as it is, else one is started
with `ray_address`. Keep actors fewer than the CPUs Ray knows about, or it may wait forever for a
free CPU (ray-project/ray#44687).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
import torch

from datamates.config.probe import ProbeConfig
from datamates.errors import ConfigError, DatamatesError
from datamates.log import get_logger

log = get_logger(__name__)

_WORKER = None  # the ProbeWorker of a local worker process


def _devices(cfg: ProbeConfig, n: int) -> list[str]:
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        k = torch.cuda.device_count()
        return [f"cuda:{i % k}" for i in range(n)]
    if cfg.device == "auto":
        return ["cpu"] * n
    return [cfg.device] * n


def _init_local(spec, devices) -> None:
    global _WORKER
    os.environ.setdefault("DATAMATES_PROGRESS", "0")
    from datamates.selection.probe.oracle import ProbeWorker

    _WORKER = ProbeWorker(spec, device=devices.get())


def _run_local(index: int, ids: np.ndarray):
    return index, _WORKER.run(ids)


def run_chunks(spec, chunks: list[tuple[int, np.ndarray]], cfg: ProbeConfig, *, local_state=None,
               local_ref=None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (chunk index, result) for every chunk, in completion order."""
    if not chunks:
        return
    if cfg.backend == "ray":
        yield from _run_ray(spec, chunks, cfg)
        return
    if cfg.workers == 1:
        from datamates.selection.probe.oracle import ProbeWorker

        worker = ProbeWorker(spec, state=local_state, ref=local_ref)
        for i, ids in chunks:
            yield i, worker.run(ids)
        return
    ctx = mp.get_context("spawn")
    devices = ctx.Queue()
    for d in _devices(cfg, cfg.workers):
        devices.put(d)
    n = min(cfg.workers, len(chunks))
    log.info("starting %d probe worker processes (%d torch threads each)", n, spec.threads)
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_local, initargs=(spec, devices)) as ex:
        pending = {ex.submit(_run_local, i, ids) for i, ids in chunks}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


class _RayWorker:
    """A Ray actor around ProbeWorker (the class is wrapped with ray.remote at run time, so Ray stays optional)."""

    def __init__(self, spec):
        os.environ.setdefault("DATAMATES_PROGRESS", "0")
        from datamates.selection.probe.oracle import ProbeWorker

        device = "cuda:0" if torch.cuda.is_available() and spec.cfg.get("device") in ("auto", "cuda") else None
        self.worker = ProbeWorker(spec, device=device)

    def run(self, index: int, ids: np.ndarray):
        return index, self.worker.run(ids)


def _run_ray(spec, chunks, cfg: ProbeConfig) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ConfigError("probe.backend = 'ray': Ray is not installed; pip install 'datamates[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False)
        started = True
    cpus = spec.threads or 1
    gpus = 1 if cfg.device in ("auto", "cuda") and ray.cluster_resources().get("GPU", 0) > 0 else 0
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus)(_RayWorker)
    spec_ref = ray.put(spec)
    n = min(cfg.workers, len(chunks))
    log.info("starting %d Ray probe actors (%d CPU%s each)", n, cpus, f", {gpus} GPU" if gpus else "")
    actors = [actor_cls.remote(spec_ref) for _ in range(n)]
    try:
        pool = ActorPool(actors)
        for i, ids in chunks:
            pool.submit(lambda a, c: a.run.remote(*c), (i, ids))
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, DatamatesError):
                    raise type(cause)(str(cause)) from None
                raise
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
