"""Every input a pool reads, turned into one stream of documents (docs/formats.md).

`discover_inputs` expands what the user named (`pool.inputs`) into a sorted list of `InputFile`s;
`iter_records` yields the documents of one of them, read by the `Reader` of its format (READERS,
one class per format: JsonLines, Parquet, SavedArrow, HubDataset, TokenBinary, DatatroveShard;
each also says what identifies its input and writes selected records back). What is accepted:

  text, one JSON object per line  .jsonl .ndjson, gzip (.jsonl.gz .json.gz: Dolma's layout),
                                  zstandard (.jsonl.zst .json.zst: DCLM's layout)
  Parquet                         .parquet (rows in file order)
  Hugging Face datasets           `hf:NAME[:CONFIG]:SPLIT`, streamed through `datasets.load_dataset(...,
                                  streaming=True)` (memory flat); a `save_to_disk` folder (its Arrow
                                  shards read batch by batch with pyarrow, memory-mapped)
  any fsspec URL                  `file://`, `s3://`, `gs://`, `hf://`, ... for the files above and
                                  folders of them (a `file://` URL is the local path it names)
  pre-tokenized                   a flat binary of token ids, documents separated by EOS (`.bin`:
                                  nanoGPT / Megatron-style; `pool.token_dtype`, `pool.token_eos_id`),
                                  and datatrove's DocumentTokenizer shards (`.ds` + `.ds.index`:
                                  little-endian tokens, uint64 document ends; the token size from
                                  `.ds.metadata` when present). Tokens are used as they are: the
                                  pool needs the tokenizer that made them (`pool.tokenizer.name_or_path`).

The document id is the record's `pool.id_field` (Dolma's `id`; most HF datasets have one). A record
without it, and every document of a token binary, gets `<name>:<n>`: `name` is the input's path
relative to the folder given, less its container suffix (`web/part.jsonl.zst` -> `web/part`), and
`n` the line / row / document number from 1; so the same documents as JSONL, .jsonl.zst, Parquet or
a `save_to_disk` folder of the same name get the same ids. Text documents are hashed into the pool
identity as (id, domain, text); pre-tokenized ones as (id, domain, tokens) (core/pool.py).
"""

from __future__ import annotations

import glob as globlib
import gzip
import io
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from datamates.config.core import PoolConfig
from datamates.core.jsonl import replace_invalid_unicode
from datamates.errors import InputError
from datamates.identity import FULL, hash_chunks, hash_file

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst", ".json.zst",
                  ".ndjson.zst")
TOKEN_SUFFIXES = (".bin", ".ds")
SUFFIXES = (*JSONL_SUFFIXES, ".parquet", *TOKEN_SUFFIXES)
ARROW_MARKERS = ("state.json", "dataset_info.json")  # what save_to_disk writes beside its .arrow shards


@dataclass
class InputFile:
    """One input: a local file, a file behind an fsspec URL, a save_to_disk folder, or an HF split."""

    path: Path | None  # local file or folder (None: remote / hub)
    rel: str  # name shown in ids and messages; relative to the folder given
    folder_domain: str
    file_domain: str
    kind: str = "jsonl"  # jsonl | parquet | arrow (save_to_disk) | hf | tokens (.bin) | datatrove (.ds)
    url: str | None = None  # fsspec URL or hf: spec when not local
    size: int = 0  # bytes (progress bar; 0 when unknown)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """`rel` less its container suffix: the stem of default document ids."""
        return strip_suffix(self.rel)

    @property
    def pretokenized(self) -> bool:
        return READERS[self.kind].pretokenized


def strip_suffix(name: str) -> str:
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _kind(name: str) -> str:
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".bin"):
        return "tokens"
    if name.endswith(".ds"):
        return "datatrove"
    return "jsonl"


def _is_arrow_dir(p: Path) -> bool:
    return p.is_dir() and all((p / m).is_file() for m in ARROW_MARKERS)


def _wanted(name: str) -> bool:
    return name.endswith(SUFFIXES) and not name.endswith(".ds.index")


