"""Transformer building blocks: pre-norm attention/MLP blocks and the T5-style text layers.

Attention runs through ``F.scaled_dot_product_attention`` so CUDA picks flash or memory-efficient kernels; the
query/key/value projections are one fused matmul (the official Keras code has three Dense layers; a port concatenates
their kernels). ``set_activation_checkpointing`` makes the block stacks recompute each block in backward instead of
keeping its activations (``train.activation_checkpointing``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LN_EPS = 1e-6  # Keras LayerNormalization epsilon used throughout the official code [C modeling/common/transformers.py]


def glorot_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """Keras' default Dense/Conv initialiser [P —; C implicit Keras defaults, reference §2.2]."""
    return nn.init.xavier_uniform_(weight)


class Attention(nn.Module):
    """Multi-head self-attention with heads x d_kv projections [P §3.2; C transformers.py].

    ``scale=None`` gives the usual 1/sqrt(d_kv); the T5 text encoder passes ``scale=1.0`` (no scaling, reference §2.3).
    ``attn_bias`` is an additive float bias or a boolean keep-mask broadcastable to (B, heads, N, N).
    Dropout on the attention probabilities is applied inside SDPA while training.
    """

    def __init__(self, d_model: int, num_heads: int, *, d_kv: int = 64, bias: bool = True,
                 dropout: float = 0.1, scale: float | None = None) -> None:
        super().__init__()
        self.num_heads, self.d_kv, self.scale, self.dropout = num_heads, d_kv, scale, dropout
        self.qkv = nn.Linear(d_model, 3 * num_heads * d_kv, bias=bias)
        self.out = nn.Linear(num_heads * d_kv, d_model, bias=bias)
        for layer in (self.qkv, self.out):
            glorot_uniform_(layer.weight)
            if bias:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.d_kv).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, dk)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias,
                                           dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(b, n, self.num_heads * self.d_kv))


class Mlp(nn.Module):
    """Dense(d_ff) -> exact GELU -> dropout -> Dense(d) [C transformers.py FFN; Keras GELU is the erf form]."""

    def __init__(self, d_model: int, d_ff: int, *, bias: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)
        for layer in (self.fc1, self.fc2):
            glorot_uniform_(layer.weight)
            if bias:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm block: x + Drop(MHA(LN(x))), then x + Drop(MLP(LN(x))) [P §3.2; C transformers.py]."""

    def __init__(self, d_model: int, d_ff: int, num_heads: int, *, d_kv: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.attn = Attention(d_model, num_heads, d_kv=d_kv, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mlp = Mlp(d_model, d_ff, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_bias))
        return x + self.drop(self.mlp(self.norm2(x)))


def run_block(block: nn.Module, x: torch.Tensor, attn_bias: torch.Tensor | None, checkpointed: bool) -> torch.Tensor:
    """``block(x, attn_bias)``; ``checkpointed`` (while gradients are recorded): its activations are dropped and
    recomputed in backward, about a third more compute for a block's worth of memory. The RNG state is saved with
    it, so dropout draws the same masks again and the result is the unchecked one's."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, attn_bias, use_reentrant=False)
    return block(x, attn_bias)


def set_activation_checkpointing(module: nn.Module, enabled: bool) -> int:
    """Turn block checkpointing on or off in every ``Encoder``/``T5Encoder`` inside ``module``; returns how many
    stacks it set (a VATT-MA encoder shared by three backbones counts once)."""
    stacks = [m for m in module.modules() if isinstance(m, (Encoder, T5Encoder))]
    for stack in stacks:
        stack.checkpointed = enabled
    return len(stacks)


class Encoder(nn.Module):
    """A stack of pre-norm blocks followed by the final LayerNorm and dropout (``pre_norm=True``) [C configs/*].

    This is the object VATT-MA shares across modalities [P §4.1; C unified/uvatt.py].
    """

    def __init__(self, num_layers: int, d_model: int, d_ff: int, num_heads: int, *, d_kv: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(d_model, d_ff, num_heads, d_kv=d_kv, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.checkpointed = False  # set_activation_checkpointing

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = run_block(layer, x, attn_bias, self.checkpointed)
        return self.drop(self.norm(x))


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, no bias [C text/t5.py]."""

    def __init__(self, d_model: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised in float32 whatever ``x``'s dtype. A float32 ``x`` takes no ``.float()``/``.to()`` at all:
        they would return ``x`` itself, but a trace records them as same-type Casts, and ONNX Runtime's default graph
        optimisation breaks such a Cast feeding ``x * rsqrt(...)`` (CastElimination with DivMulFusion leaves a node
        reading the removed Cast's output: "... is not a graph input", microsoft/onnxruntime#32416)."""
        xf = x if x.dtype == torch.float32 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y if y.dtype == x.dtype else y.to(x.dtype)) * self.weight


def relative_position_bucket(relative_position: torch.Tensor, *, num_buckets: int = 32,
                             max_distance: int = 64) -> torch.Tensor:
    """Bidirectional T5 bucketing: half the buckets per direction, half of those exact, the rest log-spaced
    up to ``max_distance`` [C text/t5.py; configs/text.py: 32 buckets, max distance 64]."""
    num_buckets //= 2
    bucket = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned bias added to the attention logits; computed once and shared by every layer (T5) [P §3.2;
    C text/t5.py]. The table is an Embedding(num_buckets, heads) with Keras' uniform(+-0.05) init."""

    def __init__(self, num_heads: int, *, num_buckets: int = 32, max_distance: int = 64) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, num_heads)
        nn.init.uniform_(self.table.weight, -0.05, 0.05)

    def forward(self, n: int) -> torch.Tensor:
        pos = torch.arange(n, device=self.table.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)  # (N, N), key - query
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)


class T5Block(nn.Module):
    """T5 encoder layer as the official code has it [C text/t5.py; reference §2.3]:
    RMS norm -> MHA (no biases, no 1/sqrt(d_kv) scaling, relative bias + padding mask) -> dropout -> residual;
    then a standard LayerNorm (with beta; the code's choice, not RMS) -> Dense(d_ff, no bias) -> GELU -> dropout
    -> Dense(d, no bias) -> dropout -> residual."""

    def __init__(self, d_model: int, d_ff: int, num_heads: int, *, d_kv: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = Attention(d_model, num_heads, d_kv=d_kv, bias=False, dropout=dropout, scale=1.0)
        self.norm2 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mlp = Mlp(d_model, d_ff, bias=False, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_bias))
        return x + self.drop(self.mlp(self.norm2(x)))


class T5Encoder(nn.Module):
    """T5-style text encoder: shared relative bias, padding masked with -1e9, final RMS norm + dropout
    [C text/t5.py]."""

    def __init__(self, num_layers: int, d_model: int, d_ff: int, num_heads: int, *, d_kv: int = 64,
                 dropout: float = 0.1, num_buckets: int = 32, max_distance: int = 64) -> None:
        super().__init__()
        self.relative_bias = RelativePositionBias(num_heads, num_buckets=num_buckets, max_distance=max_distance)
        self.layers = nn.ModuleList(
            T5Block(d_model, d_ff, num_heads, d_kv=d_kv, dropout=dropout) for _ in range(num_layers))
        self.norm = RMSNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.checkpointed = False  # set_activation_checkpointing

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, N, d); keep (B, N) bool, False at padding."""
        bias = self.relative_bias(x.shape[1]).to(x.dtype)
        bias = bias.masked_fill(~keep[:, None, None, :], -1e9)  # (B, heads, N, N)
        for layer in self.layers:
            x = run_block(layer, x, bias, self.checkpointed)
        return self.drop(self.norm(x))
