"""Partitions: deterministic manifests, token balance, held-out sets never trained on, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamates.ablation.partition import partition, read_manifest
from datamates.cli import main
from datamates.config.ablation import PartitionConfig
from datamates.core.documents import DocIndex
from datamates.errors import ArtifactMissing, InputError


def ids_of(m) -> dict[str, np.ndarray]:
    return {u: m.unit_ids(u) for u in m.units}


def test_manifest_is_deterministic_and_token_balanced(tiny_pool, tmp_path):
    cfg = PartitionConfig(by="domain", token_balanced=True, heldout_sequences=16, heldout_max_per_doc=4)
    a = partition(tiny_pool, cfg, tmp_path / "a")
    b = partition(tiny_pool, cfg, tmp_path / "b")
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for u in a.units:
        assert np.array_equal(a.unit_ids(u), b.unit_ids(u))
    assert a.units == tiny_pool.domains
    sizes = {u["name"]: u["sequences"] for u in a.data["units"]}
    assert len(set(sizes.values())) == 1
    assert a.data["unit_sequences"] == min(u["available_sequences"] for u in a.data["units"])
    assert all(u["tokens"] == u["sequences"] * tiny_pool.seq_len for u in a.data["units"])
    for u in a.units:  # a domain unit holds only its domain
        assert set(tiny_pool.domain_of(a.unit_ids(u)).tolist()) == {tiny_pool.domains.index(u)}


def test_heldout_is_never_trained_on(tiny_pool, tmp_path):
    cfg = PartitionConfig(by="domain", heldout_sequences=16, heldout_max_per_doc=4)
    m = partition(tiny_pool, cfg, tmp_path / "p")
    held = np.concatenate([m.heldout_ids(d) for d in m.heldout_domains])
    assert [len(m.heldout_ids(d)) for d in m.heldout_domains] == [16] * len(tiny_pool.domains)
    train = m.train_ids()
    assert not np.intersect1d(held, train).size
    # no document is shared between held-out and training sequences
    index = DocIndex(tiny_pool)
    assert not np.intersect1d(index.docs_of(held), index.docs_of(train)).size
    # units and rest are disjoint and cover everything but the held-out and guard sequences
    parts = [m.unit_ids(u) for u in m.units] + [m.rest_ids()]
    allids = np.concatenate(parts)
    assert len(np.unique(allids)) == len(allids)
    assert len(allids) + len(held) + m.data["excluded"]["heldout_guard"] == len(tiny_pool)
    # at most heldout_max_per_doc held-out sequences start in one document
    first = index.first_doc[held]
    assert np.bincount(first).max() <= 4 + 1


def test_random_file_and_split_partitions(tiny_pool, tmp_path):
    r = partition(tiny_pool, PartitionConfig(by="random", k=3, heldout_sequences=0), tmp_path / "r")
    sizes = [len(x) for x in ids_of(r).values()]
    assert r.units == ["random_0", "random_1", "random_2"] and max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(tiny_pool) and len(r.rest_ids()) == 0
    f = partition(tiny_pool, PartitionConfig(by="file", heldout_sequences=0), tmp_path / "f")
    assert "arxiv_samples" in f.units and "nq_open_oracle_wikipedia_passages" in f.units
    assert len(f.units) == 6  # 3 web files + wiki + science + mixed
    s = partition(tiny_pool, PartitionConfig(by="domain", domains=["web", "mixed"], token_balanced=True,
                                             balance="split", unit_sequences=500, heldout_sequences=0), tmp_path / "s")
    n_web, n_mixed = (tiny_pool.seq_domain == tiny_pool.domains.index("web")).sum(), \
        (tiny_pool.seq_domain == tiny_pool.domains.index("mixed")).sum()
    assert len([u for u in s.units if u.startswith("web.")]) == n_web // 500
    assert len([u for u in s.units if u.startswith("mixed.")]) == n_mixed // 500
    assert all(len(x) == 500 for x in ids_of(s).values())
    web0 = s.unit_ids("web.0")
    assert np.all(np.diff(web0) >= 1)


@pytest.mark.slow  # loads MiniLM: ~10 s on 2 shared cores
def test_cluster_partition(tiny_pool, tmp_path):
    cfg = PartitionConfig(by="cluster", k=2, domains=["web"], heldout_sequences=0, embed_tokens=32, seed=1)
    m = partition(tiny_pool, cfg, tmp_path / "c")
    assert m.units == ["cluster_0", "cluster_1"]
    sizes = [u["sequences"] for u in m.data["units"]]
    assert all(s > 0 for s in sizes) and sum(sizes) == (tiny_pool.seq_domain == tiny_pool.domains.index("web")).sum()
    m2 = partition(tiny_pool, cfg, tmp_path / "c2")
    assert all(np.array_equal(m.unit_ids(u), m2.unit_ids(u)) for u in m.units)


def test_bad_partitions_are_refused(tiny_pool, tmp_path):
    with pytest.raises(InputError, match="unknown domain 'nope'"):
        partition(tiny_pool, PartitionConfig(domains=["nope"]), tmp_path / "x")
    with pytest.raises(InputError, match="heldout_sequences"):
        partition(tiny_pool, PartitionConfig(heldout_sequences=100_000), tmp_path / "x")
    with pytest.raises(InputError, match="is empty"):
        partition(tiny_pool, PartitionConfig(by="random", k=5000, domains=["web"], heldout_sequences=0), tmp_path / "x")
    with pytest.raises(InputError, match="docs.parquet"):
        partition(tiny_pool, PartitionConfig(by="field", field="nope", heldout_sequences=0), tmp_path / "x")
    m = partition(tiny_pool, PartitionConfig(heldout_sequences=0), tmp_path / "ok")
    with pytest.raises(InputError, match="unknown unit 'nope'"):
        m.check_names(["web", "nope"])
    with pytest.raises(ArtifactMissing):
        read_manifest(tmp_path / "missing")


def test_cli_partition(tiny_pool, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["partition", "--pool", str(tiny_pool.path), "--run-dir", "run", "--token-balanced",
            "--set", "ablation.partition.heldout_sequences=8"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "run" / "partitions" / "manifest.json").read_text())
    assert [u["name"] for u in manifest["units"]] == tiny_pool.domains
    capsys.readouterr()
    assert main(["partition", "--pool", str(tiny_pool.path), "--run-dir", "run2", "--by", "field"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "field" in err


def test_a_partition_of_another_config_is_refused_not_silently_rewritten(tiny_pool, tmp_path):
    """artifacts.produce owns the partition: the same config reuses it, another one is a one-line
    refusal naming the key (the old writer silently rewrote the units an ablation trained on)."""
    from datamates.errors import IncompatibleArtifacts

    cfg = PartitionConfig(by="random", k=3, heldout_sequences=0)
    partition(tiny_pool, cfg, tmp_path / "p")
    done = (tmp_path / "p" / "DONE").read_bytes()
    assert partition(tiny_pool, cfg, tmp_path / "p").units == ["random_0", "random_1", "random_2"]
    assert (tmp_path / "p" / "DONE").read_bytes() == done
    with pytest.raises(IncompatibleArtifacts, match="config.k"):
        partition(tiny_pool, PartitionConfig(by="random", k=2, heldout_sequences=0), tmp_path / "p")
