"""The study's evaluation sets: held-out sequences of every domain and LAMBADA, tokenized once and
scored for every model of the study (seed, proxies, gold models), and the append-only cache of
those evaluations (`<run>/ablation_cache/evals.jsonl`) that makes a killed or extended study
re-evaluate nothing.

    held-out/<domain>  token perplexity (summed next-token NLL / predicted tokens) and bits per byte
    heldout_all        every domain's held-out sequences pooled (micro-averaged over tokens)
    lambada            perplexity of the target word's tokens, and greedy accuracy

The scorers are `core.loss.sequence_nll` and `core.loss.score_targets`, the ones
`evaluate.evaluate_pool` and the reference sets share; this module adds what a study needs beside
them: log PPL per set with its standard error, an identity for the cache, and early stopping.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamates.ablation.partition import Manifest
from datamates.ablation.stats import ratio_se
from datamates.config.ablation import AblationEvalConfig
from datamates.config.base import expand_vars
from datamates.core.loss import TargetExample, load_lambada, perplexity_and_bpb, score_targets, sequence_nll
from datamates.core.pool import Pool
from datamates.errors import ConfigError, InputError
from datamates.identity import hash_text

HELDOUT_ALL = "heldout_all"
LAMBADA = "lambada"


@dataclass
class EvalSets:
    """Held-out sequences per domain and LAMBADA examples, tokenized once.

    Every result carries `se`, the standard error of its log PPL over the set's sequences
    (`ratio_se`), so a fixed token budget (`eval.tokens_per_set`) says how precise it is. With
    `early_stop_z`, `evaluate(model, race=True)` scores each held-out set in chunks and stops once
    the model is worse than the best model so far (`self.best`, per-sequence NLL on the same
    sequences) by more than z paired standard errors: that mixture is separated from the best."""

    heldout: dict[str, np.ndarray]  # domain -> [n, L] int64 tokens
    heldout_bytes: dict[str, float]  # domain -> UTF-8 bytes behind the predicted tokens
    lambada: list[TargetExample]
    batch_size: int
    precision: str
    ident: str
    early_stop_z: float | None = None
    early_stop_chunk: int = 8
    best: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)  # set -> (logppl, per-seq nll)

    @property
    def names(self) -> list[str]:
        out = [f"heldout/{d}" for d in self.heldout]
        if self.heldout:
            out.append(HELDOUT_ALL)
        if self.lambada:
            out.append(LAMBADA)
        return out

    def _heldout_nll(self, model: torch.nn.Module, name: str, toks: np.ndarray, race: bool) -> tuple[np.ndarray, bool]:
        z = self.early_stop_z
        if not (race and z and name in self.best):
            return sequence_nll(model, toks, batch_size=self.batch_size, precision=self.precision), False
        ref = self.best[name][1]
        out: list[np.ndarray] = []
        step = self.early_stop_chunk
        for i in range(0, len(toks), step):
            out.append(sequence_nll(model, toks[i : i + step], batch_size=self.batch_size, precision=self.precision))
            done = sum(len(o) for o in out)
            if i + step < len(toks) and done >= 2 * step:
                d = np.concatenate(out) - ref[:done]  # paired per-sequence difference
                if d.mean() - z * d.std(ddof=1) / math.sqrt(done) > 0:
                    return np.concatenate(out), True
        return np.concatenate(out), False

    def evaluate(self, model: torch.nn.Module, race: bool = False) -> dict[str, dict[str, float]]:
        """{set name: {nll, tokens, ppl, logppl, se, n, bpb (held-out), acc (LAMBADA), stopped_early,
        seq_nll (per sequence / example, for paired standard errors), seq_tokens (LAMBADA)}}."""
        res: dict[str, dict[str, float]] = {}
        all_nll, all_tok, tot_bytes, stopped_any = [], [], 0.0, False
        for dom, toks in self.heldout.items():
            name = f"heldout/{dom}"
            seq, stopped = self._heldout_nll(model, name, toks, race)
            n = len(seq)
            t = np.full(n, toks.shape[1] - 1, dtype=np.float64)
            nbytes = self.heldout_bytes[dom] * n / len(toks)
            nll, n_tok = float(seq.sum()), int(t.sum())
            ppl, bpb = perplexity_and_bpb(nll, n_tok, nbytes)
            res[name] = {"nll": nll, "tokens": n_tok, "ppl": ppl, "logppl": nll / n_tok, "bpb": bpb,
                         "se": ratio_se(seq, t), "n": n, "stopped_early": stopped, "seq_nll": seq.tolist()}
            res[name]["_seq"] = seq
            stopped_any |= stopped
            all_nll.append(seq)
            all_tok.append(t)
            tot_bytes += nbytes
        if self.heldout:
            seq, t = np.concatenate(all_nll), np.concatenate(all_tok)
            ppl, bpb = perplexity_and_bpb(float(seq.sum()), int(t.sum()), tot_bytes)
            res[HELDOUT_ALL] = {"nll": float(seq.sum()), "tokens": int(t.sum()), "ppl": ppl,
                                "logppl": float(seq.sum() / t.sum()), "bpb": bpb, "se": ratio_se(seq, t),
                                "n": len(seq), "stopped_early": stopped_any, "seq_nll": seq.tolist()}
        if self.lambada:
            sc = score_targets(model, self.lambada, batch_size=self.batch_size, precision=self.precision)
            nll, n_tok = float(sc.nll.sum()), int(sc.n_tokens.sum())
            res[LAMBADA] = {"nll": nll, "tokens": n_tok, "ppl": math.exp(nll / n_tok), "logppl": nll / n_tok,
                            "acc": float(sc.greedy.mean()), "se": ratio_se(sc.nll, sc.n_tokens.astype(np.float64)),
                            "n": len(sc.nll), "seq_nll": np.asarray(sc.nll, dtype=float).tolist(),
                            "seq_tokens": np.asarray(sc.n_tokens).astype(int).tolist()}
        if race and self.early_stop_z:  # a fully evaluated set that beats the best becomes the reference
            for name, r in res.items():
                if "_seq" in r and not r["stopped_early"] and (name not in self.best or r["logppl"] < self.best[name][0]):
                    self.best[name] = (r["logppl"], r["_seq"])
        for r in res.values():
            r.pop("_seq", None)
        return res


def build_eval_sets(manifest: Manifest, pool: Pool, cfg: AblationEvalConfig, precision: str) -> EvalSets:
    heldout, nbytes = {}, {}
    L = pool.seq_len
    if cfg.heldout:
        if not manifest.heldout_domains:
            raise InputError("no held-out sequences in the partition (partition.heldout_sequences = 0); "
                             "set ablation.eval.heldout: false or re-partition")
        for dom in manifest.heldout_domains:
            ids = manifest.heldout_ids(dom)
            if cfg.tokens_per_set is not None:  # a fixed subsample, the same for every model
                n = min(len(ids), max(2, math.ceil(cfg.tokens_per_set / (L - 1))))
                ids = np.sort(np.random.default_rng([0, 4099]).permutation(ids)[:n])
            heldout[dom] = pool.tokens(ids)
            nbytes[dom] = float(np.asarray(pool.seq_bytes, dtype=np.float64)[ids].sum()) * (L - 1) / L
    lambada: list[TargetExample] = []
    lam_path = None
    if cfg.lambada:
        lam_path = Path(expand_vars(cfg.lambada))
        if not lam_path.exists():
            raise InputError(f"ablation.eval.lambada = {cfg.lambada!r}: no such file ({lam_path})")
        lambada = load_lambada(lam_path, pool.tokenizer(), n=cfg.lambada_n)
    if not heldout and not lambada:
        raise ConfigError("ablation.eval: no evaluation set (heldout: false and lambada: null)")
    key = [manifest.data["config_hash"], manifest.data["pool_id"], str(lam_path), cfg.lambada_n, cfg.heldout]
    if cfg.tokens_per_set is not None or cfg.early_stop_z is not None:
        key += [cfg.tokens_per_set, cfg.early_stop_z, cfg.early_stop_chunk]
    ident = hash_text(json.dumps(key))
    return EvalSets(heldout, nbytes, lambada, cfg.batch_size, precision, ident, cfg.early_stop_z, cfg.early_stop_chunk)


class EvalCache:
    """Append-only JSONL of evaluations keyed by (kind, mixture, model identity, eval-set identity)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                self.rows[r["key"]] = r

    @staticmethod
    def key(kind: str, mixture: str, model_id: str, eval_id: str) -> str:
        return f"{kind}|{mixture}|{model_id}|{eval_id}"

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict[str, Any]) -> None:
        row = {"key": key, **row}
        self.rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
