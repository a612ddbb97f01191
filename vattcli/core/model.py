"""VATT = three backbones (or one shared, VATT-MA) + the fine-and-coarse heads. Sizes are data, in ``SIZES``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vattcli.core.backbones import SharedTextBackbone, SignalBackbone, T5TextBackbone
from vattcli.core.heads import ClassificationHead, FineCoarseHead
from vattcli.core.layers import Encoder, T5Encoder
from vattcli.core.tokenizers import DropToken, PositionalTables, VideoTubelets, WaveformPatches, WordEmbedding


@dataclass(frozen=True)
class BackboneSpec:
    """Transformer size: layers / d_model / MLP / heads, d_kv 64 [P Tab 7; C configs/video.py, audio.py, text.py]."""

    num_layers: int
    d_model: int
    d_ff: int
    num_heads: int
    d_kv: int = 64

    @classmethod
    def parse(cls, value: str) -> "BackboneSpec":
        """A size name from ``SIZES`` (``small``, ``base``, ``medium``, ``large``, ``xlarge``)."""
        if value not in SIZES:
            raise ValueError(f"unknown backbone size {value!r}; known: {', '.join(SIZES)}")
        return SIZES[value]


SIZES: dict[str, BackboneSpec] = {
    "small": BackboneSpec(6, 512, 2048, 8),  # 20.9 M [P Tab 7]
    "base": BackboneSpec(12, 768, 3072, 12),  # 87.9 M
    "medium": BackboneSpec(12, 1024, 4096, 16),  # 155.0 M
    "large": BackboneSpec(24, 1024, 4096, 16),  # 306.1 M
    "xlarge": BackboneSpec(24, 1536, 4096, 24),  # defined in the code, unused in the paper [C configs/video.py]
}


@dataclass
class ModelConfig:
    """Everything that fixes the network's shape. Defaults are VATT-BBS at the pre-training input [P §4.1]."""

    name: str = "vatt-bbs"
    video: BackboneSpec = SIZES["base"]
    audio: BackboneSpec = SIZES["base"]
    text: BackboneSpec = SIZES["small"]
    shared: bool = False  # VATT-MA: the ``video`` encoder serves all three modalities [P §4.1; C uvatt.py]
    post_projection: int = 1024  # MA only: Dense(1024, GELU) on each modality's outputs
    video_patch: tuple[int, int, int] = (4, 16, 16)
    video_grid: tuple[int, int, int] = (8, 14, 14)  # positional buckets: 32x224x224 input [P §4.1]
    audio_patch: int = 128
    audio_buckets: int = 1200  # 3.2 s at 48 kHz / 128 [C autx1d.py]
    text_buckets: int = 16  # MA absolute text positions; max caption length [P A.2.1]
    vocab_size: int = 65536  # 2^16 [P §4.1]
    word_dim: int = 300
    dropout: float = 0.1
    droptoken_rate: float = 0.5  # active in training only [P §3.1.1]
    droptoken_per_sample: bool = False  # the official code shares one permutation across the batch
    d_va: int = 512
    d_vt: int = 256
    head_variant: Literal["code", "paper"] = "code"  # see vattcli.core.heads
    relative_buckets: int = 32
    relative_max_distance: int = 64

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _signal_backbone(kind: str, cfg: ModelConfig, encoder: Encoder, d: int) -> SignalBackbone:
    if kind == "video":
        tokenizer, sizes = VideoTubelets(d, cfg.video_patch), cfg.video_grid
    else:
        tokenizer, sizes = WaveformPatches(d, cfg.audio_patch), (cfg.audio_buckets,)
    return SignalBackbone(tokenizer, PositionalTables(sizes, d, dropout=cfg.dropout), encoder, d,
                          droptoken=DropToken(cfg.droptoken_rate, per_sample=cfg.droptoken_per_sample),
                          pre_projection=cfg.shared, post_projection=cfg.post_projection if cfg.shared else None)


def _encoder(spec: BackboneSpec, dropout: float) -> Encoder:
    return Encoder(spec.num_layers, spec.d_model, spec.d_ff, spec.num_heads, d_kv=spec.d_kv, dropout=dropout)


