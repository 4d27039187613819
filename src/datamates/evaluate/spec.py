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
in a sandbox, with a time and size limit per record (RENDER_SECONDS, RENDER_CHARS): the same text for
every template lm-eval accepts, without attribute access to Python internals from a downloaded task
file. Every key of lm-eval's task schema is read with lm-eval's meaning (HARNESS_KEYS; null is unset;
keys that do not apply to local files are ignored with a one-line note; what cannot be honoured is
refused naming file:line and key). `!function` (Python hooks: process_docs, a callable doc_to_text)
runs only with allow_task_code (--allow-task-code), resolved as lm-eval resolves it; without it, it
is refused naming the flag. Text meant as a placeholder but scored as written (a `{field}`, a YAML
list of `{{...}}` choices) is refused from the first record (docs/evaluation.md).

Decisions where lm-eval has no local-file equivalent: relative `data_files` are relative to the task
file; `${DATAMATES_DATA}` and `$ENV` expand; a single file (not a split mapping) is the evaluated
split; one file per split; includes and data files lie below the task file's folder, the data bundle
or the shipped tasks unless allow_any_path. `metric_list` names what is averaged: acc_norm when it
lists acc_norm, else acc. acc_norm divides by the characters of each choice (lm-eval); for multiple
inputs the choices are the contexts, so by each context's length (lm-eval's process_results). A gold
outside the choices is warned about per record and scores 0 (lm-eval).
"""

from __future__ import annotations

import ast
import functools
import gzip
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

from datamates.config.base import check_name, data_dir, expand_vars
from datamates.core.jsonl import replace_invalid_unicode
from datamates.errors import ConfigError, InputError
from datamates.identity import FULL, hash_file, hash_text
from datamates.log import get_logger

log = get_logger(__name__)

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"

# The MATES evaluation set (Yu et al. 2024, Table 1), in the paper's column order.
TASK_GROUPS: dict[str, list[str]] = {
    "nine": ["sciq", "arc_easy", "arc_challenge", "logiqa", "openbookqa", "boolq", "hellaswag", "piqa",
             "winogrande"],
}

# Every key of lm-eval's TaskConfig (lm_eval/config/task.py, 0.4.13) and what datamates does with it.
HARNESS_KEYS: dict[str, str] = {
    "task": "name shown in the tables (default: the file name without .yaml)",
    "include": "another task YAML (relative to this one) whose keys this file extends, as lm-eval",
    "tag": "lm-eval tag(s) (documentation)",
    "task_alias": "lm-eval display name (documentation)",
    "dataset_path": "json: the records are JSON lines in data_files",
    "dataset_name": "a Hugging Face configuration name: does not apply to local JSON lines (ignored, with a note)",
    "dataset_kwargs": "{data_files: FILE or {split: FILE}}; download options are ignored (with a note)",
    "data_files": "shorthand for dataset_kwargs.data_files (lm-eval itself needs the long form)",
    "custom_dataset": "Python code that builds the data: refused (give data_files)",
    "training_split": "split name of the few-shot examples (null: unset)",
    "validation_split": "split evaluated when test_split is unset (null: unset)",
    "test_split": "split evaluated (null: unset)",
    "fewshot_split": "split the few-shot examples come from (null: unset)",
    "process_docs": "!function that maps the split (a datasets.Dataset) to the evaluated docs (--allow-task-code)",
    "doc_to_text": "Jinja2 template, field name, int or !function: the context (an int: multiple inputs)",
    "doc_to_target": "Jinja2 template, field name, int, list or !function: the gold index / text, or the target",
    "doc_to_choice": "Jinja2 template giving a list, field name, list, mapping or !function: the choices",
    "doc_to_image": "multimodal input: refused unless null",
    "doc_to_audio": "multimodal input: refused unless null",
    "unsafe_code": "false (true marks code-execution tasks: refused)",
    "process_results": "!function computing metrics: refused unless null (datamates computes the metrics)",
    "use_prompt": "a promptsource prompt: refused unless null",
    "description": "Jinja2 template or field name prepended to every context (before the shots)",
    "target_delimiter": "string between context and continuation (default ' ')",
    "fewshot_delimiter": "string after each in-context example (default '\\n\\n')",
    "fewshot_config": "{sampler: default | first_n, split: SPLIT}: how the shots are chosen",
    "num_fewshot": "in-context examples (eval.num_fewshot, when set, overrides it)",
    "metric_list": "acc, acc_norm, acc_bytes, exact_match, brier_score, f1, mcc (multiple_choice); "
                   "perplexity, acc (loglikelihood)",
    "output_type": "multiple_choice or loglikelihood",
    "generation_kwargs": "generation settings: not used by scored output types (ignored, with a note)",
    "repeats": "repetitions of each request: scoring is deterministic, so any value gives the same numbers",
    "filter_list": "answer filters of generated text: refused unless null",
    "should_decontaminate": "lm-eval decontamination flag (not used)",
    "doc_to_decontamination_query": "lm-eval decontamination query (not used)",
    "gen_prefix": "a prefix before the answer: refused unless null",
    "metadata": "free mapping; datamates reads metadata.notes and metadata.harness_task",
}
# set to anything but null (or the default), these cannot be honoured: refused naming file:line and key
UNSUPPORTED_KEYS = {"custom_dataset": "Python code that builds the data; give dataset_path: json with data_files",
                    "doc_to_image": "multimodal tasks are not scored", "doc_to_audio": "multimodal tasks are not scored",
                    "process_results": "datamates computes the metrics itself (metric_list)",
                    "use_prompt": "promptsource prompts are not supported; write doc_to_text / doc_to_choice",
                    "filter_list": "filters apply to generated text; datamates scores log-likelihoods",
                    "gen_prefix": "a generation prefix is not supported; put it in doc_to_text"}
GROUP_KEYS = ("group", "group_alias", "task_list", "aggregate_metric_list")
OUTPUT_TYPES = ("multiple_choice", "loglikelihood")
METRICS = {"multiple_choice": ("acc", "acc_norm", "acc_bytes", "exact_match", "brier_score", "f1", "mcc"),
           "loglikelihood": ("perplexity", "acc")}
DEFAULT_METRICS = {"multiple_choice": ["acc", "acc_norm"], "loglikelihood": ["perplexity", "acc"]}  # lm-eval's
# dataset_kwargs that only steer a download or a cache: no effect on local JSON lines
DOWNLOAD_KWARGS = ("trust_remote_code", "revision", "cache_dir", "token", "use_auth_token", "download_mode",
                   "verification_mode", "keep_in_memory", "num_proc", "streaming", "storage_options")
RENDER_SECONDS = 5.0  # per record and template: a longer render is an error (issue 24: nested loops)
RENDER_CHARS = 1_000_000  # per record and template: a longer text is an error


# ----------------------------------------------------------------------------- YAML and Jinja2

@dataclass(frozen=True)
class FunctionRef:
    """A `!function module.name` value as written: resolved only with allow_task_code (lm-eval's
    lm_eval/tasks/_yaml_loader.py `_import_func_in_yml`, relative to the YAML file that holds it)."""

    qual: str
    file: Path  # the YAML file that holds the tag
    line: int

    def __str__(self) -> str:
        return f"!function {self.qual}"


class HarnessLoader(yaml.SafeLoader):
    """yaml.SafeLoader that keeps lm-eval's `!function` tag as a FunctionRef (nothing is imported here)."""

    task_file: Path = Path(".")


