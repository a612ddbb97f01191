"""Raw-signal tokenizers and positional tables: video tubelets, waveform patches, text embeddings.

Positional tables are resampled with the official code's cubic polyharmonic spline when the input's bucket counts
differ from the table's [C modeling/common/transformers.py ExpandableEmbedding; utils/train/restore.py]. The spline is
linear in the table, so the resampling is a fixed (N_new, N_old) matrix computed once per size pair.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from vattcli.core.layers import LN_EPS, glorot_uniform_


class VideoTubelets(nn.Module):
    """4x16x16x3 voxel tubelets, linearly projected with a bias [P §3.1, §4.1; C video/vitx3d.py Conv3D].

    Equivalent to the code's Conv3D with kernel = stride = patch and ``valid`` padding, written as a reshape and one
    matmul. ``proj.weight`` is the Conv3D kernel flattened in (channel, t, h, w) order. Tokens are flattened t-major,
    then h, then w [C transformers.py].
    """

    def __init__(self, d_model: int, patch: tuple[int, int, int] = (4, 16, 16), channels: int = 3) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Linear(channels * math.prod(patch), d_model)
        glorot_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def grid(self, video_shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (t, h, w) for a (B, C, T, H, W) input; trailing voxels that do not fill a patch are dropped."""
        _, _, t, h, w = video_shape
        pt, ph, pw = self.patch
        return t // pt, h // ph, w // pw

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """video (B, C, T, H, W) -> tokens (B, t*h*w, d), grid (t, h, w)."""
        assert video.dim() == 5, f"video must be (B, C, T, H, W), got {tuple(video.shape)}"
        b, c = video.shape[:2]
        (t, h, w), (pt, ph, pw) = self.grid(video.shape), self.patch
        if min(t, h, w) == 0:
            raise ValueError(f"video {tuple(video.shape)} is smaller than one {self.patch} patch")
        x = video[:, :, : t * pt, : h * ph, : w * pw].reshape(b, c, t, pt, h, ph, w, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t * h * w, c * pt * ph * pw)
        return self.proj(x), (t, h, w)


class WaveformPatches(nn.Module):
    """Non-overlapping 128-sample waveform patches, linearly projected with a bias [P §4.1; C audio/autx1d.py]."""

    def __init__(self, d_model: int, patch: int = 128) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch, d_model)
        glorot_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, tuple[int]]:
        """audio (B, S) -> tokens (B, S // patch, d); trailing samples are dropped (``valid`` padding)."""
        assert audio.dim() == 2, f"audio must be (B, S), got {tuple(audio.shape)}"
        n = audio.shape[1] // self.patch
        if n == 0:
            raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one {self.patch}-sample patch")
        return self.proj(audio[:, : n * self.patch].reshape(audio.shape[0], n, self.patch)), (n,)


def spline_solve(n_old: int) -> torch.Tensor:
    """(n_old + 2, n_old) float64: the first n_old columns of the inverse of the order-3 polyharmonic spline system
    (phi(r) = r^3, plus a linear term) through nodes i / n_old. The spline's weights M^-1 [f; 0] are linear in the
    table f, so its values at y are ``[|y - x|^3, 1, y] @ spline_solve(n_old) @ f`` [C transformers.py:
    tfa.image.interpolate_spline(order=3) over normalised positions]. The ONNX export evaluates it in the graph."""
    x = torch.arange(n_old, dtype=torch.float64) / n_old
    poly_x = torch.stack([torch.ones_like(x), x], 1)  # (n_old, 2)
    system = torch.zeros(n_old + 2, n_old + 2, dtype=torch.float64)
    system[:n_old, :n_old] = (x[:, None] - x[None, :]).abs() ** 3
    system[:n_old, n_old:] = poly_x
    system[n_old:, :n_old] = poly_x.T
    return torch.linalg.solve(system, torch.eye(n_old + 2, dtype=torch.float64)[:, :n_old])


@functools.lru_cache(maxsize=64)
def _spline_matrix(n_old: int, n_new: int) -> torch.Tensor:
    """(n_new, n_old) float64 matrix of that spline through nodes i / n_old, evaluated at j / n_new."""
    if n_old == 1:  # a single node: the linear term is undetermined, the spline is the constant
        return torch.ones(n_new, 1, dtype=torch.float64)
    x = torch.arange(n_old, dtype=torch.float64) / n_old
    y = torch.arange(n_new, dtype=torch.float64) / n_new
    query = torch.cat([(y[:, None] - x[None, :]).abs() ** 3, torch.ones(n_new, 1, dtype=torch.float64), y[:, None]], 1)
    return query @ spline_solve(n_old)


def resample_table(table: torch.Tensor, n_new: int) -> torch.Tensor:
    """Resample a (n_old, d) positional table to (n_new, d); identity when the sizes match [P A.2.5]."""
    n_old = table.shape[0]
    if n_new == n_old:
        return table
    return _spline_matrix(n_old, n_new).to(table) @ table


def _table(n: int, d: int) -> nn.Parameter:
    """Truncated-normal table with std d^-0.5 [C transformers.py]."""
    std = d ** -0.5
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(n, d), std=std, a=-2 * std, b=2 * std))


