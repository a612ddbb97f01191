"""Analytic FLOP counts for a VATT forward/training step, for MFU logging and for checking against the paper.

Dense multiply-adds count as 2 FLOPs. Per encoder layer with N tokens, width d, h heads of d_kv and MLP width f:
projections 2N·d·(4·h·d_kv), MLP 4N·d·f, attention matrices (QK^T and AV) 4N²·h·d_kv. The paper's convention
(``convention="paper"``) counts only half of the attention-matrix term (2N²d); with f = 4d and h·d_kv = d that
gives L·(24Nd² + 2N²d) + 2N·(patch voxels)·d, which reproduces Tab 6's 1252.3 GFLOPs for Medium at 32x320² within
about 1% [reference §9, Derived]. ``convention="full"`` counts every multiply-add: use it for MFU.
Training = 3 x forward (backward costs twice the forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vattcli.core.model import BackboneSpec, ModelConfig


@dataclass(frozen=True)
class FlopCount:
    video: float
    audio: float
    text: float
    heads: float

    @property
    def total(self) -> float:
        return self.video + self.audio + self.text + self.heads


def encoder_flops(spec: BackboneSpec, num_tokens: int, *, convention: str = "full") -> float:
    """Forward FLOPs of one sequence through an encoder stack."""
    if convention not in ("full", "paper"):
        raise ValueError(f"convention must be 'full' or 'paper', got {convention!r}")
    n, d, inner = num_tokens, spec.d_model, spec.num_heads * spec.d_kv
    attn_matrix = 4 * n * n * inner if convention == "full" else 2 * n * n * d
    per_layer = 2 * n * d * 4 * inner + 4 * n * d * spec.d_ff + attn_matrix
    return float(spec.num_layers * per_layer)


def _kept(cfg: ModelConfig, tokens: int, buckets: int, droptoken: bool) -> int:
    if not droptoken or cfg.droptoken_rate == 0:
        return tokens
    return max(1, min(tokens, int((1.0 - cfg.droptoken_rate) * buckets)))


def estimate_flops(cfg: ModelConfig, *, video_shape: tuple[int, int, int] | None = (32, 224, 224),
                   audio_samples: int | None = 153_600, text_len: int | None = 16, num_captions: int = 5,
                   droptoken: bool = False, training: bool = False, convention: str = "full") -> FlopCount:
    """FLOPs per sample for the given input (video (T, H, W), audio samples, text length with ``num_captions``
    captions per sample). ``None`` leaves a modality out. ``droptoken`` applies the config's rate as in training."""
    mult = 3.0 if training else 1.0
    heads = 0.0
    video = audio = text = 0.0
    shared = cfg.video if cfg.shared else None
    pre = 2.0 if cfg.shared else 0.0  # MA pre-/post-projection matmuls per token
    if video_shape is not None:
        t, h, w = (s // p for s, p in zip(video_shape, cfg.video_patch))
        n = _kept(cfg, t * h * w, math.prod(cfg.video_grid), droptoken)
        spec = shared or cfg.video
        voxels = 3 * math.prod(cfg.video_patch)
        video = 2 * n * voxels * spec.d_model + encoder_flops(spec, n + 1, convention=convention)
        video += pre * n * spec.d_model * spec.d_model + pre * (n + 1) * spec.d_model * cfg.post_projection
        d_out = cfg.post_projection if cfg.shared else spec.d_model
        heads += 2 * (d_out * cfg.d_va + cfg.d_va * cfg.d_va + cfg.d_va * cfg.d_vt)
    if audio_samples is not None:
        n = _kept(cfg, audio_samples // cfg.audio_patch, cfg.audio_buckets, droptoken)
        spec = shared or cfg.audio
        audio = 2 * n * cfg.audio_patch * spec.d_model + encoder_flops(spec, n + 1, convention=convention)
        audio += pre * n * spec.d_model * spec.d_model + pre * (n + 1) * spec.d_model * cfg.post_projection
        heads += 2 * (cfg.post_projection if cfg.shared else spec.d_model) * cfg.d_va
    if text_len is not None:
        spec = shared or cfg.text
        n = text_len + 1
        per_caption = 2 * n * cfg.word_dim * spec.d_model + encoder_flops(spec, n, convention=convention)
        if cfg.shared:
            per_caption += 2 * n * spec.d_model * cfg.post_projection
        text = num_captions * per_caption
        heads += num_captions * 2 * (cfg.post_projection if cfg.shared else spec.d_model) * cfg.d_vt
    return FlopCount(mult * video, mult * audio, mult * text, mult * heads)
