"""A datatrove pipeline step that scores documents with a fitted datamates scorer (issue 16;
docs/formats.md), so the scoring runs on datatrove's own executors (local, Slurm, Ray):

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datamates.integrations.datatrove import DatamatesScorer

    LocalPipelineExecutor(pipeline=[
        JsonlReader("data/"),
        DatamatesScorer("runs/x/stage_01/influence_model"),       # annotate doc.metadata["datamates_score"]
        DatamatesScorer("classifier.bin", threshold=-0.5),          # or keep only score <= threshold
        JsonlWriter("scored/"),
    ], tasks=8).run()

Scorers (`load_text_scorer`), each the function its datamates command applies to one pool
sequence's text, applied to one document's text:

  an influence model folder (`datamates fit`)   score(x) = label_std * f(e(x)) + label_mean, the
        predicted ref_loss_delta (selection/score.py): the text is tokenized by the encoder's
        tokenizer, cut to the model's token budget and chunked as selection/encode.py does, e(x)
        the mean-pooled embedding (selection/influence_model.sequence_embeddings)
  a fastText .bin (`score-with classifier`)     score(x) = -P(positive_label | x)
        (baselines/classifier.positive_probability)
  a quality rater folder (`score-with rater`:    score(x) = -(w . e(x) + b), e(x) the frozen encoder's
        `<cache>/rater-<key>/`, head.npz)        mean-pooled embedding (baselines/quality.py); the
        folder does not record the encoder settings, so give the rater's `encoder` (a dict of
        baselines.rater.encoder keys; default: their defaults), checked against its backbone hash

Every value has the scores folder's sign: lower is better (docs/contracts.md). `threshold` keeps a
document when score <= threshold (`keep="low"`, the default) or >= it (`keep="high"`); without
a threshold every document is kept and annotated. A document is scored as one unit (a pool
sequence's text is what `datamates score` scores): on a document longer than the scorer's budget
(the influence model's `encoder.max_tokens`, the classifier's `max_chars`) only its beginning is
scored, as for a pool sequence.

The model is loaded lazily, once per worker process, so the step pickles to any executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from datamates.baselines.classifier import load_classifier, positive_probability
from datamates.config.base import from_dict
from datamates.config.influence import EncoderConfig
from datamates.core.lm import resolve_device
from datamates.errors import IncompatibleArtifacts, InputError
from datamates.run_dir import read_json
from datamates.selection.encode import (
    backbone_hash,
    content_budget,
    load_encoder_tokenizer,
    resolve_backbone,
)
from datamates.selection.influence_model import (
    InfluenceModel,
    head_predict,
    load_encoder,
    load_influence_model,
    sequence_embeddings,
)

TextScorer = Callable[[list[str]], np.ndarray]


def load_text_scorer(path: str | Path, *, device: str = "cpu", precision: str = "auto", batch_size: int = 64,
                     positive_label: str = "__label__hq", max_chars: int = 20000,
                     encoder: dict[str, Any] | None = None) -> TextScorer:
    """texts -> [n] float64 scores (lower is better) of the scorer saved at `path`."""

    p = Path(path)
    if p.is_dir() and (p / "influence_config.json").exists():
        return _influence_scorer(p, device=device, precision=precision, batch_size=batch_size)
    if p.is_file() and p.suffix in (".bin", ".ftz"):
        return _fasttext_scorer(p, positive_label=positive_label, max_chars=max_chars)
    if p.is_dir() and (p / "head.npz").exists() and (p / "rater.json").exists():
        return _rater_scorer(p, encoder or {}, device=device, precision=precision, batch_size=batch_size)
    raise InputError(f"{path}: not a datamates scorer (an influence model folder from `datamates fit`, a "
                     "fastText .bin from `datamates score-with classifier`, or a rater-<key> folder of "
                     "`datamates score-with rater`)")


def _influence_scorer(path: Path, *, device: str, precision: str, batch_size: int) -> TextScorer:

    dev = resolve_device(device)
    lm = load_influence_model(path, dev)
    tok = load_encoder_tokenizer(str(lm.tokenizer_path))
    budget = content_budget(lm.encoder_cfg, tok)

    def score(texts: list[str]) -> np.ndarray:
        encs = tok.backend.encode_batch([t.strip() for t in texts], add_special_tokens=False)
        content = [np.asarray(e.ids[:budget], dtype=np.int64) for e in encs]  # as TokenCache does
        emb = sequence_embeddings(lm.model, content, lm.encoder_cfg, tok, device=dev, precision=precision,
                                  batch_size=batch_size)
        return lm.to_delta(head_predict(lm.model, emb))

    return score


def _rater_scorer(path: Path, encoder: dict[str, Any], *, device: str, precision: str, batch_size: int
                  ) -> TextScorer:

    enc = from_dict(EncoderConfig, encoder, prefix="encoder.")
    bpath = resolve_backbone(enc.backbone)
    fitted = read_json(path / "rater.json").get("backbone_hash")
    if fitted not in (None, backbone_hash(bpath)):
        raise IncompatibleArtifacts(f"{path}: the rater was fitted on another backbone ({fitted}) than "
                                    f"{enc.backbone}; give the rater's encoder settings (encoder=)")
    head = np.load(path / "head.npz")
    w, b = np.asarray(head["w"], np.float64), float(head["b"])
    tok = load_encoder_tokenizer(str(bpath))
    budget = content_budget(enc, tok)
    dev = resolve_device(device)
    model = InfluenceModel(load_encoder(bpath)).to(dev).eval()

    def score(texts: list[str]) -> np.ndarray:
        encs = tok.backend.encode_batch([t.strip() for t in texts], add_special_tokens=False)
        content = [np.asarray(e.ids[:budget], dtype=np.int64) for e in encs]
        emb = sequence_embeddings(model, content, enc, tok, device=dev, precision=precision, batch_size=batch_size)
        return -(np.asarray(emb, np.float64) @ w + b)

    return score


def _fasttext_scorer(path: Path, *, positive_label: str, max_chars: int) -> TextScorer:

    model = load_classifier(path)
    if positive_label not in model.labels:
        raise InputError(f"{path}: has no label {positive_label!r} (labels: {', '.join(model.labels)}); "
                         "pass positive_label=")

    def score(texts: list[str]) -> np.ndarray:
        return -positive_probability(model, texts, positive_label, max_chars)

    return score


class DatamatesScorer(PipelineStep):
    """Score every document with a datamates scorer: `doc.metadata[name] = score` (lower is better),
    and with `threshold`, drop the documents on the wrong side of it (counted as `dropped`).

    Args:
        scorer: an influence model folder, a fastText .bin or a rater folder (see `load_text_scorer`)
        name: the metadata key written
        threshold: keep score <= threshold (keep="low") or >= threshold (keep="high"); None: keep all
        batch_size: documents scored per call of the model
        device, precision: influence models: where and how the encoder runs
        positive_label, max_chars: fastText classifiers (as `baselines.classifier.*`)
        encoder: raters: their `baselines.rater.encoder` settings (a dict)
    """

    name = "datamates scorer"
    type = "🔢 - SCORER"

    def __init__(self, scorer: str | Path, *, name: str = "datamates_score", threshold: float | None = None,
                 keep: str = "low", batch_size: int = 64, device: str = "cpu", precision: str = "auto",
                 positive_label: str = "__label__hq", max_chars: int = 20000,
                 encoder: dict[str, Any] | None = None):
        super().__init__()
        if keep not in ("low", "high"):
            raise ValueError(f"keep = {keep!r}: 'low' (score <= threshold) or 'high' (score >= threshold)")
        self.scorer_path = str(scorer)
        self.key = name
        self.threshold = threshold
        self.keep = keep
        self.batch_size = int(batch_size)
        self.kw: dict[str, Any] = {"device": device, "precision": precision, "batch_size": batch_size,
                                   "positive_label": positive_label, "max_chars": max_chars,
                                   "encoder": encoder}
        self._scorer: TextScorer | None = None

    def scorer(self) -> TextScorer:
        if self._scorer is None:
            self._scorer = load_text_scorer(self.scorer_path, **self.kw)
        return self._scorer

    def __getstate__(self) -> dict[str, Any]:  # the model is loaded in the worker, never pickled
        state = dict(self.__dict__)
        state["_scorer"] = None
        return state

    def _kept(self, s: float) -> bool:
        if self.threshold is None:
            return True
        return s <= self.threshold if self.keep == "low" else s >= self.threshold

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

    def _flush(self, batch: list[Document]) -> Iterator[Document]:
        with self.track_time("batch"):
            scores = self.scorer()([d.text for d in batch])
        for doc, s in zip(batch, scores):
            self.stat_update("total")
            doc.metadata[self.key] = float(s)
            if self._kept(float(s)):
                self.stat_update("forwarded")
                self.update_doc_stats(doc)
                yield doc
            else:
                self.stat_update("dropped")


__all__ = ["DatamatesScorer", "load_text_scorer"]