def _function_tag(loader: HarnessLoader, node: yaml.Node) -> Any:
    return FunctionRef(str(loader.construct_scalar(node)), loader.task_file, node.start_mark.line + 1)  # type: ignore[arg-type]


HarnessLoader.add_constructor("!function", _function_tag)


def _load_yaml_text(text: str, path: Path) -> Any:
    loader = HarnessLoader(text)
    loader.task_file = path
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _module_name(path: Path) -> str:
    return "datamates_task_code_" + hash_text(str(path))


def resolve_function(ref: FunctionRef) -> tuple[Any, Path | None]:
    """lm-eval's resolution of `!function mod.name` (lm_eval/tasks/_yaml_loader.py): first
    `<yaml folder>/mod.py` (dots become folders), executed as a module; else an importable module
    `mod`. Returns the function and the file it came from (None: an installed module)."""
    import importlib.util
    import sys

    mod_path, _, fn_name = ref.qual.rpartition(".")
    where = f"{ref.file}:{ref.line}"
    if not mod_path:
        raise ConfigError(f"{where}: '!function {ref.qual}': write module.function (e.g. utils.process_docs)")
    rel = (ref.file.parent / f"{mod_path.replace('.', '/')}.py").resolve()
    if rel.exists():
        name = _module_name(rel)
        mtime = rel.stat().st_mtime_ns
        module = sys.modules.get(name)
        if module is None or getattr(module, "__mtime__", None) != mtime:
            spec = importlib.util.spec_from_file_location(name, rel)
            if spec is None or spec.loader is None:
                raise ConfigError(f"{where}: '!function {ref.qual}': cannot load {rel}")
            module = importlib.util.module_from_spec(spec)
            module.__mtime__ = mtime  # type: ignore[attr-defined]
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # the task's own code failed: one line, naming it
                raise ConfigError(f"{where}: '!function {ref.qual}': importing {rel} raised "
                                  f"{type(e).__name__}: {e}") from None
            sys.modules[name] = module
        src: Path | None = rel
    else:
        try:
            module = __import__(mod_path, fromlist=[fn_name])
        except ImportError:
            raise ConfigError(f"{where}: '!function {ref.qual}': no file {rel} and no importable module "
                              f"'{mod_path}'") from None
        src = None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{where}: '!function {ref.qual}': {src or mod_path} has no function '{fn_name}'")
    return fn, src


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """lm-eval's `regex_replace` Jinja filter: re.sub."""
    return re.sub(pattern, repl, string, count=count)


