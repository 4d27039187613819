"""Behaviour digests: a tiny fixed-seed `datamates run` with every cheap selector writes the same
probe labels, selected ids, score values and evaluation numbers as the code did before the stage-protocol redesign
(issue 27). The reference values below were generated from the unchanged code (commit 69dfbd9) with
`DATAMATES_DIGESTS=print pytest -s tests/test_behaviour_digests.py`; a refactor that changes any
selection, score or evaluation number fails here, naming the artifact.

What is compared, per branch and stage: sha256 of `selected/ids.npy`'s ids (int64), of the probe
labels (seq_id int64, ref_loss_delta float64), of the scores folder's (seq_id int64, score float32) in shard order, and the final evaluation's numbers
(tasks, reference sets, held-out perplexity) rounded to 6 significant digits (the run uses one thread, so they are reproducible on one machine).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datamates.config import load_config
from datamates.pipelines import run_mates
from datamates.run_dir import RunDir, read_json

SELECTORS = ["random", "loss", "mates", "mates-static", "oracle", "dsir", "perplexity", "semdedup", "fasttext",
             "qurating", "dsdm", "rholoss", "group:loss"]


def _config(tmp: Path, labels: Path) -> Path:
    cfg = {
        "name": "digests",
        "runs_root": str(tmp / "runs"),
        "pool": {"seq_len": 64, "tokenizer": {"vocab_size": 512}},
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2, "context": 128},
        "train": {"micro_batch_size": 4, "lr": 3.0e-3, "warmup_steps": 1, "device": "cpu", "log_every": 100,
                  "checkpoint_every": 100},
        "eval": {"tasks": ["arc_easy"], "limit": 8, "batch_size": 16},
        "mates": {
            "selectors": SELECTORS, "stages": 3, "stage_steps": 2, "heldout_per_domain": 4,
            "decay_steps": 1, "decay_half_life": 1.0, "curve_reference_size": 8,
            "probe": {"mode": "first_order", "n_probes": 16, "reference_size": 8, "chunk_size": 8},
            "fit": {"mode": "frozen", "encoder": {"max_tokens": 64, "chunk_len": 64}, "min_labels": 8},
            "score": {"device": "cpu"},
            "select": {"temperature": 0.1},
            "baselines": {
                "semdedup": {"clusters": 4},
                "rater": {"labels": str(labels), "min_labels": 8},
                "classifier": {"positives": 40, "epoch": 2, "bucket": 1000, "dim": 8},
                "perplexity": {"batch_size": 8},
                "dsdm": {"dim": 32, "batch_size": 8, "device": "cpu"},
                "rholoss": {"steps": 2, "micro_batch_size": 4},
                "group": {"clusters": 2, "device": "cpu"},
            },
        },
    }
    f = tmp / "digests.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _round(x):
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _eval_numbers(path: Path) -> dict:
    e = read_json(path / "eval.json")
    keep = ("acc", "acc_norm", "gold_logprob", "gold_prob", "loss", "ppl", "bpb", "n", "n_tokens")
    out = {}
    for part in ("tasks", "reference"):
        for name, r in (e.get(part) or {}).items():
            out[f"{part}/{name}"] = {k: r[k] for k in keep if k in r}
    for name, p in (e.get("perplexity") or {}).items():
        out[f"perplexity/{name}"] = {k: p["all"][k] for k in keep if k in p["all"]}
    return _round(out)


def _digests(rd: RunDir) -> dict:
    from datamates.selection.probe import read_labels
    from datamates.selection.scores_io import read_scores

    out: dict = {}
    for branch in ["warmup"] + SELECTORS:
        br = rd.branch(branch)
        stages = [1] if branch == "warmup" else [2, 3]
        for s in stages:
            if (br.probe(s) / "DONE").exists():
                out[f"{branch}/{s}/probe"] = _sha(*read_labels(br.probe(s)))
            out[f"{branch}/{s}/selected"] = _sha(np.load(br.selected(s) / "ids.npy").astype(np.int64))
            if (br.scores(s) / "DONE").exists():
                ids, vals = read_scores(br.scores(s))
                out[f"{branch}/{s}/scores"] = _sha(ids.astype(np.int64), vals.astype(np.float32))
        if branch != "warmup":
            out[f"{branch}/eval"] = _eval_numbers(br.final_eval)
    return out


@pytest.fixture(scope="module")
def digest_run(tiny_pool, data, tmp_path_factory) -> RunDir:
    tmp = tmp_path_factory.mktemp("digests")
    labels = tmp / "labels40.jsonl"  # the bundle's quality judgements, cut to 40 for time
    from datamates.baselines.quality import BUNDLE_LABELS

    labels.write_text("".join(gzip.open(data / BUNDLE_LABELS, "rt").readlines()[:40]))
    f = _config(tmp, labels)
    dst = tmp / "runs" / "digests" / "pool"
    shutil.copytree(tiny_pool.path, dst)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(str(f))
        rd = RunDir(cfg.run_dir)
        run_mates(cfg, rd)
    finally:
        torch.set_num_threads(threads)
    return rd


REFERENCE: dict = {
    "dsdm/2/scores": "9dc2ba77114c4fb0",
    "dsdm/2/selected": "a4c3bedf529f3b31",
    "dsdm/3/scores": "f40c921f10c97d5c",
    "dsdm/3/selected": "e70488a11de71ff5",
    "dsdm/eval": {
        "perplexity/heldout": {
            "bpb": 4.99303,
            "loss": 5.9449,
            "n_tokens": 1008,
            "ppl": 381.801
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.83005,
            "n": 8,
            "n_tokens": 37,
            "ppl": 513219000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.17617,
            "gold_prob": 0.126703,
            "n": 8
        }
    },
    "dsir/2/scores": "28edf101a70b1870",
    "dsir/2/selected": "a5f48d816a3d6d39",
    "dsir/3/scores": "9709dcf9cafd4e6e",
    "dsir/3/selected": "ebae02e7cf724966",
    "dsir/eval": {
        "perplexity/heldout": {
            "bpb": 5.00134,
            "loss": 5.95479,
            "n_tokens": 1008,
            "ppl": 385.596
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.81324,
            "n": 8,
            "n_tokens": 37,
            "ppl": 474835000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.18333,
            "gold_prob": 0.126719,
            "n": 8
        }
    },
    "fasttext/2/scores": "1a3f4c561456f237",
    "fasttext/2/selected": "59e467178bf95cce",
    "fasttext/3/scores": "4044c7122dab4de4",
    "fasttext/3/selected": "4491b1c62bf2ff4b",
    "fasttext/eval": {
        "perplexity/heldout": {
            "bpb": 4.99212,
            "loss": 5.94381,
            "n_tokens": 1008,
            "ppl": 381.386
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.81245,
            "n": 8,
            "n_tokens": 37,
            "ppl": 473093000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.18063,
            "gold_prob": 0.12685,
            "n": 8
        }
    },
    "group:loss/2/scores": "9328d74aaeb0009b",
    "group:loss/2/selected": "916853bcbfbbed39",
    "group:loss/3/scores": "a384a9dff2c2a386",
    "group:loss/3/selected": "6bfc8aba4fd7bf85",
    "group:loss/eval": {
        "perplexity/heldout": {
            "bpb": 4.99635,
            "loss": 5.94885,
            "n_tokens": 1008,
            "ppl": 383.31
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.90908,
            "n": 8,
            "n_tokens": 37,
            "ppl": 739689000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.20935,
            "gold_prob": 0.126956,
            "n": 8
        }
    },
    "loss/2/scores": "9328d74aaeb0009b",
    "loss/2/selected": "ef1ea2f87e29e91a",
    "loss/3/scores": "cd1ab1a080abdf7f",
    "loss/3/selected": "dda78158947ac158",
    "loss/eval": {
        "perplexity/heldout": {
            "bpb": 4.99844,
            "loss": 5.95134,
            "n_tokens": 1008,
            "ppl": 384.267
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.91894,
            "n": 8,
            "n_tokens": 37,
            "ppl": 774209000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.21372,
            "gold_prob": 0.126835,
            "n": 8
        }
    },
    "mates-static/2/probe": "a6c3561f9d20ad00",
    "mates-static/2/scores": "0de086fe0dab0a26",
    "mates-static/2/selected": "1ce45e727d2e4925",
    "mates-static/3/scores": "ab0018bbd0a6904c",
    "mates-static/3/selected": "35504044a0a2058f",
    "mates-static/eval": {
        "perplexity/heldout": {
            "bpb": 4.99059,
            "loss": 5.94199,
            "n_tokens": 1008,
            "ppl": 380.693
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.81466,
            "n": 8,
            "n_tokens": 37,
            "ppl": 477955000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.17042,
            "gold_prob": 0.126908,
            "n": 8
        }
    },
    "mates/2/probe": "a6c3561f9d20ad00",
    "mates/2/scores": "0de086fe0dab0a26",
    "mates/2/selected": "1ce45e727d2e4925",
    "mates/3/probe": "c2cb8605fc599a2a",
    "mates/3/scores": "905585bca6009b89",
    "mates/3/selected": "b5aa1a0a324bb430",
    "mates/eval": {
        "perplexity/heldout": {
            "bpb": 4.99674,
            "loss": 5.94932,
            "n_tokens": 1008,
            "ppl": 383.492
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.7999,
            "n": 8,
            "n_tokens": 37,
            "ppl": 446425000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.17083,
            "gold_prob": 0.12678,
            "n": 8
        }
    },
    "oracle/2/probe": "17c5de61209fa3b9",
    "oracle/2/selected": "71b628e01ad68c9d",
    "oracle/3/probe": "a4642a68e97ceeb9",
    "oracle/3/selected": "25a0132a3c5d8d10",
    "oracle/eval": {
        "perplexity/heldout": {
            "bpb": 4.99557,
            "loss": 5.94793,
            "n_tokens": 1008,
            "ppl": 382.959
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.77279,
            "n": 8,
            "n_tokens": 37,
            "ppl": 393825000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.17293,
            "gold_prob": 0.126688,
            "n": 8
        }
    },
    "perplexity/2/scores": "57458438eba223ce",
    "perplexity/2/selected": "ac50ffb56299ccb6",
    "perplexity/3/scores": "807e6a3036ffce5f",
    "perplexity/3/selected": "6cbaa9e959f2627b",
    "perplexity/eval": {
        "perplexity/heldout": {
            "bpb": 4.99153,
            "loss": 5.94311,
            "n_tokens": 1008,
            "ppl": 381.119
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.79972,
            "n": 8,
            "n_tokens": 37,
            "ppl": 446044000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.17572,
            "gold_prob": 0.12681,
            "n": 8
        }
    },
    "qurating/2/scores": "49e1d6e48c8c1e11",
    "qurating/2/selected": "bab60d70e5364319",
    "qurating/3/scores": "dc50723bf295634f",
    "qurating/3/selected": "49b88d00c759502f",
    "qurating/eval": {
        "perplexity/heldout": {
            "bpb": 4.98945,
            "loss": 5.94064,
            "n_tokens": 1008,
            "ppl": 380.177
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.82617,
            "n": 8,
            "n_tokens": 37,
            "ppl": 504107000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.19063,
            "gold_prob": 0.126742,
            "n": 8
        }
    },
    "random/2/selected": "18b9c585d3d6f7c5",
    "random/3/selected": "7a61d2115171790c",
    "random/eval": {
        "perplexity/heldout": {
            "bpb": 4.99736,
            "loss": 5.95006,
            "n_tokens": 1008,
            "ppl": 383.776
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.85001,
            "n": 8,
            "n_tokens": 37,
            "ppl": 562851000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.18647,
            "gold_prob": 0.127117,
            "n": 8
        }
    },
    "rholoss/2/scores": "7270829755592b8b",
    "rholoss/2/selected": "ba83e40cd8b69138",
    "rholoss/3/scores": "b3e901488bb1a3e9",
    "rholoss/3/selected": "70419943379f811f",
    "rholoss/eval": {
        "perplexity/heldout": {
            "bpb": 4.99188,
            "loss": 5.94353,
            "n_tokens": 1008,
            "ppl": 381.28
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.86354,
            "n": 8,
            "n_tokens": 37,
            "ppl": 599199000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.1898,
            "gold_prob": 0.126802,
            "n": 8
        }
    },
    "semdedup/2/scores": "74ce4456354cd2d1",
    "semdedup/2/selected": "d8dde6a1813852ed",
    "semdedup/3/scores": "3a1cb9ce91bee3ae",
    "semdedup/3/selected": "0ad50bcd35ac2bfb",
    "semdedup/eval": {
        "perplexity/heldout": {
            "bpb": 4.9978,
            "loss": 5.95058,
            "n_tokens": 1008,
            "ppl": 383.977
        },
        "reference/lambada_openai": {
            "acc": 0.0,
            "loss": 5.83423,
            "n": 8,
            "n_tokens": 37,
            "ppl": 523244000000.0
        },
        "tasks/arc_easy": {
            "acc": 0.125,
            "acc_norm": 0.125,
            "gold_logprob": -3.18856,
            "gold_prob": 0.126604,
            "n": 8
        }
    },
    "warmup/1/selected": "08857f5ced915eeb"
}


def test_every_selector_writes_the_reference_bytes(digest_run):
    got = _digests(digest_run)
    if os.environ.get("DATAMATES_DIGESTS") == "print":
        print("REFERENCE = " + json.dumps(got, indent=4, sort_keys=True))
        return
    assert set(got) == set(REFERENCE), sorted(set(got) ^ set(REFERENCE))
    for key in sorted(REFERENCE):
        assert got[key] == REFERENCE[key], key
