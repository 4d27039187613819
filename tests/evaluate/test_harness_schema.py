"""lm-eval task files as users have them (issue 26): the whole task schema with lm-eval's meaning,
`!function` behind --allow-task-code, lm-eval's acc_norm for multiple inputs, the placeholder guard
from the first record, per-record warnings for a gold outside the choices, and a render limit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from datamates.cli import main
from datamates.errors import ConfigError, InputError
from datamates.evaluate import evaluate_task, load_docs, load_spec
from datamates.evaluate.stage import _mc_metrics

from .conftest import write_task


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


RECS = [{"q": f"question {i}", "c": ["alpha", "beta gamma"], "g": i % 2} for i in range(6)]
MC = {"doc_to_text": "{{q}}", "doc_to_choice": "c", "doc_to_target": "g"}


# ----------------------------------------------------------------------------- the schema

def test_null_splits_and_a_kept_dataset_name_are_accepted(tmp_path):
    """piqa.yaml as shipped has `test_split: null`; arc_easy.yaml keeps `dataset_name: ARC-Easy` beside
    a local source. lm-eval reads null as unset (evaluates the validation split) and passes the name
    to the json builder, which ignores it: both are accepted, the name with a one-line note."""
    path = write_task(tmp_path, RECS, {**MC, "dataset_name": "ARC-Easy", "training_split": None,
                                       "test_split": None, "validation_split": "validation",
                                       "fewshot_split": None, "dataset_kwargs": {"data_files": {"validation": "toy.jsonl"},
                                                                                 "trust_remote_code": True}})
    spec = load_spec(path)
    assert spec.split == "validation" and spec.data == tmp_path / "toy.jsonl"
    assert any("'dataset_name' ('ARC-Easy') does not apply to dataset_path: json; ignored" in n for n in spec.ignored)
    assert any("dataset_kwargs.trust_remote_code" in n for n in spec.ignored)
    assert len(load_docs(spec)) == 6


@pytest.mark.parametrize("key, value, expect", [
    ("process_results", "x", r"key 'process_results': datamates computes the metrics itself"),
    ("doc_to_image", "img", r"key 'doc_to_image': multimodal tasks are not scored"),
    ("group", "mygroup", r"key 'group': this is an lm-eval group file"),
    ("dataset_kwargs", {"data_files": {"test": "toy.jsonl"}, "name": "x"}, r"key 'dataset_kwargs': 'name' cannot be honoured"),
])
def test_what_cannot_be_honoured_is_refused_with_file_line_key(tmp_path, key, value, expect):
    path = write_task(tmp_path, RECS, {**MC, key: value})
    with pytest.raises(ConfigError, match=r"toy\.yaml:\d+: " + expect):
        load_spec(path)


def test_fewshot_config_that_only_shots_need_is_refused_when_shots_are_asked_for(tmp_path):
    from datamates.evaluate.spec import fewshot_prefixes

    path = write_task(tmp_path, RECS, {**MC, "fewshot_config": {"sampler": "balanced", "samples": [{"q": "x"}]}})
    spec = load_spec(path)
    docs = load_docs(spec)
    assert fewshot_prefixes(spec, docs, 6, 0, 0) == [""] * 6  # 0-shot: lm-eval's prompts, nothing to honour
    with pytest.raises(ConfigError, match=r"toy\.yaml:\d+: key 'fewshot_config': sampler 'balanced' .* cannot be "
                                          r"honoured with num_fewshot = 2"):
        fewshot_prefixes(spec, docs, 6, 2, 0)


def test_null_values_of_unsupported_keys_are_unset(tmp_path):
    path = write_task(tmp_path, RECS, {**MC, "process_results": None, "filter_list": None, "gen_prefix": None,
                                       "doc_to_image": None, "unsafe_code": False, "repeats": 1,
                                       "fewshot_config": {"sampler": "first_n"}})
    assert load_spec(path).fewshot_sampler == "first_n"


def test_missing_include_names_the_including_file_line_and_key(tmp_path):
    path = write_task(tmp_path, RECS, MC)
    path.write_text("task: toy\ninclude: _no_such_template_yaml\n" + path.read_text())
    with pytest.raises(ConfigError, match=rf"{path}:2: key 'include': .*_no_such_template_yaml not found"):
        load_spec(path)


# ----------------------------------------------------------------------------- !function

UTILS = '''
def process_docs(dataset):
    def _one(doc):
        return {"query": "Q: " + doc["q"].upper(), "gold": int(doc["label"])}
    return dataset.map(_one)


def doc_to_choice(doc):
    return [" " + c for c in doc["c"]]
'''


def _function_task(folder: Path) -> Path:
    recs = [{"q": f"question {i}", "c": ["alpha", "beta gamma"], "label": str(i % 2)} for i in range(5)]
    path = write_task(folder, recs, {"doc_to_text": "{{query}}", "doc_to_target": "gold",
                                     "doc_to_choice": "PLACEHOLDER"}, name="fn")
    (folder / "utils.py").write_text(UTILS)
    text = path.read_text().replace("doc_to_choice: PLACEHOLDER", "doc_to_choice: !function utils.doc_to_choice")
    path.write_text(text + "process_docs: !function utils.process_docs\n")
    return path


def test_function_is_refused_without_the_flag(tiny_ckpt, tmp_path, capsys):
    path = _function_task(tmp_path / "t")
    with pytest.raises(ConfigError, match=r"fn\.yaml:\d+: key '(doc_to_choice|process_docs)': '!function utils\..*' runs "
                                          r"Python code from .*; pass --allow-task-code"):
        load_spec(path)
    marker = tmp_path / "t" / "ran"
    (tmp_path / "t" / "utils.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + UTILS)
    code, out, err = _run(capsys, "--checkpoint", str(tiny_ckpt), "--tasks", str(path), "--reference",
                          "--out", str(tmp_path / "ev"))
    assert code == 2 and "--allow-task-code" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "ev").exists()  # no code ran, nothing written


def test_function_runs_with_the_flag_as_lm_eval_resolves_it(tiny_ckpt, tmp_path, capsys):
    """utils.py beside the YAML: process_docs gets a datasets.Dataset and its output is what the
    templates see; a callable doc_to_choice is called per record (lm_eval/tasks/_yaml_loader.py)."""
    path = _function_task(tmp_path / "t")
    spec = load_spec(path, allow_task_code=True)
    docs = load_docs(spec)
    assert [d.contexts[0] for d in docs] == [f"Q: QUESTION {i}" for i in range(5)]
    assert docs[0].continuations == ["  alpha", "  beta gamma"] and [d.gold for d in docs] == [0, 1, 0, 1, 0]
    assert docs[0].norm_len == [len(" alpha"), len(" beta gamma")]
    assert spec.code_files == [(tmp_path / "t" / "utils.py").resolve()]
    code, out, err = _run(capsys, "--checkpoint", str(tiny_ckpt), "--tasks", str(path), "--reference",
                          "--allow-task-code", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]["fn"]["n"] == 5


# ----------------------------------------------------------------------------- acc_norm

WINO = [{"opts": ["Al", "The much longer second option, Bob,"], "cont": "went home.", "ans": 1},
        {"opts": ["The long option that was written first", "Cy"], "cont": "slept.", "ans": 0},
        {"opts": ["Di", "Ed and many more words"], "cont": "ran off.", "ans": 0}]
WINO_SPEC = {"doc_to_text": "ans", "doc_to_choice": "opts", "doc_to_target": "cont",
             "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}


def test_multiple_input_acc_norm_is_lm_eval_s_definition(tmp_path):
    """Hand-computed: lm-eval's process_results divides each request's log-likelihood by the length
    of its choice -- for multiple inputs the choice is the context -- whenever acc_norm is listed.
    LLs (-10, -12) over choices of 2 and 35 characters: acc picks choice 0 (-10 > -12), acc_norm
    choice 1 (-12/35 = -0.34 > -10/2 = -5); the gold is 1, so acc = 0 and acc_norm = 1."""
    spec = load_spec(write_task(tmp_path, WINO, WINO_SPEC))
    docs = load_docs(spec)
    assert docs[0].norm_len == [2, 35] and docs[0].gold == 1
    score = SimpleNamespace(ll=np.array([-10.0, -12.0]), greedy=np.array([False, False]))
    res = _mc_metrics(spec, docs[:1], [score], [])
    assert res["acc"] == 0.0 and res["acc_norm"] == 1.0


def test_multiple_input_acc_norm_on_the_tiny_model(tiny_model, tiny_tok, tmp_path):
    spec = load_spec(write_task(tmp_path, WINO, WINO_SPEC))
    res = evaluate_task(tiny_model, tiny_tok, spec)
    for s, r in zip(res["samples"], WINO):
        lens = np.array([len(o) for o in r["opts"]], np.float64)
        assert s["acc_norm"] == float(np.argmax(np.array(s["lls"]) / lens) == r["ans"])
        assert s["acc"] == float(np.argmax(s["lls"]) == r["ans"])


def test_other_lm_eval_metrics(tiny_model, tiny_tok, tmp_path):
    """acc_bytes, brier_score, f1, mcc and exact_match with lm-eval's formulas."""
    from datamates.evaluate.stage import f1_binary, matthews

    spec = load_spec(write_task(tmp_path, RECS, {**MC, "metric_list": [
        {"metric": m} for m in ("acc", "acc_bytes", "brier_score", "f1", "mcc", "exact_match")]}))
    res = evaluate_task(tiny_model, tiny_tok, spec)
    lls = np.array([s["lls"] for s in res["samples"]])
    golds = np.array([r["g"] for r in RECS])
    p = np.exp(lls - lls.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert res["brier_score"] == pytest.approx(np.mean(np.sum((p - np.eye(2)[golds]) ** 2, axis=1)))
    blen = np.array([len("alpha"), len("beta gamma")], np.float64)
    assert res["acc_bytes"] == pytest.approx(np.mean(np.argmax(lls / blen, 1) == golds))
    assert 0 <= res["exact_match"] <= 1
    assert f1_binary([0, 1, 1, 0], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert matthews([0, 1, 1, 0], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert matthews([0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx(0.7)  # sklearn.metrics.matthews_corrcoef gives 0.7


# ----------------------------------------------------------------------------- the guard

def test_guard_list_of_templates_in_doc_to_choice(tmp_path):
    recs = [{"ctx": "c", "answerA": "a", "answerB": "b", "label": 0}]
    path = write_task(tmp_path, recs, {"doc_to_text": "{{ctx}}", "doc_to_choice": ["{{answerA}}", "{{answerB}}"],
                                       "doc_to_target": "label"})
    with pytest.raises(InputError, match=r"toy\.yaml:\d+: key 'doc_to_choice': the list item '\{\{answerA\}\}' is "
                                         r"not rendered"):
        load_docs(load_spec(path))


def test_guard_pasted_description(tmp_path):
    recs = [{"subject": "anatomy", **r} for r in RECS]
    path = write_task(tmp_path, recs, {**MC, "description": "Questions about {subject}.\n\n"})
    with pytest.raises(InputError, match=r"key 'description': the template .* has \{subject\}, which Jinja2 leaves"):
        load_docs(load_spec(path))


def test_guard_works_from_the_first_record(tiny_ckpt, tmp_path, capsys):
    path = write_task(tmp_path, RECS, {**MC, "doc_to_text": "Question: {q}\nAnswer:"})
    code, out, err = _run(capsys, "--checkpoint", str(tiny_ckpt), "--tasks", str(path), "--reference",
                          "--limit", "1", "--out", str(tmp_path / "ev"))
    assert code == 2 and "key 'doc_to_text'" in err and "write {{q}}" in err


def test_blimp_empty_prompt_is_accepted(tiny_model, tiny_tok, tmp_path):
    """BLiMP's doc_to_text: "" (the same empty context for every record) with choices that vary:
    lm-eval runs it, so does datamates (the empty context becomes the BOS/EOS token)."""
    recs = [{"sentence_good": f"The cat {v} sleeping.", "sentence_bad": f"The cat {v} sleeps been."}
            for v in ("is", "was", "seems")]
    spec = load_spec(write_task(tmp_path, recs, {"doc_to_text": "", "doc_to_target": 0,
                                                 "doc_to_choice": "{{[sentence_good, sentence_bad]}}"}))
    docs = load_docs(spec)
    assert docs[1].contexts == ["", ""] and docs[1].continuations == [" The cat was sleeping.", " The cat was sleeps been."]
    assert evaluate_task(tiny_model, tiny_tok, spec)["n"] == 3


def test_requests_identical_for_every_record_are_refused(tmp_path):
    recs = [{"x": i} for i in range(3)]
    path = write_task(tmp_path, recs, {"doc_to_text": "Q:", "doc_to_choice": "{{['a', 'b']}}", "doc_to_target": 0})
    with pytest.raises(InputError, match=r"gives the same requests for all 3 records"):
        load_docs(load_spec(path))


def test_label_shift_is_warned_per_record_and_scored_0(tmp_path, caplog):
    """`{{ (answer|int) - 1 }}` (written for 1-based labels) on 0-based data: lm-eval warns for every
    record whose gold falls outside the choices and scores it 0; so does datamates, naming the line."""
    recs = [{"q": f"q{i}", "c": ["a", "b", "c"], "answer": i % 3} for i in range(6)]
    spec = load_spec(write_task(tmp_path, recs, {"doc_to_text": "{{q}}", "doc_to_choice": "c",
                                                 "doc_to_target": "{{ (answer|int) - 1 }}"}))
    with caplog.at_level(logging.WARNING, logger="datamates"):
        docs = load_docs(spec)
    assert [d.gold for d in docs] == [-100, 0, 1, -100, 0, 1]
    warned = [r.getMessage() for r in caplog.records if "is not one of the 3 choices" in r.getMessage()]
    assert len(warned) == 2 and "toy.jsonl:1: gold '-1'" in warned[0] and "toy.jsonl:4:" in warned[1]
    score = SimpleNamespace(ll=np.array([-1.0, -2.0, -3.0]), greedy=np.zeros(3, bool))
    res = _mc_metrics(spec, docs, [score] * 6, [])
    assert res["acc"] == pytest.approx(2 / 6) and res["n_gold_outside_choices"] == 2


# ----------------------------------------------------------------------------- render limit

@pytest.mark.parametrize("template, expect", [
    # 40M empty iterations: over a second here, unlimited before issue 24 (100000 x 100000 ran for hours)
    ("{% for i in range(10000) %}{% for j in range(4000) %}{% endfor %}{% endfor %}{{q}}", "took more than"),
    ("{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxx{% endfor %}{% endfor %}", "passed"),
    ("{{ q * 100000000 }}", "'\\*' would build"),
])
def test_render_has_a_time_and_size_limit(tmp_path, monkeypatch, template, expect):
    import datamates.evaluate.spec as spec_mod

    monkeypatch.setattr(spec_mod, "RENDER_SECONDS", 0.2)
    path = write_task(tmp_path, RECS[:2], {**MC, "doc_to_text": template})
    with pytest.raises(InputError, match=rf"toy\.jsonl:1: template stopped: .*{expect}.*key 'doc_to_text'"):
        load_docs(load_spec(path))


# ----------------------------------------------------------------------------- lm_eval itself

def test_shipped_lm_eval_yamls_give_lm_eval_s_requests(tmp_path, data):
    """The harness's own arc_easy, piqa, hellaswag (process_docs) and winogrande (!function, multiple
    inputs) task files, with only the data source changed: datamates builds exactly the requests
    lm_eval builds (offline, no model: lm_eval's task objects)."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager, get_task_dict

    from datamates.evaluate.spec import fewshot_prefixes

    root = Path(__file__).resolve().parents[2]
    import importlib.util

    mspec = importlib.util.spec_from_file_location("eval_parity", root / "benchmarks" / "eval_parity.py")
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    names = ["arc_easy", "piqa", "hellaswag", "winogrande"]
    info = mod.write_shipped(tmp_path, data, names)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    for name in names:
        task = get_task_dict([info[name]["task"]], tm)[info[name]["task"]]
        task.build_all_requests(limit=20, rank=0, world_size=1)
        theirs: dict[int, list] = {}
        for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
            theirs.setdefault(inst.doc_id, []).append(tuple(inst.arguments))
        spec = load_spec(info[name]["file"], allow_task_code=True)
        docs = load_docs(spec, limit=20)
        pre = fewshot_prefixes(spec, docs, len(docs), 0, 0)
        ours = [[(p + c, t) for c, t in zip(d.contexts, d.continuations)] for d, p in zip(docs, pre)]
        assert ours == [theirs[i] for i in range(len(docs))], name
    assert lm_eval.__version__


# ----------------------------------------------------------------------------- where a task file may read

def test_include_and_data_files_stay_below_the_task_folder_unless_allowed(tmp_path):
    """A downloaded task file cannot read an arbitrary readable file (issue 24): `include` and
    `data_files` must lie below its folder, the data bundle or the shipped tasks, unless
    --allow-any-task-path."""
    outside = tmp_path / "elsewhere"
    write_task(outside, RECS, MC, name="data")
    path = write_task(tmp_path / "task", RECS, {**MC, "dataset_kwargs": {"data_files": {"test": str(outside / "data.jsonl")}}})
    with pytest.raises(ConfigError, match=r"toy\.yaml:\d+: key 'dataset_kwargs': split 'test': .*data\.jsonl is outside "
                                          r"the task's folder; .*--allow-any-task-path"):
        load_spec(path)
    assert load_spec(path, allow_any_path=True).data == outside / "data.jsonl"
    inc = write_task(tmp_path / "task2", RECS, MC)
    inc.write_text("include: ../elsewhere/data.yaml\n" + inc.read_text())
    with pytest.raises(ConfigError, match=rf"{inc}:1: key 'include': .*data\.yaml is outside the task's folder"):
        load_spec(inc)
    assert load_spec(inc, allow_any_path=True).name == "toy"


def test_a_metric_aggregation_function_gets_lm_eval_s_items(tiny_model, tiny_tok, tmp_path):
    """`aggregation: !function utils.weighted_f1_score` (afrimmlu and 1,150 shipped files): with
    --allow-task-code the function gets the metric's per-example items, (gold, pred) for f1."""
    path = write_task(tmp_path, RECS, {**MC, "metric_list": [{"metric": "acc"}, {"metric": "f1", "aggregation": "X"}]})
    (tmp_path / "utils.py").write_text("def agg(items):\n    return sum(10 * g + p for g, p in items)\n")
    path.write_text(path.read_text().replace("aggregation: X", "aggregation: !function utils.agg"))
    with pytest.raises(ConfigError, match=r"key 'metric_list\[1\]\.aggregation': .*--allow-task-code"):
        load_spec(path)
    res = evaluate_task(tiny_model, tiny_tok, load_spec(path, allow_task_code=True))
    preds = [int(np.argmax(s["lls"])) for s in res["samples"]]
    assert res["f1"] == sum(10 * r["g"] + p for r, p in zip(RECS, preds))
