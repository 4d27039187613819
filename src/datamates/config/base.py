"""Typed configs: dataclasses whose fields are declared with `knob(...)`.

Every knob carries its help text and its allowed values next to its default, so validation errors
and `datamates config show` are generated from the declaration:

    lr: float = knob(1e-3, "peak learning rate", gt=0)

`from_dict` turns nested YAML into dataclasses and rejects an unknown key, a wrong type or an
out-of-range value with one line naming the key, the value and what is allowed. `--set a.b=c`
overrides are applied to the raw dict first, so they get the same checks; a `Sources` record makes
the message name what the user typed (the YAML file, `--set a.b=c`, or the CLI flag such as
`--seq-len 4`) rather than the YAML file for every key.

A section may be declared by a module above `config/` (a scorer's own `mates.baselines.<name>`,
selectors.SCORERS): its parent declares one field with `knob({}, ..., owned=True)`; `from_dict`
keeps every key of the parent it does not know as a `RawSection` (the mapping as written, its key
and its source) in that field, and `resolve_owned`, called by the layer that knows the sections'
dataclasses (selectors.resolve_config, at the start of every verb), checks each against its
dataclass with the same one-line messages and fills in the defaults. `to_dict`, `config_hash` and
`describe` show owned sections in their parent, at the same address as a declared field.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from datamates.errors import ConfigError
from datamates.identity import hash_config
from datamates.log import get_logger

T = TypeVar("T")
_MISSING = dataclasses.MISSING
log = get_logger(__name__)


def knob(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    owned: bool = False,
) -> Any:
    """A config field with its documentation and allowed range (checked by `validate`). `owned`:
    the field (a dict, default {}) holds the sections other modules declare (`resolve_owned`)."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "owned": owned}
    if dataclasses.is_dataclass(default) or isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class FlagSet(str):
    """A `--set` expression that a CLI flag produced (`--seq-len 4` -> `pool.seq_len=4`): a plain
    string for `apply_sets`, which also remembers the flag, so an error names the flag."""

    flag: str

    def __new__(cls, expr: str, flag: str) -> FlagSet:
        obj = super().__new__(cls, expr)
        obj.flag = flag
        return obj


class Sources:
    """Where each config key's value came from, for error messages: `file` (e.g.
    "configs/tiny_cpu.yaml") for keys from the YAML, and the `--set` or flag for overridden keys.
    `prefix(key)` is the text put before a message about `key` ("FILE: ", "--set a.b=c: ")."""

    def __init__(self, file: str | Path | None = None, sets: list[str] | None = None):
        self.file = str(file) if file else ""
        self.by_key: dict[str, str] = {}
        for expr in sets or []:
            key = expr.split("=", 1)[0]
            self.by_key[key] = getattr(expr, "flag", None) or f"--set {expr}"

    def prefix(self, key: str) -> str:
        parts = key.replace("[", ".[").split(".")
        for n in range(len(parts), 0, -1):  # the key itself, else the section it was set as a whole
            hit = self.by_key.get(".".join(parts[:n]).replace(".[", "["))
            if hit is not None:
                return f"{hit}: "
        return f"{self.file}: " if self.file else ""

    def section_prefix(self, section: str, key: str) -> str:
        """For a check across the keys of `section` (e.g. "train."): the source of `key` if it was
        set explicitly, else the `--set`s / flags inside the section (they caused it), else the file."""
        if key and key in self.by_key:
            return self.prefix(key)
        inside = [v for k, v in self.by_key.items() if k.startswith(section)]
        return f"{', '.join(inside)}: " if inside else self.prefix(key or section.rstrip("."))


@dataclasses.dataclass(frozen=True)
class Alias:
    """A deprecated key kept working: a config class lists `ALIASES = {"old": Alias("section.new")}`
    and `from_dict` reads `old` as the dotted key `new` of the same section (its value mapped by
    `convert`, e.g. a renamed choice), with one warning line per key and process."""

    new: str
    convert: Any = None


@functools.cache
def deprecated(old: str, instead: str) -> None:
    """One warning line per deprecated spelling and process (config keys, selector flags)."""
    log.warning("%s is deprecated: %s", old, instead)