class PositionalTables(nn.Module):
    """Factorised learnable positions: e = sum of one table per axis (E_T[i] + E_H[j] + E_W[k] for video, one
    1200-row table for audio, 16 rows for MA text) [P §3.1 eq.1; C transformers.py SpatioTemporalEmbeddings,
    TemporalEmbeddings]. The summed vector goes through LayerNorm (eps 1e-6), is added to the tokens, then dropout.

    A grid that differs from the table sizes is served by resampling each table on the fly (``ExpandableEmbedding``);
    ``resize_`` makes a resampled copy permanent (the checkpoint-restore path, ``interpolate_pos``).
    """

    def __init__(self, sizes: tuple[int, ...], d_model: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.tables = nn.ParameterList(_table(n, d_model) for n in sizes)
        self.norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(t.shape[0] for t in self.tables)

    @property
    def num_buckets(self) -> int:
        """Bucket count of the tables; DropToken keeps a fraction of this, not of the token count [C vitx3d.py]."""
        return math.prod(self.sizes)

    def embedding(self, grid: tuple[int, ...]) -> torch.Tensor:
        """(prod(grid), d) summed positions for ``grid``, t-major then h then w."""
        assert len(grid) == len(self.tables), f"grid {grid} does not match tables {self.sizes}"
        d = self.tables[0].shape[1]
        total = 0
        for axis, (table, n) in enumerate(zip(self.tables, grid)):
            shape = [1] * len(grid) + [d]
            shape[axis] = n
            total = total + resample_table(table, n).view(shape)
        return total.reshape(-1, d)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        return self.drop(tokens + self.norm(self.embedding(grid)))

    @torch.no_grad()
    def resize_(self, sizes: tuple[int, ...]) -> None:
        """Replace each table by its spline resampling to ``sizes`` (e.g. 8x14x14 -> 8x20x20 for 320 px)."""
        for i, n in enumerate(sizes):
            self.tables[i] = nn.Parameter(resample_table(self.tables[i].data, n).clone())


class DropToken(nn.Module):
    """DropToken [P §3.1.1]: in training, keep a random subset of ``int((1 - rate) * buckets)`` tokens.

    ``rate`` is the paper's drop rate; the code's ``patch_sampling_rate`` is the kept fraction (0.5 either way at
    the pre-training default). The count comes from the positional bucket table, not from the input's token count,
    and one permutation is shared by the whole batch (the official behaviour, ``per_sample=False``); ``per_sample``
    draws one per sample. Identity in eval and at rate 0 [C vitx3d.py, autx1d.py].
    """

    def __init__(self, rate: float = 0.0, *, per_sample: bool = False) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropToken rate must be in [0, 1), got {rate}")
        self.rate, self.per_sample = rate, per_sample

    def num_kept(self, num_tokens: int, num_buckets: int) -> int:
        if not self.training or self.rate == 0.0:
            return num_tokens
        return max(1, min(num_tokens, int((1.0 - self.rate) * num_buckets)))

    def forward(self, tokens: torch.Tensor, num_buckets: int) -> torch.Tensor:
        b, n, d = tokens.shape
        k = self.num_kept(n, num_buckets)
        if k == n:
            return tokens
        if not self.per_sample:
            return tokens[:, torch.randperm(n, device=tokens.device)[:k]]
        keep = torch.rand(b, n, device=tokens.device).argsort(dim=1)[:, :k]
        return tokens.gather(1, keep.unsqueeze(-1).expand(b, k, d))


class AggToken(nn.Module):
    """The learnable aggregation ("AGG", CLS) vector prepended after positions and DropToken, so it carries no
    position; its output is the sequence feature [P §3.2 eq.2; C vitx3d.py]. Glorot-normal: std sqrt(2/(d+d))."""

    def __init__(self, d: int) -> None:
        super().__init__()
        std = d ** -0.5
        self.vector = nn.Parameter(nn.init.trunc_normal_(torch.empty(d), std=std, a=-2 * std, b=2 * std))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vector.to(tokens.dtype).expand(tokens.shape[0], 1, -1), tokens], dim=1)


class WordEmbedding(nn.Module):
    """Word-id lookup into a 300-d table [P §3.1; C text/factory.py].

    Randomly initialised tables train; tables initialised from given vectors (word2vec in the official code) are
    frozen, as the official release does (``trainable_embeddings=False``) [C configs/text.py].
    """

    def __init__(self, vocab_size: int, dim: int = 300, *, trainable: bool = True) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.table.weight, std=dim ** -0.5)
        self.table.weight.requires_grad_(trainable)

    @torch.no_grad()
    def load_vectors_(self, vectors: torch.Tensor, *, freeze: bool = True) -> None:
        if vectors.shape != self.table.weight.shape:
            raise ValueError(f"word vectors {tuple(vectors.shape)} do not match the table "
                             f"{tuple(self.table.weight.shape)}")
        self.table.weight.copy_(vectors)
        self.table.weight.requires_grad_(not freeze)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table.weight)
