"""Shard samples -> model inputs: the per-sample decoders that run in DataLoader workers.

Every random choice (clip start, crop, flip, colour, noise) comes from a generator seeded by (seed, epoch, sample key),
so a resumed run sees exactly the augmentations the interrupted one would have seen, whatever the worker count.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vattcli.data.color import ColorParams, finish_video
from vattcli.data.media import decode_clip, decode_image, read_audio
from vattcli.data.transforms import (add_gaussian_noise, center_crop, finish_clip, image_to_clip, three_crops,
                                     to_model_range, train_clip_uint8, uniform_window_starts)
from vattcli.errors import MediaError


@dataclass(frozen=True)
class ClipSpec:
    """What one training/eval sample holds [P §4.1, A.2]."""

    frames: int = 32
    fps: float = 10.0
    size: int = 224
    audio_rate: int = 48_000
    crop: str = "inception"
    flip: bool = True
    color_jitter: bool = True
    audio_noise: float = 0.01
    num_captions: int = 5
    text_len: int = 16
    eval_windows: int = 4
    eval_crops: int = 3
    raw_video: bool = False  # training clips leave as uint8 + colour rows; ``finish_batch`` completes them

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    @property
    def audio_samples(self) -> int:
        return round(self.seconds * self.audio_rate)


def sample_generator(seed: int, sample: dict[str, Any]) -> torch.Generator:
    """A generator determined by (seed, epoch, key): reproducible across restarts and worker counts."""
    key = zlib.crc32(str(sample.get("__key__", "")).encode())
    return torch.Generator().manual_seed((seed * 1_000_003 + int(sample.get("__epoch__", 0)) * 7919 + key) % 2**63)


def _uniform(gen: torch.Generator, high: float) -> float:
    return float(torch.rand((), generator=gen)) * high if high > 0 else 0.0


def _train_video(clip: torch.Tensor, color: ColorParams, raw: bool) -> dict[str, torch.Tensor]:
    """A training clip as the sample carries it: raw (uint8 frames and their colour row) or finished here."""
    return {"video": clip, "video_color": color.as_tensor()} if raw else {"video": finish_clip(clip, color)}


def _label_target(meta: dict[str, Any], num_classes: int | None) -> torch.Tensor:
    """A class index (single-label) or a multi-hot float vector (AudioSet's ``labels``)."""
    if "labels" in meta:
        target = torch.zeros(num_classes or 0)
        target[list(meta["labels"])] = 1.0
        return target
    return torch.tensor(int(meta.get("label", -1)))


class PretrainDecoder:
    """HowTo100M / AudioSet sample -> {video, audio, text, has_text, has_audio} [P §4.1, A.2.1].

    Training: a random window of ``spec.seconds`` inside the stored clip, the paper's crop/flip/colour augmentation,
    audio noise (std 0.01 max|x|). Captions: the sample's own caption and its neighbours, K in all (repeated when fewer
    exist); a sample without captions (AudioSet) gets all-padding text, which masks it out of MIL-NCE [P A.1.1].
    """

    def __init__(self, spec: ClipSpec, tokenizer: Any | None, *, train: bool = True, seed: int = 0) -> None:
        self.spec, self.tokenizer, self.train, self.seed = spec, tokenizer, train, seed

    def clip(self, sample: dict[str, Any], gen: torch.Generator, start: float | None = None):
        if "mp4" not in sample:
            raise MediaError(f"{sample.get('__key__')}: sample has no video", "no_video")
        meta = sample.get("json", {})
        slack = max(0.0, float(meta.get("duration", self.spec.seconds)) - self.spec.seconds)
        if start is None:
            start = _uniform(gen, slack) if self.train else slack / 2
        return decode_clip(sample["mp4"], start, self.spec.frames, self.spec.fps, audio_rate=self.spec.audio_rate,
                           audio_src=sample.get("flac"), name=str(sample.get("__key__")))

    def video_fields(self, frames: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """{"video": float (3, T, S, S) in [-1, 1]}, or with ``spec.raw_video`` in training {"video": uint8,
        "video_color": (5,)} for ``finish_batch`` to complete on the training device."""
        s = self.spec
        if not self.train:
            return {"video": to_model_range(center_crop(frames, s.size)).contiguous()}
        clip, color = train_clip_uint8(frames, s.size, crop_style=s.crop, flip=s.flip, color=s.color_jitter,
                                       generator=gen)
        return _train_video(clip, color, s.raw_video)

    def text_tensor(self, meta: dict[str, Any]) -> tuple[torch.Tensor, bool]:
        s = self.spec
        captions = [c for c in meta.get("captions", []) if isinstance(c, str) and c.strip()]
        if not captions or self.tokenizer is None:
            return torch.zeros(s.num_captions, s.text_len, dtype=torch.long), False
        chosen = [captions[i % len(captions)] for i in range(s.num_captions)]
        return torch.from_numpy(self.tokenizer.encode(chosen, max_len=s.text_len)).long(), True

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        gen = sample_generator(self.seed, sample)
        clip = self.clip(sample, gen)
        audio = torch.from_numpy(clip.audio)
        if self.train and self.spec.audio_noise > 0:
            audio = add_gaussian_noise(audio, self.spec.audio_noise, generator=gen)
        text, has_text = self.text_tensor(sample.get("json", {}))
        return {**self.video_fields(clip.frames, gen), "audio": audio.float(), "text": text, "has_text": has_text,
                "has_audio": clip.has_audio}


class EvalViewsDecoder(PretrainDecoder):
    """Evaluation views of one video: ``eval_windows`` uniformly spaced clips [P A.2.5, A.3.3].

    ``crops=3`` gives the 4 x 3 protocol of video classification (short side to the crop size, then
    left/centre/right); ``crops=1`` a centre crop (retrieval, linear probe). Returns video (V, 3, T, S, S),
    audio (windows, S), text (K, L) of the sample's captions, and the label.
    """

    def __init__(self, spec: ClipSpec, tokenizer: Any | None = None, *, crops: int | None = None,
                 num_classes: int | None = None) -> None:
        super().__init__(spec, tokenizer, train=False)
        self.crops = spec.eval_crops if crops is None else crops
        self.num_classes = num_classes

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        meta = sample.get("json", {})
        duration = float(meta.get("duration", self.spec.seconds))
        views, audios = [], []
        for start in uniform_window_starts(duration, self.spec.seconds, self.spec.eval_windows):
            clip = self.clip(sample, torch.Generator(), start)
            crops = (three_crops(clip.frames, self.spec.size) if self.crops == 3
                     else center_crop(clip.frames, self.spec.size)[None])
            views.append(to_model_range(crops))
            audios.append(torch.from_numpy(clip.audio))
        text, has_text = self.text_tensor(meta)
        return {"video": torch.cat(views).contiguous(), "audio": torch.stack(audios).float(), "text": text,
                "has_text": has_text, "label": _label_target(meta, self.num_classes),
                "key": str(sample.get("__key__")), "meta": meta}


class ClassifyDecoder(PretrainDecoder):
    """Video classification training sample: one augmented clip and its label [P A.2.5]."""

    def __init__(self, spec: ClipSpec, *, num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(spec, None, train=True, seed=seed)
        self.num_classes = num_classes

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        gen = sample_generator(self.seed, sample)
        clip = self.clip(sample, gen)
        return {**self.video_fields(clip.frames, gen), "label": _label_target(sample["json"], self.num_classes)}


class AudioDecoder:
    """Audio classification sample: a waveform window of ``seconds`` at ``rate`` (AudioSet fine-tuning: 6.4 s at
    24 kHz = 153.6k samples [P A.3]); random start in training, ``windows`` uniform windows in eval."""

    def __init__(self, seconds: float, rate: int, *, train: bool, num_classes: int | None = None, seed: int = 0,
                 windows: int = 4) -> None:
        self.seconds, self.rate, self.train, self.seed = seconds, rate, train, seed
        self.num_classes, self.windows = num_classes, windows

    def _window(self, data: bytes, start: float, key: str) -> torch.Tensor:
        audio, _ = read_audio(data, rate=self.rate, start=start, duration=self.seconds, name=key)
        n = round(self.seconds * self.rate)
        return torch.from_numpy(np.pad(audio[:n], (0, max(0, n - audio.size)))).float()

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        key = str(sample.get("__key__"))
        data = sample.get("flac")
        if data is None:
            raise MediaError(f"{key}: sample has no audio", "no_audio")
        meta = sample.get("json", {})
        slack = max(0.0, float(meta.get("duration", self.seconds)) - self.seconds)
        if self.train:
            audio = self._window(data, _uniform(sample_generator(self.seed, sample), slack), key)
        else:
            starts = uniform_window_starts(float(meta.get("duration", self.seconds)), self.seconds, self.windows)
            audio = torch.stack([self._window(data, s, key) for s in starts])
        return {"audio": audio, "label": _label_target(meta, self.num_classes), "key": key}


class ImageDecoder:
    """ImageNet sample: the image repeated along time to fill one temporal patch [P §4.2.3]."""

    def __init__(self, size: int, *, frames: int = 4, train: bool, seed: int = 0, crop: str = "inception",
                 raw_video: bool = False) -> None:
        self.size, self.frames, self.train, self.seed, self.crop = size, frames, train, seed, crop
        self.raw_video = raw_video

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        data = next((sample[k] for k in ("jpg", "png", "jpeg", "webp") if k in sample), None)
        if data is None:
            raise MediaError(f"{sample.get('__key__')}: sample has no image", "no_video")
        frames = image_to_clip(decode_image(data), self.frames)
        label = _label_target(sample["json"], None)
        if not self.train:
            return {"video": to_model_range(center_crop(frames, self.size, round(self.size / 0.875))).contiguous(),
                    "label": label}
        clip, color = train_clip_uint8(frames, self.size, crop_style=self.crop, color=False,
                                       generator=sample_generator(self.seed, sample))
        return {**_train_video(clip, color, self.raw_video), "label": label}


def finish_batch(batch: Any) -> Any:
    """Complete raw training clips on the device the batch is on: uint8 ``video`` with ``video_color`` rows becomes
    float32 in [-1, 1] with its colour jitter (``vattcli.data.color.finish_video``); other batches pass unchanged."""
    if isinstance(batch, dict) and "video_color" in batch:
        batch = dict(batch)
        batch["video"] = finish_video(batch["video"], batch.pop("video_color"))
    return batch
