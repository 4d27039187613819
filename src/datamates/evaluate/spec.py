"""Task files: lm-evaluation-harness task YAMLs, rendered with Jinja2 exactly as lm-eval renders them.

A task file is an lm-eval task config (lm_eval/api/task.py, `ConfigurableTask`) whose data is a local
JSON-lines file (`dataset_path: json`, the Hugging Face `json` builder's `data_files`). The ten
shipped tasks (`datamates/tasks/*.yaml`) are written this way; there is no other template language
(docs/evaluation.md). Per record `doc` of the evaluated split:

    doc_to_text    an int            -> that int
                   a field of doc    -> doc[field] (any type)
                   otherwise         -> Jinja2(template).render(**doc); digits -> int when doc_to_choice is set
    doc_to_target  the same, plus a YAML list -> the list, a rendered "[...]" -> ast.literal_eval
    doc_to_choice  a field -> doc[field]; a YAML list -> the list (not rendered); a mapping -> its values;
                   otherwise ast.literal_eval(Jinja2(template).render(**doc))   (e.g. "{{[sol1, sol2]}}")

Requests (`construct_requests`), with d = target_delimiter (default " ") and f = fewshot_delimiter
(default "\\n\\n"):

    multiple_choice         request_k = (text, d + choice_k), gold = target (an index, or a choice's text)
    multiple inputs         when doc_to_text gives an int on the first record (WinoGrande):
                            request_k = (choice_k, d + target), gold = the int
    loglikelihood           one request (text, target): no delimiter, as lm-eval (LAMBADA's target
                            template carries its own leading space)

With k shots every context is prefixed by `description + shot_1 + ... + shot_k`, where a shot is
`text + d + answer + f` (answer = choices[gold] or the target; for multiple inputs, choices[gold] + d +
target + f), lm-eval's `build_qa_turn`. Shots come from the few-shot split (fewshot_split,
training_split, validation_split, test_split: the first that names a file); from the evaluated file
itself when it is the same, the example itself excluded. Which shots: rng(fewshot_seed, example
index), not lm-eval's sampler, so k-shot numbers are ours (0-shot numbers are lm-eval's).

Jinja2 is lm-eval's environment (StrictUndefined, keep_trailing_newline, the `regex_replace` filter)
in a sandbox: the same text for every template lm-eval accepts, without attribute access to Python
internals from a downloaded task file. `!function` (Python hooks: process_docs, a callable
doc_to_text) is refused with a one-line error; a template that renders the same text for every
record is an error (a `{field}` left from another template language renders literally); an unknown
key is an error naming it.

Decisions where lm-eval has no local-file equivalent: relative `data_files` are relative to the task
file; `${DATAMATES_DATA}` and `$ENV` expand; a single file (not a split mapping) is the evaluated
split; one file per split. `metric_list` names what is averaged: acc_norm when it lists acc_norm,
else acc (acc, acc_norm and the continuous metrics are always computed). acc_norm divides by the
characters of each choice (lm-eval); for multiple inputs by the shared target's length, so it
equals acc (lm-eval reports acc only there). A gold index out of range is an error naming the
line (lm-eval warns and scores 0).
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml
from jinja2.sandbox import SandboxedEnvironment

from datamates.config.base import check_name, expand_vars
from datamates.core.jsonl import replace_invalid_unicode
from datamates.errors import ConfigError, InputError
from datamates.log import get_logger

log = get_logger(__name__)

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"

# The MATES evaluation set (Yu et al. 2024, Table 1), in the paper's column order.
TASK_GROUPS: dict[str, list[str]] = {
    "nine": ["sciq", "arc_easy", "arc_challenge", "logiqa", "openbookqa", "boolq", "hellaswag", "piqa",
             "winogrande"],
}

HARNESS_KEYS: dict[str, str] = {
    "task": "name shown in the tables (default: the file name without .yaml)",
    "include": "another task YAML (relative to this one) whose keys this file extends, as lm-eval",
    "tag": "lm-eval tag(s) (documentation)",
    "task_alias": "lm-eval display name (documentation)",
    "dataset_path": "json: the records are JSON lines in data_files",
    "dataset_name": "must be empty for dataset_path: json",
    "dataset_kwargs": "{data_files: FILE or {split: FILE}}",
    "data_files": "shorthand for dataset_kwargs.data_files (lm-eval itself needs the long form)",
    "training_split": "split name of the few-shot examples (needs a file in data_files)",
    "validation_split": "split evaluated when there is no test_split",
    "test_split": "split evaluated",
    "fewshot_split": "split the few-shot examples come from",
    "output_type": "multiple_choice or loglikelihood",
    "doc_to_text": "Jinja2 template, field name or int: the context (an int: WinoGrande-style multiple inputs)",
    "doc_to_target": "Jinja2 template, field name, int or list: the gold index / text, or the target",
    "doc_to_choice": "Jinja2 template giving a list, field name, list or mapping: the choices",
    "description": "Jinja2 template prepended to every context (before the shots)",
    "target_delimiter": "string between context and continuation (default ' ')",
    "fewshot_delimiter": "string after each in-context example (default '\\n\\n')",
    "num_fewshot": "in-context examples (eval.num_fewshot, when set, overrides it)",
    "metric_list": "acc, acc_norm (multiple_choice); perplexity, acc (loglikelihood)",
    "metadata": "free mapping; datamates reads metadata.notes and metadata.harness_task",
    "should_decontaminate": "lm-eval decontamination flag (not used)",
    "doc_to_decontamination_query": "lm-eval decontamination query (not used)",
}
UNSUPPORTED_KEYS = ("process_docs", "process_results", "generation_kwargs", "filter_list", "repeats",
                    "use_prompt", "doc_to_image", "doc_to_audio", "gen_prefix", "fewshot_config",
                    "custom_dataset", "unsafe_code", "group", "group_alias", "aggregate_metric_list")
OUTPUT_TYPES = ("multiple_choice", "loglikelihood")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("perplexity", "acc")}


# ----------------------------------------------------------------------------- YAML and Jinja2

class _FunctionHook(Exception):
    def __init__(self, line: int, value: str):
        self.line, self.value = line, value


class HarnessLoader(yaml.SafeLoader):
    """yaml.SafeLoader that knows lm-eval's `!function` tag, only to refuse it (Python code)."""


