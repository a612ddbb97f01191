"""Reading media: ``decode_clip`` (frames at a frame rate with the audio of the same window), ``decode_image``, and
the public names of ``media_io`` (containers, probing, video frames) and ``media_audio`` (audio windows, resampling).
With those two, media_write.py and windows.py (one sequential pass per file, for indexing), the only code that
touches PyAV and soundfile.

Time zero is the first video frame (see ``origin_of``). Frames are chosen and audio is placed by
decoded timestamps only: container metadata (duration, frame count) is reported by ``probe`` but never
trusted for decoding, since web videos often lie about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vattcli.data.media_audio import _container_audio, _sidecar_audio, read_audio, resample, resample_at
from vattcli.data.media_io import (MediaInfo, Source, _clip_frames, _decoded, _RGBConverter, open_input, origin_of,
                                   probe, set_decoder_threads, source_label)
from vattcli.errors import MediaError

__all__ = ["Clip", "MediaInfo", "Source", "decode_clip", "decode_image", "open_input", "probe", "read_audio",
           "resample", "resample_at", "set_decoder_threads"]

_PAD_MODES = ("loop", "last")


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    audio: np.ndarray  # float32 (S,) mono in [-1, 1]; empty when need_audio=False
    has_audio: bool
    fps: float
    audio_rate: int
    start: float  # s


# ------------------------------------------------------------------------------------------- the clip


def decode_clip(src: Source, start: float, num_frames: int, fps: float, audio_rate: int = 48000,
                size: tuple[int, int] | None = None, short_side: int | None = None, need_audio: bool = True,
                audio_src: Source | None = None, pad: str = "loop", name: str | None = None) -> Clip:
    """`num_frames` frames at `fps` from time `start`, and the audio of the same window.

    Frame i is the frame on screen at start + i/fps. Audio: mono at `audio_rate`, exactly
    round(num_frames / fps * audio_rate) samples (153600 for 32 frames at 10 fps [P §4.1]), sample k at
    start + k/audio_rate. `size` is (height, width); `short_side` keeps the aspect ratio. `audio_src`
    reads the audio from a FLAC/WAV file instead (the shard's .flac, sample 0 = video time 0).

    Past the end, pad="loop" (default) wraps to the start, video and audio each over their own length,
    as the reference does: DMVR `sample_sequence` gathers with `repeat_sequence=True`, which tiles the
    sequence [DMVR processors.py]. pad="last" holds the last frame and zero-pads the audio instead.
    No audio stream: zeros and has_audio False; need_audio=False: an empty audio array.
    """
    if num_frames < 1 or fps <= 0 or audio_rate <= 0 or start < 0:
        raise ValueError("decode_clip needs num_frames >= 1, fps > 0, audio_rate > 0 and start >= 0")
    if pad not in _PAD_MODES:
        raise ValueError(f"pad must be one of {_PAD_MODES}, got {pad!r}")
    if size is not None and short_side is not None:
        raise ValueError("give size or short_side, not both")
    label = source_label(src, name)
    targets = start + np.arange(num_frames) / fps
    s0, n_audio = round(start * audio_rate), round(num_frames / fps * audio_rate)
    audio, has_audio = np.zeros(n_audio if need_audio else 0, np.float32), False
    with open_input(src, name) as container:
        if not container.streams.video:
            raise MediaError(f"{label}: no video stream", "no_video")
        origin = origin_of(container)
        convert = _RGBConverter(size, short_side)
        frames = _clip_frames(container, container.streams.video[0], targets, origin, convert, pad, label)
        if need_audio and audio_src is None and container.streams.audio:
            audio = _container_audio(container, container.streams.audio[0], s0, n_audio, audio_rate, origin, pad)
            has_audio = True
    if need_audio and audio_src is not None:
        audio, has_audio = _sidecar_audio(audio_src, s0, n_audio, audio_rate, pad, name), True
    return Clip(frames, np.clip(audio, -1.0, 1.0), has_audio, float(fps), int(audio_rate), float(start))


def decode_image(src: Source, name: str | None = None) -> np.ndarray:
    """A JPEG/PNG (any image FFmpeg reads) as uint8 (H, W, 3) RGB."""
    label = source_label(src, name)
    with open_input(src, name) as container:
        frame = next(_decoded(container, container.streams.video[0]), None) if container.streams.video else None
        if frame is None:
            raise MediaError(f"{label}: not a decodable image", "corrupt")
        return frame.to_ndarray(format="rgb24")
