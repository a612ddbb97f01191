"""Reading media, the container and video side: opening inputs, probing, time zero, seeking, and picking the frame on
screen at each target time. With media_audio.py, media.py and media_write.py, the only code that touches PyAV and
soundfile.

Time zero is the first video frame (see ``origin_of``). Frames are chosen by decoded timestamps only: container
metadata (duration, frame count) is reported by ``probe`` but never trusted for decoding, since web videos often lie
about it.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vattcli.errors import MediaError

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]
T = TypeVar("T")

_EPS = 1e-4  # s; a frame shown at t counts for target t despite float rounding (far below a frame)
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


@dataclass
class DecodeHealth:
    """What went wrong while decoding one stream: filled in by ``_decoded`` when the caller asks (preprocessing).

    ``errors`` counts packets the decoder rejected (``InvalidDataError``), packets the demuxer flagged corrupt and
    frames the decoder flagged corrupt (concealed errors); ``packets`` counts the stream's demuxed packets, to compare
    with the frame count the container declares.
    """

    errors: int = 0
    packets: int = 0
    first_error: str = ""

    def note(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


def _decoded(container: av.container.InputContainer, stream: av.stream.Stream,
             health: DecodeHealth | None = None, settled: bool = True) -> Iterator[av.frame.Frame]:
    """Frames of one stream from the current position; a packet the codec rejects is skipped, as ffmpeg does,
    and counted in ``health`` when given.

    ``settled=False`` (decoding after a seek into the middle of the stream): errors before the first clean frame are
    not counted, since an open GOP's leading frames reference pictures from before the seek point.
    """
    for packet in container.demux(stream):
        if health is not None and packet.dts is not None:
            health.packets += 1
            if packet.is_corrupt and settled:
                health.note(f"packet at {_seconds(packet)} flagged corrupt by the demuxer")
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as err:
            if health is not None and settled:
                health.note(f"decoder rejected the packet at {_seconds(packet)} ({getattr(err, 'strerror', err)})")
            continue
        for frame in frames:
            if health is not None and frame.is_corrupt:
                if settled:
                    health.note(f"frame at {_seconds(frame)} decoded with errors")
            else:
                settled = True
            yield frame


def _seconds(item: av.Packet | av.frame.Frame) -> str:
    """'1.23 s' for a packet's or frame's pts, '?' without one (for messages)."""
    if item.pts is None or item.time_base is None:
        return "?"
    return f"{float(item.pts * item.time_base):.2f} s"


_TAG_DURATION = re.compile(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


def declared_end(container: av.container.InputContainer, stream: av.stream.Stream, origin: float) -> float | None:
    """Where the container says ``stream`` ends, in seconds on the ``origin_of`` timeline; None if it does not say.

    Order: the stream's own duration (MP4, AVI), Matroska's per-track DURATION tag, then the container's duration.
    """
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        return start + float(stream.duration * tb) - origin
    tag = _TAG_DURATION.fullmatch(str(stream.metadata.get("DURATION", "")).strip())
    if tag:
        return start + int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3]) - origin
    if container.duration:
        container_start = container.start_time / av.time_base if container.start_time else 0.0
        return container_start + container.duration / av.time_base - origin
    return None


def _from_seek(
    container, stream, t: float, origin: float, decode: Callable[[], Iterator[tuple[float, T]]]
) -> Iterator[tuple[float, T]]:
    """Items (time, x) of a fresh `decode()` after seeking to the keyframe at or before time t.

    When the first item is already past t (MPEG-TS seeks often land after the target; MP4 seeks by
    decode time), seeks further back and decodes again, at last from the start of the file.
    """
    seek_t, from_start = t, False
    while True:
        if from_start:  # MPEG-TS: a seek to the first frame's time can land on the second keyframe
            container.seek(0)
        else:
            container.seek(max(0, int((seek_t + origin) / stream.time_base)), stream=stream)
        items = decode()
        first = next(items, None)
        if from_start or (first is not None and first[0] <= t + _EPS):
            break
        from_start = seek_t <= 0
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


def video_frames_from(container, stream, t: float, origin: float,
                      health: DecodeHealth | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time, frame) in display order from the keyframe at or before time t; decode errors counted in ``health``."""
    args = (container, stream) if health is None else (container, stream, health, t <= 0)
    return _from_seek(container, stream, t, origin, lambda: _timed(_decoded(*args), origin, stream))


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
