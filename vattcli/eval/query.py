"""Encoding retrieval queries with a loaded model: captions into S_vt, a video or audio file into S_va.

A text query is compared with the clips' ``video_vt`` (``text.tovid`` vs ``video.totxt``), a video or audio query with
their ``video_va`` (``video.toaud`` / ``audio.tovid``) [C experiments/pretrain.py; reference §4]. A query file gives
one window from its middle, ``spec.frames / spec.fps`` seconds long, centre-cropped like the evaluation views.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vattcli.data.media import decode_clip, probe, read_audio
from vattcli.data.pipeline import ClipSpec
from vattcli.data.transforms import center_crop, to_model_range
from vattcli.errors import ConfigError, VattError

_SPEC_FIELDS = ("frames", "fps", "size", "audio_rate", "text_len", "eval_windows")


def clip_spec_from_checkpoint(ckpt: str | os.PathLike[str]) -> ClipSpec:
    """The clip shape the checkpoint was trained on, from the ``data`` section of its stored config (the weights are
    not read, so not verified here: whoever loads them does)."""
    from vattcli.checkpoints import find_checkpoint, read_config

    folder = find_checkpoint(ckpt, verify=False)
    data = read_config(folder).get("data")
    if not isinstance(data, dict):
        raise ConfigError(f"{folder / 'config.yaml'}: no 'data' section, so the clip size (frames, fps, size, "
                          "audio_rate) is unknown")
    return ClipSpec(**{k: data[k] for k in _SPEC_FIELDS if data.get(k) is not None})


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_text(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_len: int = 16) -> torch.Tensor:
    """Captions -> (Q, d_vt) L2-normalised ``text_vt`` embeddings (float32, CPU)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise VattError("text query: expected at least one caption")
    ids = torch.from_numpy(tokenizer.encode(texts, max_len=max_len)).long()
    empty = [t for t, row in zip(texts, ids) if not bool((row != 0).any())]
    if empty:
        raise VattError(f"text query {empty[0]!r}: gives no tokens (empty after tokenisation)")
    out = model(text=ids.to(_device(model)))["text_vt"]
    return F.normalize(out.float(), dim=-1).cpu()


def _middle_start(path: Path, seconds: float) -> float:
    return max(0.0, (probe(path).duration - seconds) / 2)


def _checked_file(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VattError(f"{path}: {what} query file not found")
    return path


@torch.no_grad()
def encode_video_file(model: nn.Module, path: str | os.PathLike[str], spec: ClipSpec) -> torch.Tensor:
    """The middle ``spec.seconds`` of a video file, centre-cropped to ``spec.size`` -> ``video_va`` (d_va,),
    L2-normalised. A file shorter than the window is looped, as the training clips are [DMVR processors.py]."""
    path = _checked_file(path, "video")
    clip = decode_clip(path, _middle_start(path, spec.seconds), spec.frames, spec.fps, audio_rate=spec.audio_rate,
                       need_audio=False)
    video = to_model_range(center_crop(clip.frames, spec.size)).contiguous()
    out = model(video=video[None].to(_device(model)))["video_va"]
    return F.normalize(out.float()[0], dim=-1).cpu()


@torch.no_grad()
def encode_audio_file(model: nn.Module, path: str | os.PathLike[str], spec: ClipSpec) -> torch.Tensor:
    """The middle ``spec.seconds`` of an audio (or video) file's sound, mono at ``spec.audio_rate``, zero-padded
    when the file is shorter -> ``audio_va`` (d_va,), L2-normalised."""
    path = _checked_file(path, "audio")
    samples, _ = read_audio(path, rate=spec.audio_rate, start=_middle_start(path, spec.seconds),
                            duration=spec.seconds)
    n = spec.audio_samples
    audio = np.zeros(n, np.float32)
    audio[: min(n, samples.size)] = samples[:n]
    out = model(audio=torch.from_numpy(audio)[None].to(_device(model)))["audio_va"]
    return F.normalize(out.float()[0], dim=-1).cpu()
