"""Contrastive objectives of VATT: NCE (video-audio) and MIL-NCE (video-text) with global negatives.

The paper defines NCE for video-audio and MIL-NCE for video-text, whose positive set is the K = 5 temporally nearest
captions, on L2-normalised embeddings with tau = 0.07, and L = NCE + lambda * MIL-NCE with lambda = 1 [P §3.4 eq.4-6,
A.2.3]. The official code trains with `AsymmetricNCE` (the MMV form) and also ships `SymmetricNCE`
[C utils/train/objectives.py, configs/loss.py]; both are implemented here, `AsymmetricNCE` being the default.

Notation for one local sample i: video v_i, partners p_{i,1..K} (K = 1 audio clip, K = 5 captions), a validity flag
m_i (the code's `text_mask`; 0 for AudioSet clips, whose text is empty [P A.1.1]). "Global" means the batch gathered
from every rank, B_all = world_size * B.

Asymmetric (default) [C utils/train/objectives.py `AsymmetricNCE._calculate_nce`]:
    pos_i  = logsumexp_l (v_i . p_{i,l} / tau)
    den_i  = logsumexp over the concatenation of
               { v_i . p_{j,l} / tau : j global with m_j = 1, all l }   (captions of invalid samples are never
                                                                          negatives; the code subtracts 1e9)
               { v_j . p_{i,l} / tau : every global j, all l }          (videos of invalid samples stay)
    loss_i = den_i - pos_i, for rows with m_i = 1 only.
Symmetric (`symmetric=True`) [C utils/train/objectives.py `SymmetricNCE._calculate_nce`]:
    loss_i = (logsumexp{first set above} - pos_i) + (logsumexp{second set above} - pos_i).

Reduction: "mean" divides the sum over valid local rows by their count, which is what the code's `B / #valid`
rescaling of a masked batch mean gives; a batch without a valid row gives 0 (the code zeroes NaN). Here masked
entries are set to -1e9 (the code subtracts 1e9; exp(-1e9 - max) is 0 in every float type, so either equals dropping
them) and invalid rows are computed, then zeroed before the sum: every shape is static, so a compiled training step
is one graph (no data-dependent boolean indexing), no NaN or infinity ever enters the graph, and the zero-valid
gradient is exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

_REDUCTIONS = ("mean", "sum")
_COMBINES = ("mean", "sum")
MASKED = -1e9  # logit of a masked pair: the official code's offset [C utils/train/objectives.py]


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gathered gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate `t` (equal shape on every rank) from all ranks along dim 0, passing gradients back.

    Without an initialised process group of more than one rank it returns `t` itself. Rank r's rows sit at
    `[r * B, (r + 1) * B)` of the result. Scaling convention: the gradient reaching rank r's `t` is the derivative of
    the SUM over ranks of every rank's loss, d(sum_s L_s)/d t_r. DDP then averages parameter gradients over the W
    ranks, so parameters receive d((1/W) sum_s L_s)/d theta: the gradient of the mean of the per-rank losses, which
    for per-rank means over equal valid counts is the gradient of one process's mean over the concatenated batch.
    """
    if _world_size() == 1:
        return t
    return _GatherWithGrad.apply(t)


def _gather_plain(t: Tensor) -> Tensor:
    """All-gather without gradient (for masks); bool is sent as uint8, which every backend supports."""
    src = t.to(torch.uint8) if t.dtype == torch.bool else t
    parts = [torch.empty_like(src) for _ in range(_world_size())]
    dist.all_gather(parts, src.contiguous())
    return torch.cat(parts, dim=0).to(t.dtype)


def _l2_normalize(x: Tensor) -> Tensor:
    """x / ||x|| along the last dim with TF's epsilon rule, x * rsqrt(max(sum x^2, 1e-12)) [C tf.math.l2_normalize]."""
    return x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True).clamp_min(1e-12))


def _check_inputs(video: Tensor, partners: Tensor, valid: Tensor | None, temperature: float, reduction: str) -> None:
    if video.dim() != 2:
        raise ValueError(f"video: expected shape (B, D), got {tuple(video.shape)}")
    batch, dim = video.shape
    if partners.dim() != 3 or partners.shape[0] != batch or partners.shape[2] != dim:
        raise ValueError(f"partners: expected shape ({batch}, K, {dim}), got {tuple(partners.shape)}")
    if valid is not None and tuple(valid.shape) != (batch,):
        raise ValueError(f"valid: expected shape ({batch},), got {tuple(valid.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _per_row_losses(
    video: Tensor, partners: Tensor, video_all: Tensor, partners_all: Tensor, valid_all: Tensor, temperature: float,
    symmetric: bool,
) -> Tensor:
    """Loss of every local row (B,), valid or not (the caller zeroes the invalid ones).

    video (B, D) and partners (B, K, D): the local samples; video_all (B_all, D) and partners_all (B_all, K, D): every
    global sample; valid_all (B_all,): whose partners are negatives. Partners of invalid samples are masked with
    ``MASKED`` rather than dropped, so the shapes do not depend on the data.
    """
    k, dim = partners.shape[1:]
    lse_pos = torch.logsumexp(torch.einsum("nd,nkd->nk", video, partners) / temperature, dim=1)
    video_to_partners = video @ partners_all.reshape(partners_all.shape[0] * k, dim).T / temperature  # (B, B_all*K)
    video_to_partners = video_to_partners.masked_fill(~valid_all.repeat_interleave(k)[None, :], MASKED)
    partners_to_videos = torch.einsum("bd,nkd->nbk", video_all, partners).reshape(video.shape[0], -1)
    partners_to_videos = partners_to_videos / temperature  # (B, B_all*K)
    if symmetric:
        return (
            torch.logsumexp(video_to_partners, dim=1) - lse_pos + torch.logsumexp(partners_to_videos, dim=1) - lse_pos
        )
    return torch.logsumexp(torch.cat([video_to_partners, partners_to_videos], dim=1), dim=1) - lse_pos


