"""Reading media: with media_write.py, the only code that touches PyAV and soundfile.

Time zero is the first video frame (see ``origin_of``). Frames are chosen and audio is placed by
decoded timestamps only: container metadata (duration, frame count) is reported by ``probe`` but never
trusted for decoding, since web videos often lie about it.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, Union

import av
import numpy as np
import soundfile as sf
from av.video.reformatter import VideoReformatter

from vattcli.errors import MediaError

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]
T = TypeVar("T")

_EPS = 1e-4  # s; a frame shown at t counts for target t despite float rounding (far below a frame)
_AUDIO_PREROLL = 0.1  # s decoded before an audio window, so the codec's first frame after a seek settles
_PAD_MODES = ("loop", "last")
_decoder_threads = 0  # FFmpeg's video decoder threads; 0 = automatic (one per CPU)


def set_decoder_threads(count: int) -> None:
    """Threads per video decoder from now on in this process; DataLoader workers set 1 (one decoder per core)."""
    global _decoder_threads
    _decoder_threads = max(0, int(count))


@dataclass
class MediaInfo:
    path: str
    duration: float  # s, from the container's metadata
    has_video: bool
    has_audio: bool
    fps: float | None
    width: int | None
    height: int | None
    num_frames: int | None  # the container's count, else estimated as duration * fps
    audio_rate: int | None
    audio_channels: int | None
    video_codec: str | None
    audio_codec: str | None


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    audio: np.ndarray  # float32 (S,) mono in [-1, 1]; empty when need_audio=False
    has_audio: bool
    fps: float
    audio_rate: int
    start: float  # s


def source_label(src: Source, name: str | None = None) -> str:
    """How messages name a source: the given name, the path, or '<in-memory media>'."""
    if name:
        return name
    return "<in-memory media>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def check_source(src: Source, label: str) -> None:
    """Raise MediaError 'missing' / 'empty' before a decoder sees the source."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise MediaError(f"{label}: empty media (0 bytes)", "empty")
        return
    if not Path(src).is_file():
        raise MediaError(f"{label}: no such file", "missing")
    if Path(src).stat().st_size == 0:
        raise MediaError(f"{label}: empty file (0 bytes)", "empty")


def as_file(src: Source) -> str | io.BytesIO:
    return io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else os.fspath(src)


@contextmanager
def open_input(src: Source, name: str | None = None) -> Iterator[av.container.InputContainer]:
    """An open container; FFmpeg failures become MediaError('corrupt'); closed on every exit."""
    label = source_label(src, name)
    check_source(src, label)
    try:
        container = av.open(as_file(src), "r")
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise MediaError(f"{label}: not a readable media file ({getattr(err, 'strerror', err)})", "corrupt") from err
    try:
        for stream in container.streams.video:
            stream.thread_type = "AUTO"
            if _decoder_threads:
                stream.thread_count = _decoder_threads
        yield container
    except av.error.FFmpegError as err:
        raise MediaError(f"{label}: decoding failed ({getattr(err, 'strerror', err)})", "corrupt") from err
    finally:
        container.close()


def origin_of(container: av.container.InputContainer) -> float:
    """Time zero: the first video frame's time (else the audio's, else the container's), at least 0.

    Containers without edit lists (MPEG-TS, FLV) start the audio with the AAC encoder's priming samples
    and push the video back by as much; anchoring on the video keeps content where the video puts it.
    """
    for stream in (*container.streams.video[:1], *container.streams.audio[:1]):
        if stream.start_time is not None:
            return max(0.0, float(stream.start_time * stream.time_base))
    start = container.start_time
    return max(0.0, start / av.time_base) if start is not None else 0.0


