"""Video, audio and text Transformers with the AGG token and DropToken, and how VATT-MA shares one encoder.

Order of operations for video and audio [C video/vitx3d.py, audio/autx1d.py; reference §1.4]:
tokenize -> (pre-projection, MA only) -> add positions -> DropToken -> prepend AGG -> encoder -> (post-projection, MA
only). The AGG output is the pooled feature (``features_pooled`` in the official code).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vattcli.core.layers import Encoder, T5Encoder, glorot_uniform_
from vattcli.core.tokenizers import (AggToken, DropToken, PositionalTables, VideoTubelets, WaveformPatches,
                                     WordEmbedding)


class BackboneOutput(NamedTuple):
    pooled: torch.Tensor  # (B, d): the AGG output
    tokens: torch.Tensor  # (B, N, d): the other outputs (after DropToken, when training)


class GeluDense(nn.Module):
    """Dense + GELU: the MA pre-/post-projections and the text pre-projection [C uvatt.py; text/factory.py]."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=bias)
        glorot_uniform_(self.proj.weight)
        if bias:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class SignalBackbone(nn.Module):
    """The Transformer for a raw signal: video tubelets (ViT-style) or waveform patches (WaT) [P §3.1-3.2].

    ``encoder`` may be an object shared with other modalities (VATT-MA); everything else is this modality's own.
    """

    def __init__(self, tokenizer: VideoTubelets | WaveformPatches, positions: PositionalTables, encoder: Encoder,
                 d_model: int, *, droptoken: DropToken, pre_projection: bool = False,
                 post_projection: int | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.pre_projection = GeluDense(d_model, d_model) if pre_projection else None
        self.positions = positions
        self.droptoken = droptoken
        self.agg = AggToken(d_model)
        self.encoder = encoder
        self.post_projection = GeluDense(d_model, post_projection) if post_projection else None
        self.out_dim = post_projection or d_model

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens with positions, after DropToken, before AGG: (B, N_kept, d)."""
        tokens, grid = self.tokenizer(x)
        if self.pre_projection is not None:
            tokens = self.pre_projection(tokens)
        tokens = self.positions(tokens, grid)
        return self.droptoken(tokens, self.positions.num_buckets)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        out = self.encoder(self.agg(self.tokenize(x)))  # (B, 1 + N, d)
        if self.post_projection is not None:
            out = self.post_projection(out)
        return BackboneOutput(out[:, 0], out[:, 1:])


def _flatten_captions(ids: torch.Tensor) -> torch.Tensor:
    assert ids.dtype in (torch.int64, torch.int32), f"text ids must be integers, got {ids.dtype}"
    return ids.reshape(-1, ids.shape[-1])  # (B, K, L) -> (B*K, L), as the official code does [C pretrain.py]


class T5TextBackbone(nn.Module):
    """Modality-specific text model [C text/factory.py, text/t5.py; reference §2.3]: 300-d word lookup, AGG in the
    300-d space (mask 1), Dense(d, no bias, GELU) pre-projection, input dropout, T5 encoder; output at index 0.
    Padding id 0 is masked."""

    def __init__(self, embedding: WordEmbedding, encoder: T5Encoder, d_model: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.embedding = embedding
        word_dim = embedding.table.embedding_dim
        self.agg = AggToken(word_dim)
        self.pre_projection = GeluDense(word_dim, d_model, bias=False)
        self.drop = nn.Dropout(dropout)
        self.encoder = encoder
        self.out_dim = d_model

    def forward(self, ids: torch.Tensor) -> BackboneOutput:
        """ids (..., L) int -> pooled (prod(...), d)."""
        ids = _flatten_captions(ids)
        keep = F.pad(ids != 0, (1, 0), value=True)  # AGG is always attended
        x = self.drop(self.pre_projection(self.agg(self.embedding(ids))))
        out = self.encoder(x, keep)
        return BackboneOutput(out[:, 0], out[:, 1:])


class SharedTextBackbone(nn.Module):
    """VATT-MA text path [C unified/uvatt.py]: frozen-or-trained 300-d lookup, Dense(d, GELU) pre-projection,
    a learnable absolute 16-row position table (no relative bias), AGG in d-space, the shared encoder with the padding
    mask, Dense(1024, GELU) post-projection."""

    def __init__(self, embedding: WordEmbedding, positions: PositionalTables, encoder: Encoder, d_model: int, *,
                 post_projection: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.pre_projection = GeluDense(embedding.table.embedding_dim, d_model)
        self.positions = positions
        self.agg = AggToken(d_model)
        self.encoder = encoder
        self.post_projection = GeluDense(d_model, post_projection)
        self.out_dim = post_projection

    def forward(self, ids: torch.Tensor) -> BackboneOutput:
        ids = _flatten_captions(ids)
        keep = F.pad(ids != 0, (1, 0), value=True)
        x = self.positions(self.pre_projection(self.embedding(ids)), (ids.shape[1],))
        out = self.post_projection(self.encoder(self.agg(x), keep[:, None, None, :]))
        return BackboneOutput(out[:, 0], out[:, 1:])
