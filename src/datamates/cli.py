"""`datamates VERB ...`: argv -> one stage call. A user mistake becomes one line on stderr and
exit code 2: a DatamatesError, a bad flag (argparse's usage text is left out: `--help` has it), and
an operating-system refusal on a named path (a read-only or full output folder, a folder where a
file is expected). Ctrl-C is one line and exit code 130. Anything else is a bug and keeps its
traceback. docs/reliability.md lists every case and its test.

Each verb lives in `datamates.commands.<module>` with `add_arguments(parser)` and `run(args)`;
modules import their heavy dependencies inside `run`, so `datamates --help` is instant.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from datamates import __version__
from datamates.errors import DatamatesError

# verb -> (module, one-line help). The order is the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "pool": ("pool", "build or inspect a pool of tokenized training sequences"),
    "train": ("train", "train (or continue) the language model on sequences of a pool"),
    "export": ("export", "export a checkpoint as a plain Hugging Face model folder"),
    "evaluate": ("evaluate", "reference loss, perplexity and zero-shot tasks of a checkpoint"),
    "probe": ("probe", "oracle data influence: reference-loss change after one AdamW step per candidate"),
    "fit": ("fit", "fit the data influence model to probe labels"),
    "score": ("score", "predict the influence of every candidate sequence of a block"),
    "select": ("select", "keep a fraction of the candidates by Gumbel-top-k on their scores"),
    "score-with": ("score_with", "score candidates with a static baseline: dsir, semdedup, rater, classifier, perplexity"),
    "run": ("run", "the MATES loop end to end: probe -> fit -> score -> select -> train, per stage"),
    "report": ("report", "HTML / Markdown report comparing runs"),
    "partition": ("partition", "split a pool into units for data ablations"),
    "train-partitions": ("train_partitions", "continue pretraining one model per unit from a seed model"),
    "merge": ("merge", "average the parameters of unit models (a mixture's proxy)"),
    "ablate": ("ablate", "proxy (merged) vs gold (trained) perplexity for every mixture of units"),
    "config": ("config", "show a resolved config with every knob documented"),
}


def _load(verb: str):
    module, _ = COMMANDS[verb]
    return importlib.import_module(f"datamates.commands.{module}")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage text is what `--help` is for); exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


# errno of an OSError on a named path that the user can fix, and what to tell them
_OS_HINTS = {
    errno.EACCES: "choose a writable folder (--out / --run-dir) or fix its permissions",
    errno.EPERM: "choose a writable folder (--out / --run-dir) or fix its permissions",
    errno.EROFS: "the file system is read-only; write to another folder (--out / --run-dir)",
    errno.ENOSPC: "the disk is full; free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exhausted; free some space or write elsewhere",
    errno.EISDIR: "a folder was given where a file is expected",
    errno.ENOTDIR: "a file was given where a folder is expected",
    errno.ENAMETOOLONG: "the path is too long",
}


def _os_error_line(e: OSError) -> str | None:
    """One line for an OSError the user can fix (a named path and a known errno; a full disk also
    without a path: a write() names no file), else None."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and not (e.filename or e.filename2):
        return f"{e.strerror or os.strerror(e.errno)}; {_OS_HINTS[e.errno]}"
    if e.errno not in _OS_HINTS or not (e.filename or e.filename2):
        return None
    name = e.filename if e.filename is not None else e.filename2
    return f"{name}: {e.strerror or 'operating-system error'}; {_OS_HINTS[e.errno]}"


_DISK_FULL = ("No space left on device", "os error 28", "[Errno 28]", "Disk quota exceeded", "os error 122")


def _disk_full_line(e: BaseException) -> str | None:
    """One line for a full disk reported by a library that wraps the OSError (safetensors' Rust
    IoError, torch.save's "file write failed", pyarrow's IOError): found in the exception or the
    ones it was raised from."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return _os_error_line(e)
        text = str(e)
        if any(m in text for m in _DISK_FULL):
            code = errno.EDQUOT if "quota" in text.lower() or "os error 122" in text else errno.ENOSPC
            return f"{os.strerror(code)}; {_OS_HINTS[code]}"
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        seen += 1
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="datamates",
        description="Model-aware pretraining data selection (MATES) and data ablations by merging.",
    )
    parser.add_argument("--version", action="version", version=f"datamates {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_) in COMMANDS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        if only is None or verb == only:
            try:
                _load(verb).add_arguments(p)
            except ModuleNotFoundError:
                p.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=verb if verb in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        print(f"datamates {args.verb}: not available in this version", file=sys.stderr)
        return 2
    try:
        return int(_load(args.verb).run(args) or 0)
    except DatamatesError as e:
        _fresh_line()
        logging.getLogger("datamates").debug("error", exc_info=True)  # the traceback: log file, --verbose
        print(f"datamates {args.verb}: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        _fresh_line()
        print(f"datamates {args.verb}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # an OSError the user can fix, or a full disk under a library's own error type
        line = _os_error_line(e) if isinstance(e, OSError) else None
        line = line or _disk_full_line(e)
        if line is None:
            raise
        _fresh_line()
        logging.getLogger("datamates").debug("error", exc_info=True)
        print(f"datamates {args.verb}: error: {_one_line(line)}", file=sys.stderr)
        return 2
    finally:
        _shutdown_distributed()


def _one_line(msg: str) -> str:
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


def _fresh_line() -> None:
    """Clear unfinished progress bars so the error line does not land on one."""
    from datamates.log import close_progress_bars

    close_progress_bars()
    sys.stderr.flush()


def _shutdown_distributed() -> None:
    mod = sys.modules.get("torch.distributed")
    if mod is not None and mod.is_available() and mod.is_initialized():
        mod.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
