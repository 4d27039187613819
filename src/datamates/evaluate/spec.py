"""Task specs: a small YAML file turns each JSONL record into lm-evaluation-harness requests.

A multiple-choice example becomes one (context, continuation) request per choice, scored by the
summed log-likelihood of the continuation tokens (lm-eval's `output_type: multiple_choice`):

    choices_are: continuations   request_k = (context,    target_delimiter + choice_k)
    choices_are: contexts        request_k = (choice_k,   target_delimiter + continuation)
                                 (WinoGrande's partial scoring; lm-eval's "multiple inputs")

A `loglikelihood` spec (LAMBADA) has one request per example, (context, delimiter + continuation).
With k shots, `shot_1 + fewshot_delimiter + ... + shot_k + fewshot_delimiter` is prepended to every
context, where a shot is another example of the same file written as context + delimiter + answer.

Templates are plain text with `{field}` placeholders, no Python:

    {question}                a record field          {options[0]}   an item of a list field
    {meta.title}              a nested field          {{ and }}      literal braces
    {support|lstrip}          filters: strip lstrip rstrip lower upper capitalize
    {query|removeprefix('Passage: ')}    removeprefix removesuffix (one quoted argument),
                                         replace('a', 'b')

A template that is exactly one placeholder keeps the field's type (a list of choices, an int gold
index); anything else renders to a string.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datamates.config.base import check_name, expand_vars, parse_yaml
from datamates.errors import ConfigError, InputError

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"

# The MATES evaluation set (Yu et al. 2024, Table 1), in the paper's column order.
TASK_GROUPS: dict[str, list[str]] = {
    "nine": ["sciq", "arc_easy", "arc_challenge", "logiqa", "openbookqa", "boolq", "hellaswag", "piqa",
             "winogrande"],
}

SPEC_KEYS: dict[str, str] = {
    "task": "name shown in the tables (default: the file name without .yaml)",
    "notes": "free text: provenance and every difference from lm-evaluation-harness",
    "harness_task": "the lm-evaluation-harness task this spec mirrors (documentation)",
    "data": "JSONL or JSONL.gz file; ${DATAMATES_DATA} and $ENV expand; relative paths are relative to the spec",
    "split": "which split of the dataset the file holds (reported next to the numbers)",
    "output_type": "multiple_choice (default) or loglikelihood",
    "context": "template of the context (choices_are: continuations, and loglikelihood)",
    "choices": "template naming a list field, or a YAML list of templates",
    "choices_are": "continuations (default) or contexts (each choice is a context for `continuation`)",
    "continuation": "template of the continuation (choices_are: contexts, and loglikelihood)",
    "gold": "the right choice: an int, or a template giving its index or its text",
    "target_delimiter": "string between context and continuation (default ' ')",
    "fewshot_delimiter": "string after each in-context example (default '\\n\\n')",
    "metric": "acc or acc_norm: what this task contributes to averages (default acc_norm)",
}
OUTPUT_TYPES = ("multiple_choice", "loglikelihood")


# ----------------------------------------------------------------------------- templates

FILTERS: dict[str, tuple[int, Callable[..., str]]] = {
    "strip": (0, str.strip), "lstrip": (0, str.lstrip), "rstrip": (0, str.rstrip),
    "lower": (0, str.lower), "upper": (0, str.upper), "capitalize": (0, str.capitalize),
    "removeprefix": (1, str.removeprefix), "removesuffix": (1, str.removesuffix), "replace": (2, str.replace),
}

_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILTER_RE = re.compile(r"\s*([A-Za-z_]+)\s*(?:\((.*)\))?\s*$", re.S)
_ARG_RE = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*(,|$)""", re.S)


class FieldError(Exception):
    """A record lacks a field, or a field has the wrong type (turned into an InputError with file:line)."""


@dataclass(frozen=True)
class _Placeholder:
    text: str  # as written, for messages
    path: tuple[str | int, ...]
    filters: tuple[tuple[str, tuple[str, ...]], ...]

    def value(self, record: Any) -> Any:
        v = record
        for i, step in enumerate(self.path):
            where = _path_str(self.path[: i + 1])
            if isinstance(step, int):
                if not isinstance(v, list):
                    raise FieldError(f"field '{_path_str(self.path[:i])}' is not a list")
                if not -len(v) <= step < len(v):
                    raise FieldError(f"field '{where}' is out of range (the list has {len(v)} items)")
                v = v[step]
            else:
                if not isinstance(v, dict) or step not in v:
                    raise FieldError(f"field '{where}' is missing")
                v = v[step]
        for name, args in self.filters:
            if not isinstance(v, str):
                raise FieldError(f"filter '{name}' needs text, field '{_path_str(self.path)}' is {type(v).__name__}")
            v = FILTERS[name][1](v, *args)
        return v


