"""Reading media, the audio side: windows of a container's audio track (resampled by FFmpeg to mono at any rate),
FLAC/WAV/OGG through soundfile with band-limited resampling, both placed by decoded timestamps and padded or looped
as ``decode_clip`` asks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf

from vattcli.data.media_io import Source, _decoded, _from_seek, as_file, check_source, open_input, origin_of, source_label
from vattcli.errors import MediaError

_AUDIO_PREROLL = 0.1  # s decoded before an audio window, so the codec's first frame after a seek settles


@dataclass
class TrackEnd:
    """Filled in by ``window_pieces``: the index just past the track's last sample when the decoder ran out, and the
    zeros it put in gaps of the track (a soundtrack that starts late or has holes)."""

    sample: int | None = None
    gap_samples: int = 0


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

    Stops early when no sound is left in the window; if the track ended, records where in `end`, and the zeros
    of gaps in `end.gap_samples`. The caller pads whatever is missing.
    """
    pos, stop, track_end = s0, (None if n is None else s0 + n), 0
    for p, x in chunks:
        track_end = p + len(x)
        if stop is not None and p >= stop:
            return
        lo, hi = max(p, pos), track_end if stop is None else min(track_end, stop)
        if hi > lo:
            if lo > pos:
                end.gap_samples += lo - pos
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
