"""Colour jitter in closed forms (DMVR order: brightness, saturation, contrast, hue, clip) [DMVR processors.py
color_default_augm; P A.2.1]: one frame at a time on the CPU (``jitter_frame``), or a batch of clips on any device
(``finish_video``), and the HSV conversions they are tested against."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ColorParams:
    """One clip's colour jitter: brightness delta, saturation/contrast factors, hue delta."""

    applied: bool
    brightness: float
    saturation: float
    contrast: float
    hue: float

    def as_tensor(self) -> torch.Tensor:
        """(5,) float32: applied (0/1), brightness, saturation, contrast, hue; what a sample carries as ``video_color``."""
        return torch.tensor([float(self.applied), self.brightness, self.saturation, self.contrast, self.hue])


NO_COLOR = ColorParams(False, 0.0, 1.0, 1.0, 0.0)


def _hexcone(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in sextants [0, 6), value (max) and chroma (max - min; 0 where max <= 0, as TF's kernel).

    Hue is continuous where two channels tie for the max, so which one ``max`` picks is irrelevant.
    """
    v, idx = rgb.max(dim=0)
    spread = v - rgb.amin(dim=0)
    diff = rgb.roll(-1, 0) - rgb.roll(-2, 0)  # (g - b, b - r, r - g)
    num = diff.gather(0, idx[None])[0]
    h6 = torch.remainder(num / torch.where(spread > 0, spread, 1.0) + 2.0 * idx, 6.0)
    return h6, v, torch.where(v > 0, spread, 0.0)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV along dim 0, hue in turns (TF's and colorsys' hexcone formulas)."""
    h6, v, chroma = _hexcone(rgb)
    s = chroma / torch.where(v > 0, v, 1.0)
    return torch.stack([torch.where(chroma > 0, h6 / 6.0, 0.0), s, v])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB along dim 0: channel n = v - s v clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1."""
    h, s, v = hsv.unbind(0)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype).view(3, *([1] * h.dim()))
    k = torch.remainder(n + h * 6.0, 6.0)
    return v - s * v * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _saturate_(video: torch.Tensor, brightness: float, factor: float) -> None:
    """In place along dim 0: add ``brightness``, then tf.image.adjust_saturation, without leaving RGB.

    Hue and value fixed, each channel moves from the max by the chroma ratio. With v, m the max
    and min before the shift d: x' = v + d - k (v - x), k = clamp((v + d) / (v - m), 0, factor)
    (HSV saturation times ``factor``, clipped to [0, 1]; k = 0, grey, where v + d <= 0). Grey
    pixels divide by a tiny number instead of 0; any finite k leaves them unchanged.
    """
    r, g, b = video.unbind(0)
    v, spread = torch.maximum(r, g), torch.minimum(r, g)
    torch.maximum(v, b, out=v)
    torch.sub(v, torch.minimum(spread, b, out=spread), out=spread).clamp_(min=torch.finfo(video.dtype).tiny)
    shifted = v + brightness
    k = torch.div(shifted, spread, out=spread).clamp_(0.0, max(factor, 0.0))
    offset = torch.addcmul(shifted, k, v, value=-1.0, out=shifted)
    torch.addcmul(offset.unsqueeze(0), k.unsqueeze(0), video, out=video)


def _rotate_hue(video: torch.Tensor, delta: float, out: torch.Tensor, clip: tuple[float, float] | None) -> None:
    """Write ``video`` with its hexcone hue turned by ``delta`` (tf.image.adjust_hue) into ``out``, along dim 0.

    Turning the hue keeps max, min and c = max - min, and moves each channel along its hexcone
    profile: a trapezoid in the hue, equal to max within a sextant of the channel's own hue and
    falling to min (slope c per sextant) over the next one. A third of a turn only relabels the
    channels (red -> green), so delta = k / 3 + rest / 6 with rest in [-1, 1] sextants, and
    turning by rest moves channel n by -rest c on the side of its peak where the hue lies, given
    by sign(x_{n+1} - x_{n+2}) (r, g, b cyclic). With 2 x_n - mid, the profile continued past its
    flat parts, the turned channel is clamp(2 x_n - mid - rest c sign(x_{n+1} - x_{n+2}), min, max).
    ``clip`` (low, high) also clips the result.
    """
    k = round(3.0 * delta)
    rest = 6.0 * delta - 2.0 * k
    x = video.unbind(0)
    high, low = torch.maximum(x[0], x[1]), torch.minimum(x[0], x[1])
    v, m = torch.maximum(high, x[2]), torch.minimum(low, x[2])
    neg_mid = torch.maximum(low, torch.minimum(high, x[2], out=high), out=low).neg_()
    chroma = torch.sub(v, m, out=high)
    if clip is not None:
        v.clamp_(*clip)
        m.clamp_(*clip)
    value = torch.empty_like(chroma)
    for n in range(3):
        torch.sub(x[(n + 1) % 3], x[(n + 2) % 3], out=value).sign_()
        torch.addcmul(neg_mid, value, chroma, value=-rest, out=value).add_(x[n], alpha=2.0)
        torch.clamp(value, m, v, out=out[(n + k) % 3])


def adjust_saturation(video: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale HSV saturation, clipped to [0, 1] (tf.image.adjust_saturation), channels along dim 0."""
    out = video.clone()
    _saturate_(out, 0.0, factor)
    return out


def adjust_contrast(video: torch.Tensor, factor: float) -> torch.Tensor:
    """(x - mean) * factor + mean, mean per frame and channel (tf.image.adjust_contrast)."""
    mean = video.mean(dim=(-2, -1), keepdim=True)
    return (video - mean) * factor + mean


def adjust_hue(video: torch.Tensor, delta: float) -> torch.Tensor:
    """Rotate the hue by ``delta`` turns (tf.image.adjust_hue), channels along dim 0."""
    out = torch.empty_like(video)
    _rotate_hue(video, delta, out, None)
    return out


def jitter_frame(frame: torch.Tensor, params: ColorParams, out: torch.Tensor, scale: float) -> None:
    """Jitter one (3, H, W) frame in [0, 1] (overwritten) into ``out`` as scale * x + 1 - scale.

    ``scale`` 2 gives the model's [-1, 1]: the contrast step applies the affine map, which the
    hue rotation and the final clipping commute with.
    """
    if params.saturation != 1.0:
        _saturate_(frame, params.brightness, params.saturation)
    else:
        frame.add_(params.brightness)
    low = 1.0 - scale
    if params.contrast != 1.0:
        offset = frame.mean(dim=(1, 2), keepdim=True).mul_(scale * (1.0 - params.contrast)).add_(low)
        torch.add(offset, frame, alpha=scale * params.contrast, out=frame)
    elif scale != 1.0:
        frame.mul_(scale).add_(low)
    if params.hue != 0.0:
        _rotate_hue(frame, params.hue, out, (low, 1.0))
    else:
        torch.clamp(frame, low, 1.0, out=out)


def jitter_batch(video: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Clips (B, 3, T, H, W) in [0, 1], each with its own (B, 5) ``ColorParams.as_tensor`` row, jittered and clipped
    to [0, 1] (the ``applied`` column is ignored). The closed forms of ``_saturate_`` and ``_rotate_hue``, with the
    parameters as tensors: any device, no Python loop over samples."""
    view = (-1,) + (1,) * (video.dim() - 2)
    brightness, saturation, contrast, hue = (color[:, i].to(video.dtype).view(view) for i in range(1, 5))
    x = video.unbind(1)
    v, m = torch.maximum(torch.maximum(x[0], x[1]), x[2]), torch.minimum(torch.minimum(x[0], x[1]), x[2])
    shifted = v + brightness
    k = torch.minimum((shifted / (v - m).clamp_(min=torch.finfo(video.dtype).tiny)).clamp_(min=0.0),
                      saturation.clamp(min=0.0))
    video = torch.addcmul((shifted - k * v).unsqueeze(1), k.unsqueeze(1), video)
    mean = video.mean(dim=(-2, -1), keepdim=True)
    video = torch.lerp(mean, video, contrast.unsqueeze(1))  # (x - mean) * c + mean
    turns = torch.round(3.0 * hue)  # whole thirds of a turn relabel the channels
    rest = (6.0 * hue - 2.0 * turns).unsqueeze(1)
    x = video.unbind(1)
    high, low = torch.maximum(x[0], x[1]), torch.minimum(x[0], x[1])
    v, m = torch.maximum(high, x[2]), torch.minimum(low, x[2])
    mid = torch.maximum(low, torch.minimum(high, x[2]))
    chroma = (v - m).unsqueeze(1)
    side = torch.stack([x[(n + 1) % 3] - x[(n + 2) % 3] for n in range(3)], 1).sign_()
    turned = (2.0 * video - mid.unsqueeze(1)).addcmul_(side, chroma * rest, value=-1.0)
    turned = torch.maximum(torch.minimum(turned, v.clamp_(0.0, 1.0).unsqueeze(1)), m.clamp_(0.0, 1.0).unsqueeze(1))
    shift = turns.view(-1).long()
    index = torch.remainder(torch.arange(3, device=video.device)[None, :] - shift[:, None], 3)
    return turned[torch.arange(len(shift), device=video.device)[:, None], index]


def _finish(video: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W) in [-1, 1], jittered where ``color[:, 0]`` is set."""
    x = video.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    applied = (color[:, 0] > 0.5).view(-1, 1, 1, 1, 1)
    return torch.where(applied, jitter_batch(x, color), x).sub_(0.5).mul_(2.0)


@functools.cache
def _compiled_finish():
    return torch.compile(_finish, dynamic=False)


def finish_video(video: torch.Tensor, color: torch.Tensor, chunk: int = 8, compile: bool | None = None) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) and their (B, 5) colour rows -> float32 (B, 3, T, H, W) in [-1, 1], jittered
    where ``applied``.

    Runs where the tensors are: on the training GPU the workers ship uint8 (a quarter of the bytes) and the colour
    jitter costs a few fused kernels (``compile``, default on CUDA: ``torch.compile`` of the whole batch, a few
    reads and one write of it). Eager, it runs ``chunk`` clips at a time to bound the temporaries. Equal to
    ``vattcli.data.transforms.finish_clip`` per clip up to float rounding.
    """
    if video.dtype != torch.uint8 or video.dim() != 5 or video.shape[-1] != 3 or color.shape != (video.shape[0], 5):
        raise ValueError(f"finish_video: expected uint8 (B, T, H, W, 3) and (B, 5) colours, got {video.dtype} "
                         f"{tuple(video.shape)} and {tuple(color.shape)}")
    color = color.to(video.device, torch.float32)
    if video.is_cuda if compile is None else compile:
        return _compiled_finish()(video, color)
    return torch.cat([_finish(video[i : i + chunk], color[i : i + chunk]) for i in range(0, len(video), chunk)])
