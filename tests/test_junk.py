"""Planted junk (issue 30; datamates.junk, experiments/selection_arena/noise.py): the corpus holds every
kind, deterministically; the junk kept by a selection is the hand count, per kind and per stage; the
plan never holds junk out for evaluation nor uses it as the clean reference; the LAMBADA in-/not-in-
context parts split the file; several references label like each alone, whatever the sharding; and
a planted pool where the LAMBADA target keeps junk above the block's share and the clean target
(the arena's probe reference) keeps no more than it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from datamates_testing import tiny_pool_config, tiny_train_cfg

from datamates.config.influence import SelectConfig
from datamates.config.probe import ProbeConfig
from datamates.config.run import load_config
from datamates.core.documents import DocIndex
from datamates.core.pool import Pool, build_pool
from datamates.core.reference import (
    LAMBADA_FILTERS,
    clean_reference,
    combine_references,
    in_context,
    load_reference,
    reference_parts,
)
from datamates.junk import KINDS, is_junk_domain, junk_documents, junk_kind, junk_report, plant
from datamates.plan import make_plan
from datamates.selection.probe import probe, read_labels, read_labels_table
from datamates.selection.probe.oracle import combine_part_deltas
from datamates.selection.select import select

ROOT = Path(__file__).resolve().parents[1]
WEB = ("c4_100_domains_theguardian_10.jsonl.gz", "dolma_cc_en_head-0091.jsonl.gz", "dolma_cc_en_head-0174.jsonl.gz")


@pytest.fixture(scope="module")
def junk_pool(data, tmp_path_factory) -> Pool:
    root = tmp_path_factory.mktemp("junk")
    for dom, files in {"web": WEB, "wiki": ("nq_open_oracle_wikipedia_passages.jsonl.gz",)}.items():
        (root / "src" / dom).mkdir(parents=True)
        for f in files:
            (root / "src" / dom / f).symlink_to(data / "pretrain" / dom / f)
    counts = plant(root / "src", root / "corpus", rate=0.07, seed=0)
    assert set(counts["kinds"]) == set(KINDS) and all(v["docs"] > 0 for v in counts["kinds"].values())
    build_pool(tiny_pool_config([str(root / "corpus")]), root / "pool")
    return Pool(root / "pool")


def test_plant_is_deterministic_and_records_every_kind(data, tmp_path):
    texts = ["the cat sat on the mat and looked at the dog " * 5, "a quick brown fox jumps over lazy dogs " * 5]
    budget = {k: 3000 for k in KINDS}
    a, b = junk_documents(texts, budget, seed=3), junk_documents(texts, budget, seed=3)
    assert a == b and a != junk_documents(texts, budget, seed=4)
    for kind in KINDS:
        mine = [d for d in a if d["kind"] == kind]
        assert mine and sum(len(d["text"]) for d in mine) >= 3000
        assert all(re.fullmatch(rf"junk-{kind}-\d+", d["id"]) for d in mine)
    shuffled = next(d for d in a if d["kind"] == "shuffled")
    assert sorted(shuffled["text"].split()) == sorted(texts[shuffled["source"]].split())  # the same words
    assert any("cookie" in d["text"].lower() for d in a if d["kind"] == "boilerplate")


def test_junk_kept_is_the_hand_count_per_kind_and_stage(junk_pool, tmp_path):
    pool = junk_pool
    dom = np.asarray(pool.seq_domain)
    kind_of = np.array([junk_kind(d) or "" for d in pool.domains])[dom]
    assert 0.03 < (kind_of != "").mean() < 0.15  # about the planted 7% of the pool's sequences
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    blocks = {2: np.sort(rng.choice(len(pool), 600, replace=False)), 3: np.sort(rng.choice(len(pool), 600, replace=False))}
    k = 120
    for s, ids in blocks.items():
        worst = (kind_of[ids] != "").astype(np.float64)  # lower is better: junk scored worst
        loves = -(kind_of[ids] == "shuffled").astype(np.float64)  # shuffled text scored best
        select(SelectConfig(seed=s), ids, pool, run / "random" / f"stage_{s:02d}" / "selected", method="random", k=k)
        select(SelectConfig(method="topk"), (ids, worst), pool, run / "cleaner" / f"stage_{s:02d}" / "selected", k=k)
        select(SelectConfig(method="topk"), (ids, loves), pool, run / "shuffle_lover" / f"stage_{s:02d}" / "selected", k=k)
    (run / "warmup" / "stage_01" / "selected").mkdir(parents=True)  # the warmup is never counted
    rep = junk_report(run)
    assert set(rep["selectors"]) == {"random", "cleaner", "shuffle_lover"} and rep["kinds"] == sorted(KINDS)
    for name in rep["selectors"]:
        kept = {s: np.load(run / name / f"stage_{s:02d}" / "selected" / "ids.npy") for s in blocks}
        allk = np.concatenate(list(kept.values()))
        sel = rep["selectors"][name]
        assert sel["kept"] == pytest.approx((kind_of[allk] != "").mean())
        for kind in KINDS:
            assert sel["per_kind"][kind] == pytest.approx((kind_of[allk] == kind).mean())
            for s in blocks:
                assert sel["per_stage"][f"stage_{s:02d}"]["per_kind"][kind] == pytest.approx(
                    (kind_of[kept[s]] == kind).mean())
        cands = np.concatenate(list(blocks.values()))
        assert sel["candidates"] == pytest.approx((kind_of[cands] != "").mean())
    sel = rep["selectors"]
    assert sel["cleaner"]["kept"] == 0.0 and not sel["cleaner"]["more_than_random"]
    assert sel["shuffle_lover"]["per_kind"]["shuffled"] > 3 * sel["random"]["per_kind"]["shuffled"]
    assert sel["shuffle_lover"]["more_than_random"] and rep["random"] == sel["random"]["kept"]
    assert json.loads((run / "noise.json").read_text()) == json.loads(json.dumps(rep))


def test_plan_never_holds_out_junk_nor_uses_it_as_clean_reference(junk_pool, tmp_path):
    pool = junk_pool
    cfg = load_config(None, ["pool.seq_len=64", "train.micro_batch_size=4", "mates.stages=3", "mates.stage_steps=10",
                             "mates.heldout_per_domain=20", "mates.probe.n_probes=64", "mates.heldout_max_per_doc=3",
                             "mates.probe.reference=clean+lambada_nic", "mates.probe.clean_per_domain=8",
                             f"runs_root={tmp_path}"])
    plan = make_plan(cfg, pool, tmp_path / "plan")
    junk = np.array([is_junk_domain(d) for d in pool.domains])[np.asarray(pool.seq_domain)]
    assert junk.sum() > 100
    assert not junk[plan.heldout].any() and not junk[plan.clean].any()
    assert len(plan.clean) == 8 * 2  # web and wiki
    index = DocIndex(pool)
    seen = np.concatenate([plan.probe, *plan.blocks])
    assert junk[seen].any()  # junk is a candidate like any other sequence
    clean_docs = set(index.docs_of(plan.clean).tolist())
    assert not clean_docs & set(index.docs_of(plan.heldout).tolist())  # disjoint from the evaluation set
    assert not clean_docs & set(index.docs_of(seen).tolist())  # and from every candidate, probe, training sequence
    for doc in clean_docs:
        assert np.isin(index.seqs_of(doc), plan.guard).all()
    # the LAMBADA file is split once, and lambada_nic reads that split
    lam = plan.split_of("lambada_nic")
    assert lam is not None and lam is plan.split_of("lambada_openai")
    # a plan without `clean` has no clean reference and keeps its settings
    plain = make_plan(load_config(None, ["pool.seq_len=64", "train.micro_batch_size=4", "mates.stages=3",
                                         "mates.stage_steps=10", "mates.heldout_per_domain=40",
                                         "mates.probe.n_probes=64", f"runs_root={tmp_path}"]), pool, tmp_path / "plan2")
    assert plain.clean is None and not junk[plain.heldout].any()


def test_lambada_in_and_not_in_context_split_the_file(tiny_pool, lambada_path):
    tok = tiny_pool.tokenizer()
    pos = np.arange(400)
    full = load_reference("lambada_openai", tok, size=None, index=pos)
    ic = load_reference("lambada_ic", tok, size=None, index=pos)
    nic = load_reference("lambada_nic", tok, size=None, index=pos)
    assert len(ic) + len(nic) == len(full) == 400 and 0 < len(nic) < len(ic)
    recs = [json.loads(line) for line in open(lambada_path)][:400]
    want = sum(in_context(r["context"], r["continuation"]) for r in recs)
    assert len(ic) == want
    assert set(LAMBADA_FILTERS) == {"lambada_ic", "lambada_nic"}
    assert in_context("He gave the book to Anna.", " anna") and not in_context("He gave it to Annabel.", " Anna")
    with pytest.raises(Exception, match="join distinct"):
        reference_parts("clean+clean")


def test_several_references_label_like_each_alone_whatever_the_sharding(tiny_pool, tiny_ckpt, one_thread):
    tok = tiny_pool.tokenizer()
    ids = np.arange(1, 200, 6)  # odd ids: never trained on
    ref_ids = np.arange(3, 200, 6)[:12]
    clean = clean_reference(tiny_pool.path, ref_ids, tokenizer_hash=tiny_pool.tokenizer_hash)
    lam = load_reference("lambada_nic", tok, size=16, seed=0)
    both = combine_references([clean, lam])
    assert both.part("clean").fingerprint == clean.fingerprint and both.fingerprint != clean.fingerprint
    cfg = ProbeConfig(mode="first_order", chunk_size=5)
    tabs = {}
    for name, ref, chunk in (("clean", clean, 64), ("nic", lam, 64), ("both", both, 5), ("both64", both, 64)):
        out = probe(ProbeConfig(mode="first_order", chunk_size=chunk), tiny_ckpt, tiny_pool, ids,
                    Path(str(tiny_ckpt) + f"_probe_{name}"), reference=ref)
        tabs[name] = read_labels_table(out)
    t = tabs["both"]
    # each part's delta is the label of that reference alone (one backward per part over the combined
    # set's batches: the same sums in another order, so to float32 rounding)
    np.testing.assert_allclose(t.column("ref_loss_delta_clean").to_numpy(), tabs["clean"].column("ref_loss_delta").to_numpy(),
                               rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(t.column(f"ref_loss_delta_{lam.name}").to_numpy(),
                               tabs["nic"].column("ref_loss_delta").to_numpy(), rtol=1e-4, atol=1e-8)
    parts = np.stack([tabs["clean"].column("ref_loss_delta").to_numpy(), tabs["nic"].column("ref_loss_delta").to_numpy()], 1)
    want = (parts / parts.std(axis=0)).mean(axis=1)
    np.testing.assert_allclose(t.column("ref_loss_delta").to_numpy(), want, rtol=1e-3)
    # identical across sharding: 7 chunks of 5 or one of 64
    assert t.column("ref_loss_delta").to_numpy().tobytes() == tabs["both64"].column("ref_loss_delta").to_numpy().tobytes()
    assert np.array_equal(combine_part_deltas(np.array([[1.0, 5.0], [1.0, -5.0]])), np.array([2.5, -2.5]) / 5 * 1)
    del cfg


def _arena_reference() -> str:
    probe_cfg = yaml.safe_load((ROOT / "configs" / "arena_cpu.yaml").read_text())["mates"]["probe"]
    return probe_cfg.get("reference", ProbeConfig().reference)


def test_planted_pool_lambada_target_keeps_junk_the_arena_reference_does_not(data, lambada_path, tmp_path, one_thread):
    """Junk that carries the LAMBADA targets' words (lists of target words of LAMBADA passages the
    reference never sees): a first-order oracle on LAMBADA keeps it far above the block's share;
    one on the arena's probe reference (held-out clean text) keeps no more than the block's share.
    The arena-scale measurement (real junk kinds, every selector, seeds) is experiments/selection_arena/
    noise.py; this is the mechanism on a model small enough for a test."""
    from datamates.config.core import ModelConfig
    from datamates.core.train_loop import train

    corpus = tmp_path / "corpus"
    (corpus / "web").mkdir(parents=True)
    for f in WEB:
        (corpus / "web" / f).symlink_to(data / "pretrain" / "web" / f)
    words = [json.loads(line)["continuation"] for line in open(lambada_path)][2000:]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 200)) for _ in range(300)]
    (corpus / "junk_shuffled").mkdir()
    docs = junk_documents(texts, {"shuffled": 150_000}, seed=0)
    (corpus / "junk_shuffled" / "junk.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    build_pool(tiny_pool_config([str(corpus)]), tmp_path / "pool")
    pool = Pool(tmp_path / "pool")
    junk = np.array([is_junk_domain(d) for d in pool.domains])[np.asarray(pool.seq_domain)]
    clean_ids = rng.permutation(np.nonzero(~junk)[0])
    ref_ids, cands = np.sort(clean_ids[:64]), np.sort(np.concatenate([clean_ids[64:256],
                                                                       rng.choice(np.nonzero(junk)[0], 64, replace=False)]))
    ckpt = tmp_path / "ckpt"
    train(tiny_train_cfg(steps=300, checkpoint_every=10_000, lr=3e-3), ModelConfig(preset="test", n_layers=2, d_model=32,
                                                                                  n_heads=2, context=128),
          pool, np.setdiff1d(np.nonzero(~junk)[0], clean_ids[:256]), ckpt)
    tok = pool.tokenizer()
    refs = {"lambada_openai": load_reference("lambada_openai", tok, size=128, seed=0, index=np.arange(2000))}
    parts = []
    for part in reference_parts(_arena_reference()):
        parts.append(clean_reference(pool.path, ref_ids) if part == "clean"
                     else load_reference(part, tok, size=128, seed=0, index=np.arange(2000)))
    refs["arena"] = parts[0] if len(parts) == 1 else combine_references(parts)
    share = {}
    for name, ref in refs.items():
        ids, lab = read_labels(probe(ProbeConfig(mode="first_order"), ckpt, pool, cands, tmp_path / name, reference=ref))
        share[name] = junk[ids[np.argsort(lab, kind="stable")[:64]]].mean()
    assert junk[cands].mean() == 0.25
    assert share["lambada_openai"] > 0.4, share  # the old target: far above the block's 25%
    assert share["arena"] <= 0.25, share  # the arena's probe reference: no more than the block's share


def _script(name: str):
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "experiments" / "selection_arena"))
    spec = importlib.util.spec_from_file_location(f"arena_{name}", ROOT / "experiments" / "selection_arena" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_junk_run_reports_junk_and_ground_truth_measures_every_target(junk_pool, tmp_path, one_thread):
    """A tiny arena run on a pool with junk writes noise.json; the targets agree with the evaluation
    stage's own numbers (an independent implementation); the ground-truth rows train on what they say."""
    import shutil

    from datamates.commands._common import write_run_config
    from datamates.core.checkpoint import load_model
    from datamates.pipelines import run_mates
    from datamates.run_dir import RunDir, read_json

    cfg = load_config(None, [
        "name=j", f"runs_root={tmp_path}", "pool.seq_len=64", "pool.tokenizer.vocab_size=512",
        "model.preset=tiny", "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.context=128",
        "train.micro_batch_size=4", "train.lr=3.0e-3", "train.warmup_steps=2", "train.device=cpu", "train.checkpoint_every=2",
        "eval.tasks=[]", "eval.limit=8", "mates.selectors=[random, loss, oracle@clean]", "mates.stages=3",
        "mates.warmup_stages=1", "mates.stage_steps=2", "mates.heldout_per_domain=8", "mates.decay_steps=2",
        "mates.decay_half_life=1.0", "mates.curve_reference_size=8", "mates.probe.mode=first_order",
        "mates.probe.n_probes=16", "mates.probe.reference_size=16", "mates.probe.clean_per_domain=4",
    ])
    rd = RunDir(cfg.run_dir)
    shutil.copytree(junk_pool.path, rd.pool)
    write_run_config(cfg, rd)  # as `datamates run` does
    run_mates(cfg, rd)
    noise = read_json(rd.root / "noise.json")
    assert set(noise["selectors"]) == {"random", "loss", "oracle@clean"} and noise["kinds"] == sorted(KINDS)
    targets = _script("targets").write_targets(rd.root, lambada_limit=8)
    ev = read_json(rd.branch("random").final_eval / "eval.json")
    t = targets["random"]
    assert t["held-out clean loss"] == pytest.approx(ev["perplexity"]["heldout"]["all"]["loss"], rel=1e-5)
    # the evaluation stage scores contexts after a BOS/EOS prefix (lm-eval), the reference loss (MATES's) without
    assert t["LAMBADA eval all"] == pytest.approx(ev["reference"]["lambada_openai"]["loss"], rel=1e-4)
    assert {"LAMBADA eval ic", "LAMBADA eval nic", "clean reference", "held-out loss web"} <= set(t)
    gt = _script("ground_truth")
    res = gt.ground_truth(rd.root, n=8)
    assert {"random clean", "pick loss", "pick oracle@clean", *(f"junk {k}" for k in KINDS)} <= set(res["delta"])
    plan = make_plan(cfg, junk_pool, rd.plan)
    rows = gt.rows_of(rd, cfg, junk_pool, plan, 8, cfg.train.seed)
    dom = np.asarray(junk_pool.seq_domain)
    assert {junk_pool.domains[d] for d in dom[rows["junk random_chars"]]} == {"junk_random_chars"}
    assert not any(is_junk_domain(junk_pool.domains[d]) for d in dom[rows["random clean"]])
    after = _script("targets").measure(load_model(rd.root / "ground_truth" / "checkpoints" / "junk_keywords"),
                                       junk_pool, plan, lambada_limit=None)
    assert res["delta"]["junk keywords"]["held-out clean loss"] == pytest.approx(
        after["held-out clean loss"] - res["warmup"]["held-out clean loss"], abs=1e-9)


