"""Do selectors reward what cannot be learned? (issue 18, item 7)

Plants about 7% noise into the sample pool -- word-shuffled real text, random character strings,
repeated boilerplate -- as its own domain (`noise/`, so every selection's meta.json counts it in
`kept_per_domain`), runs the arena's schedule for a few selectors, and reports per selector the
share of noise kept over the selection stages against random's (`<run>/noise.json`, which the
report reads; a selector that keeps more than random is flagged there).

Whether the oracle is a sensible target depends on how far the warmup got: a model still in its
unigram stage gains reference loss from any text with the right token frequencies, so one-step
probes favour shuffled text. The check: the warmup model's held-out loss (nats per token) against
the pool's unigram entropy H1 = -sum_v p_v ln p_v over its token frequencies; past the unigram
stage the loss is below H1.

    python experiments/selection_arena/noise.py --warmup-stages 1 4 [--selectors random oracle loss mates]

Writes `noise_results.json` and prints the Markdown table of README.md, "Noise".
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NOISE = "noise"
BOILERPLATE = ("Click here to subscribe to our newsletter. All rights reserved. Terms of use | Privacy policy | "
               "Cookie settings. Share this article on Facebook, Twitter and email. ")


# ----------------------------------------------------------------------------- planting


def noise_documents(texts: list[str], n_chars: int, seed: int) -> list[dict[str, str]]:
    """Noise documents of three kinds, about n_chars / 3 characters each: the words of real texts
    shuffled within each text, random character strings, and a boilerplate paragraph repeated."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    alphabet = string.ascii_letters + string.digits + string.punctuation + "      "
    budget = {"shuffled": n_chars // 3, "random_chars": n_chars // 9, "boilerplate": n_chars // 3}
    # random characters cost ~3x more tokens per character than text: a third of the characters
    i = 0
    while budget["shuffled"] > 0 and texts:
        words = texts[i % len(texts)].split()
        rng.shuffle(words)
        doc = " ".join(words)[:1500]
        out.append({"id": f"noise-shuffled-{i}", "text": doc})
        budget["shuffled"] -= len(doc)
        i += 1
    j = 0
    while budget["random_chars"] > 0:
        doc = "".join(rng.choice(alphabet) for _ in range(rng.randint(300, 1000)))
        out.append({"id": f"noise-random-{j}", "text": doc})
        budget["random_chars"] -= len(doc)
        j += 1
    m = 0
    while budget["boilerplate"] > 0:
        doc = BOILERPLATE * rng.randint(3, 8)
        out.append({"id": f"noise-boilerplate-{m}", "text": doc})
        budget["boilerplate"] -= len(doc)
        m += 1
    rng.shuffle(out)
    return out


def _read_texts(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def planted_corpus(src: Path, out: Path, rate: float = 0.07, seed: int = 0) -> dict[str, Any]:
    """`out/<domain>/` links to the real inputs of `src/<domain>/`, and `out/noise/noise.jsonl`
    holds noise of about rate / (1 - rate) of the real characters (so about `rate` of the pool).
    Returns counts. Written to a temporary name, then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    n_chars, web = 0, []
    for dom in sorted(p for p in src.iterdir() if p.is_dir()):
        (out / dom.name).mkdir(exist_ok=True)
        for f in sorted(dom.iterdir()):
            link = out / dom.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
            texts = _read_texts(f)
            n_chars += sum(len(t) for t in texts)
            if dom.name == "web":
                web += texts
    docs = noise_documents(web, int(n_chars * rate / (1 - rate)), seed)
    (out / NOISE).mkdir(exist_ok=True)
    tmp = out / NOISE / "noise.jsonl.tmp"
    tmp.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tmp.rename(out / NOISE / "noise.jsonl")
    return {"real_chars": n_chars, "noise_docs": len(docs), "noise_chars": sum(len(d["text"]) for d in docs)}


# ----------------------------------------------------------------------------- measuring


def noise_share(selected: Path, domain: str = NOISE) -> tuple[float, float]:
    """(share of the kept set, share of the candidates) in `domain`, from a selection's meta.json."""
    meta = json.loads((Path(selected) / "meta.json").read_text())
    kept = meta["kept_per_domain"].get(domain, 0) / meta["k"]
    cand = meta["candidates_per_domain"].get(domain, 0) / meta["n_candidates"]
    return kept, cand


def noise_report(run: Path, domain: str = NOISE) -> dict[str, Any]:
    """Per selector: the share of noise kept over the selection stages (pooled over stages), per
    stage, and against random's; `more_than_random` flags a selector that keeps more. Written to
    `<run>/noise.json` (the report's input)."""
    run = Path(run)
    out: dict[str, Any] = {"domain": domain, "selectors": {}}
    for branch in sorted(p for p in run.iterdir() if p.is_dir() and any(p.glob("stage_*/selected"))):
        stages = {}
        for sel in sorted(branch.glob("stage_*/selected")):
            if (sel / "meta.json").exists():
                stages[sel.parent.name] = noise_share(sel, domain)
        if stages and branch.name != "warmup":
            kept = float(np.mean([k for k, _ in stages.values()]))
            cand = float(np.mean([c for _, c in stages.values()]))
            out["selectors"][branch.name] = {"kept": kept, "candidates": cand,
                                             "per_stage": {s: k for s, (k, _) in stages.items()}}
    rnd = out["selectors"].get("random", {}).get("kept")
    out["random"] = rnd
    for v in out["selectors"].values():
        v["ratio_to_random"] = v["kept"] / rnd if rnd else None
        v["more_than_random"] = bool(rnd is not None and v["kept"] > rnd)
    tmp = run / "noise.json.tmp"
    tmp.write_text(json.dumps(out, indent=2))
    tmp.rename(run / "noise.json")
    return out


def unigram_entropy(pool, ids: np.ndarray) -> float:
    """H1 = -sum_v p_v ln p_v (nats) of the token frequencies of the pool sequences `ids`."""
    counts = np.zeros(pool.vocab_size, dtype=np.int64)
    for lo in range(0, len(ids), 4096):
        counts += np.bincount(pool.tokens(ids[lo : lo + 4096]).ravel(), minlength=pool.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def heldout_loss(checkpoint: Path, pool, ids: np.ndarray) -> float:
    """Mean next-token NLL (nats per predicted token) of the model on the pool sequences `ids`."""
    from datamates.core.checkpoint import load_model
    from datamates.core.loss import sequence_nll

    model = load_model(checkpoint, device="cpu")
    nll = sequence_nll(model, pool.tokens(ids), batch_size=16, precision="fp32")
    return float(nll.sum() / (len(ids) * (pool.seq_len - 1)))


# ----------------------------------------------------------------------------- the experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "arena_cpu.yaml"))
    ap.add_argument("--warmup-stages", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--selection-stages", type=int, default=2)
    ap.add_argument("--selectors", nargs="+", default=["random", "oracle", "loss", "mates"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=0.07)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    from datamates.config.base import data_dir
    from datamates.config.run import load_config
    from datamates.core.pool import Pool
    from datamates.run_dir import RunDir

    corpus = HERE / "runs" / "noise_corpus"
    counts = planted_corpus(data_dir() / "pretrain", corpus, args.rate, seed=args.seed)
    results: dict[str, Any] = {"corpus": counts, "runs": {}}
    pool_dir = HERE / "runs" / "noise_pool"
    for w in args.warmup_stages:
        name = f"noise_w{w}_s{args.seed}"
        sets = [f"name={name}", f"pool.inputs=[{corpus}]", f"pool_dir={pool_dir}", f"mates.warmup_stages={w}",
                f"mates.stages={w + args.selection_stages}", f"mates.selectors=[{','.join(args.selectors)}]",
                f"train.seed={args.seed}", f"mates.select.seed={args.seed}", f"mates.plan_seed={args.seed}",
                "eval.tasks=[]", *args.sets]
        if not (pool_dir / "meta.json").exists():
            subprocess.run([sys.executable, "-m", "datamates", "pool", "build", "-c", args.config, "--out",
                            str(pool_dir), "--set", f"pool.inputs=[{corpus}]"], check=True)
        cmd = [sys.executable, "-m", "datamates", "run", "-c", args.config, "--no-report"]
        for s in sets:
            cmd += ["--set", s]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        run = HERE / "runs" / name
        rep = noise_report(run)
        pool = Pool(pool_dir)
        rd = RunDir(run)
        held = np.load(run / "plan" / "heldout.npy")
        clean = held[np.asarray(pool.seq_domain)[held] != pool.domains.index(NOISE)]
        rep["warmup_steps"] = w * load_config(args.config, sets).mates.stage_steps
        rep["unigram_entropy"] = unigram_entropy(pool, clean)
        rep["warmup_heldout_loss"] = heldout_loss(rd.branch("warmup").checkpoint(w), pool, clean)
        results["runs"][name] = rep
    (HERE / "noise_results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = ["| warmup (stages, steps) | warmup loss / H1 (nats) | " + " | ".join(
        sorted({s for r in results["runs"].values() for s in r["selectors"]})) + " |"]
    names = sorted({s for r in results["runs"].values() for s in r["selectors"]})
    lines.append("|" + "---|" * (len(names) + 2))
    for name, r in results["runs"].items():
        cells = []
        for s in names:
            v = r["selectors"].get(s)
            cells.append("" if v is None else f"{v['kept']:.1%}" + (" (flag)" if v["more_than_random"] else ""))
        lines.append(f"| {name} ({r['warmup_steps']} steps) | {r['warmup_heldout_loss']:.2f} / "
                     f"{r['unigram_entropy']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