def _decoded(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[av.frame.Frame]:
    """Frames of one stream from the current position; a packet the codec rejects is skipped, as ffmpeg does."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue
        yield from frames


def _from_seek(
    container, stream, t: float, origin: float, decode: Callable[[], Iterator[tuple[float, T]]]
) -> Iterator[tuple[float, T]]:
    """Items (time, x) of a fresh `decode()` after seeking to the keyframe at or before time t.

    When the first item is already past t (MPEG-TS seeks often land after the target; MP4 seeks by
    decode time), seeks further back and decodes again.
    """
    seek_t = t
    while True:
        container.seek(max(0, int((seek_t + origin) / stream.time_base)), stream=stream)
        items = decode()
        first = next(items, None)
        if seek_t <= 0 or (first is not None and first[0] <= t + _EPS):
            break
        seek_t = max(0.0, seek_t - max(1.0, 2.0 * (first[0] - t) if first is not None else 1.0))
    if first is not None:
        yield first
        yield from items


def probe(src: Source, name: str | None = None) -> MediaInfo:
    """Describe a media file (or bytes); decodes one frame, so a file that only looks like media fails."""
    label = source_label(src, name)
    with open_input(src, name) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise MediaError(f"{label}: no audio or video stream", "corrupt")
        if next(_decoded(container, video if video is not None else audio), None) is None:
            raise MediaError(f"{label}: no decodable frames", "corrupt")
        if container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = max((float(s.duration * s.time_base) for s in container.streams if s.duration), default=0.0)
        rate = (video.average_rate or video.guessed_rate) if video is not None else None
        fps = float(rate) if rate else None
        vc = video.codec_context if video is not None else None
        ac = audio.codec_context if audio is not None else None
        return MediaInfo(
            path=label, duration=duration, has_video=video is not None, has_audio=audio is not None, fps=fps,
            width=vc.width if vc is not None else None, height=vc.height if vc is not None else None,
            num_frames=(video.frames or (round(duration * fps) if fps else None)) if video is not None else None,
            audio_rate=ac.sample_rate if ac is not None else None,
            audio_channels=ac.channels if ac is not None else None,
            video_codec=vc.name if vc is not None else None, audio_codec=ac.name if ac is not None else None,
        )


# ----------------------------------------------------------------------------------------------- video


@dataclass
class StreamEnd:
    """Filled in when a video decoder ran out: end time (last frame time + its duration) and last frame."""

    time: float | None = None
    last: av.VideoFrame | None = None


def video_frames_from(container, stream, t: float, origin: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time, frame) in display order from the keyframe at or before time t."""
    return _from_seek(container, stream, t, origin, lambda: _timed(_decoded(container, stream), origin, stream))


def _timed(frames: Iterator[av.VideoFrame], origin: float, stream) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time, frame) in decoder output (display) order.

    ffmpeg's best-effort rule: pts while they keep increasing, else dts (AVI with B-frames carries
    disordered pts). Times never go backwards; a frame with neither steps by 1/fps.
    """
    step = 1 / float(stream.average_rate or stream.guessed_rate or 25)
    faults, last = {"pts": 0, "dts": 0}, {"pts": None, "dts": None}
    previous = None
    for frame in frames:
        for key in ("pts", "dts"):
            value = getattr(frame, key)
            if value is not None:
                faults[key] += last[key] is not None and value <= last[key]
                last[key] = value
        use_pts = frame.pts is not None and (faults["pts"] <= faults["dts"] or frame.dts is None)
        stamp = frame.pts if use_pts else frame.dts
        if stamp is not None and frame.time_base is not None:
            t = float(stamp * frame.time_base) - origin
        else:
            t = previous + step if previous is not None else 0.0
        previous = t if previous is None else max(t, previous)
        yield previous, frame


def pick_frames(
    decoded: Iterable[tuple[float, av.VideoFrame]], targets: Iterable[float], end: StreamEnd
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Pair target j (times ascending) with the frame on screen then: the last one whose time <= target.

    Handles any frame-rate change (25 -> 10 fps drops frames, 10 -> 25 repeats them) and variable frame
    rates. Targets before the first frame get the first frame. At the stream's end, records it in `end`
    and stops at the first target at or past it.
    """
    it = iter(targets)
    target, j = next(it, None), 0
    prev = prev_t = last_dt = None
    for t, frame in decoded:
        while target is not None and target + _EPS < t:
            yield j, prev if prev is not None else frame
            target, j = next(it, None), j + 1
        if target is None:
            return
        last_dt = t - prev_t if prev_t is not None and t > prev_t else last_dt
        prev, prev_t = frame, t
    if prev is None:
        return
    duration = float(prev.duration * prev.time_base) if prev.duration and prev.time_base else 0.0
    end.time, end.last = prev_t + (duration or last_dt or 0.04), prev
    while target is not None and target < end.time - _EPS:
        yield j, prev
        target, j = next(it, None), j + 1