def test_report_junk_table_is_mean_sd_per_kind_and_paired_against_random():
    from datamates.report import junk_table, run_metrics

    def noise(kept, shuffled):
        return {"domain": "junk", "kept": kept, "per_kind": {"shuffled": shuffled, "keywords": kept - shuffled}}

    runs = [{"name": f"s{i}", "selectors": {"random": {"noise": noise(0.08, 0.02)},
                                            "mates": {"noise": noise(0.08 + d, 0.02 + d)}}}
            for i, d in enumerate((0.10, 0.12, 0.14))]
    md = junk_table(runs).splitlines()
    assert md[0] == "| selector | junk kept | keywords | shuffled | Δ vs random [95% t] | runs above random |"
    mates = next(line for line in md if line.startswith("| mates |"))
    assert "20.0% ± 2.0%" in mates and "14.0% ± 2.0%" in mates and "6.0% ± 0.0%" in mates  # kept, shuffled, keywords
    assert "+12.0%" in mates and mates.endswith("| 3/3 |")
    assert run_metrics(runs[0]["selectors"]["mates"])["junk share kept"] == (0.18, True)
    assert junk_table([{"name": "x", "selectors": {"random": {"noise": None}}}]) == ""


def test_selector_at_reference_names_the_reference_it_probes(tmp_path):
    from datamates.errors import ConfigError
    from datamates.plan import probe_reference_parts, selector_reference
    from datamates.selectors import resolve_selectors

    cfg = load_config(None, [f"runs_root={tmp_path}", "mates.probe.reference=clean",
                             "mates.selectors=[random, mates, oracle@lambada_openai, mates@clean+lambada_nic, mates-parity]"])
    names = resolve_selectors(cfg.mates.selectors)
    assert names == ["random", "mates", "oracle@lambada_openai", "mates@clean+lambada_nic", "mates-parity"]
    refs = {n: selector_reference(cfg, n) for n in names}
    assert refs == {"random": "clean", "mates": "clean", "oracle@lambada_openai": "lambada_openai",
                    "mates@clean+lambada_nic": "clean+lambada_nic", "mates-parity": "lambada_openai"}
    assert probe_reference_parts(cfg) == ["clean", "lambada_openai", "lambada_nic"]
    with pytest.raises(ConfigError, match="unknown selector"):
        resolve_selectors(["nosuch@clean"])
