"""Config of the evaluation stage (reference loss, perplexity, zero-shot tasks)."""

from __future__ import annotations

from dataclasses import dataclass

from datamates.config.base import knob


@dataclass(kw_only=True)
class EvalConfig:
    tasks: list[str] = knob(
        ["nine"], "task names, spec files, or the group 'nine' (the MATES set); [] for none"
    )
    reference: list[str] = knob(["lambada_openai"], "reference sets: target-token loss and accuracy")
    heldout_pools: list[str] = knob([], "pool directories whose held-out perplexity / bpb is reported")
    limit: int | None = knob(None, "evaluate at most this many examples per task (a fixed subsample)", ge=1)
    num_fewshot: int = knob(0, "in-context examples per question", ge=0)
    fewshot_seed: int = knob(1234, "seed that picks the few-shot examples")
    batch_size: int = knob(32, "sequences per forward pass", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
