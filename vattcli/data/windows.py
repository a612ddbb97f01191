"""Cutting a whole media file into the windows an index embeds, each with a small JPEG thumbnail.

Every file is decoded once, front to back: the frames on screen at the windows' sample times are picked as they go by
(``pick_frames``, the rule of ``decode_clip``), each picked frame is converted once and centre-cropped the way a query
file is (``vattcli.eval.query``: short side to ``spec.size`` with antialiased bilinear, then the central square), and
a window leaves as soon as the decoder has passed its end. Only the frames of windows still open are held (at most
``window / stride`` overlapping windows, about one window of frames), so memory does not grow with the file's length.
The audio is read the same way, front to back, keeping only the samples of the window being cut.

Windows are placed by ``window_starts`` over the decoded length (the last frame's end, or the audio track's end), not
the container's metadata, which web videos often get wrong [media.py]. A tail window ending exactly at the end needs
the length first, so it is decoded after the pass by one seek.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vattcli.data.media_audio import _open_sound, _sound_errors, _sound_read, audio_chunks
from vattcli.data.media_io import (_EPS, StreamEnd, _clip_frames, _decoded, _RGBConverter, _timed, check_source,
                                   open_input, origin_of, pick_frames, probe)
from vattcli.data.pipeline import ClipSpec
from vattcli.data.resample import Resampler, resize_matrix, short_side
from vattcli.errors import MediaError


@dataclass
class Window:
    start: float  # s in the source (time zero: the first video frame, as decode_clip)
    end: float  # s: start + window, or the media's end for a source shorter than one window
    frames: np.ndarray | None  # uint8 (spec.frames, spec.size, spec.size, 3); None for audio-only sources
    audio: np.ndarray | None  # float32 (spec.audio_samples,) mono at spec.audio_rate; None without (or not asked)
    thumbnail: bytes | None  # JPEG of the middle model frame (frames[spec.frames // 2]); None for audio-only


@dataclass
class MediaSummary:
    duration: float  # s, from the container's metadata (for progress and planning; windows use the decoded length)
    has_video: bool
    has_audio: bool


def window_starts(duration: float, window: float, stride: float) -> list[float]:
    """Start times of the windows that cut a source of ``duration`` seconds.

    Full windows at 0, stride, 2 stride, ... while start + window <= duration (within 0.1 ms). If what is left after
    the last full window's end is at least stride / 2, one more window ends exactly at the end (start = duration -
    window), so a tail longer than half a stride is not lost; a shorter one is covered in part by the last window
    already. A source shorter than one window gives one window at 0 (its frames loop, its audio is zero-padded);
    duration 0 gives none.
    """
    _check_cut(window, stride)
    if duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if duration == 0:
        return []
    if duration + _EPS < window:
        return [0.0]
    count = int((duration - window + _EPS) // stride) + 1
    starts = [k * stride for k in range(count)]
    if duration - (starts[-1] + window) >= stride / 2 - _EPS:
        starts.append(duration - window)
    return starts


def _check_cut(window: float, stride: float) -> None:
    if not (window > 0 and stride > 0):
        raise ValueError(f"window and stride must be > 0, got window={window} and stride={stride}")


def summarize(path: Path) -> MediaSummary:
    """Duration (container metadata) and which streams a file has; one-line MediaError when it cannot be read."""
    with open_input(path) as container:
        if not (container.streams.video or container.streams.audio):
            raise MediaError(f"{path}: no video or audio stream", "no_media")
        has_video = _footage(container) is not None
    info = probe(path)
    return MediaSummary(float(info.duration), has_video, info.has_audio)


def _footage(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not cover art (an MP3's or FLAC's picture is a one-frame 'attached_pic' video
    stream: such a file is audio only)."""
    return next((s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None)


def jpeg_thumbnail(frame: np.ndarray, short_side: int = 112, quality: int = 80) -> bytes:
    """uint8 (H, W, 3) RGB scaled (area filter) to a short side of ``short_side`` px, as baseline JPEG bytes (4:2:0).

    ``quality`` 1..100 maps linearly onto FFmpeg's MJPEG qscale 31..2 (100: qscale 2, the best; 80: qscale 8).
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    if short_side < 1 or not 1 <= quality <= 100:
        raise ValueError(f"short_side must be >= 1 and quality in 1..100, got {short_side} and {quality}")
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    picture = picture.reformat(width=out_w, height=out_h, format="yuvj420p", interpolation="AREA")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = out_w, out_h, "yuvj420p", Fraction(1, 1)
    codec.qmin = codec.qmax = round(31 - (quality - 1) * 29 / 99)
    return b"".join(bytes(packet) for packet in [*codec.encode(picture), *codec.encode(None)])


class _Cropper:
    """A decoded frame -> uint8 (size, size, 3), exactly as ``center_crop`` + rounding would make it: RGB at the
    stream's size (``_RGBConverter``), short side to ``size`` (antialiased bilinear), the central square.

    The crop's ``Resampler`` is built once, on a one-frame buffer it reads through a view: each frame is copied into
    the buffer and resampled (building it per frame cost 40 % of the crop). A frame picked again is converted once.
    """

    def __init__(self, size: int) -> None:
        self.size, self.rgb = size, _RGBConverter(None, None)
        self.buffer: np.ndarray | None = None
        self.resampler: Resampler | None = None
        self.last: tuple[av.VideoFrame | None, np.ndarray | None] = (None, None)

    def _setup(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        fh, fw = short_side(h, w, self.size)
        top, left = (fh - self.size) // 2, (fw - self.size) // 2
        rows, cols = resize_matrix(h, fh)[top : top + self.size], resize_matrix(w, fw)[left : left + self.size]
        self.buffer = np.empty((1, h, w, 3), np.uint8)
        self.resampler = Resampler(self.buffer, rows / 255.0, cols)  # uint8 in, [0, 1] out, as ``render``

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.last[0] is not frame:
            rgb = self.rgb(frame)
            if self.resampler is None:
                self._setup(rgb)
            self.buffer[0] = rgb
            crop = self.resampler.frame(0).permute(1, 0, 2)[:, None]  # (3, 1, size, size) float in [0, 1]
            self.last = (frame, _as_uint8(crop)[0])
        return self.last[1]


def _as_uint8(video: torch.Tensor) -> np.ndarray:
    """Float (3, T, H, W) in [0, 1] -> uint8 (T, H, W, 3), rounded to nearest (numpy-owned memory)."""
    return video.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy().copy()


class _TrackReader:
    """An audio track read front to back: ``window(s0, n)`` for ascending s0 gives samples [s0, s0 + n), zeros where
    the track has none; pieces that end before the last window's start are dropped."""

    def __init__(self, chunks: Iterator[tuple[int, np.ndarray]]) -> None:
        self.chunks, self.pieces, self.end, self.done = chunks, deque(), 0, False

    def close(self) -> None:
        """Close the chunk generator (and the reader it holds open), read to the end or not."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()

    def fill(self, until: int) -> bool:
        """Read until sample ``until`` (True) or the track's end (False; ``end`` is then the track's length)."""
        while self.end < until and not self.done:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.done = True
            elif chunk[0] + len(chunk[1]) > self.end:
                self.pieces.append(chunk)
                self.end = chunk[0] + len(chunk[1])
        return self.end >= until

    def window(self, s0: int, n: int) -> np.ndarray:
        self.fill(s0 + n)
        out = np.zeros(n, np.float32)
        for p, x in self.pieces:
            lo, hi = max(p, s0), min(p + len(x), s0 + n)
            if hi > lo:
                out[lo - s0 : hi - s0] = x[lo - p : hi - p]
        while self.pieces and self.pieces[0][0] + len(self.pieces[0][1]) <= s0:
            self.pieces.popleft()
        return np.clip(out, -1.0, 1.0)


def _grid_targets(window: float, stride: float, count: int) -> Iterator[tuple[float, int, int]]:
    """(time, k, i) ascending in time: frame i of window k at k stride + i window / count, and (k stride + window,
    k, count), the moment window k is known to be whole. Endless: the caller stops at the stream's end."""
    heap: list[tuple[float, int, int]] = []
    k = 0
    while True:
        start = k * stride
        for i in range(count):
            heapq.heappush(heap, (start + i * window / count, k, i))
        heapq.heappush(heap, (start + window, k, count))
        while heap[0][0] < start + stride:
            yield heapq.heappop(heap)
        k += 1


