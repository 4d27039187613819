"""Planted junk: a standing measurement of whether a selector keeps what a crawl should lose (issue 30).

Real crawls hold text that no selection should prefer. `plant` adds a junk domain per kind to a
corpus, built deterministically from a seed and the corpus's own web text:

    shuffled       the words of a real web document in random order (right token frequencies, no
                   syntax: "repeat a word of this document" is all it teaches)
    random_chars   random strings of letters, digits, punctuation and spaces
    boilerplate    page chrome: cookie banners, navigation menus, share buttons, footers; a block of
                   such lines repeated down the page
    keywords       SEO keyword lists ("cheap hotel deals near me, best hotel reviews 2024 | ..."), the
                   stuffing real crawls carry, built from the corpus's own vocabulary

Each kind is its own pool domain `junk_<kind>` (pools pack each domain into its own sequences, so a
junk sequence holds one kind only and every selection's meta.json counts it per kind in
`kept_per_domain`); each document's id is `junk-<kind>-<n>`. The plan (plan.py) never draws
held-out evaluation sequences or clean references from a junk domain.

`junk_report(run)` reads every branch's selections and writes `<run>/noise.json`: per selector
the share of junk in its kept sets (pooled over the selection stages), per kind and per stage, next
to the share among its candidates and random's share (the report's junk table reads it).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

from datamates.errors import InputError
from datamates.run_dir import atomic_write_json, read_json

JUNK_PREFIX = "junk_"
KINDS = ("shuffled", "random_chars", "boilerplate", "keywords")
# characters per token of each kind under a BPE trained on text (measured on the sample pool, 8k vocab):
# a kind's character budget is its token budget times this, so each kind gets about the same token share
CHARS_PER_TOKEN = {"shuffled": 4.0, "random_chars": 1.6, "boilerplate": 4.5, "keywords": 5.0}

BOILERPLATE_LINES = (
    "We use cookies to improve your experience on our site. By continuing to browse, you agree to our use of cookies.",
    "Accept all cookies | Reject non-essential cookies | Cookie settings",
    "This website uses cookies to ensure you get the best experience. Learn more. Got it!",
    "Home | About Us | Services | Blog | Contact | Privacy Policy | Terms of Service",
    "Skip to main content",
    "Menu Search Sign in Subscribe",
    "Share this article: Facebook Twitter LinkedIn Pinterest WhatsApp Email",
    "Share on Facebook Share on Twitter Share via Email Print this page",
    "Click here to subscribe to our newsletter and never miss an update!",
    "Copyright 2024 All rights reserved.",
    "Terms of use | Privacy policy | Cookie policy | Accessibility | Sitemap",
    "Follow us on Instagram, YouTube and TikTok",
    "Related posts: You may also like",
    "Leave a comment Cancel reply Your email address will not be published. Required fields are marked *",
    "Previous article Next article",
    "Posted in Uncategorized | Tagged news, updates | 0 Comments",
    "Sign up for our free newsletter. Enter your email address Subscribe",
    "Back to top",
    "Advertisement",
    "Loading... Please wait.",
    "Read more >>",
    "Powered by WordPress | Theme by ThemeForest",
    "Your cart is empty. Continue shopping",
    "Free shipping on orders over $50! Shop now",
)
KEYWORD_TEMPLATES = (
    "best {a} {b}", "cheap {a} near me", "{a} for sale", "buy {a} online", "{a} {b} {year}", "top 10 {a}",
    "{a} reviews", "free {a} download", "{a} {b} deals", "discount {a}", "{a} price", "how to {a} {b}",
    "{a} {b} coupon code", "official {a} store", "{a} vs {b}",
)


def junk_domain(kind: str) -> str:
    return JUNK_PREFIX + kind


def is_junk_domain(name: str) -> bool:
    return name.startswith(JUNK_PREFIX)


def junk_kind(domain: str) -> str | None:
    """The junk kind of a pool domain, None for a clean one."""
    return domain[len(JUNK_PREFIX):] if is_junk_domain(domain) else None


# ----------------------------------------------------------------------------- building


def _vocabulary(texts: list[str], n: int = 2000) -> list[str]:
    """The n most frequent lower-case alphabetic words of 4+ letters (ties by first appearance)."""
    c: Counter[str] = Counter()
    for t in texts:
        c.update(w for w in re.findall(r"[A-Za-z]{4,}", t.lower()))
    return [w for w, _ in c.most_common(n)]


def junk_documents(texts: list[str], n_chars: dict[str, int], seed: int) -> list[dict[str, str]]:
    """Junk documents, about n_chars[kind] characters of each kind (module docstring), in a seeded
    order; `texts` are real web documents (the shuffled kind's sources and the keywords' vocabulary).
    Records: {"id": "junk-<kind>-<n>", "kind", "text"} (plus "source" = the text's position for
    the shuffled kind)."""
    unknown = sorted(set(n_chars) - set(KINDS))
    if unknown:
        raise InputError(f"junk kind {unknown[0]!r} is not one of {', '.join(KINDS)}")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []

    def add(kind: str, text: str, **extra: Any) -> None:
        n = sum(1 for d in out if d["kind"] == kind)
        out.append({"id": f"junk-{kind}-{n}", "kind": kind, "text": text, **extra})

    budget = dict(n_chars)
    order = list(range(len(texts)))
    rng.shuffle(order)
    i = 0
    while budget.get("shuffled", 0) > 0 and texts:
        src = order[i % len(order)]
        words = texts[src].split()
        rng.shuffle(words)
        doc = " ".join(words)[:1500]
        if doc:
            add("shuffled", doc, source=src)
            budget["shuffled"] -= len(doc)
        i += 1
        if i > 100 * len(texts):
            break
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 6
    while budget.get("random_chars", 0) > 0:
        doc = "".join(rng.choice(alphabet) for _ in range(rng.randint(300, 1000)))
        add("random_chars", doc)
        budget["random_chars"] -= len(doc)
    while budget.get("boilerplate", 0) > 0:
        block = rng.sample(BOILERPLATE_LINES, rng.randint(4, 10))
        doc = "\n".join(block * rng.randint(2, 6))
        add("boilerplate", doc)
        budget["boilerplate"] -= len(doc)
    vocab = _vocabulary(texts) or ["hotel", "shoes", "insurance", "loans", "casino"]
    while budget.get("keywords", 0) > 0:
        topic = rng.sample(vocab[:200], min(3, len(vocab[:200])))
        phrases = []
        for _ in range(rng.randint(30, 120)):
            a = rng.choice(topic) if rng.random() < 0.6 else rng.choice(vocab)
            phrases.append(rng.choice(KEYWORD_TEMPLATES).format(a=a, b=rng.choice(vocab),
                                                                year=rng.choice((2022, 2023, 2024, 2025))))
        doc = rng.choice((", ", " | ", " - ", "\n")).join(phrases)
        add("keywords", doc)
        budget["keywords"] -= len(doc)
    rng.shuffle(out)
    return out


def _read_texts(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def plant(src: str | Path, out: str | Path, rate: float = 0.07, seed: int = 0,
          kinds: tuple[str, ...] | list[str] = KINDS, web_domain: str = "web") -> dict[str, Any]:
    """A corpus `out/` = every domain folder of `src/` (links to its files) + one folder per junk
    kind, `out/junk_<kind>/junk.jsonl`, holding together about `rate` of the corpus's tokens, split
    evenly between the kinds (CHARS_PER_TOKEN). The shuffled kind and the keyword vocabulary come
    from `src/<web_domain>/`. Deterministic from `seed`; each file is written under a temporary
    name, then renamed. Returns {"real_chars", "kinds": {kind: {"docs", "chars"}}, "rate", "seed"}."""
    if not 0 < rate < 1:
        raise InputError(f"junk rate = {rate}: must be in (0, 1)")
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_chars, web = 0, []
    for dom in sorted(p for p in src.iterdir() if p.is_dir() and not is_junk_domain(p.name)):
        (out / dom.name).mkdir(exist_ok=True)
        for f in sorted(p for p in dom.iterdir() if p.is_file()):
            link = out / dom.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
            texts = _read_texts(f)
            n_chars += sum(len(t) for t in texts)
            if dom.name == web_domain:
                web += texts
    tokens = rate / (1 - rate) * n_chars / CHARS_PER_TOKEN["shuffled"]
    budget = {k: int(tokens / len(kinds) * CHARS_PER_TOKEN[k]) for k in kinds}
    docs = junk_documents(web, budget, seed)
    counts: dict[str, Any] = {"real_chars": n_chars, "rate": rate, "seed": seed, "kinds": {}}
    for kind in kinds:
        mine = [d for d in docs if d["kind"] == kind]
        d = out / junk_domain(kind)
        d.mkdir(exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in mine)
        if not (d / "junk.jsonl").exists() or (d / "junk.jsonl").read_text() != text:  # kept as is when equal
            tmp = d / "junk.jsonl.tmp"
            tmp.write_text(text)
            tmp.rename(d / "junk.jsonl")
        counts["kinds"][kind] = {"docs": len(mine), "chars": sum(len(r["text"]) for r in mine)}
    return counts


# ----------------------------------------------------------------------------- measuring


def _junk_counts(per_domain: dict[str, int]) -> dict[str, int]:
    return {junk_kind(d): int(n) for d, n in per_domain.items() if is_junk_domain(d)}


def selection_junk(selected: str | Path) -> dict[str, Any]:
    """Junk in one selection (its meta.json): {"k", "n_candidates", "kept": {kind: n},
    "candidates": {kind: n}}."""
    meta = read_json(Path(selected) / "meta.json")
    return {"k": int(meta["k"]), "n_candidates": int(meta["n_candidates"]),
            "kept": _junk_counts(meta.get("kept_per_domain") or {}),
            "candidates": _junk_counts(meta.get("candidates_per_domain") or {})}


def junk_report(run: str | Path, kinds: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
    """Per selector branch of `run` (every branch with selections but the warmup): the share of junk
    kept over its selection stages (pooled: junk kept / sequences kept), per kind and per stage, the
    share among its candidates, and random's share; `more_than_random` flags a selector that keeps
    more junk than `random` of the same run. Written atomically to `<run>/noise.json`; returned."""
    run = Path(run)
    sels: dict[str, Any] = {}
    seen_kinds: set[str] = set(kinds or ())
    for branch in sorted(p for p in run.iterdir() if p.is_dir() and p.name != "warmup"):
        stages = {s.parent.name: selection_junk(s) for s in sorted(branch.glob("stage_*/selected"))
                  if (s / "meta.json").exists()}
        if not stages:
            continue
        for st in stages.values():
            seen_kinds.update(st["kept"], st["candidates"])
        sels[branch.name] = stages
    all_kinds = sorted(seen_kinds)
    out: dict[str, Any] = {"domain": "junk", "kinds": all_kinds, "selectors": {}}
    for name, stages in sels.items():
        k = sum(st["k"] for st in stages.values())
        n = sum(st["n_candidates"] for st in stages.values())
        kept = {kd: sum(st["kept"].get(kd, 0) for st in stages.values()) for kd in all_kinds}
        cand = {kd: sum(st["candidates"].get(kd, 0) for st in stages.values()) for kd in all_kinds}
        out["selectors"][name] = {
            "kept": sum(kept.values()) / k, "candidates": sum(cand.values()) / n,
            "per_kind": {kd: kept[kd] / k for kd in all_kinds},
            "candidates_per_kind": {kd: cand[kd] / n for kd in all_kinds},
            "counts": {"kept": kept, "k": k, "candidates": cand, "n_candidates": n},
            "per_stage": {s: {"kept": sum(st["kept"].values()) / st["k"],
                              "per_kind": {kd: st["kept"].get(kd, 0) / st["k"] for kd in all_kinds},
                              "k": st["k"]} for s, st in stages.items()},
        }
    rnd = out["selectors"].get("random", {}).get("kept")
    out["random"] = rnd
    for v in out["selectors"].values():
        v["ratio_to_random"] = v["kept"] / rnd if rnd else None
        v["more_than_random"] = bool(rnd is not None and v["kept"] > rnd)
    atomic_write_json(run / "noise.json", out)
    return out


__all__ = ["BOILERPLATE_LINES", "JUNK_PREFIX", "KINDS", "is_junk_domain", "junk_documents", "junk_domain",
           "junk_kind", "junk_report", "plant", "selection_junk"]