def _apply_aliases(cls: type, data: dict[str, Any], prefix: str, where: str | Sources) -> dict[str, Any]:
    aliases: dict[str, Alias] = getattr(cls, "ALIASES", {})
    for old in [k for k in data if k in aliases]:
        alias = aliases[old]
        value = data.pop(old)
        if alias.convert is not None:
            value = alias.convert(value)
        *path, leaf = alias.new.split(".")
        node = data
        for part in path:
            sub = node.get(part)
            if sub is not None and not isinstance(sub, dict):
                raise ConfigError(f"{_w(where, prefix + old)}{prefix}{old} (deprecated: {prefix}{alias.new}) is set "
                                  f"but {prefix}{part} is not a section")
            node[part] = node = dict(sub or {})
        if leaf in node and node[leaf] != value:
            raise ConfigError(f"{_w(where, prefix + old)}{prefix}{old} = {value!r} and {prefix}{alias.new} = "
                              f"{node[leaf]!r} are the same knob; keep {prefix}{alias.new} only")
        node[leaf] = value
        if isinstance(where, Sources) and prefix + old in where.by_key:  # errors name what the user typed
            where.by_key.setdefault(prefix + alias.new, where.by_key[prefix + old])
        deprecated(f"{prefix}{old}", f"spell it {prefix}{alias.new}")
    return data


class RawSection:
    """A section the loader does not know, as written (`data`), with its dotted key and its source,
    until `resolve_owned` checks it against the dataclass that declares it."""

    def __init__(self, data: Any, key: str, where: str | Sources):
        self.data, self.key, self.where = data, key, where

    def __repr__(self) -> str:
        return f"RawSection({self.key}: {self.data!r})"


def _owned_field(cls: Any) -> str | None:
    """The name of `cls`'s field of owned sections (knob(..., owned=True)), None if it has none."""
    return next((f.name for f in dataclasses.fields(cls) if f.metadata.get("owned")), None)


def _w(where: str | Sources, key: str) -> str:
    """The source prefix of a message about `key` (`where` is a plain prefix or a Sources)."""
    return where.prefix(key) if isinstance(where, Sources) else where


def check_name(value: Any, key: str) -> None:
    """A name that becomes one folder or file name (a run, a task, a unit): not empty, no path
    separator, not `.` or `..`, no surrounding blanks or control characters, so it cannot escape
    the folder it is put in."""
    bad = (not isinstance(value, str) or not value.strip() or value in (".", "..") or value != value.strip()
           or any(c in value for c in "/\\") or any(ord(c) < 32 for c in value))
    if bad:
        raise ConfigError(
            f"{key} = {value!r}: must be a plain name (one folder level: no '/' or '\\', not empty, '.' or '..')"
        )


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str | Sources) -> Any:
    """Check `value` against the annotation `tp`; convert int->float and nested dicts."""
    origin = get_origin(tp)
    bad = ConfigError(f"{_w(where, key)}{key} = {value!r}: expected {_type_name(tp)}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(
            f"{_w(where, key)}{key} = {value!r}: allowed values are {', '.join(repr(a) for a in get_args(tp))}"
        )
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, vt = get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, prefix=f"{key}.", where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "", where: str | Sources = "") -> T:
    """Build dataclass `cls` from a nested dict. `prefix` is the dotted key path for messages,
    `where` names the source: a prefix (e.g. "configs/tiny_cpu.yaml: "), or a `Sources` that
    tells the YAML file from `--set` overrides and CLI flags key by key."""
    data = dict(data or {})
    presets = getattr(cls, "PRESETS", None)
    if presets is not None and "preset" in data:
        name = data["preset"]
        if name not in presets:
            raise ConfigError(
                f"{_w(where, prefix + 'preset')}{prefix}preset = {name!r}: unknown preset; "
                f"available: {', '.join(sorted(presets))}"
            )
        base = to_dict(presets[name])
        base.update(data)
        data = base
    if getattr(cls, "ALIASES", None):
        data = _apply_aliases(cls, data, prefix, where)
    hints = typing.get_type_hints(cls)
    owned = _owned_field(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != owned}
    unknown = [k for k in data if k not in fields]
    if unknown and owned is None:
        raise ConfigError(
            f"{_w(where, prefix + str(unknown[0]))}unknown key '{prefix}{unknown[0]}'; "
            f"allowed keys here: {', '.join(sorted(fields))}"
        )
    raw = {str(k): RawSection(data.pop(k), f"{prefix}{k}", where) for k in unknown}  # resolve_owned checks them
    kwargs = {k: _coerce(v, hints[k], prefix + k, where) for k, v in data.items()}
    if owned is not None:
        kwargs[owned] = raw
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is _MISSING and f.default_factory is _MISSING
    ]
    if missing:
        raise ConfigError(f"{_w(where, prefix + missing[0])}missing required key '{prefix}{missing[0]}'")
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{_wc(where, prefix, e, fields)}{prefix}{e}") from None
    validate(obj, prefix=prefix, where=where)
    return obj


