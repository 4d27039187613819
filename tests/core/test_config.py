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
    """Every knob, the scorers' own sections (mates.baselines.<name>, declared in their modules) included."""
    from datamates.selectors import SECTIONS, resolve_config

    text = describe(RunConfig, obj=resolve_config(RunConfig()))
    assert all(f"\n    {name}:\n" in text for name in SECTIONS)
    for line in text.splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"undocumented knob: {line}"


def test_from_dict_roundtrip():
    m = from_dict(ModelConfig, {"preset": "pythia-160m"})
    assert (m.n_layers, m.d_model, m.n_heads) == (12, 768, 12)
    t = from_dict(TrainConfig, {"grad_clip": None})
    assert t.grad_clip is None


def test_old_flat_executor_keys_are_aliases_of_the_executor_section(caplog):
    """mates.probe / mates.score / ablation.branch spelled their executor knobs three ways; the old
    flat keys still load (one warning line each) into the one `executor` section."""
    from datamates.config.base import deprecated
    from datamates.config.executor import ExecutorConfig

    deprecated.cache_clear()
    old = load_config(None, ["mates.probe.workers=2", "mates.probe.threads=1", "mates.probe.backend=ray",
                             "mates.probe.ray_address=10.0.0.1:6379", "mates.score.workers=3",
                             "mates.score.threads_per_worker=2", "mates.score.ray_cpus_per_actor=2",
                             "mates.score.ray_gpus_per_actor=1", "ablation.branch.workers=4",
                             "ablation.branch.threads_per_worker=null", "ablation.branch.backend=process",
                             "ablation.branch.gpus_per_worker=1"])
    new = load_config(None, ["mates.probe.executor={workers: 2, threads: 1, backend: ray, ray_address: '10.0.0.1:6379'}",
                             "mates.score.executor={workers: 3, threads: 2, ray_cpus: 2, ray_gpus: 1}",
                             "ablation.branch.executor={workers: 4, backend: local, ray_gpus: 1}"])
    assert old == new
    assert new.ablation.branch.executor == ExecutorConfig(workers=4, ray_gpus=1.0)
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert "mates.score.threads_per_worker is deprecated: spell it mates.score.executor.threads" in warned
    assert len(warned) == 12  # one line per old key
    load_config(None, ["mates.probe.workers=2"])
    assert len([r for r in caplog.records if "deprecated" in r.getMessage()]) == 12  # once per process


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["mates.probe.workers=2", "mates.probe.executor.workers=3"],
         "mates.probe.workers = 2 and mates.probe.executor.workers = 3 are the same knob"),
        (["mates.score.workers=0"], "--set mates.score.workers=0: mates.score.executor.workers = 0: must be >= 1"),
        (["ablation.branch.backend=threads"], "ablation.branch.executor.backend = 'threads': allowed values"),
        (["mates.probe.executor.wrkers=1"], "unknown key 'mates.probe.executor.wrkers'"),
    ],
)
def test_bad_executor_keys_are_one_line_errors(sets, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    assert expected in str(e.value) and "\n" not in str(e.value)


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
