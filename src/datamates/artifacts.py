"""How an artifact comes to be: the one way every stage writes its output folder.

    produce(Output(path, kind, identity, inputs), build) -> path

`produce` owns the protocol every stage used to spell by hand: the lock on the output (a second
writer refuses with one line), reuse (a finished `kind` with the same fingerprint is returned as it
is), refusal (a finished artifact made with other settings is a one-line error, exit 2, unless
--force; another kind of artifact, a folder of the user's, or one of the command's own inputs is
never replaced, --force or not), the scratch folder `<path>.partial` and its resume, `meta.json`
(what `build` returns: the counted tokens and FLOPs per token, plus, in a stamped `meta_record`,
`seconds`: the wall seconds `build` took in this call, measured here so no stage times itself) and
the `DONE` marker
(kind, fingerprint, code version, every file's size), then the rename into place.

The identity is a dict of config values and digests (identity.py); its flattened form is the
fingerprint the DONE and PARTIAL markers record, and it is the only identity check of an artifact.
A killed run therefore leaves either nothing or a `.partial` folder that the next run resumes
(`resume=True`, same fingerprint) or wipes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamates import __version__
from datamates.errors import DatamatesError, IncompatibleArtifacts, OutputConflict
from datamates.identity import hash_text
from datamates.log import get_logger

log = get_logger(__name__)

DONE = "DONE"
META = "meta.json"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE).exists()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when run from a checkout (read once per process)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def meta_record(produced_by: str, **fields: Any) -> dict[str, Any]:
    return {
        "produced_by": produced_by,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


# ----------------------------------------------------------------------------- fingerprints
#
# An artifact's identity is everything that determines its bytes: its config section, the
# identities of its inputs (pool_id, ids hash, the init checkpoint's content hash, ...). The
# finished artifact's DONE marker and an unfinished `.partial`'s PARTIAL marker record it as a
# flat {dotted key: value} dict; reusing or resuming with another one is a one-line error that
# names the key, unless the run was started with --force (then the artifact is redone). The code
# version is recorded too, but a change of it only warns: most commits do not touch a given
# stage, and refusing every artifact after each commit would make --force the habit.

PARTIAL = "PARTIAL"
_force = os.environ.get("DATAMATES_FORCE", "0") not in ("", "0")


def set_force(on: bool) -> None:
    """--force: redo (instead of refusing) every artifact whose fingerprint differs."""
    global _force
    _force = bool(on)


def force_enabled(force: bool | None = None) -> bool:
    return _force if force is None else bool(force)


def _canon(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canon(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def fingerprint(**parts: Any) -> dict[str, str]:
    """Flatten `parts` (configs, dicts, scalars, hashes) to {dotted key: JSON value}; values
    longer than 80 characters are replaced by `sha256:<16 hex digits>` of their JSON."""
    flat: dict[str, str] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict) and v:
            for k in sorted(v):
                walk(f"{prefix}.{k}" if prefix else k, v[k])
            return
        js = json.dumps(v, sort_keys=True, default=str)
        if len(js) > 80:
            js = "sha256:" + hash_text(js)
        flat[prefix] = js

    for key in sorted(parts):
        walk(key, _canon(parts[key]))
    return flat


# counted costs an older datamates put in fingerprints (a group selection's encoder cost): not inputs, so
# a finished artifact that recorded them is compared without them
FORMER_IDENTITY_KEYS = ("group.encoder_tokens", "group.encoder_flops")


def _first_difference(old: dict[str, str], new: dict[str, str]) -> str | None:
    old = {k: v for k, v in old.items() if k not in FORMER_IDENTITY_KEYS}
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
    return None


def read_marker(path: str | Path, name: str = DONE) -> dict[str, Any] | None:
    """The JSON record in a DONE / PARTIAL marker; {} for a legacy marker (a timestamp line);
    None when there is no marker."""
    f = Path(path) / name
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _listing(root: Path) -> dict[str, int]:
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name not in (DONE, PARTIAL):
            out[str(f.relative_to(root))] = f.stat().st_size
    return out


def write_done(root: str | Path, kind: str | None, fp: dict[str, str] | None = None) -> None:
    """Certify `root`: DONE records the kind, fingerprint, code version and every file's size."""
    root = Path(root)
    (root / PARTIAL).unlink(missing_ok=True)
    atomic_write_json(root / DONE, {"kind": kind, "fingerprint": fp, "code_version": code_version(),
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": _listing(root)})


def check_files(path: str | Path) -> str | None:
    """None if every file DONE lists is there with its recorded size, else what is wrong."""
    path = Path(path)
    rec = read_marker(path) or {}
    for name, size in (rec.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, DONE certified {size}"
    return None


def reuse(path: str | Path, kind: str, fp: dict[str, str], *, force: bool | None = None) -> bool:
    """True when `path` is a finished `kind` artifact with fingerprint `fp`: use it as it is.
    False when there is nothing finished there, or (with --force) it differs and is to be redone.
    Otherwise IncompatibleArtifacts: one line naming the artifact and the first differing key."""
    path = Path(path)
    rec = read_marker(path)
    if rec is None:
        return False
    if not rec:  # a DONE written before fingerprints existed: nothing to compare
        log.warning("%s: finished %s without a fingerprint (older datamates); reusing it as it is", path, kind)
        return True
    redo = force_enabled(force)
    held = held_kind(path)
    if not _same_kind(held, kind):
        raise OutputConflict(f"{path}: holds {_describe(held)}, not a {kind}; choose another output folder")
    if held.startswith("<") and not rec.get("fingerprint"):  # an older datamates' kind-less DONE
        if redo:
            return False
        log.warning("%s: finished %s without a fingerprint (older datamates); reusing it as it is", path, kind)
        return True
    broken = check_files(path)
    if broken is not None:
        if redo:
            return False
        raise IncompatibleArtifacts(f"{path}: this {kind} is damaged ({broken}); re-run with --force to redo it")
    diff = _first_difference(rec.get("fingerprint") or {}, fp)
    if diff is not None:
        if redo:
            log.warning("%s: redoing this %s (--force): %s", path, kind, diff)
            return False
        raise IncompatibleArtifacts(
            f"{path}: this {kind} was made from other inputs ({diff}); re-run with --force to redo it"
        )
    if rec.get("code_version") not in (None, code_version()):
        log.warning("%s: made by datamates %s, this is %s; reusing it", path, rec.get("code_version"), code_version())
    return True


# What an older datamates wrote as `kind: null` (or a DONE without JSON), by its meta.json
# `produced_by`: such an artifact may be replaced or reused only by the command that made it.
LEGACY_PRODUCERS = {"eval": ("evaluate",), "selection": ("select",), "influence_model": ("fit",),
                    "scores": ("score", "score-with", "baseline"), "plan": ("plan",), "export": ("export",),
                    "rater": ("rate", "rater"), "encoder_segment": (), "checkpoint": ("merge",),
                    "merged_checkpoint": ("merge",), "partition": ("partition",)}


def held_kind(path: str | Path, marker: str = DONE) -> str | None:
    """The kind of artifact at `path` (DONE or PARTIAL marker): its recorded kind, else (an older
    datamates' `kind: null`) `<produced_by>` from its meta.json; None when there is no marker."""
    rec = read_marker(path, marker)
    if rec is None:
        return None
    if rec.get("kind"):
        return str(rec["kind"])
    meta = Path(path) / META
    try:
        by = json.loads(meta.read_text()).get("produced_by") if meta.is_file() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        by = None
    return f"<{by or 'unknown'}>"


def _same_kind(held: str, kind: str | None) -> bool:
    if held == kind:
        return True
    if held.startswith("<"):  # a legacy artifact: only the command that made it may take it over
        return kind is None or held[1:-1] in LEGACY_PRODUCERS.get(kind or "", ())
    return False


def _describe(held: str) -> str:
    return f"an artifact of `datamates {held[1:-1]}`" if held.startswith("<") else f"a {held}"


def check_replaceable(path: str | Path, kind: str | None) -> None:
    """Refuse (OutputConflict, one line) to let an artifact of `kind` replace anything but nothing,
    an empty folder, or a finished or partial artifact of the same kind: `--out` at a pool, a
    checkpoint, a data file or a folder of the user's would otherwise be deleted. `kind=None`
    (a writer outside produce) may only replace another kind-less artifact."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise OutputConflict(f"{path}: is a file, not an output folder; choose another output folder")
    if not any(path.iterdir()):
        return
    for marker in (DONE, PARTIAL):
        held = held_kind(path, marker)
        if held is not None:
            if _same_kind(held, kind):
                return
            raise OutputConflict(f"{path}: holds {_describe(held)}, not a {kind or 'kind-less artifact'}; "
                                 "choose another output folder")
    raise OutputConflict(
        f"{path}: exists and is not a datamates artifact (no {DONE} marker); choose another output folder "
        "or delete it yourself"
    )


def check_not_input(path: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse (OutputConflict, even under --force) an output that is one of the command's inputs or
    a folder holding one: writing it would destroy what it is made from."""
    if Path(path).is_file():
        return  # check_replaceable refuses it: "is a file, not an output folder"
    out = Path(path).resolve()
    for i in inputs:
        src = Path(i).resolve()
        if src == out:
            raise OutputConflict(f"{path}: is one of this command's inputs; choose another output folder")
        if out in src.parents:
            raise OutputConflict(f"{path}: holds {i}, one of this command's inputs; choose another output folder")


class Lock:
    """An exclusive lock on an output folder: `<parent>/.<name>.lock`, held with flock (released
    by the kernel when the process dies, so kill -9 leaves no stale lock)."""

    def __init__(self, path: str | Path):
        self.target = Path(path)
        self.file = self.target.with_name(f".{self.target.name}.lock")
        self.fd: int | None = None

    def acquire(self) -> Lock:
        import fcntl

        self.file.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputConflict(
                    f"{self.target}: another datamates process (pid {holder}) is writing this output; "
                    f"wait for it to finish (lock {self.file})"
                ) from None
            try:  # the file may have been unlinked by the previous holder between open and flock
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.file.unlink()
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()




def begin_partial(path: str | Path, kind: str | None = None, fp: dict[str, str] | None = None, *,
                  resume: bool = False, force: bool | None = None) -> tuple[Path, bool]:
    """The scratch folder `<path>.partial`, ready to write into (the caller holds the Lock).
    With `resume`, one left by a killed run with the same kind and fingerprint is handed back
    as it is; another fingerprint is a one-line error (or, with --force, wiped). Without
    `resume` it is wiped. A file there, or a partial of another kind, is refused. Returns
    (folder, fresh): fresh when this call started it (nothing of an earlier run in it)."""
    path = Path(path)
    tmp = partial_path(path)
    check_replaceable(path, kind)
    if tmp.exists() or tmp.is_symlink():
        rec = read_marker(tmp, PARTIAL)
        if rec is None and resume and tmp.is_dir():  # left by an older datamates: nothing to compare
            log.warning("%s: partial output without a fingerprint (older datamates); resuming it unchecked", tmp)
        if not tmp.is_dir():
            raise OutputConflict(f"{tmp}: is a file, not a partial output folder; delete it yourself")
        if rec is not None and not _same_kind(held_kind(tmp, PARTIAL) or "", kind):
            raise OutputConflict(f"{tmp}: holds a partial {rec.get('kind')}, not a {kind}; delete it yourself")
        keep = resume
        if keep and fp is not None and rec is not None:
            diff = _first_difference(rec.get("fingerprint") or {}, fp)
            if diff is not None:
                if not force_enabled(force):
                    raise IncompatibleArtifacts(
                        f"{tmp}: the interrupted {kind or 'run'} was started from other inputs ({diff}); "
                        "re-run with --force to start over"
                    )
                log.warning("%s: starting over (--force): %s", tmp, diff)
                keep = False
        if not keep:
            shutil.rmtree(tmp)
        else:  # a killed writer's temporary files (atomic_write_bytes, score shards): we hold the lock, none is live
            for stale in tmp.rglob(".*.tmp-*"):
                with contextlib.suppress(OSError):
                    stale.unlink()
    fresh = not tmp.exists()
    tmp.mkdir(parents=True, exist_ok=True)
    if read_marker(tmp, PARTIAL) is None:
        atomic_write_json(tmp / PARTIAL, {"kind": kind, "fingerprint": fp, "code_version": code_version()})
    return tmp, fresh


def drop_fresh_partial(tmp: Path, fresh: bool) -> None:
    """After a user error (DatamatesError) in a partial this process started: remove it, so that
    the fixed command starts clean instead of meeting the bad input's fingerprint. A resumed
    partial holds earlier work and stays; a kill or Ctrl-C keeps any partial for the resume."""
    if fresh:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: str | Path, path: str | Path, kind: str | None = None) -> None:
    """Rename the finished scratch folder `tmp` to `path`, replacing only an artifact of the same
    kind (check_replaceable)."""
    tmp, path = Path(tmp), Path(path)
    check_replaceable(path, kind)
    if path.exists():
        old = path.with_name(path.name + f".old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | Path, meta: dict[str, Any] | None = None, *, resume: bool = False,
               kind: str | None = None, fingerprint: dict[str, str] | None = None,
               force: bool | None = None) -> Iterator[Path]:
    """Yield a scratch directory; on success write `meta.json` and `DONE` (kind, fingerprint,
    every file's size) into it and rename it to `path`. The output is locked for the duration
    (a second writer refuses with one line), and only an empty folder or an artifact of the same
    kind is ever replaced. With `resume=True` a scratch directory left by a killed run is handed
    back as it is if its fingerprint matches (begin_partial); otherwise it is wiped first. On an
    exception the scratch directory stays for a later resume, except after a user error
    (DatamatesError) in one this call started (drop_fresh_partial)."""
    path = Path(path)
    with Lock(path):
        tmp, fresh = begin_partial(path, kind, fingerprint, resume=resume, force=force)
        try:
            yield tmp
        except DatamatesError:
            drop_fresh_partial(tmp, fresh)
            raise
        if meta is not None:
            atomic_write_json(tmp / META, meta)
        write_done(tmp, kind, fingerprint)
        replace_dir(tmp, path, kind)


def fault_point(name: str) -> None:
    """Fault injection for the kill tests: DATAMATES_FAULT=<name> kills this process here
    (SIGKILL, as `kill -9` would)."""
    if os.environ.get("DATAMATES_FAULT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- produce


@dataclass(frozen=True)
class Output:
    """An artifact to make: where, what kind, and its identity (everything that decides its bytes:
    config sections, digests of its inputs; identity.py). `inputs` are the folders and files it is
    made from: an output at one of them is refused."""

    path: Path
    kind: str
    identity: dict[str, Any]
    inputs: tuple[str | Path, ...] = field(default=())


def finished(out: Output, *, force: bool | None = None) -> bool:
    """True when `out` is already made with this identity (produce would return it without building):
    lets a stage skip loading its inputs. Refuses as produce does (another kind, an input, other
    settings without --force)."""
    check_not_input(out.path, out.inputs)
    return reuse(out.path, out.kind, fingerprint(**out.identity), force=force)


def produce(out: Output, build: Callable[[Path], dict[str, Any] | None], *, resume: bool = False,
            force: bool | None = None) -> Path:
    """The one way an artifact comes to be. Finished with this identity: returned as it is (build
    does not run). Finished with another: IncompatibleArtifacts naming the first differing key
    (redone under --force). Another kind, a folder of the user's, or one of the inputs: refused.
    Otherwise, under the output's lock: open (or, with `resume`, resume) `<path>.partial`, call
    `build(tmp)`, write what it returns as meta.json (nothing when it returns None) with `seconds`,
    build's wall seconds in this call, when it is a stamped `meta_record` (a meta.json without a
    clock, the pool's, stays a function of the inputs: a resumed build is byte-identical), DONE
    (kind, fingerprint, file sizes) and rename into place."""
    path = Path(out.path)
    check_not_input(path, out.inputs)
    fp = fingerprint(**out.identity)
    with Lock(path):
        if reuse(path, out.kind, fp, force=force):
            log.info("%s already holds this %s; skipping", path, out.kind)
            return path
        tmp, fresh = begin_partial(path, out.kind, fp, resume=resume, force=force)
        t0 = time.perf_counter()
        try:
            meta = build(tmp)
        except DatamatesError:
            drop_fresh_partial(tmp, fresh)
            raise
        if meta is not None:
            if "created" in meta:  # a stamped record (meta_record); a clock-free meta (the pool's) stays byte-exact
                meta = {**meta, "seconds": round(time.perf_counter() - t0, 3)}
            atomic_write_json(tmp / META, meta)
        write_done(tmp, out.kind, fp)
        replace_dir(tmp, path, out.kind)
    return path