def _wc(where: str | Sources, section: str, e: ConfigError, fields: Any) -> str:
    """The source prefix of a `check()` message (a rule across the fields of `section`)."""
    key = section + _field_of(e, fields) if _field_of(e, fields) else ""
    return where.section_prefix(section, key) if isinstance(where, Sources) else where


def _field_of(e: ConfigError, fields: Any) -> str:
    """The field a `check()` message is about (its first word, "decay_steps = 0: ..."), else ""."""
    first = str(e).split(" ", 1)[0].split("[", 1)[0]
    return first if first in fields else ""


def validate(obj: Any, *, prefix: str = "", where: str | Sources = "") -> None:
    """Check every knob's choices and bounds, then the class's own `check()` if it has one."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        meta = f.metadata
        key = f"{_w(where, prefix + f.name)}{prefix}{f.name}"
        if value is None:
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(map(repr, meta['choices']))}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            for op, bound, ok in (
                (">=", meta.get("ge"), lambda v, b: v >= b),
                (">", meta.get("gt"), lambda v, b: v > b),
                ("<=", meta.get("le"), lambda v, b: v <= b),
                ("<", meta.get("lt"), lambda v, b: v < b),
            ):
                if bound is not None and not ok(value, bound):
                    raise ConfigError(f"{key} = {value!r}: must be {op} {bound}")
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            names = [f.name for f in dataclasses.fields(obj)]
            raise ConfigError(f"{_wc(where, prefix, e, names)}{prefix}{e}") from None


def resolve_owned(obj: Any, sections: dict[str, type], *, prefix: str = "") -> None:
    """Check `obj`'s owned sections (from_dict kept them raw) against `sections` (name -> the
    dataclass that declares it) and fill in the defaults of those not written, in place, in the order
    of `sections` (to_dict and describe list them so, however they were written); a name no module
    declares is refused as `from_dict` refuses an unknown key. Idempotent."""
    name = _owned_field(type(obj))
    if name is None:
        return
    held = getattr(obj, name)
    declared = {f.name for f in dataclasses.fields(obj) if f.name != name}
    clash = sorted(declared & set(sections))
    if clash:
        raise TypeError(f"{type(obj).__name__}.{clash[0]} is declared twice (a field and an owned section)")
    for key, value in list(held.items()):
        if isinstance(value, RawSection) and key not in sections:
            raise ConfigError(f"{_w(value.where, value.key)}unknown key '{value.key}'; "
                              f"allowed keys here: {', '.join(sorted(declared | set(sections)))}")
    for key, cls in sections.items():
        value = held.get(key)
        if isinstance(value, RawSection):
            held[key] = _coerce(value.data, cls, value.key, value.where)
        elif value is None:
            held[key] = from_dict(cls, {}, prefix=f"{prefix}{key}.")
    ordered = {key: held[key] for key in sections}
    held.clear()
    held.update(ordered)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config as plain nested dicts (dataclasses.asdict), owned sections in their parent."""
    return _plain(obj)


