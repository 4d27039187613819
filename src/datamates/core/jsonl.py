"""Reading small JSONL / JSONL.gz files (reference sets, task data) with one-line errors, and the one
rule for text that is not valid Unicode (`replace_invalid_unicode`)."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamates.errors import InputError

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_invalid_unicode(value: Any) -> tuple[Any, int]:
    """(value, n): every lone surrogate code point (a JSON escape such as `\\ud800` with no partner;
    valid pairs are already one character after `json.loads`) in the strings of `value` (a str, or
    the dicts and lists of a JSON record, keys included) replaced by U+FFFD, and how many. The one
    rule for invalid Unicode, applied where records are read: the pool build (text and id; the count
    is `replaced_invalid_unicode` in the pool's meta.json) and evaluation (task data). Bytes that
    are not UTF-8 at all are a different case: the pool skips and counts such lines
    (`skipped_undecodable`)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value, 0
        except UnicodeEncodeError:
            return _SURROGATE.subn(REPLACEMENT, value)
    if isinstance(value, dict):
        n = 0
        out = {}
        for k, v in value.items():
            k, a = replace_invalid_unicode(k)
            v, b = replace_invalid_unicode(v)
            out[k] = v
            n += a + b
        return (out, n) if n else (value, 0)
    if isinstance(value, list):
        items = [replace_invalid_unicode(v) for v in value]
        n = sum(b for _, b in items)
        return ([v for v, _ in items], n) if n else (value, 0)
    return value, 0


def iter_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, Any]]:
    """(line number, record) of every non-blank line; a bad line is an InputError naming file:line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
