"""Media decoding/transcoding, checked against content drawn into the media (frame counters, time tones)."""

from __future__ import annotations

import io
import os
import struct
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile as sf
from mediagen import (
    audio_time,
    draw_counter,
    make_audio_only,
    make_bad_files,
    make_video,
    read_counter,
    tone,
    write_tone_file,
)

from vattcli.data import media_io as media_module
from vattcli.data.media import decode_clip, decode_image, probe, read_audio, resample
from vattcli.data.media_write import encode_flac, transcode, transcode_to_bytes, write_av, write_image
from vattcli.errors import MediaError

SYNC_TOLERANCE = 0.02  # s


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "cfr25": make_video(d / "cfr25.mp4", fps=25, duration=4.0, gop=50),
        "cfr10": make_video(d / "cfr10.mp4", fps=10, duration=4.0, gop=20),
        "vfr": make_video(d / "vfr.mp4", fps=20, duration=3.0, vfr=True),
        "mkv25": make_video(d / "cfr25.mkv", fps=25, duration=3.0),
        "odd": make_video(d / "odd.mp4", fps=25, duration=1.0, size=(239, 321)),
        "short": make_video(d / "short.mp4", fps=10, duration=1.0),
        "silent": make_video(d / "silent.mp4", fps=10, duration=1.0, audio_rate=None),
    }


def counters(frames: np.ndarray) -> list[int]:
    return [read_counter(f) for f in frames]


def test_helpers_read_back_what_they_draw():
    for index in (0, 1, 341, 682, 1023):
        frame = draw_counter(index, 64, 96)
        assert read_counter(frame) == index
        assert read_counter(frame[::2, ::3]) == index  # nearest-neighbour downscale
    rate = 16000
    start = 1.2345
    window = tone(start + np.arange(4000) / rate)
    found, score = audio_time(window, rate)
    assert abs(found - start) < 1 / rate and score > 0.999


@pytest.mark.parametrize(
    "key, start, fps, num_frames",
    [
        ("cfr25", 0.0, 10.0, 8),  # 25 -> 10 fps
        ("cfr25", 0.37, 10.0, 8),
        ("cfr25", 1.93, 10.0, 8),  # between keyframes: seek then decode forward
        ("cfr25", 2.5, 25.0, 8),
        ("cfr10", 1.25, 10.0, 8),  # 10 -> 10 fps, start between frames
        ("cfr10", 2.0, 25.0, 10),  # 10 -> 25 fps repeats frames
        ("vfr", 0.8, 10.0, 12),
        ("vfr", 1.55, 25.0, 12),
        ("mkv25", 1.1, 10.0, 8),
    ],
)
def test_frames_and_audio_match_the_window(media, key, start, fps, num_frames):
    gen = media[key]
    clip = decode_clip(gen.path, start, num_frames, fps)
    expected = [gen.frame_at(start + i / fps) for i in range(num_frames)]
    assert counters(clip.frames) == expected  # exact, stricter than the one-frame tolerance needed
    assert clip.frames.shape == (num_frames, gen.height, gen.width, 3) and clip.frames.dtype == np.uint8
    assert clip.has_audio and clip.audio.dtype == np.float32
    assert len(clip.audio) == round(num_frames / fps * 48000)
    found, score = audio_time(clip.audio, 48000, lo=max(0.0, start - 1), hi=start + 1)
    assert score > 0.9 and abs(found - start) < SYNC_TOLERANCE
    if gen.path.suffix == ".mp4":  # sample-exact timestamps (MKV rounds them to 1 ms): compare the waveform
        times = start + np.arange(len(clip.audio)) / 48000
        settled = times >= 0.05  # the AAC encoder's first frame is not the tone
        assert np.abs(clip.audio - tone(times))[settled].max() < 0.02


def test_audio_is_placed_by_timestamps_across_a_gap(tmp_path):
    gen = make_video(tmp_path / "gap.mp4", fps=10, duration=2.0, audio_spans=[(0.0, 1.0), (1.5, 2.0)])
    clip = decode_clip(gen.path, 0.8, 10, 10.0)
    times = 0.8 + np.arange(len(clip.audio)) / 48000
    error = np.abs(clip.audio - tone(times))
    assert error[(times > 0.85) & (times < 0.98)].max() < 0.05
    assert not clip.audio[(times > 1.03) & (times < 1.47)].any()  # the gap stays silent
    assert error[(times > 1.55) & (times < 1.8)].max() < 0.05  # and the sound resumes on time