def output_size(width: int, height: int, size: tuple[int, int] | None, short_side: int | None) -> tuple[int, int]:
    """(width, height) to decode to: `size` is (height, width); `short_side` keeps the aspect ratio."""
    if size is not None:
        return int(size[1]), int(size[0])
    if short_side is not None:
        scale = short_side / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


class _RGBConverter:
    """Frames to (H, W, 3) uint8 at one size: one swscale context (single-threaded: its thread pool
    costs more than it saves per frame), and a repeated frame is converted once."""

    def __init__(self, size: tuple[int, int] | None, short_side: int | None) -> None:
        self.size, self.short_side, self.wh = size, short_side, None
        self.reformatter = VideoReformatter()
        self.last: tuple[av.VideoFrame | None, np.ndarray | None] = (None, None)

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.last[0] is not frame:
            self.wh = self.wh or output_size(frame.width, frame.height, self.size, self.short_side)
            rgb = self.reformatter.reformat(frame, width=self.wh[0], height=self.wh[1], format="rgb24", threads=1)
            self.last = (frame, rgb.to_ndarray())
        return self.last[1]


def _clip_frames(
    container, stream, targets: np.ndarray, origin: float, convert: _RGBConverter, pad: str, label: str
) -> np.ndarray:
    out: list[np.ndarray | None] = [None] * len(targets)
    end = StreamEnd()
    for j, frame in pick_frames(video_frames_from(container, stream, float(targets[0]), origin), targets, end):
        out[j] = convert(frame)
    missing = [j for j, array in enumerate(out) if array is None]
    if missing and end.last is None:
        raise MediaError(f"{label}: no decodable video frames", "corrupt")
    if missing and pad == "loop":
        wrapped = targets[missing] % end.time
        order = np.argsort(wrapped, kind="stable")
        decoded = video_frames_from(container, stream, float(wrapped[order[0]]), origin)
        for k, frame in pick_frames(decoded, wrapped[order], StreamEnd()):
            out[missing[order[k]]] = convert(frame)
    return np.stack([array if array is not None else convert(end.last) for array in out])


# ----------------------------------------------------------------------------------------------- audio


@dataclass
class TrackEnd:
    """Filled in when an audio decoder ran out: the index just past the track's last sample."""

    sample: int | None = None


def audio_chunks(container, stream, s0: int, rate: int, origin: float) -> Iterator[tuple[int, np.ndarray]]:
    """(index of first sample, mono float32 samples at `rate`) from a seek point before sample s0.

    Chunks sit where the resampler's output pts (the input pts, rescaled) put them, kept contiguous
    unless the stream itself jumps by more than 10 ms.
    """
    t = max(0.0, s0 / rate - _AUDIO_PREROLL)

    def decode() -> Iterator[tuple[float, tuple[int, np.ndarray]]]:
        chunks = _resampled(_decoded(container, stream), rate, round(origin * rate), round(t * rate))
        return ((p / rate, (p, x)) for p, x in chunks)

    return (chunk for _, chunk in _from_seek(container, stream, t, origin, decode))


def _resampled(
    frames: Iterator[av.AudioFrame], rate: int, origin_samples: int, guess: int
) -> Iterator[tuple[int, np.ndarray]]:
    # rematrix_maxval=1 makes swresample normalise its downmix to unit gain: stereo -> (L + R) / 2, the
    # channel mean that the soundfile path takes too (unnormalised, float output would give 0.71 (L + R)).
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate, options={"rematrix_maxval": "1.0"})
    pos = None
    for frame in _with_flush(frames):
        for out in resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1)
            p = pos if pos is not None else guess
            if out.pts is not None:
                stamped = round(out.pts * out.time_base * rate) - origin_samples
                p = pos if pos is not None and abs(stamped - pos) <= rate // 100 else stamped
            yield p, samples
            pos = p + len(samples)


def _with_flush(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame | None]:
    yield from frames
    yield None


