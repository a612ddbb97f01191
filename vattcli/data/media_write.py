"""Writing media: transcoding raw videos into the training format, and writing arrays as MP4/PNG/JPEG.

The training format [datasets.md "What preprocessing writes"]: H.264 MP4 (video only) at the training
frame rate with the short side scaled, a keyframe at least every second so a clip decodes after a
short seek, plus the audio as mono FLAC at 48 kHz, read back with soundfile.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Union

import av
import numpy as np
import soundfile as sf
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from vattcli.data.media_audio import TrackEnd, audio_chunks, window_pieces
from vattcli.data.media_io import (DecodeHealth, Source, StreamEnd, declared_end, open_input, origin_of, pick_frames,
                                   source_label, video_frames_from)
from vattcli.errors import MediaError

Target = Union[str, os.PathLike, BinaryIO]

# crf 23 / veryfast: a good size/quality trade at a few ms per frame. cabac=0 (CAVLC entropy coding): training reads
# every clip many times, and CAVLC decodes about 2x faster than CABAC at ~15 % more bytes and the same PSNR (measured
# on 456x256 clips at 10 fps: 17.9 vs 35.7 ms per 32 frames, 314 vs 275 kB, luma PSNR 38.15 vs 38.14 dB).
_X264_OPTIONS = {"crf": "23", "preset": "veryfast", "x264-params": "cabac=0"}
_MPEG4_BITS_PER_PIXEL = 0.2  # bit rate for the mpeg4 fallback, per pixel per frame
TRUNCATED_BELOW, TRUNCATED_MIN_SECONDS = 0.9, 0.25  # truncated: under 90 % of the declared span and 0.25 s short
MISSING_PACKETS_TOLERATED, MISSING_PACKETS_FRACTION = 2, 0.02  # demuxed packets short of the declared frame count


def video_codec() -> str:
    """libx264 when this PyAV build has it, else FFmpeg's native mpeg4 encoder."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _add_video_stream(out: av.container.OutputContainer, codec: str, fps: float, width: int, height: int, gop: int):
    stream = out.add_stream(codec, rate=_rate(fps), options=dict(_X264_OPTIONS) if codec == "libx264" else {})
    stream.width, stream.height = width, height
    # x264 needs even sizes for 4:2:0; odd sizes (tests, odd crops) keep full chroma instead.
    stream.pix_fmt = "yuv420p" if codec != "libx264" or (width % 2 == 0 and height % 2 == 0) else "yuv444p"
    stream.codec_context.gop_size = gop
    stream.codec_context.time_base = 1 / _rate(fps)
    if codec != "libx264":
        stream.codec_context.bit_rate = int(width * height * fps * _MPEG4_BITS_PER_PIXEL)
    return stream


def _flush(out: av.container.OutputContainer, stream, frame=None) -> None:
    for packet in stream.encode(frame):
        out.mux(packet)


