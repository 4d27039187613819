"""The clean plan (issue 18, item 2): held-out evaluation data are whole documents, none of whose
sequences is ever a candidate, probe or training sequence; every reference set is split once into a
reference part (probes, labels, curves) and a disjoint evaluation part (the final evaluation)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamates.config.evaluate import EvalConfig
from datamates.config.run import load_config
from datamates.core.documents import DocIndex
from datamates.core.reference import load_reference, reference_path
from datamates.errors import IncompatibleArtifacts
from datamates.evaluate import evaluate
from datamates.plan import make_plan


def _cfg(tmp_path, *sets):
    base = ["pool.seq_len=64", "train.micro_batch_size=4", "mates.stages=3", "mates.stage_steps=10",
            "mates.heldout_per_domain=40", "mates.probe.n_probes=64", "mates.heldout_max_per_doc=3",
            f"runs_root={tmp_path}"]
    return load_config(None, base + list(sets))


def test_heldout_documents_never_meet_candidates_probes_or_training(tiny_pool, tmp_path):
    cfg = _cfg(tmp_path)
    plan = make_plan(cfg, tiny_pool, tmp_path / "plan")
    index = DocIndex(tiny_pool)
    held_docs = set(index.docs_of(plan.heldout).tolist())
    assert len(plan.heldout) > 0 and len(plan.guard) > 0  # the pool has documents longer than 3 sequences
    seen = np.concatenate([plan.probe, *plan.blocks])  # every training sequence is a block's
    assert not held_docs & set(index.docs_of(seen).tolist())
    # every sequence of a held-out document is held out or guarded (kept out of everything)
    for doc in held_docs:
        assert np.isin(index.seqs_of(doc), np.concatenate([plan.heldout, plan.guard])).all()
    assert not np.intersect1d(plan.guard, seen).size and not np.intersect1d(plan.guard, plan.heldout).size
    # the same plan on a rerun (resume), and a changed held-out setting is refused
    again = make_plan(cfg, tiny_pool, tmp_path / "plan")
    np.testing.assert_array_equal(again.heldout, plan.heldout)
    with pytest.raises(IncompatibleArtifacts, match="heldout_max_per_doc: 3 -> 2.*--force"):
        make_plan(_cfg(tmp_path, "mates.heldout_max_per_doc=2"), tiny_pool, tmp_path / "plan")


def test_reference_and_evaluation_parts_are_disjoint(tiny_pool, tmp_path, lambada_path):
    cfg = _cfg(tmp_path, "mates.probe.reference=dolly", "mates.reference_eval_fraction=0.4")
    plan = make_plan(cfg, tiny_pool, tmp_path / "plan")
    assert len(plan.references) == 2  # Dolly (probes) and LAMBADA (eval.reference), one split each
    for r in plan.references.values():
        assert len(r.reference) and len(r.evaluation)
        assert not np.intersect1d(r.reference, r.evaluation).size
        np.testing.assert_array_equal(np.union1d(r.reference, r.evaluation), np.arange(r.n_available))
        assert len(r.evaluation) == round(0.4 * r.n_available)
    lam = plan.split_of("lambada_openai")
    assert lam is not None and lam.source == str(lambada_path.resolve())
    ev = plan.examples("evaluation")
    assert list(ev) == ["lambada_openai"] and ev["lambada_openai"] is lam.evaluation
    # the probes' reference set is drawn from the reference part only
    dolly = plan.split_of("dolly")
    tok = tiny_pool.tokenizer()
    probe_ref = load_reference("dolly", tok, size=32, seed=1234, index=dolly.reference)
    held = load_reference("dolly", tok, size=None, index=dolly.evaluation[:300])
    everything = load_reference("dolly", tok, size=None, index=np.arange(300))
    assert len(probe_ref) == 32 and len(held) == 300
    assert not set(probe_ref.examples) & set(held.examples)
    # index = positions in the file: the plan's positions pick the file's examples
    assert set(held.examples) & set(everything.examples) == {everything.examples[i] for i in dolly.evaluation
                                                             if i < 300}
    assert reference_path("dolly").name.startswith("dolly")


def test_evaluate_scores_the_given_examples_only(tiny_ckpt, tmp_path, lambada_path):
    """`evaluate(..., examples=...)` scores exactly those examples of a reference set (the plan's
    evaluation part), in file order; `limit` takes the first of them."""
    lines = [i for i, raw in enumerate(open(lambada_path), start=1) if raw.strip()]
    cfg = EvalConfig(tasks=[], reference=["lambada_openai"], limit=3, log_samples=True, device="cpu")
    res = evaluate(cfg, tiny_ckpt, tmp_path / "ev", examples={"lambada_openai": np.array([3, 7, 9, 20])})
    assert res["reference"]["lambada_openai"]["n"] == 3
    got = [json.loads(x)["line"] for x in open(tmp_path / "ev" / "samples" / "lambada_openai.jsonl")]
    assert got == [lines[3], lines[7], lines[9]]