def test_damaged_packets_are_skipped(media, tmp_path):
    data = bytearray(media["cfr25"].path.read_bytes())
    middle = data.find(b"mdat") + (len(data) - data.find(b"mdat")) // 2
    data[middle : middle + 3000] = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    clip = decode_clip(bytes(data), 0.0, 40, 10.0)
    expected = [media["cfr25"].frame_at(i / 10) for i in range(40)]
    assert sum(g == e for g, e in zip(counters(clip.frames), expected)) >= 30


def test_frame_times_fall_back_to_dts_and_never_go_back():
    def frames(pairs):
        return [SimpleNamespace(pts=p, dts=d, time_base=Fraction(1, 10)) for p, d in pairs]

    stream = SimpleNamespace(average_rate=Fraction(10), guessed_rate=None)
    disordered = frames([(0, 0), (1, 1), (3, 2), (2, 3), (5, 4), (4, 5)])
    assert [t for t, _ in media_module._timed(iter(disordered), 0.0, stream)] == pytest.approx(
        [0.0, 0.1, 0.3, 0.3, 0.4, 0.5])  # pts until they go backwards, then dts; never earlier
    no_dts = frames([(0, None), (2, None), (1, None), (3, None)])
    assert [t for t, _ in media_module._timed(iter(no_dts), 0.0, stream)] == pytest.approx([0.0, 0.2, 0.2, 0.3])


def test_pretraining_window_has_exact_audio_length(media):
    clip = decode_clip(media["cfr25"].path, 0.5, 32, 10.0)
    assert clip.frames.shape[0] == 32 and clip.audio.shape == (153600,)
    assert np.abs(clip.audio).max() <= 1.0


@pytest.mark.parametrize("suffix, codec, audio_rate", [("ts", "libx264", 48000), ("avi", "mpeg4", None)])
def test_other_containers(tmp_path, suffix, codec, audio_rate):
    # MPEG-TS seeks land after the target (decoding must step back); AVI as in UCF101/HMDB51
    gen = make_video(tmp_path / f"v.{suffix}", fps=25, duration=3.0, gop=25, codec=codec, audio_rate=audio_rate)
    for start in (0.0, 0.3, 1.93, 2.1):  # 0.0: a TS seek to the first frame's time lands on the next keyframe
        clip = decode_clip(gen.path, start, 6, 10.0)
        assert counters(clip.frames) == [gen.frame_at(start + i / 10) for i in range(6)]
        if audio_rate and start > 0:
            found, score = audio_time(clip.audio, 48000, lo=start - 0.3, hi=start + 1)
            assert score > 0.9 and abs(found - start) < SYNC_TOLERANCE


def test_avi_with_b_frames_keeps_display_order(tmp_path):
    # AVI has no pts: with B-frames FFmpeg hands out disordered ones, so decoding must fall back to dts
    # (ffmpeg's best-effort rule), which runs up to two frames late but never repeats or skips a frame.
    gen = make_video(tmp_path / "b.avi", fps=25, duration=3.0, gop=25, audio_rate=None)
    for start in (0.3, 1.93):
        got = counters(decode_clip(gen.path, start, 6, 25.0).frames)
        assert np.all(np.diff(got) == 1) and 0 <= gen.frame_at(start) - got[0] <= 2, got


def test_decoding_seeks_instead_of_reading_from_the_start(tmp_path, monkeypatch):
    gen = make_video(tmp_path / "long.mp4", fps=10, duration=20.0, gop=10, audio_rate=None)
    decoded = []
    original = media_module._decoded

    def counting(container, stream):
        for frame in original(container, stream):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(media_module, "_decoded", counting)
    clip = decode_clip(gen.path, 15.55, 8, 10.0)
    assert counters(clip.frames) == list(range(155, 163))
    assert len(decoded) <= 8 + 10 + 4  # the clip, at most one GOP before it, and a little decoder delay


def test_audio_rate_is_resampled_in_sync(media):
    clip = decode_clip(media["cfr25"].path, 1.7, 8, 10.0, audio_rate=16000)
    assert len(clip.audio) == 12800
    found, score = audio_time(clip.audio, 16000, lo=0.7, hi=2.7)
    assert score > 0.9 and abs(found - 1.7) < SYNC_TOLERANCE


