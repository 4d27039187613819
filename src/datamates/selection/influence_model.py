"""The data influence model (MATES §3.2, docs/methods.md#data-influence-model): an encoder, mean pooling, dropout, a linear head.

    chunks c_1..c_m of sequence x  (m = max_tokens / chunk_len, MATES: 2 x 512; empty chunks skipped)
    h_j = Encoder(c_j)                                    [len(c_j), H] last hidden states
    e(x) = sum_j sum_t mask_jt h_jt / sum_j sum_t mask_jt [H]  mean over every real position of all chunks
    f(x) = w . dropout(e(x)) + b                          predicted z-scored ref_loss_delta

The prediction is in z units of the labels it was fitted to; `predict_delta` maps it back:
score = f(x) * label_std + label_mean, a predicted ref_loss_delta (lower is better).

Folder layout (`stage_NN/influence_model/`):

    influence_config.json  backbone (name, resolved path, hash), mode, encoder chunking, label mean/std,
                           model_hash (identity of this model; scores record it)
    head.safetensors       head.weight [1, H], head.bias [1]
    encoder/               finetune mode only: the fine-tuned encoder (save_pretrained) + tokenizer
    lm_head.safetensors    lm mode only (features of the LM, selection/features.py): the ridge weights w, b
                           or the MLP's weights and feature standardization, and the `fo` direction D [V, H];
                           influence_config.json records the LM checkpoint the features come from
    metrics.json, scatter.png, meta.json, DONE

An lm-mode model predicts f(x) = head(phi(x)) with phi the features of one forward of the recorded
LM checkpoint on x (docs/influence_model.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from datamates.config.base import from_dict
from datamates.config.influence import EncoderConfig
from datamates.core.checkpoint import checkpoint_hash
from datamates.core.lm import autocast
from datamates.errors import ArtifactMissing, IncompatibleArtifacts
from datamates.identity import hash_dir
from datamates.log import progress_bar
from datamates.run_dir import is_done, read_json
from datamates.selection.encode import (
    EmbeddingCache,
    EncoderTokenizer,
    TokenCache,
    backbone_hash,
    check_encoder,
    encoder_tokens,
    make_chunks,
    resolve_backbone,
)
from datamates.selection.features import LMFeaturizer, stack_features

CONFIG_FILE = "influence_config.json"
HEAD_FILE = "head.safetensors"
LM_HEAD_FILE = "lm_head.safetensors"  # lm mode: the head on LM features (+ the `fo` direction D)


def load_encoder(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """`AutoModel` of an encoder folder (checked to be an encoder), without the LOAD REPORT noise."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = Path(path)
    check_encoder(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(str(path), dtype=dtype, add_pooling_layer=False)
    except TypeError:  # encoders without a pooling layer argument
        model = AutoModel.from_pretrained(str(path), dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


class InfluenceModel(nn.Module):
    """Encoder + mean pooling over all chunks of a sequence + dropout + Linear(H, 1)."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def pooled_sums(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per chunk: sum of last hidden states over real positions [N, H] (fp32) and their count [N]."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [N, T, H]
        m = attention_mask.unsqueeze(-1).float()  # [N, T, 1]
        return (h.float() * m).sum(1), attention_mask.sum(1).float()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        """Mean-pooled embedding of each of `n` sequences [n, H]; chunk j belongs to sequence owner[j]."""
        sums, counts = self.pooled_sums(input_ids, attention_mask)
        tot = torch.zeros(n, sums.shape[1], device=sums.device).index_add_(0, owner, sums)  # [n, H]
        cnt = torch.zeros(n, device=sums.device).index_add_(0, owner, counts)  # [n]
        return tot / cnt.clamp_min(1).unsqueeze(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        """Predicted z-scored label of each sequence [n]."""
        e = self.embed(input_ids, attention_mask, owner, n)
        return self.head(self.dropout(e).to(self.head.weight.dtype))[:, 0].float()


def pad_chunks(chunks: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest chunk: input_ids [N, T] int64, attention_mask [N, T] int64."""
    T = max(len(c) for c in chunks)
    ids = np.full((len(chunks), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(chunks), T), dtype=np.int64)
    for j, c in enumerate(chunks):
        ids[j, : len(c)] = c
        mask[j, : len(c)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.inference_mode()
def embed_chunks(
    model: InfluenceModel,
    chunks: Sequence[np.ndarray],
    owner: np.ndarray,
    n: int,
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    bar: Any = None,
) -> np.ndarray:
    """Mean-pooled embeddings [n, H] float32 of n sequences given as chunks, computed in
    length-sorted batches (longest first) padded only to the batch's longest chunk."""
    lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    order = np.argsort(-lengths, kind="stable")
    H = model.hidden_size
    sums = torch.zeros(n, H, dtype=torch.float32, device=device)
    counts = torch.zeros(n, dtype=torch.float32, device=device)
    own = torch.as_tensor(owner, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = pad_chunks([chunks[i] for i in idx], pad_id)
        csum, ccnt = model.pooled_sums(ids.to(device), mask.to(device))
        o = own[torch.as_tensor(idx, device=device)]
        sums.index_add_(0, o, csum)
        counts.index_add_(0, o, ccnt)
        if bar is not None:
            bar.update(len(idx))
    model.train(was_training)
    return (sums / counts.clamp_min(1).unsqueeze(1)).cpu().numpy()


def compute_precision(device: torch.device, precision: str) -> str:
    """What `autocast(device, precision)` (core/lm.py) computes in: 'bf16' on CUDA under auto / bf16 and
    on CPU under bf16, else 'fp32'. Part of the embedding cache key: bf16 and fp32 features differ."""
    if device.type == "cuda" and precision in ("auto", "bf16") or device.type == "cpu" and precision == "bf16":
        return "bf16"
    return "fp32"


def sequence_embeddings(model: InfluenceModel, content: Sequence[np.ndarray], enc_cfg: EncoderConfig,
                        tok: EncoderTokenizer, *, device: torch.device, precision: str, batch_size: int,
                        desc: str | None = None) -> np.ndarray:
    """e(x) [n, H] float32 of n sequences given as encoder content tokens (TokenCache.get): THE embedding
    path of fit (frozen features, finetune validation) and score, so both see the same features.
    Weights stay as loaded (fp32), the forward runs under `autocast(device, precision)`."""
    chunks, owner = make_chunks(list(content), enc_cfg, tok)
    bar = progress_bar(desc, total=len(chunks), unit="chunk") if desc else None
    with autocast(device, precision):
        emb = embed_chunks(model, chunks, owner, len(content), batch_size=batch_size, pad_id=tok.pad_id,
                           device=device, bar=bar)
    if bar is not None:
        bar.close()
    return emb


def frozen_embeddings(model: InfluenceModel, tokens: TokenCache, ids: np.ndarray, *, backbone_digest: str,
                      device: torch.device, precision: str, batch_size: int, cache_dir: str | Path | None = None,
                      desc: str | None = None) -> tuple[np.ndarray, int]:
    """Frozen-trunk embeddings [n, H] float32 of pool sequences `ids`, from the embedding cache keyed by
    (pool, backbone, chunking, compute precision), and the encoder tokens computed for them (0 when all
    were cached). The missing ones are computed by `sequence_embeddings` and added. Fit and score both
    call this, so a head is applied to the very features it was fitted on."""
    ids = np.asarray(ids, dtype=np.int64)
    cache = EmbeddingCache(tokens.pool, tokens.enc, backbone_digest, cache_dir,
                           precision=compute_precision(device, precision))
    missing = cache.missing(ids)
    n_tokens = 0
    if len(missing):
        content = tokens.get(missing)
        n_tokens = encoder_tokens(content, tokens.enc, tokens.tok)
        cache.add(missing, sequence_embeddings(model, content, tokens.enc, tokens.tok, device=device,
                                               precision=precision, batch_size=batch_size, desc=desc))
    return cache.get(ids), n_tokens


@torch.inference_mode()
def head_predict(model: InfluenceModel, emb: np.ndarray) -> np.ndarray:
    """Head on embeddings (eval mode: dropout is the identity): z predictions [n] float64."""
    w = model.head.weight.detach().double().cpu().numpy()[0]
    b = float(model.head.bias.detach().double().cpu().numpy()[0])
    return np.asarray(emb, dtype=np.float64) @ w + b


def head_tensors(head: dict[str, Any], direction: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The tensors of a fitted feature head (core/regression.fit_head) for `lm_head.safetensors`."""
    out: dict[str, torch.Tensor] = {}
    if head["head"] == "ridge":
        out["ridge.w"] = torch.as_tensor(np.asarray(head["w"], np.float64))
        out["ridge.b"] = torch.tensor([float(head["b"])], dtype=torch.float64)
    else:
        out["mlp.mu"] = torch.as_tensor(np.asarray(head["mu"], np.float64))
        out["mlp.sd"] = torch.as_tensor(np.asarray(head["sd"], np.float64))
        out.update({f"mlp.{k}": v.contiguous() for k, v in head["state"].items()})
    if direction is not None:
        out["direction"] = direction.float().contiguous()
    return out


def head_from_tensors(t: dict[str, torch.Tensor]) -> dict[str, Any]:
    if "ridge.w" in t:
        return {"head": "ridge", "w": t["ridge.w"].numpy(), "b": float(t["ridge.b"][0])}
    return {"head": "mlp", "mu": t["mlp.mu"].numpy(), "sd": t["mlp.sd"].numpy(),
            "state": {k[4:]: v for k, v in t.items() if k.startswith("mlp.") and k not in ("mlp.mu", "mlp.sd")}}


def predict_head(model: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """z predictions [n] float64 of a feature head (core/regression.fit_head) on features X [n, d]."""
    X = np.asarray(X, np.float64)
    if model["head"] == "ridge":
        return X @ np.asarray(model["w"], np.float64) + float(model["b"])
    st = model["state"]
    Xs = torch.as_tensor((X - model["mu"]) / model["sd"], dtype=torch.float32)
    with torch.no_grad():
        hdn = torch.nn.functional.gelu(Xs @ st["0.weight"].T + st["0.bias"])
        return (hdn @ st["2.weight"].T + st["2.bias"])[:, 0].double().numpy()


class LMInfluenceModel:
    """An lm-mode influence model: the LM checkpoint's features (one forward per candidate) + a head."""

    def __init__(self, path: Path, cfg: dict[str, Any], device: torch.device | str = "cpu"):
        from safetensors.torch import load_file

        self.path, self.cfg = Path(path), cfg
        t = load_file(str(self.path / LM_HEAD_FILE))
        self.head = head_from_tensors(t)
        self.features = list(cfg["features"])
        ckpt = Path(cfg["checkpoint"])
        if not (ckpt / "config.json").exists():
            raise ArtifactMissing(f"{path}: the LM checkpoint its features come from is gone ({ckpt}); re-run `datamates fit`")

        if checkpoint_hash(ckpt) != cfg["checkpoint_hash"]:
            raise IncompatibleArtifacts(f"{path}: the LM checkpoint {ckpt} changed since the fit (hash "
                                        f"{checkpoint_hash(ckpt)}, fitted on {cfg['checkpoint_hash']}); re-run `datamates fit`")
        self.device = torch.device(device)
        self.featurizer = LMFeaturizer(ckpt, device=self.device, direction=t.get("direction"),
                                       batch_size=int(cfg.get("lm_batch_size", 16)),
                                       prefix_tokens=cfg.get("prefix_tokens"), exit_layer=cfg.get("exit_layer"))

    def eval(self) -> LMInfluenceModel:
        return self

    def predict_z(self, pool, ids: np.ndarray, cache_dir: str | Path | None = None) -> np.ndarray:
        """z predictions [n] of pool sequences `ids` (one LM forward each; encoder features from the cache)."""

        ids = np.asarray(ids, dtype=np.int64)
        lm_kinds = [k for k in self.features if k != "encoder"]
        feats = self.featurizer.features(pool.tokens(ids), lm_kinds) if lm_kinds else {}
        if "encoder" in self.features:
            enc_cfg = from_dict(EncoderConfig, self.cfg["encoder"])
            tokens = TokenCache(pool, enc_cfg, cache_dir)
            tokens.ensure(ids)
            enc = InfluenceModel(load_encoder(tokens.backbone)).to(self.device).eval()
            feats["encoder"] = frozen_embeddings(enc, tokens, ids, backbone_digest=self.cfg["backbone_hash"],
                                                 device=self.device, precision=self.cfg.get("precision", "auto"),
                                                 batch_size=64, cache_dir=cache_dir)[0]
        return predict_head(self.head, stack_features(feats, self.features))


def score_counts(icfg: dict[str, Any], fit_meta: dict[str, Any], n_encoder_tokens: int, n_scored: int,
                 seq_len: int) -> tuple[dict[str, int], dict[str, Any]]:
    """(tokens, flops_per_token) a scoring call records (accounting.py): the encoder's tokens, and in
    lm mode one LM forward (+ the `fo` head product) per scored sequence, on its prefix when the model
    was fitted with `fit.prefix_tokens` (the fit's FLOPs per token already price the early exit)."""
    fpt = fit_meta.get("flops_per_token", {})
    if icfg.get("mode") != "lm":
        return {"encoder_forward": n_encoder_tokens}, {"encoder_forward": fpt.get("encoder_forward")}
    per_seq = int(icfg.get("lm_tokens_per_sequence") or seq_len)
    tokens = {k: n_scored * (seq_len if k == "lm_embed" else per_seq) for k in fpt if k != "encoder_forward"}
    if n_encoder_tokens:
        tokens["encoder_forward"] = n_encoder_tokens
    return tokens, dict(fpt)


# ----------------------------------------------------------------------------- saved model


@dataclass
class LoadedInfluenceModel:
    model: InfluenceModel
    config: dict[str, Any]
    encoder_cfg: EncoderConfig
    path: Path

    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def model_hash(self) -> str:
        return self.config["model_hash"]

    @property
    def label_mean(self) -> float:
        return float(self.config["label_mean"])

    @property
    def label_std(self) -> float:
        return float(self.config["label_std"])

    @property
    def backbone_path(self) -> Path:
        return Path(self.config["backbone_path"])

    @property
    def tokenizer_path(self) -> Path:
        """Where the encoder tokenizer lives (the copy next to a fine-tuned encoder, else the backbone)."""
        enc = self.path / "encoder"
        return enc if (enc / "config.json").exists() else self.backbone_path

    def to_delta(self, z: np.ndarray) -> np.ndarray:
        """z prediction -> predicted ref_loss_delta."""
        return np.asarray(z, dtype=np.float64) * self.label_std + self.label_mean


def model_hash_of(folder: Path) -> str:
    """Identity of a saved influence model: its head, config and (fine-tuned) encoder weights."""
    return hash_dir(folder, (HEAD_FILE, LM_HEAD_FILE, "encoder/model.safetensors"))


def read_influence_config(path: str | Path) -> dict[str, Any]:
    """`influence_config.json` of a finished influence model folder (no weights loaded)."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise ArtifactMissing(f"{path}: no influence model here (missing {CONFIG_FILE}); run `datamates fit` first")
    if not is_done(path):
        raise ArtifactMissing(f"{path}: influence model is incomplete (no DONE marker); re-run `datamates fit`")
    return read_json(path / CONFIG_FILE)


def load_influence_model(path: str | Path, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> LoadedInfluenceModel:
    """Load an influence model folder written by `datamates fit`."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_influence_config(path)
    enc_cfg = from_dict(EncoderConfig, cfg["encoder"])
    if cfg["mode"] == "lm":
        return LoadedInfluenceModel(LMInfluenceModel(path, cfg, device), cfg, enc_cfg, path)  # type: ignore[arg-type]
    if cfg["mode"] == "finetune":
        encoder = load_encoder(path / "encoder", dtype=dtype)
    else:
        bpath = Path(cfg["backbone_path"])
        if not bpath.exists():
            bpath = resolve_backbone(cfg["backbone"])
        digest = backbone_hash(bpath)
        if digest != cfg["backbone_hash"]:
            raise IncompatibleArtifacts(
                f"{path}: the frozen head was fitted on backbone {cfg['backbone']} with hash {cfg['backbone_hash']}, "
                f"but {bpath} has hash {digest}; re-run `datamates fit`"
            )
        cfg["backbone_path"] = str(bpath)
        encoder = load_encoder(bpath, dtype=dtype)
    model = InfluenceModel(encoder, dropout=float(cfg.get("dropout", 0.1)))
    head = load_file(str(path / HEAD_FILE))
    model.head.load_state_dict({"weight": head["head.weight"].float(), "bias": head["head.bias"].float()})
    model.head.to(dtype)
    model.eval()
    return LoadedInfluenceModel(model.to(device), cfg, enc_cfg, path)
