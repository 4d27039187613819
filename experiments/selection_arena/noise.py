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

    python experiments/selection_arena/noise.py --warmup-stages 2 8 [--selectors random oracle loss mates]

The run trains the arena's warmup (random data) once, for the longest warmup asked; then, for each
warmup length w, every selector picks from the next block with the stage-w checkpoint, exactly as
the arena's first selection stage would (same plan, probe set, reference part and protocol).

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


def selections_after_warmup(cfg, run: Path, selectors: list[str], warmups: list[int]) -> dict[str, Any]:
    """For each warmup length w (stages of the run's warmup branch): every selector of the
    registry picks from block w + 1 with the warmup checkpoint of stage w, exactly as the arena's
    first selection stage would (same plan, probe set, reference part, protocol), into the branch
    `w<w>_<selector>` of the run. Then the per-selector noise shares (`noise.json`), the warmup
    model's held-out loss and the pool's unigram entropy."""
    from datamates.core.pool import Pool
    from datamates.pipelines import _probe_reference
    from datamates.plan import make_plan
    from datamates.run_dir import RunDir, encoder_cache_dir
    from datamates.selectors import StageInputs, get_selector

    rd = RunDir(run)
    pool = Pool(rd.pool)
    plan = make_plan(cfg, pool, rd.plan)
    held = plan.heldout
    clean = held[np.asarray(pool.seq_domain)[held] != pool.domains.index(NOISE)]
    h1 = unigram_entropy(pool, clean)
    out: dict[str, Any] = {"unigram_entropy": h1, "warmups": {}}
    for w in warmups:
        ckpt = rd.branch("warmup").checkpoint(w)
        for name in selectors:
            br = rd.branch(f"w{w:02d}_{name}")
            x = StageInputs(cfg.mates, br, pool, w + 1, ckpt, plan.block(w + 1), plan.probe, plan.k,
                            encoder_cache_dir(pool.path), reference=_probe_reference(cfg, pool, plan))
            print(f"== warmup {w} stages: {name}", flush=True)
            get_selector(name)(x)
        rep = noise_report(run)
        sel = {n: rep["selectors"][f"w{w:02d}_{n}"] for n in selectors}
        rnd = sel.get("random", {}).get("kept")
        for v in sel.values():
            v["ratio_to_random"] = v["kept"] / rnd if rnd else None
            v["more_than_random"] = bool(rnd is not None and v["kept"] > rnd)
        out["warmups"][w] = {"steps": w * cfg.mates.stage_steps, "heldout_loss": heldout_loss(ckpt, pool, clean),
                             "selectors": sel}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "arena_cpu.yaml"))
    ap.add_argument("--warmup-stages", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--selectors", nargs="+", default=["random", "oracle", "loss", "mates"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=0.07)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    from datamates.config.base import data_dir
    from datamates.config.run import load_config

    corpus = HERE / "runs" / "noise_corpus"
    counts = planted_corpus(data_dir() / "pretrain", corpus, args.rate, seed=args.seed)
    pool_dir = HERE / "runs" / "noise_pool"
    w_max = max(args.warmup_stages)
    name = f"noise_s{args.seed}"
    # the warmup only: w_max stages of random data (+ one random stage, the run's first selection stage)
    sets = [f"name={name}", f"pool.inputs=[{corpus}]", f"pool_dir={pool_dir}", f"mates.warmup_stages={w_max}",
            f"mates.stages={w_max + 1}", "mates.selectors=[random]", f"train.seed={args.seed}",
            f"mates.select.seed={args.seed}", f"mates.plan_seed={args.seed}", "eval.tasks=[]", "mates.decay_steps=0",
            *args.sets]
    if not (pool_dir / "DONE").exists():
        subprocess.run([sys.executable, "-m", "datamates", "pool", "build", "-c", args.config, "--out",
                        str(pool_dir), "--set", f"pool.inputs=[{corpus}]"], check=True)
    cmd = [sys.executable, "-m", "datamates", "run", "-c", args.config, "--no-report"]
    for s in sets:
        cmd += ["--set", s]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    cfg = load_config(args.config, sets)
    run = Path(cfg.runs_root) / name
    results = {"corpus": counts, "config": args.config, "seed": args.seed,
               **selections_after_warmup(cfg, run, args.selectors, sorted(args.warmup_stages))}
    (HERE / "noise_results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """The README table: per warmup length, the warmup model's held-out loss against H1 and every
    selector's share of noise kept (flagged where it keeps more than random)."""
    names = list(next(iter(results["warmups"].values()))["selectors"])
    lines = [f"| warmup | held-out loss (H1 = {results['unigram_entropy']:.2f} nats) | "
             + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for w, r in results["warmups"].items():
        cells = [f"{v['kept']:.1%}" + (" **more than random**" if v["more_than_random"] else "")
                 for v in r["selectors"].values()]
        lines.append(f"| {w} stages ({r['steps']} steps) | {r['heldout_loss']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