def window_pieces(
    chunks: Iterable[tuple[int, np.ndarray]], s0: int, n: int | None, end: TrackEnd
) -> Iterator[np.ndarray]:
    """Contiguous pieces from sample s0 on, zeros in gaps, up to s0 + n (n None: to the end).

    Stops early when no sound is left in the window; if the track ended, records where in `end`.
    The caller pads whatever is missing.
    """
    pos, stop, track_end = s0, (None if n is None else s0 + n), 0
    for p, x in chunks:
        track_end = p + len(x)
        if stop is not None and p >= stop:
            return
        lo, hi = max(p, pos), track_end if stop is None else min(track_end, stop)
        if hi > lo:
            if lo > pos:
                yield np.zeros(lo - pos, np.float32)
            yield x[lo - p : hi - p]
            pos = hi
        if stop is not None and pos >= stop:
            return
    end.sample = track_end


def _collect(pieces: Iterable[np.ndarray], n: int) -> np.ndarray:
    buf, pos = np.zeros(n, np.float32), 0
    for piece in pieces:
        buf[pos : pos + len(piece)] = piece
        pos += len(piece)
    return buf


def _loop_tail(buf: np.ndarray, s0: int, length: int | None, read_head: Callable[[int], np.ndarray]) -> np.ndarray:
    """Past the track's end (at sample `length`), continue from its start again (DMVR tiling)."""
    filled = len(buf) if length is None else max(0, min(len(buf), length - s0))
    if filled < len(buf) and length and length > 0:
        index = (s0 + np.arange(filled, len(buf))) % length
        buf[filled:] = read_head(int(index.max()) + 1)[index]
    return buf


def _container_audio(container, stream, s0: int, n: int, rate: int, origin: float, pad: str) -> np.ndarray:
    def read(first: int, count: int, end: TrackEnd) -> np.ndarray:
        return _collect(window_pieces(audio_chunks(container, stream, first, rate, origin), first, count, end), count)

    end = TrackEnd()
    audio = read(s0, n, end)
    return _loop_tail(audio, s0, end.sample, lambda count: read(0, count, TrackEnd())) if pad == "loop" else audio


def _open_sound(src: Source) -> sf.SoundFile | None:
    """A soundfile reader, or None when libsndfile does not know the format (AAC, Opus: use PyAV)."""
    try:
        return sf.SoundFile(as_file(src))
    except sf.LibsndfileError:
        return None


@contextmanager
def _sound_errors(label: str) -> Iterator[None]:
    try:
        yield
    except sf.LibsndfileError as err:
        raise MediaError(f"{label}: cannot read audio ({err})", "corrupt") from err


def _sound_read(sound: sf.SoundFile, s0: int, n: int, rate: int) -> np.ndarray:
    """Samples [s0, s0 + n) of a soundfile as mono at `rate` (resample_at when the file's rate differs)."""
    sr = sound.samplerate
    positions = None if rate == sr else (s0 + np.arange(n)) * (sr / rate)
    lo, hi = s0, s0 + n
    if positions is not None and n > 0:
        reach = int(np.ceil(_SINC_ZEROS * sr / rate)) + 1
        lo, hi = int(positions[0]) - reach, int(np.ceil(positions[-1])) + reach
    sound.seek(min(max(0, lo), sound.frames))
    data = sound.read(max(0, min(sound.frames, hi) - max(0, lo)), dtype="float32", always_2d=True).mean(axis=1)
    segment = np.zeros(max(0, hi - lo), np.float32)
    segment[max(0, -lo) : max(0, -lo) + len(data)] = data
    return segment if positions is None else resample_at(segment, positions - lo, min(1.0, rate / sr))


def _sidecar_audio(audio_src: Source, s0: int, n: int, rate: int, pad: str, name: str | None) -> np.ndarray:
    label = source_label(audio_src, f"{name} (audio)" if name else None)
    check_source(audio_src, label)
    sound = _open_sound(audio_src)
    if sound is None:
        raise MediaError(f"{label}: not an audio file soundfile can read (FLAC/WAV expected)", "corrupt")
    with _sound_errors(label), sound:
        length = sound.frames * rate // sound.samplerate
        buf = np.zeros(n, np.float32)
        filled = max(0, min(n, length - s0))
        buf[:filled] = _sound_read(sound, s0, filled, rate)
        return _loop_tail(buf, s0, length, lambda count: _sound_read(sound, 0, count, rate)) if pad == "loop" else buf