def iter_windows(path: Path, spec: ClipSpec, *, window: float | None = None, stride: float,
                 need_audio: bool = False) -> Iterator[Window]:
    """The windows of one file, in time order, placed by ``window_starts`` over the decoded length.

    Frames: ``spec.frames`` per window, frame i the one on screen at start + i window / spec.frames (``decode_clip``'s
    rule with fps = spec.frames / window; with the default window = spec.seconds that is spec.fps), centre-cropped to
    ``spec.size``. Audio: ``spec.audio_samples`` mono samples at ``spec.audio_rate`` from the window's start (the
    model's audio length, whatever the window), zero-padded past the track's end; for a video, only with
    ``need_audio``. A file with no audio stream but video gives audio None; audio only gives frames None.

    Errors (MediaError with a reason): a missing, empty or unreadable file before any window; no video or audio
    stream: 'no_media'; no decodable frames: 'corrupt'. A decoder failing mid-file raises MediaError 'corrupt' after
    the windows cut so far (the caller keeps or drops them); a file that merely ends early (truncated stream) gives
    the windows of what it holds.
    """
    window = spec.seconds if window is None else float(window)
    _check_cut(window, stride)  # now, not at the first next()
    check_source(path, str(path))
    return _windows(Path(path), spec, window, float(stride), need_audio)


