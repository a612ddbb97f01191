"""Synthetic media whose content encodes time, for tests of the media code and of later stages.

Written with PyAV and soundfile directly (not with vattcli's writers), so a bug in the code under test
cannot hide in the test data.

- Video: frame i carries the number i as COUNTER_BITS black/white blocks across the top third
  (most significant bit left). ``read_counter`` reads it back from any decoded size.
- Audio: a phase-continuous tone whose frequency encodes time: 300 + 100·k Hz during
  [k·0.1, (k+1)·0.1) s, k counted modulo 75 (so time is encoded modulo 7.5 s). ``audio_time`` finds
  where a decoded window sits in that track by cross-correlation (FFT) with the analytic signal, to a
  fraction of a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

COUNTER_BITS = 10
TONE_STEP = 0.1  # s per tone segment
TONE_SEGMENTS = 75  # the pitch pattern repeats every 7.5 s, staying below 7.8 kHz (fits 16 kHz audio)
TONE_AMPLITUDE = 0.5
_VFR_PATTERN = (0.5, 1.5, 1.0, 0.7, 1.3)  # frame intervals, in units of 1/fps, for variable frame rate


def tone(t: np.ndarray) -> np.ndarray:
    """The soundtrack at times t (s): 300 + 100·(k mod 75) Hz in segment k, phase continuous."""
    t = np.asarray(t, np.float64)
    k = np.floor(t / TONE_STEP)
    q, r = np.divmod(k, TONE_SEGMENTS)

    def cycles_before(m):  # sum over j < m of (300 + 100 j) * 0.1
        return 30.0 * m + 5.0 * m * (m - 1)

    cycles = q * cycles_before(TONE_SEGMENTS) + cycles_before(r) + (300.0 + 100.0 * r) * (t - k * TONE_STEP)
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * cycles)).astype(np.float32)


def audio_time(window: np.ndarray, rate: int, lo: float = 0.0, hi: float = 7.4) -> tuple[float, float]:
    """(source time of window[0], normalised correlation peak in [0, 1]), searching starts in [lo, hi].

    Keep hi - lo under 7.5 s: the tone repeats with that period.
    """
    window = np.asarray(window, np.float64)
    n = len(window)
    ref = tone(lo + np.arange(int((hi - lo) * rate) + n) / rate).astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(ref) + n)))
    corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(window, size)), size)[: len(ref) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(ref**2)])
    ref_norm = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    score = corr / (ref_norm * max(np.linalg.norm(window), 1e-12))
    best = int(np.argmax(score))
    return lo + best / rate, float(score[best])


def draw_counter(index: int, height: int, width: int) -> np.ndarray:
    """A gray (H, W, 3) frame with `index` drawn as binary blocks in the top third."""
    frame = np.full((height, width, 3), 128, np.uint8)
    band = max(1, height // 3)
    for b in range(COUNTER_BITS):
        x0, x1 = b * width // COUNTER_BITS, (b + 1) * width // COUNTER_BITS
        bit = (index >> (COUNTER_BITS - 1 - b)) & 1
        frame[:band, x0:x1] = 255 if bit else 0
    return frame


def read_counter(frame: np.ndarray) -> int:
    """The number drawn by draw_counter, read from the centre of each block (robust to scaling/codecs)."""
    height, width = frame.shape[:2]
    band = height / 3
    rows = slice(int(band * 0.2), max(int(band * 0.2) + 1, int(band * 0.8)))
    value = 0
    for b in range(COUNTER_BITS):
        x0, x1 = b * width / COUNTER_BITS, (b + 1) * width / COUNTER_BITS
        cols = slice(int(x0 + 0.3 * (x1 - x0)), max(int(x0 + 0.3 * (x1 - x0)) + 1, int(x0 + 0.7 * (x1 - x0))))
        value = value * 2 + int(frame[rows, cols].mean() > 128)
    return value


@dataclass
class GenVideo:
    path: Path
    fps: float
    frame_times: np.ndarray  # s, presentation time of frame i
    height: int
    width: int
    duration: float
    audio_rate: int | None

    def frame_at(self, t: float) -> int:
        """Index of the frame on screen at time t (the last one that starts at or before t)."""
        return max(0, int(np.searchsorted(self.frame_times, t + 1e-6, side="right")) - 1)


def make_video(path: Path, fps: float = 25.0, duration: float = 3.0, size: tuple[int, int] = (64, 96),
               audio_rate: int | None = 48000, vfr: bool = False, gop: int | None = None, audio_channels: int = 2,
               codec: str = "libx264", audio_spans: list[tuple[float, float]] | None = None) -> GenVideo:
    """Write a counter video (H.264) with a time-tone soundtrack (AAC); container from the suffix.

    `size` is (height, width); odd sizes use yuv444p. `vfr` makes frame intervals irregular
    (0.5, 1.5, 1.0, 0.7, 1.3 times 1/fps, repeating); `gop` defaults to 2 s so decoding must seek.
    `audio_spans` lists the (start, end) times that have sound (default: all), e.g. to leave a gap.
    """
    path = Path(path)
    height, width = size
    if vfr:
        steps = np.resize(np.array(_VFR_PATTERN), int(duration * fps) + len(_VFR_PATTERN)) / fps
        pts_ms = np.round(np.concatenate([[0.0], np.cumsum(steps)]) * 1000).astype(np.int64)
        pts_ms = pts_ms[pts_ms < duration * 1000]
        times = pts_ms / 1000.0
    else:
        times = np.arange(int(round(duration * fps))) / fps
    with av.open(str(path), "w") as out:
        options = {"crf": "18", "preset": "veryfast"} if codec == "libx264" else {}
        vstream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        if codec == "mpeg4":
            vstream.codec_context.bit_rate = 2_000_000
        vstream.codec_context.gop_size = gop or max(1, int(round(2 * fps)))
        vstream.codec_context.time_base = Fraction(1, 1000) if vfr else 1 / Fraction(fps).limit_denominator(1001)
        astream = _add_tone_stream(out, audio_rate, audio_channels) if audio_rate else None
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(draw_counter(i, height, width), format="rgb24")
            frame = frame.reformat(format=vstream.pix_fmt)
            frame.pts = int(pts_ms[i]) if vfr else i
            for packet in vstream.encode(frame):
                out.mux(packet)
        for packet in vstream.encode():
            out.mux(packet)
        if astream is not None:
            _write_tone(out, astream, audio_spans or [(0.0, duration)])
    return GenVideo(path, fps, times, height, width, duration, audio_rate)


def _add_tone_stream(out, rate: int, channels: int):
    return out.add_stream("aac", rate=rate, layout="stereo" if channels == 2 else "mono")


def _write_tone(out, astream, spans: list[tuple[float, float]]) -> None:
    rate, channels = astream.codec_context.sample_rate, astream.codec_context.channels
    for t0, t1 in spans:
        samples = tone(np.arange(round(t0 * rate), round(t1 * rate)) / rate)
        frame = av.AudioFrame.from_ndarray(np.repeat(samples[None], channels, axis=0), format="fltp",
                                           layout=astream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = rate, round(t0 * rate), Fraction(1, rate)
        for packet in astream.encode(frame):
            out.mux(packet)
    for packet in astream.encode():
        out.mux(packet)


def make_audio_only(path: Path, duration: float = 2.0, rate: int = 44100) -> Path:
    """An AAC-in-MP4 (.m4a) file with the time tone and no video stream."""
    with av.open(str(path), "w", format="mp4") as out:
        _write_tone(out, _add_tone_stream(out, rate, 1), [(0.0, duration)])
    return Path(path)


def write_tone_file(path: Path, rate: int, duration: float, channels: int = 1) -> Path:
    """The time tone as FLAC/WAV (format from the suffix) through soundfile, 16-bit."""
    samples = tone(np.arange(int(duration * rate)) / rate)
    sf.write(str(path), np.repeat(samples[:, None], channels, axis=1), rate, subtype="PCM_16")
    return Path(path)


def make_bad_files(folder: Path) -> dict[str, Path]:
    """Inputs that must be rejected: 'empty' (0 bytes), 'truncated' (MP4 cut before its index),
    'text' (not media), 'missing' (no such file)."""
    folder = Path(folder)
    good = make_video(folder / "good_for_truncation.mp4", duration=1.0, audio_rate=None)
    data = good.path.read_bytes()
    files = {"empty": folder / "empty.mp4", "truncated": folder / "truncated.mp4", "text": folder / "notes.mp4",
             "missing": folder / "does_not_exist.mp4"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) * 6 // 10])
    files["text"].write_text("this is a text file, not a video\n" * 20)
    return files
