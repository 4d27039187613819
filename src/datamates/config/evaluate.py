"""Config of the evaluation stage (reference loss, perplexity, zero-shot tasks)."""

from __future__ import annotations

from dataclasses import dataclass

from datamates.config.base import knob


@dataclass(kw_only=True)
class EvalConfig:
    tasks: list[str] = knob(
        ["nine"],
        "multiple-choice tasks: shipped names (sciq, arc_easy, ...), spec files (.yaml), or the group "
        "'nine' (the MATES set); [] for none",
    )
    reference: list[str] = knob(
        ["lambada_openai"], "reference sets (loglikelihood specs): mean target-token loss, last-word accuracy"
    )
    heldout_pools: list[str] = knob(
        [], "pool directories whose perplexity / bits per byte is reported per domain (whole pools)"
    )
    heldout_max_sequences: int | None = knob(
        None, "evaluate at most this many sequences per held-out pool (a seeded random subsample)", ge=1
    )
    heldout_seed: int = knob(0, "seed of the held-out subsample")
    limit: int | None = knob(
        None, "evaluate only the first N examples of each task (lm-evaluation-harness --limit)", ge=1
    )
    num_fewshot: int | None = knob(
        None, "in-context examples per question; unset: each task file's own num_fewshot (0 if it names none)",
        ge=0)
    fewshot_seed: int = knob(1234, "seed that picks the few-shot examples (per example: seed, example index)")
    average_metric: str = knob(
        "spec", "metric of each task in the averages: 'spec' (the spec's `metric`), 'acc' or 'acc_norm'",
        choices=("spec", "acc", "acc_norm"),
    )
    batch_size: int = knob(32, "packed sequences (one per example) per forward pass", ge=1)
    max_tokens: int = knob(16384, "at most this many (padded) tokens per forward pass", ge=1)
    share_context: bool = knob(
        True, "score all choices of an example in one packed sequence (their shared prefix is computed once)"
    )
    precision: str = knob("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16",
                          choices=("auto", "fp32", "bf16"))
    allow_task_code: bool = knob(
        False, "let task files run their `!function` Python code (from the task file's folder, as "
        "lm-evaluation-harness does); off: such a task file is refused (docs/evaluation.md, trust model)")
    allow_any_task_path: bool = knob(
        False, "let task files read `include`s and data files anywhere; off: only below the task file's folder, "
        "the data bundle ($DATAMATES_DATA) and the shipped tasks")
    log_samples: bool = knob(False, "also write per-example log-likelihoods to samples/<task>.jsonl")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
