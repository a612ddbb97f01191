"""Clip augmentation, evaluation views and audio augmentation.

Frames arrive as decoded numpy uint8 (T, H, W, 3) and leave as the model's layout: torch float32
(3, T, H, W) in [-1, 1] [P A.2.1; C configs/dataset.py ``zero_centering_image``]. The public ops
take and return a float (3, T, H, W) clip in [0, 1]. One set of random parameters is drawn per
clip, so all frames share the crop, flip and colour change. Randomness comes from a
``torch.Generator`` (``None`` = torch's global generator). Resizing is bilinear with antialiasing.

Speed (one core): training clips stay uint8 through the crop and resizes (torch's antialiased
bilinear uint8 kernel, as the reference keeps uint8 frames), within one level of the float
definitions; the colour jitter then runs either on the CPU a frame at a time while it is in cache
(``finish_clip``), or batched on the training device (``vattcli.data.color.finish_video``), in
closed forms with few passes. Evaluation views resize in float: a crop, its resize and a flip are
one pair of matrices, rows (out_h, H) and columns (out_w, W), equal to torch's antialiased
bilinear ``F.interpolate``, applied to only the region they read, a frame at a time. Both match
the op-by-op definitions (up to float rounding, and uint8 rounding for training clips).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vattcli.data.color import NO_COLOR, ColorParams, jitter_frame
from vattcli.data.resample import check_frames, crop_resize_matrix, frame_size, render, resize_matrix, short_side

@dataclass(frozen=True)
class CropBox:
    """A crop in pixels, and the size of the frame it was cut from (after any resize)."""

    top: int
    left: int
    height: int
    width: int
    frame_height: int
    frame_width: int


def normalize_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [0, 1]."""
    check_frames(frames)
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    return clip.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] [P A.2.1]."""
    return video * 2.0 - 1.0


def image_to_clip(image: np.ndarray, num_frames: int = 4) -> np.ndarray:
    """Repeat an (H, W, 3) uint8 image along time so it fills one 4-frame tubelet [P §4.2.3]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    return np.repeat(image[None], num_frames, axis=0)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """Uniform integer in the closed range [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


# --------------------------------------------------------------------------------------------------- crops


def random_resized_crop(
    video: torch.Tensor,
    size: int,
    area: tuple[float, float] = (0.08, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
    attempts: int = 100,
    min_object_covered: float = 0.1,
    *,
    generator: torch.Generator | None = None,
    return_box: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, CropBox]:
    """Inception-style crop, then resize to size x size [P A.2.1; C data/processing.py random_crop_resize].

    Follows ``tf.image.sample_distorted_bounding_box``: aspect (width / height) uniform in
    ``aspect``, then the crop height uniform between the heights giving the smallest and largest
    allowed areas; ``min_object_covered=0.1`` (VATT's value) also rejects crops under 10% of the
    frame. After ``attempts`` failures the whole frame is used. Unlike TF (whose offset draw
    never reaches the last row/column), offsets cover the full valid range.
    """
    h, w = video.shape[-2:]
    box = _sample_inception_box(h, w, area, aspect, attempts, min_object_covered, generator)
    out = render(video, *_box_matrices(box, size))
    return (out, box) if return_box else out


def _box_matrices(box: CropBox, size: int) -> tuple[np.ndarray, np.ndarray]:
    rows = crop_resize_matrix(box.top, box.height, box.frame_height, size)
    return rows, crop_resize_matrix(box.left, box.width, box.frame_width, size)


def _sample_inception_box(h, w, area, aspect, attempts, min_object_covered, generator) -> CropBox:
    min_area, max_area = area[0] * h * w, area[1] * h * w
    for _ in range(attempts):
        ratio = _uniform(generator, *aspect)
        found = _try_inception_box(h, w, min_area, max_area, ratio, generator)
        if found is not None and found[2] * found[3] >= min_object_covered * h * w:
            return CropBox(*found, h, w)
    return CropBox(0, 0, h, w, h, w)


def _try_inception_box(h, w, min_area, max_area, ratio, generator) -> tuple[int, int, int, int] | None:
    """One attempt of TF's GenerateRandomCrop (sample_distorted_bounding_box_op.cc)."""
    crop_h = round(math.sqrt(min_area / ratio))
    max_h = round(math.sqrt(max_area / ratio))
    if round(max_h * ratio) > w:
        max_h = int((w + 0.5 - 1e-7) / ratio)
        if round(max_h * ratio) > w:
            max_h -= 1
    max_h = min(max_h, h)
    crop_h = _randint(generator, min(crop_h, max_h), max_h)
    crop_w = round(crop_h * ratio)
    for _ in range(2):  # TF grows the box by a row at a time when rounding left it too small
        if crop_w * crop_h >= min_area:
            break
        crop_h += 1
        crop_w = round(crop_h * ratio)
    if not (min_area <= crop_w * crop_h <= max_area and 0 < crop_w <= w and 0 < crop_h <= h):
        return None
    return _randint(generator, 0, h - crop_h), _randint(generator, 0, w - crop_w), crop_h, crop_w


def scale_jitter_crop(
    video: torch.Tensor,
    size: int,
    min_resize: int | None = None,
    jitter: tuple[float, float] = (0.8, 1.2),
    p: float = 0.8,
    *,
    generator: torch.Generator | None = None,
    return_box: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, CropBox]:
    """The code's default 'VGG' crop [C configs/dataset.py, data/dataloaders.py; DMVR scale_jitter_augm].

    With probability ``p`` height and width are rescaled by independent factors in ``jitter``
    (this runs before the short-side resize, as the code inserts it), then the short side is
    resized to ``min_resize`` (default ``size``) and a random size x size window is cut.
    """
    h, w = video.shape[-2:]
    rows, cols, box = _jitter_matrices(h, w, size, min_resize, jitter, p, generator)
    out = render(video, rows, cols)
    return (out, box) if return_box else out


def _jitter_box(h, w, size, min_resize, jitter, p, generator) -> tuple[int, int, CropBox]:
    """``scale_jitter_crop``'s draws: the jittered size, and the crop in the short-side-resized frame."""
    min_resize = size if min_resize is None else min_resize
    if min_resize < size:
        raise ValueError(f"min_resize ({min_resize}) must be at least the crop size ({size})")
    h_scale, w_scale = _uniform(generator, *jitter), _uniform(generator, *jitter)
    mid_h, mid_w = (int(h_scale * h), int(w_scale * w)) if _uniform(generator, 0.0, 1.0) < p else (h, w)
    fh, fw = short_side(mid_h, mid_w, min_resize)
    return mid_h, mid_w, CropBox(_randint(generator, 0, fh - size), _randint(generator, 0, fw - size), size, size, fh, fw)


def _jitter_matrices(h, w, size, min_resize, jitter, p, generator) -> tuple[np.ndarray, np.ndarray, CropBox]:
    """``scale_jitter_crop`` as row and column matrices: jitter resize, short-side resize, crop."""
    mid_h, mid_w, box = _jitter_box(h, w, size, min_resize, jitter, p, generator)
    fh, fw = box.frame_height, box.frame_width
    rows = _two_resizes(h, mid_h, fh)[box.top : box.top + size]
    return rows, _two_resizes(w, mid_w, fw)[box.left : box.left + size], box


def _two_resizes(size_in: int, size_mid: int, size_out: int) -> np.ndarray:
    """Resizing size_in -> size_mid -> size_out as one (size_out, size_in) matrix."""
    if size_mid == size_in:
        return resize_matrix(size_in, size_out)
    first = resize_matrix(size_in, size_mid)
    return first if size_out == size_mid else resize_matrix(size_mid, size_out) @ first


def horizontal_flip(video: torch.Tensor, p: float = 0.5, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror every frame left-right with probability ``p`` [P A.2.1]."""
    return video.flip(-1) if _uniform(generator, 0.0, 1.0) < p else video


# --------------------------------------------------------------------------------------------------- colour


def color_jitter(
    video: torch.Tensor,
    p: float = 0.8,
    brightness: float = 32 / 255,
    saturation: float = 0.4,
    contrast: float = 0.4,
    hue: float = 0.2,
    *,
    generator: torch.Generator | None = None,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ColorParams]:
    """DMVR ``color_default_augm`` as VATT calls it (p = 0.8, no colour drop) [P A.2.1; DMVR processors.py].

    One parameter set per clip: brightness delta U[-b, b], saturation and contrast factors
    U[1 - s, 1 + s] (so [0.6, 1.4]), hue delta U[-h, h]. Applied in DMVR's fixed order
    (brightness, saturation, contrast, hue), then clipped to [0, 1].
    """
    params = _draw_color(generator, p, brightness, saturation, contrast, hue)
    out = video
    if params.applied:
        out = torch.empty_like(video)
        for t in range(video.shape[1]):
            jitter_frame(video[:, t].clone(), params, out[:, t], scale=1.0)
    return (out, params) if return_params else out


def _draw_color(generator, p, brightness, saturation, contrast, hue) -> ColorParams:
    applied = _uniform(generator, 0.0, 1.0) < p
    return ColorParams(
        applied=applied,
        brightness=_uniform(generator, -brightness, brightness),
        saturation=_uniform(generator, 1.0 - saturation, 1.0 + saturation),
        contrast=_uniform(generator, 1.0 - contrast, 1.0 + contrast),
        hue=_uniform(generator, -hue, hue),
    )


# ------------------------------------------------------------------------------------------------ pipelines


def train_clip_uint8(
    frames: np.ndarray,
    size: int = 224,
    *,
    crop_style: str = "inception",
    flip: bool = True,
    color: bool = True,
    min_resize: int | None = None,
    area: tuple[float, float] = (0.08, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ColorParams]:
    """uint8 (T, H, W, 3) -> the cropped, resized, maybe flipped uint8 clip (T, size, size, 3), and its colour draw.

    ``crop_style="inception"`` is the paper's crop; ``"vgg"`` is the code default (scale jitter,
    short side to ``min_resize``, random crop) [C configs/dataset.py]. Like the code, frames stay
    uint8 through the crop and every resize, and the colour jitter comes after
    [C data/processing.py random_crop_resize; DMVR processors.py resize_smallest]; it is applied
    by ``finish_clip`` (one clip, here) or ``vattcli.data.color.finish_video`` (a batch, on any
    device). Resizes are torch's antialiased bilinear on uint8 (its SIMD kernel), rounding to the
    nearest level where the code's ``tf.cast`` truncates (a 0.5/255 mean shift). Random draws in
    order: crop, flip, colour (``applied`` False when ``color`` is off).
    """
    check_frames(frames)
    h, w = frames.shape[1:3]
    if not frames.flags.writeable or min(frames.strides) < 0:
        frames = np.array(frames)
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W) in channels-last memory
    if crop_style == "inception":
        box = _sample_inception_box(h, w, area, aspect, 100, 0.1, generator)
        region = clip[:, :, box.top : box.top + box.height, box.left : box.left + box.width]
        out = resize_uint8(region, size, size)
    elif crop_style == "vgg":
        mid_h, mid_w, box = _jitter_box(h, w, size, min_resize, (0.8, 1.2), 0.8, generator)
        full = resize_uint8(resize_uint8(clip, mid_h, mid_w), box.frame_height, box.frame_width)
        out = full[:, :, box.top : box.top + size, box.left : box.left + size]
    else:
        raise ValueError(f"crop_style: expected 'inception' or 'vgg', got {crop_style!r}")
    out = out.permute(0, 2, 3, 1)  # (T, size, size, 3), contiguous: the resize keeps the channels-last layout
    if flip and _uniform(generator, 0.0, 1.0) < 0.5:
        out = out.flip(2)
    params = _draw_color(generator, 0.8, 32 / 255, 0.4, 0.4, 0.2) if color else NO_COLOR
    return out.contiguous(), params


def resize_uint8(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> (T, 3, height, width), antialiased bilinear (``F.interpolate``, rounded)."""
    if tuple(clip.shape[-2:]) == (height, width):
        return clip
    return F.interpolate(clip, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def finish_clip(frames: torch.Tensor, params: ColorParams) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1] with ``params``' colour jitter, a frame at a time (on
    the CPU, in cache) [P A.2.1]; ``vattcli.data.color.finish_video`` does the same for a batch on any device."""
    video = frames.permute(3, 0, 1, 2)
    if not params.applied:
        return video.to(torch.float32, memory_format=torch.contiguous_format).mul_(2.0 / 255.0).sub_(1.0)
    out = torch.empty(video.shape, dtype=torch.float32)
    for t in range(video.shape[1]):  # planar float frames: the closed forms run on contiguous channels
        frame = video[:, t].to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
        jitter_frame(frame, params, out[:, t], scale=2.0)
    return out


def train_video_transform(frames: np.ndarray, size: int = 224, **kwargs) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> augmented float32 (3, T, size, size) in [-1, 1] [P A.2.1]: ``train_clip_uint8``
    (same arguments), then ``finish_clip``."""
    return finish_clip(*train_clip_uint8(frames, size, **kwargs))


