"""Task specs: templates, a user's own task without code, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from datamates.cli import main
from datamates.evaluate.spec import load_docs, load_spec

from .conftest import write_task


def test_rendering_follows_lm_eval():
    """lm-eval's rules (lm_eval/api/task.py): a field name gives the field, a template renders with
    Jinja2, digits become an index when there are choices, doc_to_choice templates are literal_eval'd."""
    from datamates.evaluate.spec import JINJA, Rule

    rec = {"a": "  Passage: text ", "opts": ["x", "y"], "meta": {"t": "The Title"}, "n": 3}
    fields = set(rec)

    def r(key, v, choices=True):
        return Rule(key, v, JINJA.from_string(v) if isinstance(v, str) else None).apply(rec, fields, choices)

    assert r("doc_to_text", "{{a.strip().removeprefix('Passage: ')}}!") == "text!"
    assert r("doc_to_text", "{{opts[1]}} {{meta.t|lower}} {{n}} {lit}") == "y the title 3 {lit}"
    assert r("doc_to_choice", "opts") == ["x", "y"] and r("doc_to_choice", "{{[a, meta.t]}}") == ["  Passage: text ", "The Title"]
    assert r("doc_to_target", "n") == 3 and r("doc_to_target", "{{n}}") == 3 and r("doc_to_target", "{{n}}", False) == "3"
    assert r("doc_to_target", "{{opts}}") == ["x", "y"] and r("doc_to_text", 2) == 2
    assert r("doc_to_text", "{{a|regex_replace(' +', '_')}}") == "_Passage:_text_"
    assert r("doc_to_text", "{{a}}\n") == "  Passage: text \n"  # keep_trailing_newline, as lm-eval


def test_sandbox_refuses_python_internals():
    from datamates.evaluate.spec import JINJA, FieldError, Rule

    with pytest.raises(FieldError, match="SecurityError"):
        Rule("doc_to_text", "x", JINJA.from_string("{{a.__class__.__mro__}}")).apply({"a": "s"}, {"a"}, False)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_custom_task_evaluates_without_code(tiny_ckpt, tmp_path, capsys):
    """A task that is not among the ten (true/false statements, choices as a list of templates,
    gold given as the answer's text, a custom delimiter) runs from its spec alone."""
    recs = [{"statement": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}.", "label": "true" if i % 3 else "false"}
            for i in range(12)]
    spec = write_task(tmp_path / "mytask", recs, {
        "task": "truth", "doc_to_text": "Claim: {{statement}}\nThis claim is",
        "doc_to_choice": ["true", "false"], "doc_to_target": "{{label}}", "target_delimiter": " ",
        "metric_list": [{"metric": "acc"}]}, name="truth")
    code, out, err = _run(capsys, "--checkpoint", str(tiny_ckpt), "--tasks", str(spec), "--reference",
                          "--out", str(tmp_path / "ev"))
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    t = res["tasks"]["truth"]
    assert t["n"] == 12 and t["metric"] == "acc" and 0 <= t["acc"] <= 1
    assert res["task_mean"]["value"] == t["acc"] and res["nine_task_mean"] is None
    assert "| truth | test | 12 |" in out


MC = {"doc_to_text": "{{q}}", "doc_to_choice": "c", "doc_to_target": "g"}


