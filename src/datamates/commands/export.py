"""`datamates export`: a checkpoint as a plain Hugging Face folder (weights, config, tokenizer)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="datamates checkpoint")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from datamates.core.checkpoint import export_hf

    out = export_hf(args.checkpoint, args.out)
    print(f"exported: {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