def center_crop(video: torch.Tensor | np.ndarray, size: int, resize_to: int | None = None) -> torch.Tensor:
    """Short side to ``resize_to`` (default ``size``), then the central size x size window [C data/dataloaders.py].

    ``video`` is a float (3, T, H, W) clip or uint8 (T, H, W, 3) frames, of which only the
    window's source region is converted.
    """
    resize_to = size if resize_to is None else resize_to
    if resize_to < size:
        raise ValueError(f"resize_to ({resize_to}) must be at least the crop size ({size})")
    h, w = frame_size(video)
    fh, fw = short_side(h, w, resize_to)
    top, left = (fh - size) // 2, (fw - size) // 2
    return render(video, resize_matrix(h, fh)[top : top + size], resize_matrix(w, fw)[left : left + size])


def three_crops(video: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Short side to ``size``, then 3 crops along the long side: start, centre, end [P A.2.5].

    Returns (3, 3, T, size, size), views first. Offsets as in the code's ``multi_crop_image``:
    0, round(L / 2 - size // 2) (half to even), L - size [C data/processing.py]. ``video`` is a
    float (3, T, H, W) clip or uint8 (T, H, W, 3) frames.
    """
    h, w = frame_size(video)
    fh, fw = short_side(h, w, size)
    video = render(video, resize_matrix(h, fh), resize_matrix(w, fw))
    along_height = fh >= fw
    length = fh if along_height else fw
    crops = []
    for start in (0, round(length / 2 - size // 2), length - size):
        if along_height:
            crops.append(video[..., start : start + size, :size])
        else:
            crops.append(video[..., :size, start : start + size])
    return torch.stack(crops)


def uniform_window_starts(duration: float, clip_seconds: float, n: int = 4) -> list[float]:
    """Start times (s) of ``n`` evenly spaced clips covering the video, first at 0, last ending at the end.

    A video no longer than one clip gives ``n`` starts at 0 [P A.2.5, A.3.3].
    """
    span = max(0.0, duration - clip_seconds)
    if n == 1:
        return [0.0]
    return [span * i / (n - 1) for i in range(n)]


def linspace_window_indices(num_total: int, num_frames: int, stride: int = 1, num_windows: int = 4) -> np.ndarray:
    """Frame indices (num_windows, num_frames) of evenly spaced windows (DMVR sample_linspace_sequence).

    Offsets are int(linspace(0, max(0, N - num_frames * stride), num_windows)); a video too short
    for a window repeats from its start (indices wrap modulo N).
    """
    max_offset = max(0, num_total - num_frames * stride)
    offsets = np.linspace(0.0, float(max_offset), num_windows).astype(np.int64)
    steps = np.arange(num_frames, dtype=np.int64) * stride
    return (offsets[:, None] + steps[None, :]) % num_total


def eval_views(
    frames: np.ndarray,
    size: int,
    num_windows: int = 4,
    num_crops: int = 3,
    *,
    num_frames: int = 32,
    stride: int = 1,
) -> torch.Tensor:
    """All test views of one decoded video: (num_windows * num_crops, 3, num_frames, size, size) in [-1, 1].

    Windows come from ``linspace_window_indices``; each gives 3 crops (fine-tuning test, 4 x 3
    = 12 views) or 1 centre crop (linear probe and retrieval) [P A.2.5, A.3.2, A.3.3]. Views are
    window-major. For long videos decode each window separately (``uniform_window_starts``)
    and call ``three_crops`` / ``center_crop`` per window instead.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops: expected 1 (centre) or 3, got {num_crops}")
    if len(frames) == 0:
        raise ValueError("eval_views: the video has no frames")
    views = []
    for window in linspace_window_indices(len(frames), num_frames, stride, num_windows):
        clip = frames[window]
        views.append(three_crops(clip, size) if num_crops == 3 else center_crop(clip, size)[None])
    return to_model_range(torch.cat(views)).contiguous()


def add_gaussian_noise(
    audio: torch.Tensor, scale: float = 0.01, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add N(0, (scale * max|x|)^2) noise to one clip's waveform [C data/processing.py add_gaussian]."""
    std = scale * audio.abs().max()
    noise = torch.randn(audio.shape, generator=generator, dtype=audio.dtype)
    return audio + noise.to(audio.device) * std


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 5.0, beta: float = 5.0, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each sample with a randomly permuted partner: lam * a + (1 - lam) * b, same lam for x and y.

    As the code's ``batched_mixup``: the partner comes from a random permutation of the batch and
    lam ~ Beta(alpha, beta) is drawn per sample (shape (B,)) [C data/processing.py; P A.3].
    ``y`` must be float (one-hot or multi-hot) labels.
    """
    if not y.is_floating_point():
        raise ValueError("mixup needs float (one-hot or multi-hot) labels, got integer class ids")
    batch = x.shape[0]
    perm = torch.randperm(batch, generator=generator)
    lam = _sample_beta(alpha, beta, batch, generator)

    def mix(t: torch.Tensor) -> torch.Tensor:
        weight = lam.to(t.device, t.dtype).view(batch, *([1] * (t.dim() - 1)))
        return weight * t + (1.0 - weight) * t[perm.to(t.device)]

    return mix(x), mix(y), lam.to(x.device)


def _sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Beta samples drawn from ``generator`` (torch's Beta sampler only reads the global RNG)."""
    dist = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(beta)))
    if generator is None:
        return dist.sample((n,))
    seed = int(torch.randint(0, 2**62, (), generator=generator).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.sample((n,))