def _path_str(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


class Template:
    """`{field}` placeholders in literal text (see the module docstring)."""

    def __init__(self, source: str, key: str):
        self.source = source
        self.key = key
        self.parts: list[str | _Placeholder] = []
        i, lit = 0, []
        while i < len(source):
            c = source[i]
            if source.startswith("{{", i) or source.startswith("}}", i):
                lit.append(c)
                i += 2
            elif c == "{":
                j = source.find("}", i)
                if j < 0:
                    raise ConfigError(f"key '{key}': unclosed '{{' in template {source!r} (write '{{{{' for a brace)")
                if lit:
                    self.parts.append("".join(lit))
                    lit = []
                self.parts.append(self._parse(source[i + 1 : j]))
                i = j + 1
            elif c == "}":
                raise ConfigError(f"key '{key}': unmatched '}}' in template {source!r} (write '}}}}' for a brace)")
            else:
                lit.append(c)
                i += 1
        if lit:
            self.parts.append("".join(lit))

    def _parse(self, inner: str) -> _Placeholder:
        # split off filters on '|' outside quotes
        pieces, cur, quote = [], [], None
        for ch in inner:
            if quote:
                cur.append(ch)
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
                cur.append(ch)
            elif ch == "|":
                pieces.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        pieces.append("".join(cur))
        path = self._parse_path(pieces[0].strip(), inner)
        filters = []
        for raw in pieces[1:]:
            m = _FILTER_RE.match(raw)
            if not m:
                raise ConfigError(f"key '{self.key}': cannot read filter {raw.strip()!r} in {{{inner}}}")
            name, argtext = m.group(1), m.group(2)
            if name not in FILTERS:
                raise ConfigError(f"key '{self.key}': unknown filter '{name}' in {{{inner}}}; "
                                  f"available: {', '.join(FILTERS)}")
            args = self._parse_args(argtext or "", inner)
            if len(args) != FILTERS[name][0]:
                raise ConfigError(f"key '{self.key}': filter '{name}' takes {FILTERS[name][0]} quoted "
                                  f"argument(s), got {len(args)} in {{{inner}}}")
            filters.append((name, tuple(args)))
        return _Placeholder(inner, path, tuple(filters))

    def _parse_path(self, text: str, inner: str) -> tuple[str | int, ...]:
        path: list[str | int] = []
        i = 0
        while i < len(text):
            if text[i] == "[":
                j = text.find("]", i)
                try:
                    path.append(int(text[i + 1 : j]))
                except ValueError:
                    j = -1
                if j < 0:
                    raise ConfigError(f"key '{self.key}': bad index in {{{inner}}} (write e.g. {{options[0]}})")
                i = j + 1
                continue
            if text[i] == "." and path:
                i += 1
            m = _PATH_RE.match(text, i)
            if not m:
                raise ConfigError(f"key '{self.key}': cannot read field name in {{{inner}}}")
            path.append(m.group(0))
            i = m.end()
        if not path or not isinstance(path[0], str):
            raise ConfigError(f"key '{self.key}': empty placeholder {{{inner}}}")
        return tuple(path)

    def _parse_args(self, text: str, inner: str) -> list[str]:
        args, i = [], 0
        text = text.strip()
        while i < len(text):
            m = _ARG_RE.match(text, i)
            if not m:
                raise ConfigError(f"key '{self.key}': filter arguments must be quoted strings in {{{inner}}}")
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            args.append(re.sub(r"\\(.)", lambda mm: {"n": "\n", "t": "\t"}.get(mm.group(1), mm.group(1)), raw))
            i = m.end()
        return args

    @property
    def single(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], _Placeholder)

    def render(self, record: Any) -> Any:
        if self.single:
            return self.parts[0].value(record)  # type: ignore[union-attr]
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            v = p.value(record)
            if isinstance(v, (list, dict)):
                raise FieldError(f"field '{_path_str(p.path)}' is a {type(v).__name__}; pick an item, e.g. "
                                 f"{{{_path_str(p.path)}[0]}}")
            out.append(v if isinstance(v, str) else json.dumps(v))
        return "".join(out)

    def render_str(self, record: Any) -> str:
        v = self.render(record)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if not isinstance(v, str):
            raise FieldError(f"template {self.source!r} gives a {type(v).__name__}, expected text")
        return v


# ----------------------------------------------------------------------------- specs