@pytest.mark.parametrize("case, records, spec, expect", [
    ("no gold in range", [{"q": "a", "c": ["x", "y"], "g": 3}, {"q": "b", "c": ["x", "y"], "g": 2}],
     MC, r"toy\.yaml:\d+: key 'doc_to_target': no record of .*toy\.jsonl has its gold among the choices \(first: line 1, gold 3"),
    ("missing field", [{"q": "a", "c": ["x", "y"], "g": 0}, {"question": "b", "c": ["x"], "g": 0}],
     {**MC, "doc_to_text": "Q: {{q}}"}, r"toy\.jsonl:2: 'q' is undefined \(key 'doc_to_text'\)"),
    ("empty task", ["", "  "], MC, r"toy\.jsonl: no examples"),
    ("unknown key", [{"q": "a", "c": ["x"], "g": 0}], {**MC, "doc_to_txt": "x"},
     r"toy\.yaml:\d+: unknown key 'doc_to_txt' \(not in lm-eval's task schema\); allowed keys: task, "),
    ("malformed json", ['{"q": "a", "c": ["x"], "g": 0}', '{"q": '], MC, r"toy\.jsonl:2: malformed JSON"),
    ("choices not a list", [{"q": "a", "c": "x", "g": 0}], MC,
     r"toy\.jsonl:1: the choices must be a list of texts, got str \(key 'doc_to_choice'\)"),
    ("bad metric", [{"q": "a", "c": ["x"], "g": 0}], {**MC, "metric_list": [{"metric": "acc_mutual_info"}]},
     r"toy\.yaml:\d+: key 'metric_list': item 0: metric 'acc_mutual_info'; datamates computes acc, acc_norm"),
    ("missing key", [{"q": "a", "c": ["x"], "g": 0}], {"doc_to_text": "{{q}}", "doc_to_choice": "c"},
     r"toy\.yaml: missing key 'doc_to_target'"),
    ("datamates-style placeholder", [{"q": "a", "c": ["x"], "g": 0}, {"q": "b", "c": ["x"], "g": 0}],
     {**MC, "doc_to_text": "Question: {q}\nAnswer:"},
     r"toy\.yaml:\d+: key 'doc_to_text': the template .* has \{q\}, which Jinja2 leaves as text \(write \{\{q\}\} for the field\)"),
    ("a hub dataset", [{"q": "a", "c": ["x"], "g": 0}], {**MC, "dataset_path": "allenai/ai2_arc"},
     r"toy\.yaml:\d+: key 'dataset_path': 'allenai/ai2_arc': datamates reads local JSON lines"),
    ("generate_until", [{"q": "a", "c": ["x"], "g": 0}], {**MC, "output_type": "generate_until"},
     r"key 'output_type': 'generate_until': datamates scores multiple_choice, loglikelihood"),
    ("no file for the split", [{"q": "a", "c": ["x"], "g": 0}], {**MC, "test_split": "dev"},
     r"no file for the evaluated split 'dev'; data_files has: test"),
    ("bad Jinja", [{"q": "a", "c": ["x"], "g": 0}], {**MC, "doc_to_text": "{{q"},
     r"toy\.yaml:\d+: key 'doc_to_text': Jinja2 syntax error"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_ckpt, tmp_path, capsys, case, records, spec, expect):
    path = write_task(tmp_path, records, spec)
    code, out, err = _run(capsys, "--checkpoint", str(tiny_ckpt), "--tasks", str(path), "--reference",
                          "--out", str(tmp_path / "ev"))
    assert code == 2, case
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("datamates evaluate: error: ") and "Traceback" not in err, err
    import re

    assert re.search(expect, lines[0]), lines[0]
    assert not (tmp_path / "ev" / "eval.json").exists()


def test_unknown_task_name_lists_the_shipped_ones(tiny_ckpt, tmp_path, capsys):
    code, _, err = _run(capsys, "--checkpoint", str(tiny_ckpt), "--tasks", "sciqq", "--out", str(tmp_path / "e"))
    assert code == 2 and "unknown task 'sciqq'; available: arc_challenge, arc_easy, boolq" in err


def test_shipped_specs_resolve_through_datamates_data(monkeypatch, tmp_path):
    """Specs name their data as ${DATAMATES_DATA}/eval/...; moving the bundle moves every task."""
    from datamates.evaluate import TASKS_DIR, available_tasks

    monkeypatch.setenv("DATAMATES_DATA", str(tmp_path))
    names = available_tasks()
    assert len(names) == 10
    for n in names:
        s = load_spec(TASKS_DIR / f"{n}.yaml")
        assert s.data == tmp_path / "eval" / f"{n}.jsonl"
        assert "${DATAMATES_DATA}" in (TASKS_DIR / f"{n}.yaml").read_text()
        assert s.notes and s.split and s.harness_task == n and s.raw["dataset_path"] == "json"


def test_shipped_specs_load_every_example(data):
    from datamates.evaluate import TASKS_DIR, available_tasks

    counts = {n: len(load_docs(load_spec(TASKS_DIR / f"{n}.yaml"))) for n in available_tasks()}
    assert counts == {"arc_challenge": 1172, "arc_easy": 2376, "boolq": 3270, "hellaswag": 10042,
                      "lambada_openai": 5153, "logiqa": 651, "openbookqa": 500, "piqa": 1838, "sciq": 1000,
                      "winogrande": 1267}


def test_harness_prompts(data):
    """The rendered prompts are lm-eval's (checked on one record per task)."""
    from datamates.evaluate import TASKS_DIR

    def first(n):
        return load_docs(load_spec(TASKS_DIR / f"{n}.yaml"))[0]

    d = first("boolq")
    assert not d.contexts[0].startswith("Passage:") and d.contexts[0].endswith("?\nAnswer:")
    assert d.continuations == [" no", " yes"]
    d = first("piqa")
    assert d.contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    d = first("sciq")  # empty support: lm-eval's "{{support.lstrip()}}\nQuestion: ..."
    assert d.contexts[0] == "\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:"
    assert d.gold == 3 and d.continuations[3] == " darwin"
    d = first("logiqa")
    assert d.contexts[0].startswith("Passage: ") and "\nChoices:\nA. " in d.contexts[0]
    assert d.contexts[0].endswith("\nAnswer:") and d.norm_len == [len(c) - 1 for c in d.continuations]
    d = first("winogrande")
    assert d.contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                          "Sarah was a much better surgeon than Maria so Maria"]
    assert d.continuations == [" always got the easier cases."] * 2 and d.gold == 1


def test_resume_key_follows_content_not_mtime(monkeypatch, tmp_path, data):
    """A data bundle copied or re-mounted elsewhere (new paths, new mtimes) keeps the resume key of
    finished evaluations; an edited data file changes it."""
    import os
    import shutil

    from datamates.evaluate import TASKS_DIR

    src = data / "eval" / "arc_easy.jsonl"
    before = load_spec(TASKS_DIR / "arc_easy.yaml").fingerprint()
    (tmp_path / "eval").mkdir()
    dst = tmp_path / "eval" / "arc_easy.jsonl"
    shutil.copyfile(src, dst)
    os.utime(dst, ns=(1, 1))
    monkeypatch.setenv("DATAMATES_DATA", str(tmp_path))
    assert load_spec(TASKS_DIR / "arc_easy.yaml").fingerprint() == before
    dst.write_bytes(dst.read_bytes() + b"\n")
    assert load_spec(TASKS_DIR / "arc_easy.yaml").fingerprint() != before


def test_fewshot_split_and_num_fewshot_from_the_task_file(tiny_model, tiny_tok, tmp_path):
    """lm-eval's few-shot examples come from the training split when it has a file, and the task
    file's num_fewshot is used unless the caller sets one (eval.num_fewshot / --num-fewshot)."""
    import json as _json

    from datamates.evaluate import evaluate_task
    from datamates.evaluate.spec import fewshot_prefixes

    recs = [{"q": f"Question {i}?", "c": ["yes", "no"], "g": i % 2} for i in range(5)]
    shots = [{"q": f"Solved {i}?", "c": ["yes", "no"], "g": 0} for i in range(3)]
    (tmp_path / "shots.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in shots))
    path = write_task(tmp_path, recs, {"dataset_kwargs": {"data_files": {"test": "toy.jsonl", "train": "shots.jsonl"}},
                                       "training_split": "train", "num_fewshot": 1,
                                       "doc_to_text": "{{q}}", "doc_to_choice": "c", "doc_to_target": "g"})
    spec = load_spec(path)
    assert spec.num_fewshot == 1 and spec.fewshot_data == tmp_path / "shots.jsonl"
    docs = load_docs(spec)
    pre = fewshot_prefixes(spec, docs, 5, 1, 1234, load_docs(spec, fewshot=True))
    assert all(p in {f"Solved {i}? yes\n\n" for i in range(3)} for p in pre)
    assert evaluate_task(tiny_model, tiny_tok, spec)["num_fewshot"] == 1
    assert evaluate_task(tiny_model, tiny_tok, spec, num_fewshot=0)["num_fewshot"] == 0