def _refuse_function(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise _FunctionHook(node.start_mark.line + 1, str(getattr(node, "value", "")))


HarnessLoader.add_constructor("!function", _refuse_function)


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """lm-eval's `regex_replace` Jinja filter: re.sub."""
    return re.sub(pattern, repl, string, count=count)


JINJA = SandboxedEnvironment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
JINJA.filters["regex_replace"] = _regex_replace


class FieldError(Exception):
    """A record lacks a field, or a field has the wrong type (turned into an InputError with file:line)."""


@dataclass(frozen=True)
class Rule:
    """One of doc_to_text / doc_to_target / doc_to_choice: a literal, a field name, or a template."""

    key: str
    value: Any  # as written in the YAML
    template: Any = None  # compiled jinja2.Template (strings that are not a field name)

    def apply(self, doc: dict[str, Any], fields: set[str], has_choices: bool) -> Any:
        v = self.value
        if isinstance(v, bool):
            raise FieldError(f"{self.key} is a boolean")
        if isinstance(v, (int, list)):
            return v
        if isinstance(v, dict):
            return list(v.values())
        if v in fields:
            if v not in doc:
                raise FieldError(f"field '{v}' is missing")
            return doc[v]
        try:
            text = self.template.render(**doc)
        except jinja2.UndefinedError as e:
            raise FieldError(f"{e.message}") from None
        except Exception as e:  # a template's own error (a bad index, .index() of a missing value)
            raise FieldError(f"template {v!r} failed: {type(e).__name__}: {e}") from None
        if self.key == "doc_to_choice":
            try:
                out = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                raise FieldError(f"template {v!r} must render a Python list, got {text[:60]!r}") from None
            return out
        if text.isdigit() and has_choices:
            return ast.literal_eval(text)
        if self.key == "doc_to_target" and len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                return text
        return text

    @property
    def is_template(self) -> bool:
        return self.template is not None


# ----------------------------------------------------------------------------- specs

@dataclass
class TaskSpec:
    name: str
    path: Path  # the task file
    data: Path  # the evaluated split's file
    split: str = ""
    output_type: str = "multiple_choice"
    doc_to_text: Rule | None = None
    doc_to_target: Rule | None = None
    doc_to_choice: Rule | None = None
    description: Rule | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    fewshot_data: Path | None = None  # None: shots from `data`, the example itself excluded
    metric: str = "acc_norm"
    notes: str = ""
    harness_task: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # key -> "file:line" (for messages)

    @property
    def is_mc(self) -> bool:
        return self.output_type == "multiple_choice"

    def fingerprint(self) -> str:
        """Hash of the task's settings and of its data files' bytes: the resume key. Content, not
        mtime: a data bundle copied or re-mounted elsewhere keeps its finished evaluations."""
        files = [self.data] + ([self.fewshot_data] if self.fewshot_data else [])
        blob = json.dumps([_portable(self.raw), [_file_digest(p) if p.exists() else None for p in files]],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _portable(raw: dict[str, Any]) -> dict[str, Any]:
    """The settings without the data paths (their bytes are hashed instead)."""
    return {k: v for k, v in raw.items() if k not in ("dataset_kwargs", "data_files")}


@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    st = path.stat()
    return _digest_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def resolve_tasks(names: list[str]) -> list[Path]:
    """Task names, groups ('nine') and task file paths -> task files (order kept, duplicates dropped)."""
    out: list[Path] = []
    for name in names:
        if name in TASK_GROUPS:
            paths = [TASKS_DIR / f"{n}.yaml" for n in TASK_GROUPS[name]]
        elif name.endswith((".yaml", ".yml")) or "/" in name:
            p = Path(name)
            if not p.exists():
                raise ConfigError(f"task file {name}: file not found")
            paths = [p]
        elif (TASKS_DIR / f"{name}.yaml").exists():
            paths = [TASKS_DIR / f"{name}.yaml"]
        else:
            raise ConfigError(f"unknown task '{name}'; available: {', '.join(available_tasks())}; groups: "
                              f"{', '.join(TASK_GROUPS)}; or a path to an lm-eval task .yaml")
        for p in paths:
            if p.resolve() not in [q.resolve() for q in out]:
                out.append(p)
    return out


def _key_lines(text: str) -> dict[str, int]:
    try:
        node = yaml.compose(text, Loader=HarnessLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, tuple[Path, int]]]:
    """The file's keys (an `include` merged underneath, as lm-eval) and where each key was written."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: task file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; give an lm-eval task .yaml") from None
    try:
        raw = yaml.load(text, Loader=HarnessLoader)
    except _FunctionHook as e:
        raise ConfigError(f"{path}:{e.line}: '!function {e.value}' is Python code, which datamates does not "
                          f"run; write the step as a Jinja2 template or pre-process the data file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{path}:{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a task file is a mapping of lm-eval task keys ({', '.join(HARNESS_KEYS)})")
    lines = {k: (path, n) for k, n in _key_lines(text).items()}
    if "include" in raw:
        inc = raw.pop("include")
        if not isinstance(inc, str):
            raise ConfigError(f"{path}:{lines['include'][1]}: key 'include': expected a file name")
        base_path = Path(expand_vars(inc))
        base_path = base_path if base_path.is_absolute() else path.parent / base_path
        if base_path.resolve() in seen:
            raise ConfigError(f"{path}:{lines['include'][1]}: key 'include': {inc} includes itself")
        base, base_lines = _read_yaml(base_path, seen + (path.resolve(),))
        raw, lines = {**base, **raw}, {**base_lines, **lines}
    return raw, lines


def load_spec(path: str | Path) -> TaskSpec:
    """Read and check a task file; every problem is a one-line ConfigError naming the file, line and key."""
    path = Path(path)
    raw, lines = _read_yaml(path)

    def where(key: str) -> str:
        f, n = lines.get(key, (path, "?"))
        return f"{f}:{n}"

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where(key)}: key '{key}': {msg}")

    for k in raw:
        if k in UNSUPPORTED_KEYS:
            raise err(k, "an lm-evaluation-harness key datamates does not support (it scores multiple_choice "
                         "and loglikelihood tasks from local JSON lines); remove it")
        if k not in HARNESS_KEYS:
            raise ConfigError(f"{where(k)}: unknown key '{k}'; allowed keys: {', '.join(HARNESS_KEYS)}")
    for k in ("task", "dataset_path", "training_split", "validation_split", "test_split", "fewshot_split",
              "output_type", "target_delimiter", "fewshot_delimiter"):
        if k in raw and not isinstance(raw[k], str):
            raise err(k, f"expected text, got {type(raw[k]).__name__} {raw[k]!r}")
    output_type = raw.get("output_type")
    if output_type is None:
        raise ConfigError(f"{path}: missing key 'output_type' (lm-eval's default is generate_until); "
                          f"set multiple_choice or loglikelihood")
    if output_type not in OUTPUT_TYPES:
        raise err("output_type", f"{output_type!r}: datamates scores {', '.join(OUTPUT_TYPES)}")
    if "dataset_path" not in raw:
        raise ConfigError(f"{path}: missing key 'dataset_path' (write dataset_path: json with data_files)")
    if raw["dataset_path"] != "json":
        raise err("dataset_path", f"{raw['dataset_path']!r}: datamates reads local JSON lines; write "
                  f"dataset_path: json and dataset_kwargs: {{data_files: {{test: FILE.jsonl}}}} (save a Hugging "
                  f"Face split with Dataset.to_json)")
    if raw.get("dataset_name") is not None:
        raise err("dataset_name", "must be empty with dataset_path: json")
    try:  # the name becomes result and sample file names: '../x' would write outside the output
        check_name(raw.get("task", path.stem), "task")
    except ConfigError as e:
        raise ConfigError(f"{where('task')}: {e}") from None

    # data files and splits
    kwargs = raw.get("dataset_kwargs") or {}
    if not isinstance(kwargs, dict) or any(k != "data_files" for k in kwargs):
        raise err("dataset_kwargs", "only data_files is supported (a file, or a mapping split -> file)")
    if "data_files" in raw and "data_files" in kwargs:
        raise err("data_files", "given twice (also in dataset_kwargs); keep one")
    dkey = "data_files" if "data_files" in raw else "dataset_kwargs"
    files = raw.get("data_files", kwargs.get("data_files"))
    if files is None:
        raise ConfigError(f"{path}: missing data_files (dataset_kwargs: {{data_files: {{test: FILE.jsonl}}}})")
    split = raw.get("test_split") or raw.get("validation_split")
    if not split:
        raise ConfigError(f"{path}: missing key 'test_split' (or 'validation_split'): the split to evaluate")

    def one_file(v: Any, what: str) -> Path:
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if not isinstance(v, str):
            raise err(dkey, f"{what}: expected one file name, got {v!r} (concatenate several files into one)")
        p = Path(expand_vars(v))
        return p if p.is_absolute() else path.parent / p

    if isinstance(files, dict):
        for s, v in files.items():
            one_file(v, f"split '{s}'")
        if split not in files:
            raise err(dkey, f"no file for the evaluated split '{split}'; data_files has: {', '.join(map(str, files))}")
        data = one_file(files[split], f"split '{split}'")
        few = next((raw[k] for k in ("fewshot_split", "training_split", "validation_split", "test_split")
                    if raw.get(k) in files), split)
        fewshot_data = None if few == split else one_file(files[few], f"split '{few}'")
    else:
        data, fewshot_data = one_file(files, "data_files"), None

    # templates
    def rule(key: str) -> Rule | None:
        if key not in raw or raw[key] is None:
            return None
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, (str, int, list, dict)):
            raise err(key, f"expected a template, a field name, an int or a list, got {v!r}")
        if key in ("doc_to_text", "description") and not isinstance(v, (str, int)):
            raise err(key, f"expected a template, a field name or an int, got {type(v).__name__}")
        if key == "doc_to_choice" and isinstance(v, int):
            raise err(key, "expected a template, a field name or a list")
        if isinstance(v, list) and not all(isinstance(c, str) for c in v) and key == "doc_to_choice":
            raise err(key, "a list of choices must hold texts")
        tmpl = None
        if isinstance(v, str):
            try:
                tmpl = JINJA.from_string(v)
            except jinja2.TemplateSyntaxError as e:
                raise err(key, f"Jinja2 syntax error ({e.message}) in {v!r}") from None
        return Rule(key, v, tmpl)

    spec = TaskSpec(name=raw.get("task", path.stem), path=path, data=data, split=split, output_type=output_type,
                    target_delimiter=raw.get("target_delimiter", " "),
                    fewshot_delimiter=raw.get("fewshot_delimiter", "\n\n"), fewshot_data=fewshot_data, raw=raw,
                    where={k: where(k) for k in raw})
    for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "description"):
        setattr(spec, k, rule(k))
    for k in ("doc_to_text", "doc_to_target"):
        if getattr(spec, k) is None:
            raise ConfigError(f"{path}: missing key '{k}'")
    if spec.is_mc and spec.doc_to_choice is None:
        raise ConfigError(f"{path}: missing key 'doc_to_choice' (output_type multiple_choice)")
    if not spec.is_mc and spec.doc_to_choice is not None:
        raise err("doc_to_choice", "not used with output_type loglikelihood")
    nf = raw.get("num_fewshot", 0)
    if nf is None:
        nf = 0
    if isinstance(nf, bool) or not isinstance(nf, int) or nf < 0:
        raise err("num_fewshot", f"expected an int >= 0, got {nf!r}")
    spec.num_fewshot = nf
    metrics = []
    for i, m in enumerate(raw.get("metric_list") or []):
        name = m.get("metric") if isinstance(m, dict) else m
        extra = set(m) - {"metric", "aggregation", "higher_is_better"} if isinstance(m, dict) else set()
        if name not in METRICS[output_type] or extra:
            bad = f"unknown field {sorted(extra)[0]!r}" if extra and name in METRICS[output_type] else f"metric {name!r}"
            raise err("metric_list", f"item {i}: {bad}; datamates computes {', '.join(METRICS[output_type])} "
                                     f"for output_type {output_type}")
        metrics.append(name)
    spec.metric = "acc_norm" if "acc_norm" in metrics else "acc"
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise err("metadata", f"expected a mapping, got {type(meta).__name__}")
    spec.notes = str(meta.get("notes", "")).strip()
    spec.harness_task = str(meta.get("harness_task", ""))
    return spec


# ----------------------------------------------------------------------------- examples

@dataclass
class Doc:
    """One example: its requests and what scoring them needs."""

    line: int  # line of the data file
    contexts: list[str]  # per request (without the few-shot prefix)
    continuations: list[str]  # per request, delimiter included
    norm_len: list[int]  # per request: characters acc_norm divides by
    gold: int  # -1 for loglikelihood
    shot: str  # this example solved, as an in-context example (fewshot delimiter included)
    description: str = ""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        fh = opener(path, "rt", encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: task data not found (set DATAMATES_DATA or fix the task's data_files)") from None
    with fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                yield n, line


def count_examples(spec: TaskSpec) -> int:
    """Non-blank lines of the data file (the task's size, without parsing it)."""
    return sum(1 for _ in _lines(spec.data))


def _records(path: Path, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
    out = []
    replaced = 0
    for line, text in _lines(path):
        if limit is not None and len(out) >= limit:
            break
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{line}: malformed JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{line}: a record is a JSON object, got {type(rec).__name__}")
        rec, bad = replace_invalid_unicode(rec)  # the pool build's rule (core/jsonl.py)
        replaced += bad
        out.append((line, rec))
    if replaced:
        log.warning("%s: %d lone surrogate code points (invalid Unicode) replaced by U+FFFD", path, replaced)
    return out


def _text(v: Any, what: str) -> str:
    if isinstance(v, str):
        return v
    raise FieldError(f"{what} must be text, got {type(v).__name__} {v!r}")


def _doc(spec: TaskSpec, rec: dict[str, Any], fields: set[str], multiple_input: bool) -> Doc:
    """One record -> its requests (module docstring); raises FieldError naming the key."""
    key = "doc_to_text"
    try:
        has_choices = spec.doc_to_choice is not None
        text = spec.doc_to_text.apply(rec, fields, has_choices)  # type: ignore[union-attr]
        key = "doc_to_target"
        target = spec.doc_to_target.apply(rec, fields, has_choices)  # type: ignore[union-attr]
        key = "description"
        desc = _text(spec.description.apply(rec, fields, False), "description") if spec.description else ""
        d = spec.target_delimiter
        if not spec.is_mc:
            key = "doc_to_text"
            ctx = _text(text, "the context")
            key = "doc_to_target"
            tgt = _text(target, "the target")
            return Doc(0, [ctx], [tgt], [len(tgt)], -1, ctx + d + tgt + spec.fewshot_delimiter, desc)
        key = "doc_to_choice"
        choices = spec.doc_to_choice.apply(rec, fields, has_choices)  # type: ignore[union-attr]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise FieldError(f"the choices must be a list of texts, got {type(choices).__name__}")
        if not choices:
            raise FieldError("no choices")
        if multiple_input:
            key = "doc_to_text"
            gold = text
            if isinstance(gold, bool) or not isinstance(gold, int):
                raise FieldError(f"the first record's doc_to_text was an int (multiple inputs), this one is {gold!r}")
            key = "doc_to_target"
            if isinstance(target, list):
                raise FieldError("a list target (multiple targets) is not supported")
            cont = d + str(target)
        else:
            key = "doc_to_target"
            gold = target
            if isinstance(gold, list):
                raise FieldError("a list target (multiple targets) is not supported")
            if isinstance(gold, str):
                if gold not in choices:
                    raise FieldError(f"gold {gold!r} is not one of the choices")
                gold = choices.index(gold)
            if isinstance(gold, bool) or not isinstance(gold, int):
                raise FieldError(f"gold must be an index or a choice's text, got {gold!r}")
        if not 0 <= gold < len(choices):
            raise FieldError(f"gold index {gold} is out of range for {len(choices)} choices")
        if multiple_input:
            # lm-eval divides by len(choice); with one shared continuation we divide by its
            # length, identical for every choice, so acc_norm == acc (lm-eval reports acc only)
            return Doc(0, list(choices), [cont] * len(choices), [len(cont)] * len(choices), gold,
                       choices[gold] + cont + spec.fewshot_delimiter, desc)
        key = "doc_to_text"
        ctx = _text(text, "the context")
        conts = [d + c for c in choices]
        return Doc(0, [ctx] * len(choices), conts, [len(c) for c in choices], gold,
                   ctx + conts[gold] + spec.fewshot_delimiter, desc)
    except FieldError as e:
        raise FieldError(f"{e} (key '{key}')") from None


def _constant(spec: TaskSpec, docs: list[Doc]) -> str | None:
    """The key whose template renders the same text for every record (needs two or more records)."""
    if len(docs) < 2:
        return None
    if spec.doc_to_text.is_template and len({tuple(d.contexts) for d in docs}) == 1:  # type: ignore[union-attr]
        return "doc_to_text"
    if not spec.is_mc and spec.doc_to_target.is_template and len({d.continuations[0] for d in docs}) == 1:  # type: ignore[union-attr]
        return "doc_to_target"
    return None


def load_docs(spec: TaskSpec, limit: int | None = None, *, fewshot: bool = False) -> list[Doc]:
    """The examples of the task's data file (the first `limit` of them; `fewshot`: of its few-shot
    file), checked: a missing field, a gold index out of range, an empty choice list, an empty file
    or a template that renders the same text for every record is an InputError naming the file,
    line and key."""
    path = spec.fewshot_data if fewshot and spec.fewshot_data else spec.data
    recs = _records(path, limit)
    if not recs:
        raise InputError(f"{path}: no examples (task {spec.path})")
    fields: set[str] = set()
    for _, r in recs:
        fields.update(r)
    multiple_input = False
    if spec.is_mc:  # lm-eval decides on the first record: doc_to_text gives an int -> multiple inputs
        try:
            first = spec.doc_to_text.apply(recs[0][1], fields, True)  # type: ignore[union-attr]
        except FieldError as e:
            raise InputError(f"{path}:{recs[0][0]}: {e} (task {spec.path}, key 'doc_to_text')") from None
        multiple_input = isinstance(first, int) and not isinstance(first, bool)
    docs = []
    for line, rec in recs:
        try:
            doc = _doc(spec, rec, fields, multiple_input)
        except FieldError as e:
            raise InputError(f"{path}:{line}: {e}, task {spec.path}") from None
        doc.line = line
        docs.append(doc)
    bad = _constant(spec, docs)
    if bad:
        v = str(spec.raw[bad])
        hint = (" ({field} is not a placeholder in Jinja2: write {{field}})" if re.search(r"(?<!\{)\{\s*\w[\w.\[\]]*\s*\}", v)
                else " (name a field, or use {{field}} placeholders)")
        raise InputError(f"{spec.where.get(bad, spec.path)}: key '{bad}': the template {v!r} renders the same text for all {len(docs)} "
                         f"records of {path}{hint}")
    return docs


def fewshot_prefixes(spec: TaskSpec, docs: list[Doc], n_eval: int, k: int, seed: int,
                     shots: list[Doc] | None = None) -> list[str]:
    """For each of the first n_eval docs: its description, then k solved examples drawn with
    rng(seed, doc index) from `shots` (the few-shot split), or from `docs` without the example itself."""
    if k == 0:
        return [d.description for d in docs[:n_eval]]
    pool = shots if shots is not None else docs
    skip_self = shots is None
    if k > len(pool) - skip_self:
        raise ConfigError(f"num_fewshot = {k}: task {spec.name} has only {len(pool)} few-shot examples")
    out = []
    for i in range(n_eval):
        pick = np.random.default_rng([seed, i]).choice(len(pool) - skip_self, size=k, replace=False)
        if skip_self:
            pick = pick + (pick >= i)  # skip the example itself
        out.append(docs[i].description + "".join(pool[j].shot for j in pick))
    return out