@dataclass
class TaskSpec:
    name: str
    path: Path  # the spec file
    data: Path
    split: str = ""
    output_type: str = "multiple_choice"
    choices_are: str = "continuations"
    context: Template | None = None
    continuation: Template | None = None
    choices: Template | list[Template] | None = None
    gold: int | Template | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    metric: str = "acc_norm"
    notes: str = ""
    harness_task: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_mc(self) -> bool:
        return self.output_type == "multiple_choice"

    def fingerprint(self) -> str:
        """Hash of the spec's settings and of the data file's bytes: the resume key. Content, not
        mtime: a data bundle copied or re-mounted elsewhere keeps its finished evaluations."""
        blob = json.dumps([self.raw, _file_digest(self.data) if self.data.exists() else None],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    """Task names, groups ('nine') and spec paths -> spec files (order kept, duplicates dropped)."""
    out: list[Path] = []
    for name in names:
        if name in TASK_GROUPS:
            paths = [TASKS_DIR / f"{n}.yaml" for n in TASK_GROUPS[name]]
        elif name.endswith((".yaml", ".yml")) or "/" in name:
            p = Path(name)
            if not p.exists():
                raise ConfigError(f"task spec {name}: file not found")
            paths = [p]
        elif (TASKS_DIR / f"{name}.yaml").exists():
            paths = [TASKS_DIR / f"{name}.yaml"]
        else:
            raise ConfigError(f"unknown task '{name}'; available: {', '.join(available_tasks())}; groups: "
                              f"{', '.join(TASK_GROUPS)}; or a path to a spec .yaml")
        for p in paths:
            if p.resolve() not in [q.resolve() for q in out]:
                out.append(p)
    return out


def _key_lines(text: str) -> dict[str, int]:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def load_spec(path: str | Path) -> TaskSpec:
    """Read and check a spec file; every problem is a one-line ConfigError naming the file, line, key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: task spec not found") from None
    raw = parse_yaml(text, path)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a task spec is a mapping of keys ({', '.join(SPEC_KEYS)})")
    lines = _key_lines(text)

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}:{lines.get(key, '?')}: key '{key}': {msg}")

    for k in raw:
        if k not in SPEC_KEYS:
            raise ConfigError(f"{path}:{lines.get(k, '?')}: unknown key '{k}'; allowed keys: {', '.join(SPEC_KEYS)}")
    for k, v in raw.items():
        if k in ("choices", "gold"):
            continue
        if not isinstance(v, str):
            raise err(k, f"expected text, got {type(v).__name__} {v!r}")
    output_type = raw.get("output_type", "multiple_choice")
    if output_type not in OUTPUT_TYPES:
        raise err("output_type", f"{output_type!r}: allowed values are {', '.join(OUTPUT_TYPES)}")
    choices_are = raw.get("choices_are", "continuations")
    if choices_are not in ("continuations", "contexts"):
        raise err("choices_are", f"{choices_are!r}: allowed values are continuations, contexts")
    metric = raw.get("metric", "acc_norm")
    if metric not in ("acc", "acc_norm"):
        raise err("metric", f"{metric!r}: allowed values are acc, acc_norm")
    if "data" not in raw:
        raise ConfigError(f"{path}: missing required key 'data' (the JSONL file of examples)")

    def template(key: str) -> Template:
        try:
            return Template(raw[key], key)
        except ConfigError as e:
            raise ConfigError(f"{path}:{lines.get(key, '?')}: {e}") from None

    def need(*keys: str) -> None:
        for k in keys:
            if k not in raw:
                raise ConfigError(f"{path}: missing required key '{k}' for output_type {output_type}"
                                  + (f", choices_are {choices_are}" if output_type == "multiple_choice" else ""))

    def forbid(*keys: str) -> None:
        for k in keys:
            if k in raw:
                raise err(k, f"not used with output_type {output_type}"
                          + (f", choices_are {choices_are}" if output_type == "multiple_choice" else ""))

    try:  # the name becomes result and sample file names: '../x' would write outside the output
        check_name(raw.get("task", path.stem), "task")
    except ConfigError as e:
        raise ConfigError(f"{path}:{lines.get('task', '?')}: {e}") from None
    spec = TaskSpec(name=raw.get("task", path.stem), path=path, data=Path("."), split=raw.get("split", ""),
                    output_type=output_type, choices_are=choices_are, metric=metric,
                    target_delimiter=raw.get("target_delimiter", " "),
                    fewshot_delimiter=raw.get("fewshot_delimiter", "\n\n"), notes=raw.get("notes", "").strip(),
                    harness_task=raw.get("harness_task", ""), raw=raw)
    data = Path(expand_vars(raw["data"]))
    spec.data = data if data.is_absolute() else (path.parent / data)
    if output_type == "loglikelihood":
        need("context", "continuation")
        forbid("choices", "gold", "choices_are", "metric")
        spec.context, spec.continuation = template("context"), template("continuation")
        return spec
    need("choices", "gold")
    if choices_are == "continuations":
        need("context")
        forbid("continuation")
        spec.context = template("context")
    else:
        need("continuation")
        forbid("context")
        spec.continuation = template("continuation")
    ch = raw["choices"]
    if isinstance(ch, str):
        spec.choices = template("choices")
    elif isinstance(ch, list) and ch and all(isinstance(c, str) for c in ch):
        try:
            spec.choices = [Template(c, f"choices[{i}]") for i, c in enumerate(ch)]
        except ConfigError as e:
            raise ConfigError(f"{path}:{lines.get('choices', '?')}: {e}") from None
    else:
        raise err("choices", "expected a template naming a list field, or a non-empty list of templates")
    g = raw["gold"]
    if isinstance(g, bool) or not isinstance(g, (int, str)):
        raise err("gold", f"expected an int or a template, got {g!r}")
    spec.gold = g if isinstance(g, int) else template("gold")
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
    shot: str  # this example solved, as an in-context example


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        fh = opener(path, "rt", encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: task data not found (set DATAMATES_DATA or fix the spec's 'data')") from None
    with fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                yield n, line


def count_examples(spec: TaskSpec) -> int:
    """Non-blank lines of the data file (the task's size, without parsing it)."""
    return sum(1 for _ in _lines(spec.data))


def load_docs(spec: TaskSpec, limit: int | None = None) -> list[Doc]:
    """The examples of the spec's data file (the first `limit` of them), checked: a missing field,
    a gold index out of range, an empty choice list or an empty file is an InputError naming the
    file and line."""
    docs: list[Doc] = []
    for line, text in _lines(spec.data):
        if limit is not None and len(docs) >= limit:
            break
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{spec.data}:{line}: malformed JSON ({e.msg})") from None
        key = "?"
        try:
            if not spec.is_mc:
                key = "context"
                ctx = spec.context.render_str(rec)  # type: ignore[union-attr]
                key = "continuation"
                cont = spec.target_delimiter + spec.continuation.render_str(rec)  # type: ignore[union-attr]
                docs.append(Doc(line, [ctx], [cont], [len(cont)], -1, ctx + cont))
                continue
            key = "choices"
            if isinstance(spec.choices, list):
                choices = [t.render_str(rec) for t in spec.choices]
            else:
                choices = spec.choices.render(rec)  # type: ignore[union-attr]
                if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                    raise FieldError(f"template {spec.choices.source!r} must give a list of texts, "  # type: ignore[union-attr]
                                     f"got {type(choices).__name__}")
            if not choices:
                raise FieldError("no choices")
            key = "gold"
            gold = spec.gold if isinstance(spec.gold, int) else spec.gold.render(rec)  # type: ignore[union-attr]
            if isinstance(gold, str) and gold.strip().lstrip("-").isdigit():
                gold = int(gold)
            elif isinstance(gold, str):
                if gold not in choices:
                    raise FieldError(f"gold {gold!r} is not one of the choices")
                gold = choices.index(gold)
            if isinstance(gold, bool) or not isinstance(gold, int):
                raise FieldError(f"gold must be an index or a choice's text, got {gold!r}")
            if not 0 <= gold < len(choices):
                raise FieldError(f"gold index {gold} is out of range for {len(choices)} choices")
            if spec.choices_are == "continuations":
                key = "context"
                ctx = spec.context.render_str(rec)  # type: ignore[union-attr]
                conts = [spec.target_delimiter + c for c in choices]
                docs.append(Doc(line, [ctx] * len(choices), conts, [len(c) for c in choices], gold,
                                ctx + conts[gold]))
            else:
                key = "continuation"
                cont = spec.target_delimiter + spec.continuation.render_str(rec)  # type: ignore[union-attr]
                # lm-eval divides by len(choice); with one shared continuation we divide by its
                # length, identical for every choice, so acc_norm == acc (lm-eval reports acc only)
                docs.append(Doc(line, list(choices), [cont] * len(choices), [len(cont)] * len(choices), gold,
                                choices[gold] + cont))
        except FieldError as e:
            raise InputError(f"{spec.data}:{line}: {e} (spec {spec.path}, key '{key}')") from None
    if not docs:
        raise InputError(f"{spec.data}: no examples (spec {spec.path})")
    return docs


def fewshot_prefixes(spec: TaskSpec, docs: list[Doc], n_eval: int, k: int, seed: int) -> list[str]:
    """For each of the first n_eval docs, k other docs of the file drawn with rng(seed, doc index),
    each written as a solved example and followed by the few-shot delimiter."""
    if k == 0:
        return [""] * n_eval
    if k > len(docs) - 1:
        raise ConfigError(f"num_fewshot = {k}: task {spec.name} has only {len(docs)} examples")
    out = []
    for i in range(n_eval):
        pick = np.random.default_rng([seed, i]).choice(len(docs) - 1, size=k, replace=False)
        pick = pick + (pick >= i)  # skip the example itself
        out.append("".join(docs[j].shot + spec.fewshot_delimiter for j in pick))
    return out
