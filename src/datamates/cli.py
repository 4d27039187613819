"""`datamates VERB ...`: argv -> one stage call. A user mistake (DatamatesError) becomes one line
on stderr and exit code 2; anything else is a bug and keeps its traceback.

Each verb lives in `datamates.commands.<module>` with `add_arguments(parser)` and `run(args)`;
modules import their heavy dependencies inside `run`, so `datamates --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        print(f"datamates {args.verb}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"datamates {args.verb}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    mod = sys.modules.get("torch.distributed")
    if mod is not None and mod.is_available() and mod.is_initialized():
        mod.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