def read_audio(src: Source, rate: int | None = None, start: float = 0.0, duration: float | None = None,
               name: str | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 samples of [start, start + duration), rate); to the end when duration is None.

    soundfile reads FLAC/WAV/OGG (resampled with resample_at); other containers (MP4/AAC, WebM/Opus) go
    through PyAV. The result stops where the file does: never padded.
    """
    label = source_label(src, name)
    check_source(src, label)
    sound = _open_sound(src)
    if sound is not None:
        with _sound_errors(label), sound:
            rate = rate or sound.samplerate
            s0 = round(start * rate)
            available = max(0, sound.frames * rate // sound.samplerate - s0)
            n = available if duration is None else min(available, round(duration * rate))
            return np.clip(_sound_read(sound, s0, n, rate), -1.0, 1.0), rate
    with open_input(src, name) as container:
        if not container.streams.audio:
            raise MediaError(f"{label}: no audio stream", "no_audio")
        stream = container.streams.audio[0]
        rate = rate or stream.codec_context.sample_rate
        s0 = round(start * rate)
        chunks = audio_chunks(container, stream, s0, rate, origin_of(container))
        pieces = list(window_pieces(chunks, s0, None if duration is None else round(duration * rate), TrackEnd()))
    return np.clip(np.concatenate(pieces) if pieces else np.zeros(0, np.float32), -1.0, 1.0), rate


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


# ------------------------------------------------------------------------------------------ resampling

_SINC_ZEROS = 16  # zero crossings of the windowed sinc on each side of its centre
_SINC_BETA = 8.6  # Kaiser window shape: side lobes near -90 dB
_TABLE_STEPS = 512  # kernel samples per zero crossing, linearly interpolated
_CHUNK = 8192  # output samples per vectorised step (bounds memory)


@functools.lru_cache(maxsize=1)
def _kernel_table() -> np.ndarray:
    u = np.arange(_SINC_ZEROS * _TABLE_STEPS + 2) / _TABLE_STEPS
    window = np.i0(_SINC_BETA * np.sqrt(np.clip(1.0 - (u / _SINC_ZEROS) ** 2, 0.0, None))) / np.i0(_SINC_BETA)
    table = np.sinc(u) * window
    table[_SINC_ZEROS * _TABLE_STEPS :] = 0.0
    return table


def resample_at(x: np.ndarray, positions: np.ndarray, cutoff: float) -> np.ndarray:
    """Band-limited interpolation of `x` at fractional sample `positions` (x is 0 outside its range).

    Windowed-sinc interpolation (J. O. Smith, "Digital Audio Resampling"): y(p) = sum_k x[k] c
    sinc(c (p - k)) kaiser(c (p - k) / Z), Z = 16 zero crossings, c = min(1, out_rate / in_rate): when
    downsampling the kernel widens and low-passes at the new Nyquist, so nothing aliases. Zero phase,
    so no delay. The kernel comes from a table.
    """
    table = _kernel_table()
    reach = int(np.ceil(_SINC_ZEROS / cutoff))
    taps = np.arange(-reach + 1, reach + 1)
    padded = np.concatenate([np.zeros(reach), np.asarray(x, np.float64), np.zeros(reach + 1)])
    out = np.empty(len(positions), np.float32)
    for a in range(0, len(positions), _CHUNK):
        pos = np.asarray(positions[a : a + _CHUNK], np.float64)
        index = np.floor(pos).astype(np.int64)[:, None] + taps[None, :]
        u = np.abs(pos[:, None] - index) * (cutoff * _TABLE_STEPS)
        i = np.minimum(u.astype(np.int64), len(table) - 2)
        kernel = table[i] + (table[i + 1] - table[i]) * np.minimum(u - i, 1.0)
        samples = padded[np.clip(index + reach, 0, len(padded) - 1)]
        out[a : a + len(pos)] = cutoff * np.einsum("ij,ij->i", kernel, samples)
    return out


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """A whole mono signal at a new rate; output sample k is input time k / rate_out (see resample_at)."""
    if rate_in == rate_out:
        return np.asarray(x, np.float32).copy()
    n_out = len(x) * rate_out // rate_in
    return resample_at(x, np.arange(n_out) * (rate_in / rate_out), min(1.0, rate_out / rate_in))
