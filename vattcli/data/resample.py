"""Crop-and-resize as matrix products: torch's antialiased bilinear resize along each axis as a (out, in) weight
matrix, so a crop, its resize and a flip are one pair of matrices, applied band by band to only the uint8 region they
read, a frame at a time (used by ``vattcli.data.transforms``)."""

from __future__ import annotations

import numpy as np
import torch

_BAND = 32  # output rows / columns per block of a resampling matrix


def check_frames(frames: np.ndarray) -> None:
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3):
        got = f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}"
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {got}")


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 weights of ``F.interpolate(mode="bilinear", antialias=True)`` along one axis.

    Torch's separable kernel (``_compute_weights_aa``, align_corners=False): output i is centred at
    scale * (i + 0.5), the triangle filter is widened by the scale when downscaling, and the
    weights are normalised per output. Equal sizes give the identity.
    """
    scale = in_size / out_size
    centre = scale * (np.arange(out_size) + 0.5)
    dist = (np.arange(in_size)[None, :] + 0.5 - centre[:, None]) / max(scale, 1.0)
    weights = np.clip(1.0 - np.abs(dist), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def crop_resize_matrix(start: int, length: int, full: int, size: int) -> np.ndarray:
    """(size, full): cut [start, start + length) and resize it to ``size``."""
    matrix = np.zeros((size, full))
    matrix[:, start : start + length] = resize_matrix(length, size)
    return matrix


def short_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Frame size with min(H, W) == size, with DMVR ``resize_smallest``'s integer rounding."""
    return max(size, height * size // width), max(size, width * size // height)


def _bands(matrix: np.ndarray, dtype: torch.dtype, transpose: bool) -> list[tuple[slice, slice, torch.Tensor]]:
    """Blocks of ``_BAND`` outputs: (outputs, the inputs their weights touch, those weights)."""
    nonzero = matrix != 0
    first, end = nonzero.argmax(axis=1), matrix.shape[1] - nonzero[:, ::-1].argmax(axis=1)
    bands = []
    for start in range(0, matrix.shape[0], _BAND):
        outs = slice(start, min(start + _BAND, matrix.shape[0]))
        ins = slice(int(first[outs].min()), int(end[outs].max()))
        block = matrix[outs, ins]
        bands.append((outs, ins, torch.from_numpy(np.ascontiguousarray(block.T if transpose else block)).to(dtype)))
    return bands


def _support(matrix: np.ndarray) -> slice:
    used = np.flatnonzero(np.any(matrix != 0, axis=0))
    return slice(int(used[0]), int(used[-1]) + 1)


class Resampler:
    """Frames mapped through rows (out_h, H) and cols (out_w, W): rows @ frame @ cols.T per channel.

    ``video`` is uint8 (T, H, W, 3) frames (values are not rescaled: fold 1/255 into the matrices)
    or a float (3, T, H, W) clip. Only the region the matrices read is converted to float, one
    frame at a time, and both passes are matrix products over the matrices' bands, into buffers
    reused from frame to frame.
    """

    def __init__(self, video: torch.Tensor | np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        self.dtype = video.dtype if isinstance(video, torch.Tensor) else torch.float32
        used_rows, used_cols = _support(rows), _support(cols)
        if isinstance(video, np.ndarray):
            region = video[:, used_rows, used_cols]
            if not region.flags.writeable or min(region.strides) < 0:
                region = np.array(region)
            self.source = torch.from_numpy(region).permute(0, 1, 3, 2)  # (T, h, 3, w)
        else:
            self.source = video[:, :, used_rows, used_cols].permute(1, 2, 0, 3)
        height, width, out_w = self.source.shape[1], self.source.shape[3], cols.shape[0]
        self.block = torch.empty(height, 3, width, dtype=self.dtype)
        flat, wide = self.block.view(-1, width), torch.empty(height * 3, out_w, dtype=self.dtype)
        tall, self.out = wide.view(height, -1), torch.empty(rows.shape[0], 3, out_w, dtype=self.dtype)
        self.steps = [
            (flat[:, ins], weight, wide[:, outs]) for outs, ins, weight in _bands(cols[:, used_cols], self.dtype, True)
        ] + [
            (weight, tall[ins], self.out.view(rows.shape[0], -1)[outs])
            for outs, ins, weight in _bands(rows[:, used_rows], self.dtype, False)
        ]

    def frame(self, t: int) -> torch.Tensor:
        """Frame t as an (out_h, 3, out_w) block, overwritten by the next call."""
        self.block.copy_(self.source[t])
        for left, right, out in self.steps:
            torch.mm(left, right, out=out)
        return self.out


def render(video: torch.Tensor | np.ndarray, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """(3, T, out_h, out_w): rows @ frame @ cols.T per frame and channel (uint8 frames scaled to [0, 1])."""
    if isinstance(video, np.ndarray):
        rows = rows / 255.0
    resampler = Resampler(video, rows, cols)
    num_frames = len(video) if isinstance(video, np.ndarray) else video.shape[1]
    out = torch.empty(3, num_frames, rows.shape[0], cols.shape[0], dtype=resampler.dtype)
    for t in range(num_frames):
        out[:, t].copy_(resampler.frame(t).permute(1, 0, 2))
    return out


def frame_size(video: torch.Tensor | np.ndarray) -> tuple[int, int]:
    if isinstance(video, np.ndarray):
        check_frames(video)
        return video.shape[1], video.shape[2]
    return video.shape[-2], video.shape[-1]