class RenderLimit(Exception):
    """A template ran past RENDER_SECONDS or RENDER_CHARS for one record."""


class _LimitedSandbox(SandboxedEnvironment):
    """lm-eval's Jinja2 environment in a sandbox, with `*` and `**` checked before they run (one C
    call could otherwise build a gigabyte string or a huge int that no time limit can interrupt)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):  # type: ignore[override]
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, (str, list, tuple)) and isinstance(b, int) and len(a) * b > RENDER_CHARS:
                    raise RenderLimit(f"'*' would build {len(a) * b:,} items (limit {RENDER_CHARS:,})")
        if operator == "**" and isinstance(right, (int, float)) and isinstance(left, (int, float)):
            if abs(right) > 10_000 and abs(left) > 1:
                raise RenderLimit(f"'**' with exponent {right} (limit 10,000)")
        return super().call_binop(context, operator, left, right)


JINJA = _LimitedSandbox(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
JINJA.filters["regex_replace"] = _regex_replace


def render(template: Any, doc: dict[str, Any]) -> str:
    """template.render(**doc) within RENDER_SECONDS and RENDER_CHARS (RenderLimit otherwise): the
    output is generated piece by piece and counted, and, in the main thread, an interval timer
    interrupts a render that produces nothing for too long (nested loops)."""
    import signal
    import threading
    import time

    deadline = time.monotonic() + RENDER_SECONDS
    timer = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    old = None
    if timer:
        def _alarm(signum, frame):
            raise RenderLimit(f"rendering took more than {RENDER_SECONDS:g} s")

        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS)
    try:
        parts, n = [], 0
        for piece in template.generate(**doc):
            parts.append(piece)
            n += len(piece)
            if n > RENDER_CHARS:
                raise RenderLimit(f"the rendered text passed {RENDER_CHARS:,} characters")
            if time.monotonic() > deadline:
                raise RenderLimit(f"rendering took more than {RENDER_SECONDS:g} s")
        return "".join(parts)
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


class FieldError(Exception):
    """A record lacks a field, or a field has the wrong type (turned into an InputError with file:line)."""


@dataclass(frozen=True)
class Rule:
    """One of doc_to_text / doc_to_target / doc_to_choice / description: a literal, a field name, a
    template, or (allow_task_code) a function of the record."""

    key: str
    value: Any  # as written in the YAML (a FunctionRef for !function)
    template: Any = None  # compiled jinja2.Template (strings that are not a field name)
    function: Any = None  # the resolved !function

    def apply(self, doc: dict[str, Any], fields: set[str], has_choices: bool) -> Any:
        v = self.value
        if self.function is not None:
            try:
                return self.function(doc)
            except Exception as e:  # the task's own code failed on this record
                raise FieldError(f"{v} raised {type(e).__name__}: {e}") from None
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
            text = render(self.template, doc)
        except RenderLimit as e:
            raise FieldError(f"template stopped: {e} (a loop or a repetition too large for one record)") from None
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
        if self.key == "description":
            return text
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
    metrics: list[str] = field(default_factory=lambda: ["acc", "acc_norm"])  # metric_list (lm-eval's default)
    notes: str = ""
    harness_task: str = ""
    process_docs: Any = None  # the resolved !function (allow_task_code)
    fewshot_sampler: str = "default"  # fewshot_config.sampler: default (seeded draw) or first_n
    fewshot_unsupported: list[str] = field(default_factory=list)  # fewshot_config entries only k > 0 needs
    aggregations: dict[str, Any] = field(default_factory=dict)  # metric -> its !function aggregation
    ignored: list[str] = field(default_factory=list)  # one-line notes: keys that do not apply here
    code_files: list[Path] = field(default_factory=list)  # the Python files of its !function values
    raw: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # key -> "file:line" (for messages)

    @property
    def is_mc(self) -> bool:
        return self.output_type == "multiple_choice"

    def fingerprint(self) -> str:
        """Hash of the task's settings and of its data files' bytes: the resume key. Content, not
        mtime: a data bundle copied or re-mounted elsewhere keeps its finished evaluations."""
        files = [self.data] + ([self.fewshot_data] if self.fewshot_data else []) + self.code_files
        blob = json.dumps([_portable(self.raw), [_file_digest(p) if p.exists() else None for p in files]],
                          sort_keys=True, default=str)
        return hash_text(blob)


def _portable(raw: dict[str, Any]) -> dict[str, Any]:
    """The settings without the data paths (their bytes are hashed instead)."""
    return {k: v for k, v in raw.items() if k not in ("dataset_kwargs", "data_files")}


@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    return hash_file(path, digits=FULL)


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


def _roots(path: Path) -> list[Path]:
    """Where a task file may read from without allow_any_path: its own folder (and below), the
    data bundle ($DATAMATES_DATA) and the shipped tasks."""
    return [path.resolve().parent, data_dir().resolve(), TASKS_DIR]


def _outside(p: Path, roots: list[Path] | None) -> bool:
    return roots is not None and not any(p.resolve().is_relative_to(r) for r in roots)


OUTSIDE_HINT = ("a task file reads only below its own folder, the data bundle ($DATAMATES_DATA) and the shipped "
                "tasks; pass --allow-any-task-path (eval.allow_any_task_path: true) if you trust this file")


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), by: tuple[Path, int] | None = None,
               roots: list[Path] | None = None) -> tuple[dict[str, Any], dict[str, tuple[Path, int]]]:
    """The file's keys (its `include`s merged underneath, as lm-eval's load_yaml) and where each key
    was written. `by`: the including file and the line of its `include` key (for messages);
    `roots`: the folders an include may come from (None: anywhere)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        if by is not None:
            raise ConfigError(f"{by[0]}:{by[1]}: key 'include': {path} not found (a path relative to "
                              f"{by[0].parent})") from None
        raise ConfigError(f"{path}: task file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; give an lm-eval task .yaml") from None
    try:
        raw = _load_yaml_text(text, path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{path}:{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a task file is a mapping of lm-eval task keys ({', '.join(HARNESS_KEYS)})")
    lines = {k: (path, n) for k, n in _key_lines(text).items()}
    if "include" in raw:
        incs = raw.pop("include")
        at = lines.pop("include", (path, 0))
        merged: dict[str, Any] = {}
        merged_lines: dict[str, tuple[Path, int]] = {}
        for inc in incs if isinstance(incs, list) else [incs]:
            if not isinstance(inc, str):
                raise ConfigError(f"{path}:{at[1]}: key 'include': expected a file name, got {inc!r}")
            base_path = Path(expand_vars(inc))
            base_path = base_path if base_path.is_absolute() else path.parent / base_path
            if base_path.resolve() in seen + (path.resolve(),):
                raise ConfigError(f"{path}:{at[1]}: key 'include': {inc} includes itself")
            if _outside(base_path, roots):
                raise ConfigError(f"{path}:{at[1]}: key 'include': {base_path} is outside the task's folder; "
                                  f"{OUTSIDE_HINT}")
            base, base_lines = _read_yaml(base_path, seen + (path.resolve(),), by=at, roots=roots)
            base.pop("task_list", None)  # lm-eval: not inherited
            merged.update(base)
            merged_lines.update(base_lines)
        raw, lines = {**merged, **raw}, {**merged_lines, **lines}
    return raw, lines


def _functions(v: Any, key: str) -> Iterator[tuple[str, FunctionRef]]:
    """Every !function in a value (nested mappings and lists), with the key path it sits under."""
    if isinstance(v, FunctionRef):
        yield key, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _functions(x, f"{key}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _functions(x, f"{key}[{i}]")


class _Where:
    """Where a key of a task file is (file:line, its `include`s resolved) and the one-line error naming it."""

    def __init__(self, path: Path, lines: dict[str, tuple[Path, Any]]):
        self.path, self.lines = path, lines

    def __call__(self, key: str) -> str:
        f, n = self.lines.get(key, (self.path, "?"))
        return f"{f}:{n}"

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self(key)}: key '{key}': {msg}")


def _check_keys(raw: dict[str, Any], where: _Where) -> None:
    """Only keys of lm-eval's task schema, none that cannot be honoured."""
    err = where.err
    for k in raw:
        if k in GROUP_KEYS:
            raise err(k, "this is an lm-eval group file; give the task files of the group (their paths) instead")
        if k not in HARNESS_KEYS:
            raise ConfigError(f"{where(k)}: unknown key '{k}' (not in lm-eval's task schema); allowed keys: "
                              f"{', '.join(HARNESS_KEYS)}")
    for k, why in UNSUPPORTED_KEYS.items():
        if raw.get(k) is not None:
            raise err(k, f"{why}; remove it (or set it to null)")
    if raw.get("unsafe_code") not in (None, False):
        raise err("unsafe_code", "code-execution tasks are not scored (generate_until); remove it")


def _task_code(raw: dict[str, Any], allow_task_code: bool) -> tuple[dict[str, Any], list[Path]]:
    """The `!function` values resolved ({key path: function}) and their source files."""
    # !function: Python code beside the task file, run only when the user said so
    refs = [kp for k, v in raw.items() for kp in _functions(v, k)]
    code: dict[str, Any] = {}
    code_files: list[Path] = []
    for kp, ref in refs:
        if not allow_task_code:
            raise ConfigError(f"{ref.file}:{ref.line}: key '{kp}': '!function {ref.qual}' runs Python code from "
                              f"{ref.file.parent}; pass --allow-task-code (eval.allow_task_code: true) if you trust "
                              f"that folder, or write the step as a Jinja2 template")
        if kp not in ("process_docs", "doc_to_text", "doc_to_target", "doc_to_choice", "description") and \
                not re.fullmatch(r"metric_list\[\d+\]\.aggregation", kp):
            raise ConfigError(f"{ref.file}:{ref.line}: key '{kp}': a !function here cannot be honoured (datamates "
                              f"runs task code for process_docs, doc_to_text, doc_to_target, doc_to_choice, "
                              f"description and a metric's aggregation)")
        fn, src = resolve_function(ref)
        code[kp] = fn
        if src is not None:
            code_files.append(src)
    return code, code_files


def _check_basics(raw: dict[str, Any], path: Path, where: _Where, ignored: list[str]) -> tuple[str, str]:
    """(output_type, task name): the text keys, output_type and dataset_path checked."""
    err = where.err
    for k in ("task", "dataset_path", "training_split", "validation_split", "test_split", "fewshot_split",
              "output_type", "target_delimiter", "fewshot_delimiter", "dataset_name"):
        if raw.get(k) is not None and not isinstance(raw[k], str):
            raise err(k, f"expected text or null, got {type(raw[k]).__name__} {raw[k]!r}")
    output_type = raw.get("output_type")
    if output_type is None:
        raise ConfigError(f"{path}: missing key 'output_type' (lm-eval's default is generate_until); "
                          f"set multiple_choice or loglikelihood")
    if output_type not in OUTPUT_TYPES:
        raise err("output_type", f"{output_type!r}: datamates scores {', '.join(OUTPUT_TYPES)}")
    if raw.get("generation_kwargs") is not None:
        ignored.append(f"{where('generation_kwargs')}: key 'generation_kwargs' does not apply to output_type "
                       f"{output_type}; ignored (lm-eval ignores it too, with a warning)")
    if raw.get("repeats") not in (None, 1):
        ignored.append(f"{where('repeats')}: key 'repeats': {raw['repeats']!r} repetitions of a log-likelihood "
                       f"give the same number; scored once")
    if raw.get("dataset_path") is None:
        raise ConfigError(f"{path}: missing key 'dataset_path' (write dataset_path: json with data_files)")
    if raw["dataset_path"] != "json":
        raise err("dataset_path", f"{raw['dataset_path']!r}: datamates reads local JSON lines; write "
                  f"dataset_path: json and dataset_kwargs: {{data_files: {{test: FILE.jsonl}}}} (save a Hugging "
                  f"Face split with Dataset.to_json)")
    if raw.get("dataset_name") is not None:
        ignored.append(f"{where('dataset_name')}: key 'dataset_name' ({raw['dataset_name']!r}) does not apply to "
                       f"dataset_path: json; ignored (the data are the files of data_files)")
    name = raw.get("task") or path.stem
    try:  # the name becomes result and sample file names: '../x' would write outside the output
        check_name(name, "task")
    except ConfigError as e:
        raise ConfigError(f"{where('task')}: {e}") from None
    return output_type, name


def _data_files(raw: dict[str, Any], path: Path, roots: Any, where: _Where, ignored: list[str]
                ) -> tuple[Path, Path | None, str, dict[str, Any], list[str]]:
    """(evaluated file, few-shot file or None, evaluated split, fewshot_config, what of fewshot_config
    cannot be honoured): data files below the allowed roots, one file per split."""
    err = where.err
    kwargs = raw.get("dataset_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise err("dataset_kwargs", "expected a mapping with data_files (a file, or a mapping split -> file)")
    for k in kwargs:
        if k == "data_files":
            continue
        if k in DOWNLOAD_KWARGS:
            ignored.append(f"{where('dataset_kwargs')}: key 'dataset_kwargs.{k}' only steers a download; ignored")
        else:
            raise err("dataset_kwargs", f"'{k}' cannot be honoured for local JSON lines; datamates reads "
                                        f"data_files only (a file, or a mapping split -> file)")
    if "data_files" in raw and "data_files" in kwargs:
        raise err("data_files", "given twice (also in dataset_kwargs); keep one")
    dkey = "data_files" if "data_files" in raw else "dataset_kwargs"
    files = raw.get("data_files", kwargs.get("data_files"))
    if files is None:
        raise ConfigError(f"{path}: missing data_files (dataset_kwargs: {{data_files: {{test: FILE.jsonl}}}})")
    split = raw.get("test_split") or raw.get("validation_split")  # lm-eval's eval_docs: test, else validation
    if not split:
        raise ConfigError(f"{path}: missing key 'test_split' (or 'validation_split'): the split to evaluate")

    def one_file(v: Any, what: str) -> Path:
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if not isinstance(v, str):
            raise err(dkey, f"{what}: expected one file name, got {v!r} (concatenate several files into one)")
        p = Path(expand_vars(v))
        p = p if p.is_absolute() else path.parent / p
        if _outside(p, roots):
            raise err(dkey, f"{what}: {p} is outside the task's folder; {OUTSIDE_HINT}")
        return p

    fcfg = raw.get("fewshot_config") or {}
    if not isinstance(fcfg, dict):
        raise err("fewshot_config", f"expected a mapping, got {type(fcfg).__name__}")
    # only k-shot prompts use these: what cannot be honoured is refused when shots are asked for
    fewshot_unsupported = []
    for k, v in fcfg.items():
        if k == "sampler" and v not in ("default", "first_n"):
            fewshot_unsupported.append(f"sampler {v!r} (datamates draws shots as 'default', seeded, or 'first_n')")
        elif k not in ("sampler", "split") and v is not None:
            fewshot_unsupported.append(f"'{k}' (supported: sampler, split)")
    fewshot_split = fcfg.get("split") or raw.get("fewshot_split")
    if isinstance(files, dict):
        for s, v in files.items():
            one_file(v, f"split '{s}'")
        if split not in files:
            raise err(dkey, f"no file for the evaluated split '{split}'; data_files has: {', '.join(map(str, files))}")
        data = one_file(files[split], f"split '{split}'")
        few = next((s for s in (fewshot_split, raw.get("training_split"), raw.get("validation_split"),
                                raw.get("test_split")) if s and s in files), split)
        fewshot_data = None if few == split else one_file(files[few], f"split '{few}'")
    else:
        data, fewshot_data = one_file(files, "data_files"), None

    return data, fewshot_data, split, fcfg, fewshot_unsupported


def _rule(raw: dict[str, Any], code: dict[str, Any], key: str, where: _Where) -> Rule | None:
    """A template key (doc_to_text, doc_to_target, doc_to_choice, description) as a Rule."""
    err = where.err
    if key not in raw or raw[key] is None:
        return None
    v = raw[key]
    if key in code:
        return Rule(key, v, None, code[key])
    if isinstance(v, bool) or not isinstance(v, (str, int, list, dict)):
        raise err(key, f"expected a template, a field name, an int or a list, got {v!r}")
    if key in ("doc_to_text", "description") and not isinstance(v, (str, int)):
        raise err(key, f"expected a template, a field name or an int, got {type(v).__name__}")
    if key == "description" and isinstance(v, int):
        raise err(key, "expected a template or a field name")
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


def _metrics(raw: dict[str, Any], spec: TaskSpec, code: dict[str, Any], output_type: str, where: _Where) -> None:
    """spec.metrics, spec.metric and the metrics' !function aggregations from metric_list."""
    err = where.err
    metrics = []
    mlist = raw.get("metric_list")
    if mlist is not None and not isinstance(mlist, list):
        raise err("metric_list", f"expected a list of {{metric: NAME}}, got {type(mlist).__name__}")
    for i, m in enumerate(mlist or []):
        name_ = m.get("metric") if isinstance(m, dict) else m
        if name_ not in METRICS[output_type]:
            raise err("metric_list", f"item {i}: metric {name_!r}; datamates computes {', '.join(METRICS[output_type])} "
                                     f"for output_type {output_type}")
        agg = m.get("aggregation") if isinstance(m, dict) else None
        default_agg = {"perplexity": "perplexity", "brier_score": "brier_score", "f1": "f1",
                       "mcc": "matthews_corrcoef"}.get(name_, "mean")
        if isinstance(agg, FunctionRef):  # lm-eval: the function gets the metric's per-example items
            spec.aggregations[name_] = code[f"metric_list[{i}].aggregation"]
        elif agg is not None and agg != default_agg:
            raise err("metric_list", f"item {i}: aggregation {agg!r} of {name_}: datamates aggregates it by "
                                     f"{default_agg} (lm-eval's default)")
        metrics.append(name_)
    spec.metrics = list(dict.fromkeys(metrics)) if mlist else list(DEFAULT_METRICS[output_type])
    spec.metric = "acc_norm" if "acc_norm" in spec.metrics else "acc"


def load_spec(path: str | Path, *, allow_task_code: bool = False, allow_any_path: bool = False) -> TaskSpec:
    """Read and check a task file; every problem is a one-line ConfigError naming the file, line and key.

    lm-eval's meaning for every key of its task schema (HARNESS_KEYS): null is unset; keys that do
    not apply to local JSON lines are ignored with a one-line note (TaskSpec.ignored, logged);
    what cannot be honoured is refused. `!function` values run Python code from the task's folder:
    only with allow_task_code (--allow-task-code), resolved as lm-eval resolves them. `include`s and
    data files must lie below the task file's folder, the data bundle or the shipped tasks, unless
    allow_any_path (--allow-any-task-path)."""
    path = Path(path)
    roots = None if allow_any_path else _roots(path)
    raw, lines = _read_yaml(path, roots=roots)
    where = _Where(path, lines)
    err = where.err
    ignored: list[str] = []
    _check_keys(raw, where)
    code, code_files = _task_code(raw, allow_task_code)
    output_type, name = _check_basics(raw, path, where, ignored)
    data, fewshot_data, split, fcfg, fewshot_unsupported = _data_files(raw, path, roots, where, ignored)
    spec = TaskSpec(name=name, path=path, data=data, split=split, output_type=output_type,
                    target_delimiter=raw.get("target_delimiter") if raw.get("target_delimiter") is not None else " ",
                    fewshot_delimiter=raw.get("fewshot_delimiter") if raw.get("fewshot_delimiter") is not None
                    else "\n\n", fewshot_data=fewshot_data, raw=raw, where={k: where(k) for k in raw},
                    process_docs=code.get("process_docs"), fewshot_sampler=fcfg.get("sampler") or "default",
                    fewshot_unsupported=[f"{where('fewshot_config')}: key 'fewshot_config': {u}" for u in fewshot_unsupported],
                    code_files=sorted(set(code_files)))
    if raw.get("description") == "":
        raw = {k: v for k, v in raw.items() if k != "description"}  # lm-eval's default
    for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "description"):
        setattr(spec, k, _rule(raw, code, k, where) if k in raw else None)
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
    _metrics(raw, spec, code, output_type, where)
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise err("metadata", f"expected a mapping, got {type(meta).__name__}")
    spec.notes = str(meta.get("notes", "")).strip()
    spec.harness_task = str(meta.get("harness_task", ""))
    spec.ignored = ignored
    for note in ignored:
        log.info("note: %s", note)
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
    norm_bytes: list[int] = field(default_factory=list)  # per request: UTF-8 bytes acc_bytes divides by
    raw_gold: Any = None  # the gold as the task gave it (for the warning when it is outside the choices)


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


NO_GOLD = -100  # lm-eval's mark of a gold label outside the choices: the example scores 0


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
                gold = choices.index(gold) if gold in choices else NO_GOLD
            if isinstance(gold, bool) or not isinstance(gold, int):
                raise FieldError(f"gold must be an index or a choice's text, got {gold!r}")
        raw_gold = target if not multiple_input else text
        if not 0 <= gold < len(choices):
            gold = NO_GOLD
        # acc_norm divides each request's log-likelihood by len(choice) in characters, acc_bytes by its
        # UTF-8 bytes; for multiple inputs the choices are the contexts (lm-eval's process_results)
        if multiple_input:
            shot = choices[gold] + cont + spec.fewshot_delimiter if gold != NO_GOLD else ""
            return Doc(0, list(choices), [cont] * len(choices), [len(c) for c in choices], gold, shot, desc,
                       [len(c.encode("utf-8")) for c in choices], raw_gold)
        key = "doc_to_text"
        ctx = _text(text, "the context")
        conts = [d + c for c in choices]
        shot = ctx + conts[gold] + spec.fewshot_delimiter if gold != NO_GOLD else ""
        return Doc(0, [ctx] * len(choices), conts, [len(c) for c in choices], gold, shot, desc,
                   [len(c.encode("utf-8")) for c in choices], raw_gold)
    except FieldError as e:
        raise FieldError(f"{e} (key '{key}')") from None


_SINGLE_BRACE = re.compile(r"(?<!\{)\{\s*([A-Za-z_]\w*)[^{}]*\}(?!\})")
_JINJA_MARK = re.compile(r"\{\{|\{%|\{#")


def _check_templates(spec: TaskSpec, path: Path, fields: set[str]) -> None:
    """The guard against text that is meant as a placeholder but is scored as written, from the
    first record on (--limit 1): a `{field}` (another template language) in the literal text of
    any template (doc_to_text, doc_to_choice, doc_to_target, description), Jinja2 syntax or a
    `{field}` inside a YAML list of choices (lm-eval does not render a list: `{{answerA}}` would be
    scored as it stands), and a one-word template that names no field (a misspelt field name)."""
    def refuse(key: str, msg: str) -> InputError:
        return InputError(f"{spec.where.get(key, spec.path)}: key '{key}': {msg} (records: {path})")

    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "description"):
        r: Rule | None = getattr(spec, key)
        if r is None or r.function is not None:
            continue
        v = r.value
        if isinstance(v, (list, dict)):
            for item in (v.values() if isinstance(v, dict) else v):
                if not isinstance(item, str):
                    continue
                m = _SINGLE_BRACE.search(item)
                if _JINJA_MARK.search(item) or (m and m.group(1) in fields):
                    raise refuse(key, f"the list item {item!r} is not rendered (lm-eval scores a YAML list as "
                                      f"written); write one template that gives the list, e.g. "
                                      f"\"{{{{[{', '.join(sorted(fields)[:2]) or 'a, b'}]}}}}\"")
            continue
        if not isinstance(v, str) or v in fields:
            continue
        literal = "".join(n.data for n in JINJA.parse(v).find_all(jinja2.nodes.TemplateData))
        for m in _SINGLE_BRACE.finditer(literal):
            if m.group(1) in fields:
                raise refuse(key, f"the template {v!r} has {m.group(0)}, which Jinja2 leaves as text "
                                  f"(write {{{{{m.group(1)}}}}} for the field)")
        if key in ("doc_to_text", "doc_to_target") and re.fullmatch(r"[A-Za-z_]\w*", v):
            raise refuse(key, f"{v!r} names no field of the records (fields: {', '.join(sorted(fields))}); "
                              f"it would be scored as the text {v!r}")


def _constant(spec: TaskSpec, docs: list[Doc]) -> str | None:
    """The first template key when every record gives the same requests (two or more records):
    nothing varies, so nothing is measured. A constant context is fine when the choices vary (BLiMP)."""
    if len(docs) < 2 or len({(tuple(d.contexts), tuple(d.continuations)) for d in docs}) > 1:
        return None
    for k in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        r = getattr(spec, k)
        if r is not None and r.is_template:
            return k
    return "doc_to_text"


def _processed(spec: TaskSpec, recs: list[tuple[int, dict[str, Any]]], path: Path
               ) -> tuple[list[tuple[int, dict[str, Any]]], set[str]]:
    """process_docs (a !function, allow_task_code) over the split as lm-eval gives it: a
    datasets.Dataset of the records. Line numbers are kept when it keeps the count, else the
    position after processing."""
    try:
        import datasets
    except ImportError:
        raise InputError(f"{spec.where.get('process_docs')}: process_docs needs the `datasets` package "
                         f"(pip install 'datamates[io]')") from None
    datasets.disable_progress_bars()  # datamates shows its own progress
    try:
        out = spec.process_docs(datasets.Dataset.from_list([r for _, r in recs]))
        rows = [dict(x) for x in out]
    except Exception as e:  # the task's own code failed
        raise InputError(f"{spec.where.get('process_docs')}: key 'process_docs': {spec.raw.get('process_docs')} "
                         f"raised {type(e).__name__}: {e} on {path}") from None
    fields = set(getattr(out, "column_names", None) or {k for r in rows for k in r})
    lines = [n for n, _ in recs] if len(rows) == len(recs) else list(range(1, len(rows) + 1))
    return list(zip(lines, rows)), fields


def load_docs(spec: TaskSpec, limit: int | None = None, *, fewshot: bool = False) -> list[Doc]:
    """The examples of the task's data file (the first `limit` of them; `fewshot`: of its few-shot
    file), checked: a missing field, an empty choice list, an empty file, a placeholder left as
    text or requests that are the same for every record is an InputError naming the file, line
    and key. A gold label outside the choices is warned about per record and scores 0 (lm-eval);
    when no evaluated record has a gold inside its choices it is an error."""
    path = spec.fewshot_data if fewshot and spec.fewshot_data else spec.data
    recs = _records(path, None if spec.process_docs is not None else limit)
    if not recs:
        raise InputError(f"{path}: no examples (task {spec.path})")
    fields: set[str] = set()
    if spec.process_docs is not None:
        recs, fields = _processed(spec, recs, path)
        recs = recs[:limit] if limit is not None else recs
        if not recs:
            raise InputError(f"{path}: no examples after process_docs (task {spec.path})")
    else:
        for _, r in recs:
            fields.update(r)
    _check_templates(spec, path, fields)
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
        raise InputError(f"{spec.where.get(bad, spec.path)}: key '{bad}': the template {v!r} gives the same requests "
                         f"for all {len(docs)} records of {path} (name a field, or use {{{{field}}}} placeholders)")
    out = [d for d in docs if d.gold == NO_GOLD]
    if out and not fewshot:
        key = "doc_to_text" if multiple_input else "doc_to_target"
        for d in out[:20]:
            log.warning("%s:%d: gold %r is not one of the %d choices (key '%s', task %s): scored 0, as lm-eval",
                        path, d.line, d.raw_gold, len(d.contexts), key, spec.name)
        if len(out) > 20:
            log.warning("%s: %d more records with a gold outside the choices (task %s)", path, len(out) - 20, spec.name)
        if len(out) == len(docs):
            raise InputError(f"{spec.where.get(key, spec.path)}: key '{key}': no record of {path} has its gold among "
                             f"the choices (first: line {docs[0].line}, gold {docs[0].raw_gold!r}, choices "
                             f"{docs[0].contexts if multiple_input else [c[len(spec.target_delimiter):] for c in docs[0].continuations]!r:.120}); "
                             f"check doc_to_target (a 1-based label needs '- 1', a letter needs an index)")
    return docs


def fewshot_prefixes(spec: TaskSpec, docs: list[Doc], n_eval: int, k: int, seed: int,
                     shots: list[Doc] | None = None) -> list[str]:
    """For each of the first n_eval docs: its description, then k solved examples drawn with
    rng(seed, doc index) from `shots` (the few-shot split), or from `docs` without the example itself."""
    if k == 0:
        return [d.description for d in docs[:n_eval]]
    if spec.fewshot_unsupported:
        raise ConfigError(f"{spec.fewshot_unsupported[0]} cannot be honoured with num_fewshot = {k}; "
                          f"evaluate 0-shot or remove it")
    pool = shots if shots is not None else docs
    skip_self = shots is None
    if k > len(pool) - skip_self:
        raise ConfigError(f"num_fewshot = {k}: task {spec.name} has only {len(pool)} few-shot examples")
    out = []
    for i in range(n_eval):
        if spec.fewshot_sampler == "first_n":  # lm-eval's FirstNSampler: the first k, in file order
            pick = np.arange(k)
        else:
            pick = np.random.default_rng([seed, i]).choice(len(pool) - skip_self, size=k, replace=False)
        if skip_self:
            pick = pick + (pick >= i)  # skip the example itself
        out.append(docs[i].description + "".join(pool[j].shot for j in pick))
    return out