def build_backbone(cfg: ModelConfig, modality: str) -> SignalBackbone:
    """One video or audio Transformer alone, named like ``VATT.video``/``VATT.audio`` so a pre-training checkpoint's
    tower loads into it (fine-tuning). For an MA config it keeps the pre-/post-projections, as the official code
    needs to map an MA checkpoint onto a plain ViT/WaT [C configs/video.py, audio.py; restore.py]."""
    if modality not in ("video", "audio"):
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    spec = cfg.video if (cfg.shared or modality == "video") else cfg.audio
    return _signal_backbone(modality, cfg, _encoder(spec, cfg.dropout), spec.d_model)


class VATT(nn.Module):
    """Video-Audio-Text Transformer [P §3]. ``video``, ``audio`` and ``text`` are the backbones; ``head`` projects
    their pooled features into the common spaces.

    ``forward`` takes any subset of: video (B, 3, T, H, W) in [-1, 1]; audio (B, S) in [-1, 1]; text (B, K, L) or
    (B, L) int ids (0 = padding). It returns, for the modalities given: ``video_va`` (B, 512), ``video_vt`` (B, 256),
    ``audio_va`` (B, 512), ``text_vt`` (B, K, 256) or (B, 256), ``text_valid`` (B,) bool (a sample whose captions
    are all padding, an AudioSet clip, has no text [P A.1.1]), and the pooled backbone features ``video_features``,
    ``audio_features``, ``text_features``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        embedding = WordEmbedding(cfg.vocab_size, cfg.word_dim)
        if cfg.shared:
            encoder = _encoder(cfg.video, cfg.dropout)
            d = cfg.video.d_model
            self.video = _signal_backbone("video", cfg, encoder, d)
            self.audio = _signal_backbone("audio", cfg, encoder, d)
            text_positions = PositionalTables((cfg.text_buckets,), d, dropout=cfg.dropout)
            self.text = SharedTextBackbone(embedding, text_positions, encoder, d, post_projection=cfg.post_projection)
        else:
            self.video = _signal_backbone("video", cfg, _encoder(cfg.video, cfg.dropout), cfg.video.d_model)
            self.audio = _signal_backbone("audio", cfg, _encoder(cfg.audio, cfg.dropout), cfg.audio.d_model)
            t = cfg.text
            text_encoder = T5Encoder(t.num_layers, t.d_model, t.d_ff, t.num_heads, d_kv=t.d_kv, dropout=cfg.dropout,
                                     num_buckets=cfg.relative_buckets, max_distance=cfg.relative_max_distance)
            self.text = T5TextBackbone(embedding, text_encoder, t.d_model, dropout=cfg.dropout)
        self.head = FineCoarseHead(self.video.out_dim, self.audio.out_dim, self.text.out_dim, d_va=cfg.d_va,
                                   d_vt=cfg.d_vt, variant=cfg.head_variant)

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if video is not None:
            out["video_features"] = self.video(video).pooled
            out["video_va"], out["video_vt"] = self.head.video(out["video_features"])
        if audio is not None:
            out["audio_features"] = self.audio(audio).pooled
            out["audio_va"] = self.head.audio(out["audio_features"])
        if text is not None:
            pooled = self.text(text).pooled
            out["text_features"] = pooled.view(*text.shape[:-1], -1)
            out["text_vt"] = self.head.text(pooled).view(*text.shape[:-1], -1)
            out["text_valid"] = (text != 0).reshape(text.shape[0], -1).any(dim=1)
        return out

    def num_params(self, module: nn.Module | None = None) -> int:
        """Parameters counted once each (the MA encoder is shared by three backbones)."""
        return sum(p.numel() for p in {id(p): p for p in (module or self).parameters()}.values())


class Classifier(nn.Module):
    """A fine-tuned classifier [P §4.2; C video/factory.py, audio/factory.py]: a backbone's AGG feature ->
    dropout -> Dense(C). Input (B, ...) or, for evaluation, (B, V, ...) views whose logits are averaged."""

    def __init__(self, backbone: SignalBackbone, num_classes: int, *, dropout: float = 0.5,
                 bias_init: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_dim, num_classes, dropout=dropout, bias_init=bias_init)

    def forward(self, x: torch.Tensor, *, views: bool = False) -> torch.Tensor:
        if not views:
            return self.head(self.backbone(x).pooled)
        b, v = x.shape[:2]
        logits = self.head(self.backbone(x.flatten(0, 1)).pooled)
        return logits.view(b, v, -1).mean(1)