def _local_size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.glob("*.arrow"))
    return p.stat().st_size


def discover_inputs(inputs: list[str]) -> list[InputFile]:
    """Expand files, folders (recursive), globs, fsspec URLs, save_to_disk folders and `hf:` specs
    into a sorted, de-duplicated list of inputs."""
    if not inputs:
        raise InputError("pool.inputs is empty: give files, folders or glob patterns of JSONL / Parquet")
    found: list[InputFile] = []
    for spec in inputs:
        spec = str(spec)
        if spec.startswith("hf:"):
            found.append(_hf_input(spec))
            continue
        if spec.startswith("file://"):
            spec = spec[len("file://"):]
        elif "://" in spec:
            found += _remote_inputs(spec)
            continue
        p = Path(spec)
        if _is_arrow_dir(p):
            found.append(InputFile(p, p.name, p.resolve().parent.name, p.name, kind="arrow", size=_local_size(p)))
        elif p.is_dir():
            arrow_dirs = sorted({d.parent for m in ARROW_MARKERS[:1] for d in p.rglob(m) if _is_arrow_dir(d.parent)})
            files = sorted(f for f in p.rglob("*") if f.is_file() and _wanted(f.name)
                           and not any(a in f.parents for a in arrow_dirs))
            if not files and not arrow_dirs:
                raise InputError(f"{spec}: no {', '.join(SUFFIXES)} files (or save_to_disk folders) in this folder")
            for f in sorted([*files, *arrow_dirs]):
                rel = f.relative_to(p)
                folder = rel.parts[0] if len(rel.parts) > 1 else p.resolve().name
                kind = "arrow" if f in arrow_dirs else _kind(f.name)
                found.append(InputFile(f, str(Path(p.name) / rel), folder, strip_suffix(f.name), kind=kind,
                                       size=_local_size(f)))
        elif p.is_file():
            if not _wanted(p.name):
                raise InputError(f"{spec}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
            found.append(InputFile(p, p.name, p.resolve().parent.name, strip_suffix(p.name), kind=_kind(p.name),
                                   size=p.stat().st_size))
        else:
            matches = sorted(m for m in globlib.glob(spec, recursive=True) if _wanted(m))
            if not matches:
                raise InputError(f"{spec}: no such file or folder, and no matching {', '.join(SUFFIXES)} files")
            root = _glob_root(spec)
            for m in matches:
                mp = Path(m)
                try:  # named relative to the folder the pattern starts in (as a folder input is)
                    rel = str(Path(root.resolve().name) / mp.resolve().relative_to(root.resolve()))
                except ValueError:
                    rel = m
                found.append(InputFile(mp, rel, mp.resolve().parent.name, strip_suffix(mp.name), kind=_kind(m),
                                       size=mp.stat().st_size))
    seen: set[str] = set()
    unique = []
    for f in found:
        key = str(f.path.resolve()) if f.path is not None else str(f.url)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed = [q for q in itertools.takewhile(lambda q: not any(c in q for c in "*?["), parts)]
    root = Path(*fixed) if fixed else Path(".")
    return root if len(fixed) < len(parts) else root.parent


# ----------------------------------------------------------------------------- fsspec and the hub


def url_fs(url: str):
    """(filesystem, path) of an fsspec URL; a missing backend or fsspec itself is one line."""
    scheme = url.split("://", 1)[0]
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{url}: reading URLs needs fsspec (pip install 'datamates[io]')") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                "hf": "huggingface_hub"}.get(scheme)
        msg = str(e).splitlines()[0][:150] if str(e) else type(e).__name__
        raise InputError(f"{url}: no fsspec filesystem for '{scheme}://' is installed"
                         f"{f' (pip install {hint})' if hint else ''}; {msg}") from None


def _remote_inputs(url: str) -> list[InputFile]:
    fs, path = url_fs(url)
    scheme = url.split("://", 1)[0]
    try:
        if fs.isdir(path):
            names = sorted(n for n in fs.find(path) if _wanted(n))
            if not names:
                raise InputError(f"{url}: no {', '.join(SUFFIXES)} files in this folder")
            base = path.rstrip("/")
            top = base.rsplit("/", 1)[-1]
            out = []
            for n in names:
                rel = n[len(base):].lstrip("/")
                parts = rel.split("/")
                folder = parts[0] if len(parts) > 1 else top
                out.append(InputFile(None, f"{top}/{rel}", folder, strip_suffix(parts[-1]), kind=_kind(n),
                                     url=f"{scheme}://{n}", size=int(fs.size(n) or 0), extra={"fs": fs, "fs_path": n}))
            return out
        if not fs.exists(path):
            raise InputError(f"{url}: no such file or folder")
    except InputError:
        raise
    except Exception as e:  # network, credentials: the backend's own exception types
        raise InputError(f"{url}: cannot list ({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if not _wanted(name):
        raise InputError(f"{url}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
    parent = path.rstrip("/").rsplit("/", 2)[-2] if "/" in path.strip("/") else name
    return [InputFile(None, name, parent, strip_suffix(name), kind=_kind(name), url=url,
                      size=int(fs.size(path) or 0), extra={"fs": fs, "fs_path": path})]


def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    parts = spec[3:].split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1] or None, parts[2]
    raise InputError(f"{spec}: a Hugging Face dataset is hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")


def _hf_input(spec: str) -> InputFile:
    name, config, split = _parse_hf(spec)
    if not name or not split:
        raise InputError(f"{spec}: a Hugging Face dataset is hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    ds = _load_hf(spec)  # resolve now: a name that does not resolve is refused before anything is written
    rel = spec[3:].replace("/", "__").replace(":", "__")
    return InputFile(None, rel, name.rsplit("/", 1)[-1], rel, kind="hf", url=spec, extra={"dataset": ds})


def _load_hf(spec: str):
    name, config, split = _parse_hf(spec)
    try:
        import datasets
    except ImportError:
        raise InputError(f"{spec}: Hugging Face datasets need the `datasets` package (pip install 'datamates[io]')") from None
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # datasets raises many types (DatasetNotFoundError, ConnectionError, ValueError)
        if offline:  # streaming reads the hub; a dataset downloaded before is in the local cache
            try:
                return datasets.load_dataset(name, config, split=split)  # memory-mapped Arrow
            except Exception:
                pass
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise InputError(f"{spec}: the dataset does not resolve{' offline' if offline else ''} ({type(e).__name__}: "
                         f"{msg}); download it first (or unset HF_DATASETS_OFFLINE), or give a save_to_disk "
                         "folder or data files") from None


# ----------------------------------------------------------------------------- records


@dataclass
class Record:
    line: int
    text: str
    id: str
    domain: str
    tokens: np.ndarray | None = None  # pre-tokenized documents: their token ids (no EOS)


def _get(record: dict, dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _domain(f: InputFile, cfg: PoolConfig, obj: dict | None, counters: dict[str, int]) -> str:
    if cfg.domain_from == "field":
        if not cfg.domain_field:
            raise InputError("pool.domain_from = 'field' needs pool.domain_field")
        d = _get(obj, cfg.domain_field) if obj is not None else None
        if d is None:
            counters["missing_domain"] += 1
            return "unknown"
        return str(d)
    if cfg.domain_from == "folder":
        return f.folder_domain
    if cfg.domain_from == "file":
        return f.file_domain
    return "default"


def iter_records(f: InputFile, cfg: PoolConfig, counters: dict[str, int]) -> Iterator[Record]:
    """Documents of one input. Bad JSON, a missing text field or a non-string text raise InputError
    naming file and line; empty texts and undecodable lines are skipped and counted."""
    if f.pretokenized:
        for n, toks in reader(f).documents(f, cfg):
            if len(toks) == 0:
                counters["skipped_empty"] += 1
                continue
            yield Record(n, "", f"{f.name}:{n}", _domain(f, cfg, None, counters), toks)
        return
    for line_no, obj in raw_records(f, counters):
        if not isinstance(obj, dict):
            raise InputError(f"{f.rel}:{line_no}: expected a JSON object, got {type(obj).__name__}")
        text = _get(obj, cfg.text_field)
        if text is None:
            raise InputError(
                f"{f.rel}:{line_no}: no field '{cfg.text_field}' (set pool.text_field to the text field's name)"
            )
        if not isinstance(text, str):
            raise InputError(f"{f.rel}:{line_no}: field '{cfg.text_field}' is {type(text).__name__}, not text")
        text, bad = replace_invalid_unicode(text)
        if not text.strip():
            counters["skipped_empty"] += 1
            continue
        rid = _get(obj, cfg.id_field) if cfg.id_field else None
        doc_id, bad_id = replace_invalid_unicode(str(rid) if rid is not None else f"{f.name}:{line_no}")
        if bad or bad_id:
            counters["replaced_invalid_unicode"] = counters.get("replaced_invalid_unicode", 0) + bad + bad_id
        yield Record(line_no, text, doc_id, _domain(f, cfg, obj, counters))


def open_binary(f: InputFile) -> BinaryIO:
    if f.path is not None:
        return open(f.path, "rb")
    return f.extra["fs"].open(f.extra["fs_path"], "rb")


def _decompressed(f: InputFile, raw: BinaryIO) -> BinaryIO:
    name = f.rel
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{f.rel}: reading .zst needs the zstandard package (pip install 'datamates[io]')") from None
        return io.BufferedReader(_ZstdFrames(raw, zstandard, f.rel))
    return raw


class Truncated(InputError):
    """A compressed container that ends before its last frame / member does."""


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstandard frame of `raw`, read to the verified end: each frame
    through zstandard's own `decompressobj` (its `eof` says the frame's end mark was read), a new one
    for each following frame; input that ends inside a frame is `Truncated` (zstandard's own stream
    reader returns what it has and stops silently). Skippable frames decode to nothing."""

    CHUNK = 1 << 17

    def __init__(self, raw: BinaryIO, zstandard: Any, rel: str) -> None:
        super().__init__()
        self._raw, self._z, self._rel = raw, zstandard, rel
        self._dobj = None  # the frame being decoded
        self._pending = b""  # compressed bytes not yet given to a frame
        self._out = b""
        self._pos = 0  # bytes of _out already read
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while self._pos == len(self._out) and not self._done:
            if not self._pending:
                self._pending = self._raw.read(self.CHUNK)
                if not self._pending:
                    if self._dobj is not None and not self._dobj.eof:
                        raise Truncated(f"{self._rel}: truncated zstandard file (its last frame ends before its end "
                                        "mark); the file was cut short: copy or download it again")
                    self._done = True
                    return
            if self._dobj is None:
                self._dobj = self._z.ZstdDecompressor().decompressobj()
            data, self._pending = self._pending, b""
            self._out, self._pos = self._dobj.decompress(data), 0
            if self._dobj.eof:  # the frame ended: what follows is the next frame
                self._pending = self._dobj.unused_data
                self._dobj = None

    def readinto(self, b) -> int:  # type: ignore[override]
        self._fill()
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = memoryview(self._out)[self._pos : self._pos + n]
        self._pos += n
        return n


def arrow_files(folder: Path) -> list[Path]:
    """The Arrow shards of a `save_to_disk` folder, in order (its state.json `_data_files`)."""
    try:
        state = json.loads((folder / "state.json").read_text())
        files = [folder / d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder / 'state.json'}: not a datasets save_to_disk state file ({type(e).__name__})") from None
    if state.get("_indices_data_files"):
        raise InputError(f"{folder}: the dataset has an indices mapping; save it with save_to_disk after "
                         "flatten_indices()")
    return files


def _read_all(f: InputFile) -> bytes:
    with open_binary(f) as fh:
        return fh.read()


def _ds_metadata(f: InputFile) -> int | None:
    """Token size (bytes) from datatrove's `<shard>.ds.metadata` ('tokenizer|size' first line)."""
    if f.path is None:
        return None
    m = f.path.with_name(f.path.name + ".metadata")
    if not m.is_file():
        return None
    first = m.read_text().splitlines()[0] if m.read_text() else ""
    try:
        return int(first.rsplit("|", 1)[1])
    except (IndexError, ValueError):
        return None


BLOCK = 1 << 24  # tokens read at a time from a flat token binary


# ----------------------------------------------------------------------------- readers
#
# One reader per input format (datatrove's readers/ are the model): its records, what identifies
# it before it is read, and the selected records written back in its format. InputFile.kind names
# the reader (READERS); the functions below the classes dispatch to it.


class Reader:
    """A format's records (`rows`: text formats; `documents`: token formats), its identity and its
    selected-records writer. The base identity is a file's relative name, size and content hash
    (a remote file's: the filesystem's checksum)."""

    kind = ""
    pretokenized = False
    selected_suffix = ""  # appended to `rel` for the written selection (a folder or a hub split: .jsonl.gz)

    def rows(self, f: InputFile, counters: dict[str, int]) -> Iterator[tuple[int, Any]]:
        """(line / row number from 1, record) of a text input."""
        raise NotImplementedError(self.kind)

    def documents(self, f: InputFile, cfg: PoolConfig) -> Iterator[tuple[int, np.ndarray]]:
        """(document number from 1, token ids without EOS) of a token input."""
        raise NotImplementedError(self.kind)

    def identity(self, f: InputFile) -> dict[str, Any]:
        if f.path is not None:
            return {"rel": f.rel, "bytes": f.size, "sha256": hash_file(f.path)}
        fs = f.extra["fs"]
        try:
            check = fs.checksum(f.extra["fs_path"])
        except Exception:
            check = None
        return {"rel": f.rel, "bytes": f.size, "checksum": str(check)}

    def write_selected(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> None:
        raise NotImplementedError(self.kind)


class JsonLines(Reader):
    """JSON lines, plain, gzip or zstandard (byte-checked: a truncated or corrupt container is one line)."""

    kind = "jsonl"

    def rows(self, f: InputFile, counters: dict[str, int]) -> Iterator[tuple[int, Any]]:
        try:
            import zstandard
            zerr: tuple[type[BaseException], ...] = (zstandard.ZstdError,)
        except ImportError:
            zerr = ()
        try:
            with open_binary(f) as raw, _decompressed(f, raw) as fh:
                for line_no, line_bytes in enumerate(fh, start=1):
                    if not line_bytes.strip():
                        counters["blank_lines"] += 1
                        continue
                    try:
                        line = line_bytes.decode("utf-8")
                    except UnicodeDecodeError:
                        counters["skipped_undecodable"] += 1
                        continue
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{f.rel}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
        except zerr as e:
            raise InputError(f"{f.rel}: not a zstandard file, or a corrupt one ({str(e)[:120]}); give a .zst made by "
                             "zstd, or rename the file to its real format") from None
        except (OSError, EOFError) as e:
            if isinstance(e, gzip.BadGzipFile) or "gzip" in str(e).lower() or isinstance(e, EOFError):
                raise InputError(f"{f.rel}: corrupt or truncated gzip file ({e})") from None
            raise

    def write_selected(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> None:
        """The selected lines byte for byte, recompressed as the input was."""
        with open_binary(f) as raw, _decompressed(f, raw) as fin, _compressed_writer(dst) as fout:
            for line_no, line in enumerate(fin, start=1):
                if line_no in rows:
                    fout.write(line if line.endswith(b"\n") else line + b"\n")


class Parquet(Reader):
    kind = "parquet"

    def rows(self, f: InputFile, counters: dict[str, int]) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        # pyarrow reads the footer first (its length and magic at the end of the file): a truncated file
        # fails here, before any row; a corrupt page fails where it is read
        try:
            pf = pq.ParquetFile(f.path if f.path is not None else open_binary(f))
        except Exception as e:
            raise InputError(f"{f.rel}: not a readable Parquet file: truncated, or not Parquet ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:150] if str(e) else ''})") from None
        row = 0
        batches = pf.iter_batches(batch_size=4096)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as e:
                raise InputError(f"{f.rel}: a corrupt or truncated Parquet file: reading after row {row} failed "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
            for rec in batch.to_pylist():
                row += 1
                yield row, rec

    def write_selected(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> None:
        """The selected rows with the input's schema."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(f.path if f.path is not None else open_binary(f))
        pq.write_table(table.take(pa.array(np.array(sorted(rows), dtype=np.int64) - 1)), dst)


class _RecordsOut(Reader):
    """A format written back as gzipped JSON lines of its records (`<rel>.jsonl.gz`)."""

    selected_suffix = ".jsonl.gz"

    def write_selected(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> None:
        counters: dict[str, int] = {"blank_lines": 0, "skipped_undecodable": 0}
        with gzip.open(dst, "wt", encoding="utf-8") as fout:
            for n, rec in self.rows(f, counters):
                if n in rows:
                    fout.write(json.dumps(rec, default=str) + "\n")


class SavedArrow(_RecordsOut):
    """A `datasets` save_to_disk folder: its Arrow shards in state.json order."""

    kind = "arrow"

    def rows(self, f: InputFile, counters: dict[str, int]) -> Iterator[tuple[int, Any]]:
        import pyarrow as pa

        assert f.path is not None
        row = 0
        for shard in arrow_files(f.path):
            try:
                with pa.memory_map(str(shard), "r") as src:
                    reader = pa.ipc.open_stream(src)
                    for batch in reader:
                        for rec in batch.to_pylist():
                            row += 1
                            yield row, rec
            except (OSError, pa.ArrowInvalid) as e:
                raise InputError(f"{shard}: not a readable Arrow shard of a save_to_disk folder ({e})") from None

    def identity(self, f: InputFile) -> dict[str, Any]:
        if f.path is None:
            return super().identity(f)
        return {"rel": f.rel, "bytes": f.size,
                "sha256": hash_chunks((hash_file(s).encode() for s in arrow_files(f.path)), digits=FULL)}


class HubDataset(_RecordsOut):
    """A Hugging Face hub split (`hf:` spec), identified by its spec."""

    kind = "hf"

    def rows(self, f: InputFile, counters: dict[str, int]) -> Iterator[tuple[int, Any]]:
        ds = f.extra.get("dataset") or _load_hf(str(f.url))
        try:
            yield from enumerate(ds, start=1)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{f.url}: reading the dataset failed ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:150] if str(e) else ''})") from None

    def identity(self, f: InputFile) -> dict[str, Any]:
        return {"rel": f.rel, "spec": f.url}


class TokenBinary(Reader):
    """A flat token binary (`.bin`): documents separated by `cfg.token_eos_id` (set by the pool build
    from the tokenizer's EOS when null), scanned in blocks of BLOCK tokens (memory O(block + longest
    document), whatever the file size)."""

    kind = "tokens"
    pretokenized = True

    def dtype(self, f: InputFile, cfg: PoolConfig, vocab_size: int | None) -> np.dtype:
        if cfg.token_dtype != "auto":
            return np.dtype(cfg.token_dtype).newbyteorder("<")
        return np.dtype("<u2" if (vocab_size or 0) <= 65536 else "<u4")

    def tokens(self, f: InputFile, cfg: PoolConfig) -> np.ndarray:
        """All the file's tokens (memory-mapped when local), checked against the dtype and vocabulary."""
        dtype = self.dtype(f, cfg, f.extra.get("vocab_size"))
        nbytes = f.path.stat().st_size if f.path is not None else None
        if nbytes is not None and nbytes % dtype.itemsize:
            raise InputError(f"{f.rel}: {nbytes:,} bytes is not a multiple of the token size {dtype.itemsize} "
                             f"({dtype.name}); set pool.token_dtype to the dtype the file was written with")
        if f.path is not None:  # memory-mapped: memory stays flat whatever the file size
            toks = np.memmap(f.path, dtype=dtype, mode="r") if nbytes else np.zeros(0, dtype)
        else:
            data = _read_all(f)
            if len(data) % dtype.itemsize:
                raise InputError(f"{f.rel}: {len(data):,} bytes is not a multiple of the token size {dtype.itemsize} "
                                 f"({dtype.name}); set pool.token_dtype to the dtype the file was written with")
            toks = np.frombuffer(data, dtype=dtype)
        vocab = f.extra.get("vocab_size")
        if vocab is not None and len(toks) and int(toks.max()) >= vocab:  # streams over the memory map
            raise InputError(f"{f.rel}: token id {int(toks.max())} is not in the tokenizer's vocabulary ({vocab}); "
                             "set pool.tokenizer.name_or_path to the tokenizer that made the file, or pool.token_dtype")
        return toks

    def documents(self, f: InputFile, cfg: PoolConfig) -> Iterator[tuple[int, np.ndarray]]:
        toks = self.tokens(f, cfg)
        eos = cfg.token_eos_id
        if eos is None:
            raise InputError(f"{f.rel}: a token binary needs pool.token_eos_id (the separator), or a tokenizer with "
                             f"pool.tokenizer.eos_token")
        # scanned in blocks of BLOCK tokens (memory O(block + longest document), whatever the file size)
        n = 0
        carry = np.zeros(0, dtype=np.int64)
        for lo in range(0, len(toks), BLOCK):
            block = np.asarray(toks[lo : lo + BLOCK], dtype=np.int64)
            cuts = np.nonzero(block == eos)[0]
            start = 0
            for c in cuts.tolist():
                doc = np.concatenate([carry, block[start:c]]) if len(carry) else block[start:c]
                carry = np.zeros(0, dtype=np.int64)
                n += 1
                yield n, doc
                start = c + 1
            carry = np.concatenate([carry, block[start:]])
        if len(carry):  # a last document without a closing EOS
            n += 1
            yield n, carry

    def write_selected(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> None:
        """The selected documents as an EOS-separated binary of the input's dtype."""
        self._write_documents(f, rows, dst, cfg)

    def _write_documents(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> list[int]:
        f.extra["vocab_size"] = None
        dtype = self.dtype(f, cfg, None)
        ends, total = [], 0
        with open(dst, "wb") as fout:
            for n, toks in self.documents(f, cfg):
                if n in rows:
                    doc = np.append(toks, cfg.token_eos_id).astype(dtype)
                    fout.write(doc.tobytes())
                    total += len(doc)
                    ends.append(total)
        return ends


class DatatroveShard(TokenBinary):
    """A datatrove DocumentTokenizer shard (`.ds`): document ends in `.ds.index` (datatrove appends
    EOS inside each document; a trailing EOS is dropped here, the pool appends its own), the token
    size in `.ds.metadata`."""

    kind = "datatrove"

    def dtype(self, f: InputFile, cfg: PoolConfig, vocab_size: int | None) -> np.dtype:
        meta = _ds_metadata(f)
        if meta is not None:
            return np.dtype("<u4" if meta == 4 else "<u2")
        return super().dtype(f, cfg, vocab_size)

    def documents(self, f: InputFile, cfg: PoolConfig) -> Iterator[tuple[int, np.ndarray]]:
        toks = self.tokens(f, cfg)
        eos = cfg.token_eos_id
        idx = Path(str(f.path) + ".index") if f.path is not None else None
        if idx is None or not idx.is_file():
            raise InputError(f"{f.rel}: no {f.rel}.index beside it (datatrove's DocumentTokenizer writes one; "
                             "save_index=True)")
        raw = idx.read_bytes()
        if len(raw) % 8:
            raise InputError(f"{idx}: {len(raw)} bytes is not a multiple of 8 (uint64 document ends)")
        ends = np.frombuffer(raw, dtype="<u8").astype(np.int64)
        if len(ends) and (ends[-1] != len(toks) or (np.diff(ends) < 0).any()):
            raise InputError(f"{idx}: document ends do not match {f.rel} ({len(toks)} tokens, last end "
                             f"{int(ends[-1])}); the index belongs to another shard")
        start = 0
        for n, end in enumerate(ends.tolist(), start=1):
            doc = np.asarray(toks[start:end], dtype=np.int64)
            if eos is not None and len(doc) and doc[-1] == eos:
                doc = doc[:-1]
            yield n, doc
            start = end

    def identity(self, f: InputFile) -> dict[str, Any]:
        ident = super().identity(f)
        if f.path is not None:
            idx = Path(str(f.path) + ".index")
            if not idx.is_file():
                raise InputError(f"{f.rel}: no {f.rel}.index beside it (datatrove's DocumentTokenizer writes one; "
                                 "save_index=True)")
            ident["index_sha256"] = hash_file(idx)
        return ident

    def write_selected(self, f: InputFile, rows: set[int], dst: Path, cfg: PoolConfig) -> None:
        """The selected documents, and their .ds.index."""
        ends = self._write_documents(f, rows, dst, cfg)
        Path(f"{dst}.index").write_bytes(np.asarray(ends, dtype="<u8").tobytes())


READERS: dict[str, Reader] = {r.kind: r for r in (JsonLines(), Parquet(), SavedArrow(), HubDataset(), TokenBinary(),
                                                  DatatroveShard())}


def reader(f: InputFile) -> Reader:
    return READERS[f.kind]


def raw_records(f: InputFile, counters: dict[str, int]) -> Iterator[tuple[int, Any]]:
    """(line / row number from 1, record) of a text input."""
    return reader(f).rows(f, counters)


# ----------------------------------------------------------------------------- identity


def source_identity(f: InputFile) -> dict[str, Any]:
    """What identifies an input before it is read (the build's resume / reuse check): its name
    relative to the given folder, size and content hash for files (not where they lie), the spec
    for a hub dataset. The pool's own identity hashes the documents (core/pool.py)."""
    return reader(f).identity(f)


def describe(f: InputFile) -> dict[str, Any]:
    """The input as recorded in the pool's meta.json: where it was read from, and its kind."""
    return {"path": str(f.path) if f.path is not None else None, "url": f.url, "kind": f.kind}


# ----------------------------------------------------------------------------- documents out


def reopen(entry: dict[str, Any], cfg: PoolConfig) -> InputFile:
    """The InputFile a pool's meta.json `inputs` entry describes (to read its documents again)."""
    path = Path(entry["path"]) if entry.get("path") else None
    kind = entry.get("kind") or _kind(entry["rel"])
    f = InputFile(path, entry["rel"], "", "", kind=kind, url=entry.get("url"))
    if path is None and kind != "hf":
        fs, fs_path = url_fs(str(entry["url"]))
        f.extra.update(fs=fs, fs_path=fs_path)
    elif path is not None and not path.exists():
        raise InputError(f"{path}: input of the pool is gone; cannot write the selected documents")
    return f


def _compressed_writer(dst: Path):
    if dst.name.endswith(".gz"):
        return gzip.open(dst, "wb")
    if dst.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(open(dst, "wb"), closefd=True)
    return open(dst, "wb")


def write_selected(entry: dict[str, Any], rows: set[int], out: Path, cfg: PoolConfig) -> Path:
    """The records `rows` (line / row / document numbers from 1) of one input, in its format, under
    `out/<rel>`: JSON lines copied byte for byte (recompressed as the input was: gzip, zstandard),
    Parquet rows with the input schema, token documents as an EOS-separated binary (a datatrove
    shard also gets its .ds.index). A save_to_disk folder or a hub dataset gives `<rel>.jsonl.gz`
    of its records. Returns the file written."""
    f = reopen(entry, cfg)
    r = reader(f)
    dst = out / f"{f.rel}{r.selected_suffix}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    r.write_selected(f, rows, dst, cfg)
    return dst


__all__ = ["InputFile", "Record", "SUFFIXES", "arrow_files", "describe", "discover_inputs", "iter_records",
           "raw_records", "reopen", "source_identity", "strip_suffix", "url_fs", "write_selected"]