def _plain(v: Any) -> Any:
    if isinstance(v, RawSection):
        return copy.deepcopy(v.data)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(v):
            x = _plain(getattr(v, f.name))
            if f.metadata.get("owned"):
                out.update(x)
            else:
                out[f.name] = x
        return out
    if isinstance(v, list | tuple):
        return type(v)(_plain(x) for x in v)
    if isinstance(v, dict):
        return type(v)((_plain(k), _plain(x)) for k, x in v.items())
    return copy.deepcopy(v)


def config_hash(obj: Any) -> str:
    """A short, stable hash of a config's values (for meta.json and compatibility checks); a
    dataclass is hashed as `to_dict` shows it (the same digest as dataclasses.asdict when it has no
    owned sections)."""
    return hash_config(to_dict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj)


def parse_set(expr: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], yaml-parsed c). `--set train.lr=3e-4`, `--set pool.inputs=[a,b]`."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    key, raw = expr.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {expr!r}: empty key")
    try:
        value = _floatify(yaml.safe_load(raw)) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for expr in sets:
        keys, value = parse_set(expr)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {expr}: '{k}' is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def data_dir() -> Path:
    """The sample data bundle: $DATAMATES_DATA, else `shared/data` beside the repository."""
    env = os.environ.get("DATAMATES_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        cand = base.parent / "shared" / "data"
        if cand.exists():
            return cand
    return Path.cwd().parent / "shared" / "data"


def expand_vars(node: Any) -> Any:
    """`${DATAMATES_DATA}` (with its default) and other environment variables in string values."""
    if isinstance(node, dict):
        return {k: expand_vars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_vars(v) for v in node]
    if isinstance(node, str) and "$" in node:
        node = node.replace("${DATAMATES_DATA}", str(data_dir())).replace("$DATAMATES_DATA", str(data_dir()))
        return os.path.expandvars(node)
    return node


def parse_yaml(text: str, path: str | Path) -> Any:
    """yaml.safe_load with a one-line ConfigError naming the file and line of a syntax error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{line}: not valid YAML ({problem})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a YAML config file (or the name of one in configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a YAML config file") from None
    data = parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return _floatify(data)


def _floatify(node: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string; turn such strings into floats."""
    if isinstance(node, dict):
        return {k: _floatify(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floatify(v) for v in node]
    if isinstance(node, str):
        s = node.strip()
        if s and s[0] in "+-.0123456789" and any(c in s for c in "eE") and " " not in s:
            try:
                return float(s)
            except ValueError:
                return node
    return node


def describe(cls: type, indent: int = 0, obj: Any = None) -> str:
    """YAML text of a config with every knob's help as a comment (`datamates config show`)."""
    obj = obj if obj is not None else cls()
    hints = typing.get_type_hints(cls)
    pad = "  " * indent
    lines = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        help_ = f.metadata.get("help", "")
        if f.metadata.get("owned"):  # each at its address in this section, its docstring as help
            for key, section in value.items():
                if isinstance(section, RawSection):
                    lines.append(f"{pad}{key}: {yaml.safe_dump(section.data, default_flow_style=True).strip()}"
                                 "  # not checked yet")
                    continue
                doc = (type(section).__doc__ or "").strip().splitlines()
                if doc:
                    lines.append(f"{pad}# {doc[0]}")
                lines.append(f"{pad}{key}:")
                lines.append(describe(type(section), indent + 1, section))
            continue
        if dataclasses.is_dataclass(value):
            if help_:
                lines.append(f"{pad}# {help_}")
            lines.append(f"{pad}{f.name}:")
            lines.append(describe(type(value), indent + 1, value))
            continue
        rendered = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        if rendered.endswith("\n..."):
            rendered = rendered[:-4].strip()
        rendered = rendered.removesuffix("...").strip()
        comment = f"  # {help_}" if help_ else ""
        allowed = []
        if f.metadata.get("choices"):
            allowed.append("one of " + ", ".join(map(str, f.metadata["choices"])))
        if get_origin(hints[f.name]) is Literal:
            allowed.append("one of " + ", ".join(map(str, get_args(hints[f.name]))))
        if allowed:
            comment += f" [{'; '.join(allowed)}]"
        lines.append(f"{pad}{f.name}: {rendered}{comment}")
    return "\n".join(lines)