def even_scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` (None: unchanged), both rounded to even."""
    scale = 1.0 if short_side is None else short_side / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _output_frames(container, stream, start: float, end: float, fps: float, origin: float, health: DecodeHealth,
                   stream_end: StreamEnd):
    """(j, source frame) for output frame j at start + j/fps, until `end` or the source's end (recorded in
    `stream_end`); decode errors are counted in `health`."""
    targets = itertools.takewhile(lambda t: t < end - 1e-9, (start + j / fps for j in itertools.count()))
    return pick_frames(video_frames_from(container, stream, start, origin, health), targets, stream_end)


def _encode_video(container, stream, video_out: Target, start: float, end: float, fps: float,
                  short_side: int | None, keyframe_interval_s: float, origin: float, health: DecodeHealth,
                  stream_end: StreamEnd, label: str) -> tuple[int, tuple[int, int], str]:
    """Write output frames [start, end) as MP4; returns (frames written, (width, height), codec)."""
    codec = video_codec()
    gop = max(1, round(fps * keyframe_interval_s))
    frames, size = 0, (0, 0)
    with av.open(_target(video_out), "w", format="mp4") as out:
        ostream = None
        converted = (None, None)
        reformatter = VideoReformatter()
        for j, frame in _output_frames(container, stream, start, end, fps, origin, health, stream_end):
            if ostream is None:
                size = even_scaled_size(frame.width, frame.height, short_side)
                ostream = _add_video_stream(out, codec, fps, size[0], size[1], gop)
            if converted[0] is not frame:
                scaled = reformatter.reformat(frame, width=size[0], height=size[1], format=ostream.pix_fmt,
                                              interpolation="AREA", threads=1)
                scaled.pict_type = PictureType.NONE  # let the encoder place keyframes, not the source
                converted = (frame, scaled)
            converted[1].pts, converted[1].time_base = j, 1 / _rate(fps)
            _flush(out, ostream, converted[1])
            frames = j + 1
        if ostream is None:
            raise MediaError(f"{label}: no video frames between {start:g}s and the end", "too_short")
        _flush(out, ostream)
    return frames, size, codec


def _integrity(container, stream, origin: float, start: float, end: float, health: DecodeHealth,
               stream_end: StreamEnd) -> dict:
    """How much of [start, end) the source declares and how much decoded (see ``media_problem``)."""
    declared = declared_end(container, stream, origin)
    whole = start <= 0 and stream_end.time is not None  # the decoder ran from the first packet to the last
    return {
        "decode_errors": health.errors,
        "first_error": health.first_error,
        "declared_seconds": None if declared is None else max(0.0, min(end, declared) - start),
        "decodable_seconds": None if stream_end.time is None else max(0.0, stream_end.time - start),
        "declared_frames": int(stream.frames or 0) if whole else 0,
        "demuxed_packets": health.packets,
    }


def media_problem(stats: dict, label: str) -> tuple[str, str] | None:
    """(reason, one-line message) when a transcoded window is not a faithful copy of its source, else None.

    ``truncated``: the decoder ran out before 90 % of the span the container declares for the window, and at least
    0.25 s before its end (so rounding of the last frame's duration never counts; a file cut short gives "Invalid
    data" after a fraction of its bytes). ``corrupt``: the decoder rejected packets or flagged frames
    (corrupt bytes in the middle), or, when the whole file was decoded, the demuxer delivered fewer packets than the
    frame count the container declares by more than max(2, 2 %) (packets lost silently).
    """
    want, got = stats.get("declared_seconds"), stats.get("decodable_seconds")
    if want and got is not None and got < TRUNCATED_BELOW * want and want - got >= TRUNCATED_MIN_SECONDS:
        return "truncated", f"{label}: truncated: {got:.2f} s decodable of the {want:.2f} s the container declares"
    declared, demuxed = stats.get("declared_frames", 0), stats.get("demuxed_packets", 0)
    if declared and declared - demuxed > max(MISSING_PACKETS_TOLERATED, MISSING_PACKETS_FRACTION * declared):
        return "corrupt", f"{label}: corrupt: {declared - demuxed} of the {declared} declared video packets missing"
    if stats.get("decode_errors"):
        return "corrupt", (f"{label}: corrupt: {stats['decode_errors']} decode errors "
                           f"(first: {stats['first_error']})")
    return None


def _transcode(src: Source, video_out: Target, audio_out: Target, start: float, end: float | None, fps: float,
               short_side: int | None, audio_rate: int, keyframe_interval_s: float, name: str | None) -> dict:
    label = source_label(src, name)
    end_t = math.inf if end is None else float(end)
    with open_input(src, name) as container:
        if not container.streams.video:
            raise MediaError(f"{label}: no video stream", "no_video")
        stream = container.streams.video[0]
        origin = origin_of(container)
        health, stream_end = DecodeHealth(), StreamEnd()
        try:
            frames, size, codec = _encode_video(container, stream, video_out, start, end_t, fps, short_side,
                                                keyframe_interval_s, origin, health, stream_end, label)
        except MediaError as e:
            if e.reason != "too_short":
                raise
            integrity = _integrity(container, stream, origin, start, end_t, health, stream_end)
            problem = media_problem({**integrity, "decodable_seconds": integrity["decodable_seconds"] or 0.0}, label)
            if problem is not None and problem[0] == "truncated":
                raise MediaError(problem[1], "truncated") from None
            raise
        integrity = _integrity(container, stream, origin, start, end_t, health, stream_end)
        has_audio = bool(container.streams.audio)
        n_audio = round(frames / fps * audio_rate)
        padded = 0
        if has_audio:
            padded = _write_flac(container, container.streams.audio[0], audio_out, start, n_audio, audio_rate, origin)
    return {"frames": frames, "fps": fps, "duration": frames / fps, "width": size[0], "height": size[1],
            "has_audio": has_audio, "audio_rate": audio_rate, "audio_samples": n_audio if has_audio else 0,
            "audio_padded_seconds": padded / audio_rate, "start": start, "video_codec": codec, **integrity}


def _write_flac(container, stream, audio_out: Target, start: float, n: int, rate: int, origin: float) -> int:
    """Samples [start, start + n/rate) of the stream as mono 16-bit FLAC; zeros where the source has none.

    Returns how many samples are such zeros (gaps in the track and its early end), to flag a soundtrack that
    covers much less than the video."""
    s0 = round(start * rate)
    written = 0
    track = TrackEnd()
    with sf.SoundFile(_target(audio_out), "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as flac:
        for piece in window_pieces(audio_chunks(container, stream, s0, rate, origin), s0, n, track):
            flac.write(np.clip(piece, -1.0, 1.0))
            written += len(piece)
        if written < n:
            flac.write(np.zeros(n - written, np.float32))
    return track.gap_samples + max(0, n - written)


def transcode_to_bytes(src: Source, start: float = 0.0, end: float | None = None, fps: float = 10.0,
                       short_side: int | None = 256, audio_rate: int = 48000, keyframe_interval_s: float = 1.0,
                       name: str | None = None) -> tuple[bytes, bytes | None, dict]:
    """Transcode [start, end) of a video into (MP4 bytes, FLAC bytes or None without audio, stats).

    Output frame j shows the source frame on screen at start + j/fps; FLAC sample k is source time
    start + k/audio_rate and the FLAC lasts exactly as long as the video. Stats: frames, fps, duration
    (seconds of media written), width, height, has_audio, audio_rate, audio_samples, audio_padded_seconds (zeros where
    the source's soundtrack has none), start, video_codec, and what ``media_problem`` judges: decode_errors,
    first_error, declared_seconds, decodable_seconds (None: the whole window decoded), declared_frames,
    demuxed_packets.
    """
    video_buf, audio_buf = io.BytesIO(), io.BytesIO()
    stats = _transcode(src, video_buf, audio_buf, start, end, fps, short_side, audio_rate, keyframe_interval_s, name)
    return video_buf.getvalue(), audio_buf.getvalue() if stats["has_audio"] else None, stats


def transcode(src: Source, dst_video: str | os.PathLike, dst_audio: str | os.PathLike, start: float = 0.0,
              end: float | None = None, fps: float = 10.0, short_side: int | None = 256, audio_rate: int = 48000,
              keyframe_interval_s: float = 1.0, name: str | None = None) -> dict:
    """transcode_to_bytes, written to files: temp names then an atomic rename; no FLAC without audio."""
    dst_video, dst_audio = Path(dst_video), Path(dst_audio)
    tmp_video, tmp_audio = _temp_name(dst_video), _temp_name(dst_audio)
    for folder in {dst_video.parent, dst_audio.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        stats = _transcode(src, tmp_video, tmp_audio, start, end, fps, short_side, audio_rate, keyframe_interval_s,
                           name)
        os.replace(tmp_video, dst_video)
        if stats["has_audio"]:
            os.replace(tmp_audio, dst_audio)
    finally:
        tmp_video.unlink(missing_ok=True)
        tmp_audio.unlink(missing_ok=True)
    return stats


def _target(target: Target) -> str | BinaryIO:
    return os.fspath(target) if isinstance(target, (str, os.PathLike)) else target


def _temp_name(path: Path) -> Path:
    """A hidden name in the same folder (so the final os.replace is atomic), made unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_av(path: str | os.PathLike, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
             audio_rate: int = 48000, codec: str | None = None) -> None:
    """Write uint8 (T, H, W, 3) RGB frames and optional mono float32 audio as an MP4 (H.264 + AAC).

    Frame i is at i/fps, audio sample k at k/audio_rate. Written to a temp name, then renamed.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    tmp = _temp_name(path)
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            height, width = frames.shape[1:3]
            vstream = _add_video_stream(out, codec or video_codec(), fps, width, height, max(1, round(fps)))
            astream = None
            if audio is not None:
                astream = out.add_stream("aac", rate=audio_rate, layout="mono")
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=vstream.pix_fmt)
                frame.pts = i
                _flush(out, vstream, frame)
            _flush(out, vstream)
            if astream is not None:
                samples = np.clip(np.asarray(audio, np.float32).reshape(1, -1), -1.0, 1.0)
                aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                aframe.sample_rate, aframe.pts = audio_rate, 0
                _flush(out, astream, aframe)
                _flush(out, astream)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 2) -> None:
    """Write uint8 (H, W, 3) RGB as PNG (lossless) or JPEG (by suffix; `quality` is the JPEG qscale, 2 = best)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: image suffix must be .png, .jpg or .jpeg")
    codec, pix_fmt = ("png", "rgb24") if suffix == ".png" else ("mjpeg", "yuvj444p")
    tmp = _temp_name(path)
    try:
        with av.open(str(tmp), "w", format="image2pipe") as out:
            stream = out.add_stream(codec, rate=1)
            stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
            if codec == "mjpeg":
                stream.codec_context.qmin = stream.codec_context.qmax = quality
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, np.uint8), format="rgb24")
            _flush(out, stream, frame.reformat(format=pix_fmt))
            _flush(out, stream)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def encode_flac(audio: np.ndarray, rate: int) -> bytes:
    """Mono float audio in [-1, 1] as 16-bit FLAC bytes (the shard format's audio member)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, np.float32), -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