def test_short_video_loops_like_dmvr(media):
    clip = decode_clip(media["short"].path, 0.5, 32, 10.0)
    assert counters(clip.frames) == [(5 + i) % 10 for i in range(32)]
    # the audio wraps at its own end (1.0 s plus at most one AAC frame of encoder padding):
    # window second 1.0 is source time 1.5, i.e. 1.5 - length after the wrap
    found, score = audio_time(clip.audio[48000:62400], 48000, lo=0.0, hi=1.0)
    assert score > 0.9 and 0.47 - SYNC_TOLERANCE < found < 0.5 + SYNC_TOLERANCE


def test_short_video_holds_last_frame_and_zero_pads_audio(media):
    clip = decode_clip(media["short"].path, 0.0, 32, 10.0, pad="last")
    assert counters(clip.frames) == [min(i, 9) for i in range(32)]
    assert np.abs(clip.audio[: int(0.9 * 48000)]).max() > 0.3
    assert np.all(clip.audio[int(1.05 * 48000) :] == 0)


def test_no_audio_stream_gives_zeros_and_flag(media):
    clip = decode_clip(media["silent"].path, 0.2, 5, 10.0)
    assert not clip.has_audio and clip.audio.shape == (24000,) and not clip.audio.any()
    assert counters(clip.frames) == [2, 3, 4, 5, 6]
    assert decode_clip(media["short"].path, 0.0, 4, 10.0, need_audio=False).audio.shape == (0,)


def test_odd_sizes_and_resizing(media):
    gen = media["odd"]
    expected = [gen.frame_at(0.3 + i / 10) for i in range(4)]
    native = decode_clip(gen.path, 0.3, 4, 10.0)
    assert native.frames.shape == (4, 239, 321, 3) and counters(native.frames) == expected
    sized = decode_clip(gen.path, 0.3, 4, 10.0, size=(50, 71))
    assert sized.frames.shape == (4, 50, 71, 3) and counters(sized.frames) == expected
    short = decode_clip(gen.path, 0.3, 4, 10.0, short_side=33)
    assert short.frames.shape == (4, 33, round(321 * 33 / 239), 3) and counters(short.frames) == expected


def test_bytes_input_equals_path_input(media):
    gen = media["cfr25"]
    from_path = decode_clip(gen.path, 1.3, 6, 10.0)
    from_bytes = decode_clip(gen.path.read_bytes(), 1.3, 6, 10.0)
    np.testing.assert_array_equal(from_path.frames, from_bytes.frames)
    np.testing.assert_array_equal(from_path.audio, from_bytes.audio)