def _windows(path: Path, spec: ClipSpec, window: float, stride: float, need_audio: bool) -> Iterator[Window]:
    with open_input(path) as container:
        if not (container.streams.video or container.streams.audio):
            raise MediaError(f"{path}: no video or audio stream", "no_media")
        stream = _footage(container)
        if stream is not None:
            with closing(_TrackReader(_audio_of(path, spec.audio_rate))) as audio:
                use_audio = audio if need_audio and container.streams.audio else None
                yield from _video_windows(container, stream, path, spec, window, stride, use_audio)
            return
        if not container.streams.audio:
            raise MediaError(f"{path}: no video or audio stream (only cover art)", "no_media")
    yield from _audio_only_windows(path, spec, window, stride)


def _audio_of(path: Path, rate: int) -> Iterator[tuple[int, np.ndarray]]:
    """The file's first audio track as (first sample, samples) chunks from its start, on a reader of its own (opened
    at the first chunk asked for, so never for a video whose audio is not wanted)."""
    with open_input(path) as container:
        yield from audio_chunks(container, container.streams.audio[0], 0, rate, origin_of(container))


def _video_windows(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path,
                   spec: ClipSpec, window: float, stride: float, audio: _TrackReader | None) -> Iterator[Window]:
    """One pass over the video: frames assigned to every open window as the decoder passes their times, a window
    cut when the decoder passes its end; then the windows that need the decoded length (tail, short file)."""
    origin, crop, count = origin_of(container), _Cropper(spec.size), spec.frames
    keys: deque[tuple[int, int]] = deque()  # (window, frame) of each target pick_frames has taken, in order

    def times() -> Iterator[float]:
        for t, k, i in _grid_targets(window, stride, count):
            keys.append((k, i))
            yield t

    open_windows: dict[int, list[np.ndarray | None]] = {}
    end, cut = StreamEnd(), 0
    for _, frame in pick_frames(_frames_from_start(container, stream, origin), times(), end):
        k, i = keys.popleft()
        if i < count:
            open_windows.setdefault(k, [None] * count)[i] = crop(frame)
        else:
            yield _window(k * stride, k * stride + window, np.stack(open_windows.pop(k)), audio, spec)
            cut += 1
    if end.time is None:
        raise MediaError(f"{path}: no decodable video frames", "corrupt")
    for start in window_starts(end.time, window, stride)[cut:]:
        targets = start + np.arange(count) * window / count
        frames = _clip_frames(container, stream, targets, origin, crop, "loop", str(path))
        yield _window(start, min(start + window, end.time), frames, audio, spec)


def _frames_from_start(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                       origin: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time, frame) of a freshly opened container from its first packet on: no seek, since a seek to the start of
    an MPEG-TS file can land on its second keyframe."""
    return _timed(_decoded(container, stream), origin, stream)


def _window(start: float, end: float, frames: np.ndarray, audio: _TrackReader | None, spec: ClipSpec) -> Window:
    sound = audio.window(round(start * spec.audio_rate), spec.audio_samples) if audio is not None else None
    return Window(start, end, frames, sound, jpeg_thumbnail(frames[spec.frames // 2]))


def _audio_only_windows(path: Path, spec: ClipSpec, window: float, stride: float) -> Iterator[Window]:
    """Windows of a file without video: FLAC/WAV/OGG through soundfile, as ``read_audio`` reads a query file,
    anything else through PyAV, front to back."""
    sound = _open_sound(path)
    if sound is None:
        with closing(_TrackReader(_audio_of(path, spec.audio_rate))) as track:
            yield from _track_windows(track, path, spec, window, stride)
        return
    with _sound_errors(str(path)), sound:
        if sound.frames <= 0:
            raise MediaError(f"{path}: no audio samples", "corrupt")
        rate, n = spec.audio_rate, spec.audio_samples
        length, duration = sound.frames * rate // sound.samplerate, sound.frames / sound.samplerate
        for start in window_starts(duration, window, stride):
            s0 = round(start * rate)
            samples = np.zeros(n, np.float32)
            filled = max(0, min(n, length - s0))
            samples[:filled] = _sound_read(sound, s0, filled, rate)
            yield Window(start, min(start + window, duration), None, np.clip(samples, -1.0, 1.0), None)


def _track_windows(track: _TrackReader, path: Path, spec: ClipSpec, window: float, stride: float) -> Iterator[Window]:
    """Full windows while the track reaches their end, then the rest of ``window_starts`` over its decoded length."""
    rate, n, cut = spec.audio_rate, spec.audio_samples, 0
    while track.fill(round((cut * stride + window) * rate)):
        start = cut * stride
        yield Window(start, start + window, None, track.window(round(start * rate), n), None)
        cut += 1
    if track.end <= 0:
        raise MediaError(f"{path}: no decodable audio", "corrupt")
    duration = track.end / rate
    for start in window_starts(duration, window, stride)[cut:]:
        yield Window(start, min(start + window, duration), None, track.window(round(start * rate), n), None)
