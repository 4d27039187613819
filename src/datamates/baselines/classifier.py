"""A fastText classifier filter, DCLM-style (Li et al. 2024, "DataComp-LM", §4.4: a fastText
bigram classifier with instruction data as positives and web text as negatives; the FineWeb-Edu
classifier, Penedo et al. 2024, is the same recipe with educational-quality labels).

Training (unless a `.bin` is given): positives are `positives` texts of a reference set (the FLAN
sample of the bundle by default), negatives are `negatives` sequences drawn from the candidate pool
(seeded), each written as one fastText line `__label__hq <text>` / `__label__cc <text>` (newlines
folded to spaces), and `fasttext.train_supervised` fits a linear softmax over averaged word and
word-bigram embeddings (Joulin et al. 2017) on one thread (reproducible for a seed).

Scoring: s(x) = -P(positive_label | x), lower is better, so the highest-probability sequences are
kept (DCLM keeps the top 10% by this probability: `select_hint` top-k). A user's own classifier
(e.g. the DCLM `.bin`) is loaded with `fasttext.load_model`; `positive_label` names its label.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.baselines._common import (
    check_ids,
    counts,
    digest,
    file_digest,
    reference_texts,
    sequence_texts,
    write_scores,
)
from datamates.config.base import knob, to_dict, validate
from datamates.core.pool import Pool
from datamates.errors import ConfigError, InputError
from datamates.log import get_logger

log = get_logger(__name__)


@dataclass(kw_only=True)
class ClassifierConfig:
    """DCLM / FineWeb-Edu style filter: a fastText classifier, score = -P(positive)."""

    model: str | None = knob(None, "an existing fastText .bin (e.g. the DCLM classifier); null: train one")
    positive_label: str = knob("__label__hq", "the label whose probability is the quality (DCLM: __label__hq)")
    reference: str = knob("flan_cot", "positives when training: a registered reference set or a JSONL file")
    positives: int = knob(2000, "reference examples drawn as positives (seeded; fewer if the set is smaller)", ge=1)
    negatives: int | None = knob(None, "pool sequences drawn as negatives; null: as many as positives", ge=1)
    epoch: int = knob(25, "fastText epochs", ge=1)
    lr: float = knob(0.5, "fastText learning rate", gt=0)
    dim: int = knob(32, "fastText embedding size", ge=1)
    bucket: int = knob(200000, "fastText hash buckets of word n-grams (its default, 2M, makes a 2M x dim "
                               "model file: 256 MB at dim 32)", ge=1)
    word_ngrams: int = knob(2, "fastText word n-grams (DCLM: 2)", ge=1)
    min_count: int = knob(1, "fastText minimal word count", ge=1)
    max_chars: int = knob(20000, "characters of a text given to fastText (DCLM reads whole documents)", ge=1)
    seed: int = knob(0, "seed of the negative draw and of fastText (trained on one thread: reproducible)")
    shard_size: int = knob(65536, "sequences per score shard", ge=1)


NEGATIVE_LABEL = "__label__cc"
_WS = re.compile(r"\s+")


def _fasttext():
    try:
        import fasttext
    except ImportError:
        raise ConfigError("the classifier filter needs fastText: pip install 'datamates[baselines]' "
                          "(fasttext-wheel)") from None
    return fasttext


def fasttext_line(text: str, max_chars: int) -> str:
    """One line of fastText input: whitespace (newlines included) folded to single spaces."""
    return _WS.sub(" ", text[:max_chars]).strip()


FASTTEXT_MAGIC = 793712314  # fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32
FASTTEXT_VERSIONS = (11, 12)


def check_fasttext_bin(path: Path) -> None:
    """Walk a fastText `.bin` / `.ftz` (fastText 0.9's layout: magic, version, args, dictionary,
    input matrix, output matrix) checking every size it declares against the bytes that follow, to
    the file's exact end, before fastText's C++ loader sees it. That loader trusts the header: a cut
    file loads and scores 0 (the missing matrix rows read as zeros), and a file cut inside its
    dictionary makes it allocate without bound (and it does not answer Ctrl-C). Memory here: the file
    is memory-mapped, nothing is copied."""
    import mmap
    import struct

    size = path.stat().st_size

    def bad(what: str) -> InputError:
        return InputError(f"{path}: not a complete fastText model ({what}; the file has {size:,} bytes); "
                          "the file is truncated or not a .bin written by fastText: copy or download it again")

    if size < 8 + 56:
        raise InputError(f"{path}: not a fastText model ({size} bytes, shorter than fastText's header); give a .bin "
                         "written by fastText")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        magic, version = struct.unpack_from("<ii", m, 0)
        if magic != FASTTEXT_MAGIC or version not in FASTTEXT_VERSIONS:
            raise InputError(f"{path}: not a fastText model (magic {magic} / version {version}, not fastText's "
                             f"{FASTTEXT_MAGIC} / 11-12); give a .bin written by fastText")
        dim = struct.unpack_from("<i", m, 8)[0]
        pos = 8 + 56  # 12 int32 args and one double
        if pos + 28 > size:
            raise bad("it ends inside the dictionary header")
        n_entries, _, _, _, n_prune = struct.unpack_from("<iiiqq", m, pos)
        pos += 28
        if n_entries < 0 or n_entries * 10 > size - pos:  # an entry: >= 1 byte of word + NUL, int64, int8
            raise bad(f"its dictionary declares {n_entries:,} entries, more than the file can hold")
        for _ in range(n_entries):
            end = m.find(b"\0", pos)
            if end < 0 or end + 10 > size:
                raise bad("it ends inside the dictionary")
            pos = end + 10
        if n_prune > 0:
            pos += 8 * n_prune

        def matrix(pos: int, name: str) -> int:
            if pos + 1 > size:
                raise bad(f"it ends before the {name} matrix")
            quant = m[pos]
            pos += 1
            if not quant:
                if pos + 16 > size:
                    raise bad(f"it ends inside the {name} matrix header")
                rows, cols = struct.unpack_from("<qq", m, pos)
                pos += 16
                if rows < 0 or cols != dim:
                    raise bad(f"the {name} matrix is {rows} x {cols}, not ? x dim = {dim}")
                need = 4 * rows * cols
                if need > size - pos:
                    raise bad(f"the {name} matrix ({rows:,} x {cols}) needs {need:,} bytes, {size - pos:,} are left")
                return pos + need

            def pq_(pos: int) -> int:  # a ProductQuantizer: dim, nsubq, dsub, lastdsub, 256 x dim centroids
                if pos + 16 > size:
                    raise bad(f"it ends inside the {name} matrix's quantizer")
                qdim = struct.unpack_from("<i", m, pos)[0]
                need = 4 * 256 * qdim
                if qdim < 0 or need > size - pos - 16:
                    raise bad(f"the {name} matrix's quantizer needs {need:,} bytes")
                return pos + 16 + need

            if pos + 21 > size:
                raise bad(f"it ends inside the {name} matrix header")
            qnorm = m[pos]
            rows, cols, codesize = struct.unpack_from("<qqi", m, pos + 1)
            pos += 21
            if rows < 0 or codesize < 0 or codesize > size - pos:
                raise bad(f"the {name} matrix declares {codesize:,} code bytes")
            pos = pq_(pos + codesize)
            if qnorm:
                if rows > size - pos:
                    raise bad(f"the {name} matrix's norms need {rows:,} bytes")
                pos = pq_(pos + rows)
            return pos

        pos = matrix(pos, "input")
        pos = matrix(pos, "output")
        if pos != size:
            raise bad(f"{size - pos:,} bytes follow the output matrix")


def load_classifier(path: str | Path):
    """A fastText model from a `.bin`; one line if the file is not one. The file is checked first
    (`check_fasttext_bin`), so fastText's loader only sees complete files."""
    ft = _fasttext()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such fastText model file")
    check_fasttext_bin(path)
    try:  # fasttext.load_model minus its deprecation banner on stderr
        return ft.FastText._FastText(model_path=str(path))
    except Exception as e:  # fastText raises ValueError / RuntimeError on a foreign file
        raise InputError(f"{path}: not a fastText model ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                         "give a .bin written by fastText") from None


def train_classifier(cfg: ClassifierConfig, positives: list[str], negatives: list[str], out_bin: Path):
    """Train the positive-vs-pool classifier and save it to `out_bin`."""
    ft = _fasttext()
    rng = np.random.default_rng([cfg.seed, 31])
    lines = [f"{cfg.positive_label} {fasttext_line(t, cfg.max_chars)}" for t in positives]
    lines += [f"{NEGATIVE_LABEL} {fasttext_line(t, cfg.max_chars)}" for t in negatives]
    lines = [lines[i] for i in rng.permutation(len(lines))]
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "train.txt")
        with open(f, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        model = ft.train_supervised(input=f, epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams,
                                    minCount=cfg.min_count, bucket=cfg.bucket, thread=1, seed=cfg.seed, verbose=0)
    model.save_model(str(out_bin))
    return model


def positive_probability(model, texts: list[str], label: str, max_chars: int = 20000) -> np.ndarray:
    """P(label | text) [n] float64, one C++ `predict` per text. Not fastText's Python `predict`:
    for one text it raises under NumPy 2 (np.array(copy=False)); for a list it calls
    `multilinePredict`, which in fasttext(-wheel) 0.9.2 returns the top label's probability for
    every label (so P(positive) is wrong whenever positive is not the top label)."""
    out = np.empty(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        pairs = model.f.predict(fasttext_line(t, max_chars), -1, 0.0, "replace")
        out[i] = next((p for p, lab in pairs if lab == label), 0.0)
    return np.clip(out, 0.0, 1.0)


def classify(cfg: ClassifierConfig, pool: Pool, ids: np.ndarray | None, out: str | Path) -> Path:
    """Scores -P(positive) of candidates `ids` with a trained or given fastText model, into `out`."""
    validate(cfg)
    ids = check_ids(ids, pool)
    out = Path(out)
    tok = pool.tokenizer()
    info: dict[str, Any] = {}
    blob = b""
    if cfg.model:
        model = load_classifier(cfg.model)
        bin_hash = file_digest(cfg.model)
        info = {"model": str(cfg.model)}
    else:
        positives = reference_texts(cfg.reference, cfg.positives, cfg.seed)
        n_neg = min(cfg.negatives or len(positives), len(ids))
        neg_ids = np.sort(np.random.default_rng([cfg.seed, 17]).choice(ids, size=n_neg, replace=False))
        negatives = sequence_texts(pool, neg_ids, tok)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as d:
            b = Path(d) / "classifier.bin"
            model = train_classifier(cfg, positives, negatives, b)
            bin_hash = file_digest(b)
            blob = b.read_bytes()
        info = {"reference": cfg.reference, "n_positives": len(positives), "n_negatives": int(n_neg)}
    if cfg.positive_label not in model.labels:
        raise InputError(f"{cfg.model or 'the classifier'}: has no label {cfg.positive_label!r} (labels: "
                         f"{', '.join(model.labels)}); set baselines.classifier.positive_label")
    n_chars = [0]

    def score_fn(part: np.ndarray) -> np.ndarray:
        texts = sequence_texts(pool, part, tok)
        n_chars[0] += sum(min(len(t), cfg.max_chars) for t in texts)
        return -positive_probability(model, texts, cfg.positive_label, cfg.max_chars)

    def meta() -> dict[str, Any]:
        return {"method": "classifier", "label_mean": 0.0, "label_std": 1.0, "positive_label": cfg.positive_label,
                "classifier_hash": bin_hash, **info, "config": to_dict(cfg),
                "select_hint": {"method": "topk", "temperature": 0.0, "scale": "none"},
                **counts(None, chars=int(n_chars[0]))}

    plan = {"pool_id": pool.pool_id, "method": "classifier", "model_hash": digest("fasttext", bin_hash)}
    # a trained classifier is kept beside its scores (reusable: baselines.classifier.model=<out>/classifier.bin)
    return write_scores(out, pool, ids, plan, cfg.shard_size, score_fn, meta, desc="classifier scores",
                        files=None if cfg.model else {"classifier.bin": blob})