def test_lying_container_duration_is_ignored(media, tmp_path):
    data = bytearray(media["cfr25"].path.read_bytes())
    for box in (b"mvhd", b"mdhd", b"tkhd"):  # version-0 boxes: duration at +20 (mvhd/mdhd) or +24 (tkhd)
        at = data.find(box)
        while at >= 0:
            offset = at + (24 if box == b"tkhd" else 20)
            (duration,) = struct.unpack(">I", data[offset : offset + 4])
            data[offset : offset + 4] = struct.pack(">I", duration // 4)
            at = data.find(box, at + 4)
    lying = tmp_path / "lying.mp4"
    lying.write_bytes(bytes(data))
    assert probe(lying).duration < 2.0  # the lie took effect
    clip = decode_clip(lying, 3.0, 5, 10.0)
    assert counters(clip.frames) == [75, 77, 80, 82, 85]


def test_transcode_then_decode(media, tmp_path):
    gen = media["cfr25"]
    mp4, flac = tmp_path / "out.mp4", tmp_path / "out.flac"
    stats = transcode(gen.path, mp4, flac, start=0.5, end=3.5, fps=10.0, short_side=256)
    assert stats["frames"] == 30 and stats["duration"] == pytest.approx(3.0) and stats["has_audio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac", "out.mp4"]  # no temp files left
    info = probe(mp4)
    assert (info.width, info.height, info.fps, info.num_frames) == (384, 256, 10.0, 30) and not info.has_audio
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        keys = [float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None and p.is_keyframe]
    assert keys == [0.0, 1.0, 2.0]  # every second, and not where the source had its keyframes (1.5 s)
    sound = sf.info(str(flac))
    assert (sound.samplerate, sound.channels, sound.frames) == (48000, 1, 144000)
    clip = decode_clip(mp4, 1.0, 8, 10.0, audio_src=flac)
    assert clip.frames.shape[1:3] == (256, 384)
    expected = [gen.frame_at(1.5 + i / 10) for i in range(8)]
    assert counters(clip.frames) == expected
    found, score = audio_time(clip.audio, 48000, lo=0.5, hi=2.5)
    assert score > 0.9 and abs(found - 1.5) < SYNC_TOLERANCE
    mp4_bytes, flac_bytes, byte_stats = transcode_to_bytes(gen.path, start=0.5, end=3.5, fps=10.0, short_side=256)
    assert byte_stats["frames"] == 30 and flac_bytes is not None
    again = decode_clip(mp4_bytes, 1.0, 8, 10.0, audio_src=flac_bytes)
    assert counters(again.frames) == counters(clip.frames)
    assert np.abs(again.audio - clip.audio).max() < 1e-4


def test_transcode_without_audio_writes_no_flac(media, tmp_path):
    mp4_bytes, flac_bytes, stats = transcode_to_bytes(media["silent"].path, fps=5.0, short_side=None)
    assert flac_bytes is None and not stats["has_audio"] and stats["frames"] == 5
    clip = decode_clip(mp4_bytes, 0.0, 5, 5.0)
    assert counters(clip.frames) == [0, 2, 4, 6, 8] and clip.frames.shape[1:3] == (64, 96)
    with pytest.raises(MediaError) as err:
        transcode(media["silent"].path, tmp_path / "late.mp4", tmp_path / "late.flac", start=5.0)
    assert err.value.reason == "too_short" and list(tmp_path.iterdir()) == []  # temp files removed


def test_transcode_pads_short_audio_to_the_video_length(tmp_path):
    gen = make_video(tmp_path / "short_audio.mp4", fps=10, duration=2.0, audio_spans=[(0.0, 1.0)])
    _, flac_bytes, stats = transcode_to_bytes(gen.path, fps=10.0, short_side=None)
    audio, rate = sf.read(io.BytesIO(flac_bytes), dtype="float32")
    assert stats["frames"] == 20 and rate == 48000 and audio.shape == (96000,)
    assert np.abs(audio[:40000] - tone(np.arange(40000) / 48000))[2400:].max() < 0.02
    assert not audio[52000:].any()


def test_encode_flac_roundtrip():
    samples = tone(np.arange(24000) / 24000)
    decoded, rate = sf.read(io.BytesIO(encode_flac(samples, 24000)), dtype="float32")
    assert rate == 24000 and np.abs(decoded - samples).max() < 1e-4  # 16-bit quantisation only


def test_flac_sidecar_is_resampled_and_aligned(media, tmp_path):
    flac = write_tone_file(tmp_path / "side.flac", 44100, 4.0, channels=2)
    clip = decode_clip(media["cfr25"].path, 1.3, 8, 10.0, audio_src=flac)
    expected = tone(1.3 + np.arange(len(clip.audio)) / 48000)
    assert np.abs(clip.audio - expected).max() < 2e-3  # 16-bit FLAC and the resampler, edges included
    found, _ = audio_time(clip.audio, 48000, lo=0.3, hi=2.3)
    assert abs(found - 1.3) < 0.001
    from_bytes = decode_clip(media["cfr25"].path, 1.3, 8, 10.0, audio_src=flac.read_bytes())
    np.testing.assert_array_equal(from_bytes.audio, clip.audio)


def test_resampler_against_analytic_signals():
    def sines(rate, freqs, seconds=0.5):
        t = np.arange(int(seconds * rate)) / rate
        return sum(0.3 * np.sin(2 * np.pi * f * t + f / 1000) for f in freqs)

    up = resample(sines(44100, (1000, 5000)), 44100, 48000)
    assert len(up) == 24000
    assert np.abs(up[500:-500] - sines(48000, (1000, 5000))[500:-500]).max() < 1e-4
    down = resample(sines(48000, (3000,)), 48000, 16000)
    assert np.abs(down[300:-300] - sines(16000, (3000,))[300:-300]).max() < 1e-4
    aliased = resample(sines(48000, (9000,)), 48000, 16000)  # above the new Nyquist: must be filtered out
    assert np.sqrt(np.mean(aliased[300:-300] ** 2)) < 0.01 * 0.3


def test_read_audio_formats(media, tmp_path):
    wav = write_tone_file(tmp_path / "tone.wav", 44100, 2.0, channels=2)
    audio, rate = read_audio(wav)
    assert rate == 44100 and audio.shape == (88200,)
    assert np.abs(audio - tone(np.arange(88200) / 44100)).max() < 1e-3
    window, rate = read_audio(wav, rate=48000, start=0.5, duration=1.0)
    assert rate == 48000 and window.shape == (48000,)
    assert abs(audio_time(window, 48000, hi=1.5)[0] - 0.5) < 0.001
    tail, _ = read_audio(wav, start=1.5, duration=5.0)  # stops where the file does
    assert tail.shape == (22050,)
    aac, rate = read_audio(media["cfr25"].path, rate=16000, start=1.0, duration=0.5)
    assert rate == 16000 and aac.shape == (8000,)
    found, score = audio_time(aac, 16000, hi=2.0)
    assert score > 0.9 and abs(found - 1.0) < SYNC_TOLERANCE
    with pytest.raises(MediaError) as err:
        read_audio(media["silent"].path)
    assert err.value.reason == "no_audio"


def test_probe_reports_what_was_written(media, tmp_path):
    info = probe(media["cfr25"].path)
    assert (info.has_video, info.has_audio, info.fps, info.width, info.height) == (True, True, 25.0, 96, 64)
    assert info.num_frames == 100 and abs(info.duration - 4.0) < 0.05
    assert (info.audio_rate, info.audio_channels, info.video_codec, info.audio_codec) == (48000, 2, "h264", "aac")
    assert not probe(media["silent"].path).has_audio
    audio_only = probe(make_audio_only(tmp_path / "a.m4a"))
    assert not audio_only.has_video and audio_only.has_audio and audio_only.audio_rate == 44100


def test_bad_inputs_raise_with_reason(tmp_path):
    files = make_bad_files(tmp_path)
    reasons = {"empty": "empty", "truncated": "corrupt", "text": "corrupt", "missing": "missing"}
    for key, reason in reasons.items():
        for call in (lambda p: probe(p), lambda p: decode_clip(p, 0.0, 4, 10.0), lambda p: read_audio(p)):
            with pytest.raises(MediaError) as err:
                call(files[key])
            assert err.value.reason == reason, (key, err.value)
            assert str(files[key]) in str(err.value)
    for data, reason in ((b"", "empty"), (files["truncated"].read_bytes(), "corrupt")):
        with pytest.raises(MediaError) as err:
            decode_clip(data, 0.0, 4, 10.0)
        assert err.value.reason == reason
    with pytest.raises(MediaError) as err:
        decode_clip(make_audio_only(tmp_path / "a.m4a"), 0.0, 4, 10.0)
    assert err.value.reason == "no_video"


def test_containers_are_closed_on_error(tmp_path):
    if not os.path.isdir("/proc/self/fd"):
        pytest.fail("needs /proc/self/fd to count open files")
    audio_only = make_audio_only(tmp_path / "a.m4a")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(MediaError):
            decode_clip(audio_only, 0.0, 4, 10.0)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("codec, size", [(None, (64, 96)), (None, (63, 95)), ("mpeg4", (64, 96))])
def test_write_av_roundtrip(tmp_path, codec, size):
    height, width = size
    frames = np.stack([draw_counter(i, height, width) for i in range(20)])
    audio = tone(np.arange(2 * 24000) / 24000)
    path = tmp_path / "w.mp4"
    write_av(path, frames, 10.0, audio, 24000, codec=codec)
    clip = decode_clip(path, 0.4, 5, 10.0, audio_rate=24000)
    assert counters(clip.frames) == [4, 5, 6, 7, 8] and clip.frames.shape[1:3] == size
    found, score = audio_time(clip.audio, 24000, hi=1.5)
    assert score > 0.9 and abs(found - 0.4) < SYNC_TOLERANCE


def test_images_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", image)
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png"), image)
    smooth = np.repeat(np.repeat(image[::8, ::8], 8, axis=0), 8, axis=1)[:37, :53]
    write_image(tmp_path / "x.jpg", smooth)
    decoded = decode_image((tmp_path / "x.jpg").read_bytes())
    assert decoded.shape == smooth.shape and np.abs(decoded.astype(int) - smooth).mean() < 8
    with pytest.raises(MediaError):
        decode_image(tmp_path / "missing.png")
