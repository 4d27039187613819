"""Reading small JSONL / JSONL.gz files (reference sets, task data) with one-line errors."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamates.errors import InputError


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
