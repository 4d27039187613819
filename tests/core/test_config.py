"""Config: YAML + --set overrides, presets, one-line errors naming key, value and what is allowed."""

import pytest

from datamates.config import RunConfig, describe, load_config
from datamates.config.base import apply_sets, from_dict, parse_set
from datamates.config.core import ModelConfig, TrainConfig
from datamates.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=3e-4", "model.preset=pythia-70m", "model.n_layers=3", "pool.inputs=[a, b]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.n_layers) == (512, 8, 3)  # preset, then override
    assert cfg.pool.inputs == ["a", "b"]


def test_yaml_file_and_named_config(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: x\ntrain:\n  lr: 1e-3\n  steps: 7\n")
    cfg = load_config(str(f))
    assert cfg.name == "x" and cfg.train.steps == 7 and cfg.train.lr == 1e-3
    tiny = load_config("tiny_cpu")
    assert tiny.name == "tiny_cpu" and tiny.pool.seq_len == 256
    assert "$" not in tiny.pool.inputs[0]  # ${DATAMATES_DATA} expanded


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'"),
        (["train.lr=-1"], "train.lr = -1.0: must be > 0"),
        (["train.steps=abc"], "train.steps = 'abc': expected int"),
        (["train.schedule=cos"], "train.schedule = 'cos': allowed values are 'constant'"),
        (["model.preset=gpt5"], "model.preset = 'gpt5': unknown preset; available: pythia-14m"),
        (["model.n_heads=3"], "model.d_model = 128: must be divisible by n_heads = 3"),
        (["train.schedule=wsd"], "train.decay_steps = 0"),
        (["pool.tokenizer.vocab_size=10"], "pool.tokenizer.vocab_size = 10: must be >= 260"),
        (["train.micro_batch_size=true"], "expected int"),
    ],
)
def test_bad_values_are_one_line_errors(sets, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg


def test_bad_yaml_names_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+: not valid YAML"):
        load_config(str(f))
    g = tmp_path / "typo.yaml"
    g.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'trian'"):
        load_config(str(g))
    with pytest.raises(ConfigError, match="config 'nope' not found; named configs:"):
        load_config("nope")


def test_set_parsing():
    assert parse_set("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_set("a=[1, 2]") == (["a"], [1, 2])
    assert parse_set("a=null") == (["a"], None)
    with pytest.raises(ConfigError):
        parse_set("novalue")
    assert apply_sets({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_every_knob_is_documented():
    text = describe(RunConfig)
    for line in text.splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"undocumented knob: {line}"


def test_from_dict_roundtrip():
    m = from_dict(ModelConfig, {"preset": "pythia-160m"})
    assert (m.n_layers, m.d_model, m.n_heads) == (12, 768, 12)
    t = from_dict(TrainConfig, {"grad_clip": None})
    assert t.grad_clip is None


def test_owned_sections_are_kept_raw_by_the_loader_then_checked_by_their_owner():
    """A section declared above config/ (a scorer's own, selectors.SCORERS `config=`): `from_dict`
    keeps it as written, `resolve_owned` checks it against its dataclass with the loader's one-line
    messages and fills in defaults; `to_dict`, `config_hash` and `describe` show it at its address."""
    from dataclasses import dataclass

    from datamates.config.base import RawSection, config_hash, knob, resolve_owned, to_dict
    from datamates.identity import hash_config

    @dataclass(kw_only=True)
    class Own:
        """A toy scorer's section."""

        x: int = knob(1, "the x knob", ge=0)

    @dataclass(kw_only=True)
    class Parent:
        a: int = knob(0, "the a knob")
        held: dict = knob({}, "owned sections", owned=True)

    p = from_dict(Parent, {"a": 1, "own": {"x": 2}}, prefix="s.", where="f.yaml: ")
    assert isinstance(p.held["own"], RawSection)
    resolve_owned(p, {"own": Own}, prefix="s.")
    resolve_owned(p, {"own": Own}, prefix="s.")  # idempotent
    assert p.held == {"own": Own(x=2)}
    assert to_dict(p) == {"a": 1, "own": {"x": 2}}
    assert config_hash(p) == hash_config({"a": 1, "own": {"x": 2}})
    assert "  # A toy scorer's section.\n  own:\n    x: 2  # the x knob" in describe(Parent, 1, p)
    q = from_dict(Parent, {})
    resolve_owned(q, {"own": Own}, prefix="s.")
    assert q.held == {"own": Own()}
    with pytest.raises(ConfigError, match=r"^f\.yaml: unknown key 's\.nope'; allowed keys here: a, own$"):
        resolve_owned(from_dict(Parent, {"nope": {}}, prefix="s.", where="f.yaml: "), {"own": Own}, prefix="s.")
    with pytest.raises(ConfigError, match=r"^f\.yaml: s\.own\.x = -1: must be >= 0$"):
        resolve_owned(from_dict(Parent, {"own": {"x": -1}}, prefix="s.", where="f.yaml: "), {"own": Own})
    with pytest.raises(ConfigError, match=r"^f\.yaml: unknown key 's\.own\.y'; allowed keys here: x$"):
        resolve_owned(from_dict(Parent, {"own": {"y": 0}}, prefix="s.", where="f.yaml: "), {"own": Own})
    with pytest.raises(ConfigError, match=r"^unknown key 'held'"):  # the field itself is no address
        resolve_owned(from_dict(Parent, {"held": {}}), {"own": Own})
