"""The stage end to end: `datamates evaluate --tasks nine`, eval.json / eval.md, resume, held-out pools."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from datamates.cli import main
from datamates.config.evaluate import EvalConfig
from datamates.evaluate import evaluate, evaluate_pool
from datamates.evaluate.spec import TASK_GROUPS


@pytest.fixture(scope="module")
def nine_run(tiny_ckpt, tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("nine") / "eval"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", "--checkpoint", str(tiny_ckpt), "--tasks", "nine", "--limit", "6", "--out",
                     str(out), "--log-samples"])
    return code, out, printed.getvalue()


def test_nine_tasks_print_acc_acc_norm_and_stderr(nine_run):
    code, out, md = nine_run
    assert code == 0
    assert md.startswith((out / "eval.md").read_text())  # what is printed is eval.md
    for name in TASK_GROUPS["nine"]:
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        # | task | split | n | acc ± se | acc_norm ± se | gold logprob ± se | gold prob ± se | in mean |
        assert re.search(r"\| \d\.\d{4} ± \d\.\d{4} \| \d\.\d{4} ± \d\.\d{4} \| -\d+\.\d{4} ± \d\.\d{4} \| "
                         r"\d\.\d{4} ± \d\.\d{4} \| acc(_norm)? \|$", row), row
    assert re.search(r"\| lambada_openai \| test \| 6 \| \d+\.\d{4} \| \d\.\d{4} ± \d\.\d{4} \| [\d.]+ \|", md)
    assert "**nine-task mean**" in md
    res = json.loads((out / "eval.json").read_text())
    assert list(res["tasks"]) == TASK_GROUPS["nine"]
    for t in res["tasks"].values():
        assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "metric", "split"} <= set(t)
        assert t["n"] == 6
    mean = res["nine_task_mean"]
    assert mean["metrics"]["hellaswag"] == "acc_norm" and mean["metrics"]["boolq"] == "acc"
    vals = [res["tasks"][n][m] for n, m in mean["metrics"].items()]
    assert mean["value"] == pytest.approx(np.mean(vals))
    ses = [res["tasks"][n][f"{m}_stderr"] for n, m in mean["metrics"].items()]
    assert mean["stderr"] == pytest.approx(math.sqrt(sum(s * s for s in ses)) / 9)
    for key, metric in (("nine_task_gold_logprob", "gold_logprob"), ("nine_task_gold_prob", "gold_prob")):
        assert res[key]["value"] == pytest.approx(np.mean([res["tasks"][n][metric] for n in TASK_GROUPS["nine"]]))
        assert res[key]["n_tasks"] == 9
    assert res["nine_task_gold_logprob"]["value"] < 0 and 0 < res["nine_task_gold_prob"]["value"] < 1
    ref = res["reference"]["lambada_openai"]
    rows = [json.loads(line) for line in (out / "samples" / "lambada_openai.jsonl").read_text().splitlines()]
    nll = [-r["ll"] for r in rows]
    assert ref["n"] == 6 == len(rows)
    assert ref["loss"] == pytest.approx(sum(nll) / sum(r["n_tokens"] for r in rows))  # nats per target token
    assert ref["ppl"] == pytest.approx(math.exp(np.mean(nll)))  # lm-eval: exp(mean per-example NLL)
    # per-example log-likelihoods agree with the accuracies
    for name in TASK_GROUPS["nine"]:
        rows = [json.loads(line) for line in (out / "samples" / f"{name}.jsonl").read_text().splitlines()]
        assert np.mean([float(np.argmax(r["lls"]) == r["gold"]) for r in rows]) == res["tasks"][name]["acc"]
    assert (out / "DONE").exists() and json.loads((out / "meta.json").read_text())["produced_by"] == "evaluate"


def test_finished_evaluation_is_reused_and_a_killed_one_resumes(nine_run, tiny_ckpt, tmp_path):
    _, out, _ = nine_run
    cfg = EvalConfig(tasks=["nine"], limit=6, log_samples=True)
    before = (out / "eval.json").read_text()
    assert evaluate(cfg, tiny_ckpt, out) == json.loads(before)  # same request: read back, not recomputed
    # a killed run left two finished tasks in <out>.partial: they are reused, the rest computed
    cfg2 = EvalConfig(tasks=["sciq", "piqa"], reference=[], limit=3)
    part = tmp_path / "ev.partial" / "tasks"
    full = evaluate(cfg2, tiny_ckpt, None)
    key_run = evaluate(cfg2, tiny_ckpt, tmp_path / "ev")
    assert key_run["tasks"]["sciq"]["acc"] == full["tasks"]["sciq"]["acc"]
    from datamates.run_dir import read_json

    meta = read_json(tmp_path / "ev" / "meta.json")
    import shutil

    shutil.copytree(tmp_path / "ev", tmp_path / "ev.partial")
    (tmp_path / "ev.partial" / "DONE").unlink()
    shutil.rmtree(tmp_path / "ev")
    doctored = read_json(part / "sciq.json")
    doctored["result"]["acc"] = 0.123  # proves the stored result is used
    (part / "sciq.json").write_text(json.dumps(doctored))
    again = evaluate(cfg2, tiny_ckpt, tmp_path / "ev")
    assert again["tasks"]["sciq"]["acc"] == 0.123
    assert again["tasks"]["piqa"]["acc"] == full["tasks"]["piqa"]["acc"]
    assert meta["request_hash"] == read_json(tmp_path / "ev" / "meta.json")["request_hash"]


def test_heldout_pool_perplexity_and_bpb(tiny_ckpt, tiny_model, tiny_pool):
    """Per domain: ppl = exp(NLL / predicted tokens), bpb = NLL / ln2 / (bytes * (T-1)/T), against a
    naive loop over sequences."""
    import torch
    import torch.nn.functional as F

    ids = np.arange(1, len(tiny_pool), 2)[:20]  # odd ids: never trained on
    res = evaluate_pool(tiny_model, tiny_pool, ids, batch_size=7)
    T = tiny_pool.seq_len
    per = {}
    for i in ids:
        x = torch.as_tensor(tiny_pool.tokens([i]))
        with torch.no_grad():
            nll = F.cross_entropy(tiny_model(input_ids=x).logits[0, :-1].double(), x[0, 1:], reduction="sum").item()
        d = tiny_pool.domains[int(tiny_pool.seq_domain[i])]
        a = per.setdefault(d, [0.0, 0, 0.0])
        a[0] += nll
        a[1] += T - 1
        a[2] += float(tiny_pool.seq_bytes[i]) * (T - 1) / T
    assert set(res["domains"]) == set(per)
    for d, (nll, ntok, nbytes) in per.items():
        r = res["domains"][d]
        assert r["n_tokens"] == ntok
        assert r["ppl"] == pytest.approx(math.exp(nll / ntok), rel=1e-4)
        assert r["bpb"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-4)
    assert res["all"]["n_sequences"] == 20


def test_cli_heldout_and_fewshot(tiny_ckpt, tiny_pool, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(i) for i in range(1, 41, 2)))
    code = main(["evaluate", "--checkpoint", str(tiny_ckpt), "--tasks", "arc_easy", "--reference",
                 "--num-fewshot", "2", "--limit", "3", "--heldout", f"{tiny_pool.path}:{ids}",
                 "--out", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert res["tasks"]["arc_easy"]["num_fewshot"] == 2 and "(2-shot)" in out
    (pool,) = res["perplexity"].values()
    assert pool["all"]["n_sequences"] == 20 and "## Held-out perplexity" in out


def test_in_memory_model_gives_the_checkpoint_numbers(tiny_ckpt, tiny_model, tiny_tok):
    cfg = EvalConfig(tasks=["openbookqa"], reference=[], limit=4)
    a = evaluate(cfg, tiny_ckpt, None)
    b = evaluate(cfg, tiny_model, None, tokenizer=tiny_tok)
    ta, tb = a["tasks"]["openbookqa"], b["tasks"]["openbookqa"]
    assert {k: v for k, v in ta.items() if k != "seconds"} == {k: v for k, v in tb.items() if k != "seconds"}
    assert b["checkpoint"]["in_memory"]