def mil_nce(
    video: Tensor,
    partners: Tensor,
    valid: Tensor | None = None,
    temperature: float = 0.07,
    symmetric: bool = False,
    reduction: str = "mean",
    gather: bool = True,
) -> Tensor:
    """MIL-NCE of videos (B, D) against their partner sets (B, K, D) with global negatives [P §3.4 eq.5].

    `valid` (B,) marks samples whose partners exist (None: all). The default is the official asymmetric form,
    `symmetric=True` the official symmetric one (see the module docstring for both formulas)
    [C utils/train/objectives.py]. With `gather` and an initialised process group of W > 1 ranks, videos, partners
    and masks are gathered from every rank (equal B on each); the loss is over this rank's valid rows, "mean" (their
    average, 0 when there is none) or "sum". Half-precision inputs are computed in float32 (float64 stays), outside autocast.
    """
    _check_inputs(video, partners, valid, temperature, reduction)
    valid = torch.ones(video.shape[0], dtype=torch.bool, device=video.device) if valid is None else valid.bool()
    with torch.autocast(device_type=video.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(video.dtype, partners.dtype), torch.float32)
        video, partners = video.to(dtype), partners.to(dtype)
        video, partners = _l2_normalize(video), _l2_normalize(partners)
        if gather and _world_size() > 1:
            video_all, partners_all = gather_with_grad(video), gather_with_grad(partners)
            valid_all = _gather_plain(valid)
        else:
            video_all, partners_all, valid_all = video, partners, valid
        rows = _per_row_losses(video, partners, video_all, partners_all, valid_all, temperature, symmetric)
        total = torch.where(valid, rows, 0.0).sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1).to(total.dtype)


def nce(video: Tensor, audio: Tensor, **kwargs) -> Tensor:
    """Video-audio NCE [P §3.4 eq.4]: `mil_nce` with one partner per video; audio (B, D). Keywords as `mil_nce`."""
    if audio.dim() != 2:
        raise ValueError(f"audio: expected shape (B, D), got {tuple(audio.shape)}")
    return mil_nce(video, audio.unsqueeze(1), **kwargs)


class PretrainLoss(nn.Module):
    """VATT pre-training objective: video-audio NCE plus video-text MIL-NCE [P §3.4 eq.6; C utils/train/objectives.py].

    combine="mean" is the official code, (w_vt * L_vt + w_va * L_va) / (w_vt + w_va); combine="sum" is the paper's
    eq.6, w_vt * L_vt + w_va * L_va (lambda = w_vt / w_va). A term with weight 0 is not computed (its inputs may be
    absent) and reported as 0, as the code skips it. "loss_va"/"loss_vt" are the unweighted terms.
    """

    def __init__(
        self,
        *,
        va_weight: float = 1.0,
        vt_weight: float = 1.0,
        combine: str = "mean",
        temperature: float = 0.07,
        symmetric: bool = False,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if va_weight < 0 or vt_weight < 0 or va_weight + vt_weight <= 0:
            raise ValueError(f"loss weights: expected >= 0 with a positive sum, got va={va_weight}, vt={vt_weight}")
        if combine not in _COMBINES:
            raise ValueError(f"combine: expected one of {_COMBINES}, got {combine!r}")
        self.va_weight, self.vt_weight, self.combine = va_weight, vt_weight, combine
        self.nce_kwargs = {"temperature": temperature, "symmetric": symmetric, "gather": gather}

    def forward(self, outputs: Mapping[str, Tensor], text_valid: Tensor | None = None) -> dict[str, Tensor]:
        """outputs: `video_va` (B, 512), `audio_va` (B, 512), `video_vt` (B, 256), `text_vt` (B, K, 256).

        text_valid (B,) bool marks samples with captions; when None, `outputs["text_valid"]` is used if present,
        else every sample counts as captioned.
        """
        if text_valid is None:
            text_valid = outputs.get("text_valid")
        reference = outputs["video_va"] if self.va_weight > 0 else outputs["video_vt"]
        zero = reference.new_zeros((), dtype=torch.promote_types(reference.dtype, torch.float32))
        loss_va = nce(outputs["video_va"], outputs["audio_va"], **self.nce_kwargs) if self.va_weight > 0 else zero
        loss_vt = (
            mil_nce(outputs["video_vt"], outputs["text_vt"], valid=text_valid, **self.nce_kwargs)
            if self.vt_weight > 0
            else zero
        )
        loss = self.vt_weight * loss_vt + self.va_weight * loss_va
        if self.combine == "mean":
            loss = loss / (self.vt_weight + self.va_weight)
        return {"loss": loss, "loss_va": loss_va, "loss_vt": loss_vt}
