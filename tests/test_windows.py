"""Cutting raw media into index windows (vattcli.data.windows) and finding the media files (vattcli.data.walk).

Expectations are hand-computed from how the test media were made (tests/mediagen.py): frame i of a counter video shows
the number i, and the time-tone soundtrack tells where an audio window sits in the source.
"""

from __future__ import annotations

import errno
import tracemalloc

import av
import numpy as np
import pytest
import torch
from mediagen import (COUNTER_BITS, audio_time, make_audio_only, make_bad_files, make_video, read_counter, tone,
                      write_tone_file)

import vattcli.data.windows as windows_module
from vattcli.data.media import decode_clip, decode_image
from vattcli.data.pipeline import ClipSpec
from vattcli.data.transforms import center_crop
from vattcli.data.walk import MEDIA_SUFFIXES, find_media, read_file_list
from vattcli.data.windows import iter_windows, jpeg_thumbnail, summarize, window_starts
from vattcli.errors import DataError, MediaError

RATE = 16000
SPEC = ClipSpec(frames=8, fps=5.0, size=64, audio_rate=RATE)  # 1.6 s windows: frame i at start + 0.2 i
STRIDE = 0.8


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the crops with one torch thread, as decode workers do (DataLoader workers get one): their small matrix
    products only lose to thread start-up, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 7 s, 25 fps square counter video with the time tone; a 1 s one; audio-only AAC and WAV (4.7 s)."""
    folder = tmp_path_factory.mktemp("windows-media")
    return {
        "video": make_video(folder / "counter.mp4", fps=25.0, duration=7.0, size=(96, 96), audio_rate=RATE),
        "short": make_video(folder / "short.mp4", fps=25.0, duration=1.0, size=(96, 96), audio_rate=RATE),
        "m4a": make_audio_only(folder / "tone.m4a", duration=4.7, rate=RATE),
        "wav": write_tone_file(folder / "tone.wav", 22050, 4.7),
    }


def _frame_at(t: float) -> int:
    """The frame on screen at t in a 25 fps video: frame n shows during [n / 25, (n + 1) / 25)."""
    return int(t * 25 + 1e-6)


def _uint8(video) -> np.ndarray:
    """center_crop's float (3, T, S, S) in [0, 1] as uint8 (T, S, S, 3), rounded to nearest."""
    return np.clip(np.round(video.numpy() * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 3, 0)


# ------------------------------------------------------------------------------------------- window_starts


@pytest.mark.parametrize("duration, expected", [
    (6.4, [0.0, 1.6, 3.2]),  # an exact multiple: the last window ends at the end, no tail
    (7.0, [0.0, 1.6, 3.2]),  # 0.6 s left after 6.4 < stride / 2 = 0.8: no tail
    (7.2, [0.0, 1.6, 3.2, 4.0]),  # 0.8 s left = stride / 2: a tail window ending at 7.2
    (7.3, [0.0, 1.6, 3.2, 4.1]),
    (3.2, [0.0]),  # exactly one window
    (2.0, [0.0]),  # shorter than a window: one window at 0
    (0.0, []),
])
def test_window_starts_full_windows_then_a_tail_window(duration, expected):
    assert window_starts(duration, 3.2, 1.6) == pytest.approx(expected, abs=1e-9)


def test_window_starts_with_a_stride_longer_than_the_window():
    assert window_starts(9.0, 2.0, 3.0) == pytest.approx([0.0, 3.0, 6.0])  # 1 s left after 8 s < 1.5
    assert window_starts(10.0, 2.0, 3.0) == pytest.approx([0.0, 3.0, 6.0, 8.0])  # 2 s left >= 1.5


@pytest.mark.parametrize("window, stride, duration", [(0.0, 1.0, 5.0), (1.0, 0.0, 5.0), (-1.0, 1.0, 5.0),
                                                      (1.0, -0.5, 5.0), (1.0, 1.0, -2.0)])
def test_window_starts_rejects_bad_arguments(window, stride, duration):
    with pytest.raises(ValueError):
        window_starts(duration, window, stride)


# ------------------------------------------------------------------------------------------ video windows


def test_video_windows_pick_the_frames_on_screen_and_match_decode_clip(media):
    video = media["video"]
    got = list(iter_windows(video.path, SPEC, stride=STRIDE, need_audio=True))
    # 7 s: full windows at 0, 0.8, ..., 4.8 (4.8 + 1.6 = 6.4 <= 7); 0.6 s left >= 0.4: a tail at 7 - 1.6 = 5.4.
    starts = [0.0, 0.8, 1.6, 2.4, 3.2, 4.0, 4.8, 5.4]
    assert [w.start for w in got] == pytest.approx(starts, abs=1e-6)
    assert [w.end for w in got] == pytest.approx([s + 1.6 for s in starts], abs=1e-6)
    for w in got:
        assert w.frames.dtype == np.uint8 and w.frames.shape == (8, 64, 64, 3)
        expected = [_frame_at(w.start + 0.2 * i) for i in range(8)]
        assert [read_counter(f) for f in w.frames] == expected, w.start
        reference = decode_clip(video.path, w.start, 8, 5.0, need_audio=False)
        np.testing.assert_array_equal(w.frames, _uint8(center_crop(reference.frames, 64)))
        assert w.audio.dtype == np.float32 and w.audio.shape == (25600,)  # 1.6 s at 16 kHz
        at, score = audio_time(w.audio, RATE)
        assert score > 0.9 and at == pytest.approx(w.start, abs=1e-3)


def test_thumbnail_is_a_jpeg_of_the_middle_frame(media):
    first = next(iter(iter_windows(media["video"].path, SPEC, stride=STRIDE)))
    assert first.thumbnail[:2] == b"\xff\xd8" and first.thumbnail[-2:] == b"\xff\xd9"
    image = decode_image(first.thumbnail)
    assert image.shape == (112, 112, 3)
    assert read_counter(image) == 20  # frame 4 of the window at 0: 0.8 s at 25 fps


def test_jpeg_thumbnail_keeps_the_aspect_and_checks_its_input():
    frame = np.zeros((60, 90, 3), np.uint8)
    frame[:, 45:] = 255  # right half white
    image = decode_image(jpeg_thumbnail(frame, short_side=96))
    assert image.shape == (96, 144, 3)
    assert image[:, :60].mean() < 20 and image[:, 84:].mean() > 235
    with pytest.raises(ValueError):
        jpeg_thumbnail(frame.astype(np.float32))
    with pytest.raises(ValueError):
        jpeg_thumbnail(frame, quality=0)


def test_a_window_longer_than_the_model_clip_spreads_its_frames(media):
    got = list(iter_windows(media["video"].path, SPEC, window=2.4, stride=1.2))
    # 2.4 s windows every 1.2 s: 0 .. 4.8 (4.8 + 2.4 = 7.2 > 7, so up to 3.6); 7 - 6.0 = 1.0 >= 0.6: tail at 4.6.
    assert [w.start for w in got] == pytest.approx([0.0, 1.2, 2.4, 3.6, 4.6], abs=1e-6)
    for w in got:  # frame i at start + i * 2.4 / 8 = start + 0.3 i
        assert [read_counter(f) for f in w.frames] == [_frame_at(w.start + 0.3 * i) for i in range(8)]
        assert w.audio is None  # need_audio not asked


def test_a_video_shorter_than_a_window_loops_its_frames_and_pads_its_audio(media):
    (only,) = list(iter_windows(media["short"].path, SPEC, stride=STRIDE, need_audio=True))
    assert only.start == 0.0 and only.end == pytest.approx(1.0, abs=1e-6)
    # frame i at 0.2 i s, wrapped at the 1 s end as decode_clip loops: frames 0 5 10 15 20, then 0 5 10 again
    assert [read_counter(f) for f in only.frames] == [0, 5, 10, 15, 20, 0, 5, 10]
    at, score = audio_time(only.audio[:RATE], RATE, hi=1.0)
    assert score > 0.9 and at == pytest.approx(0.0, abs=1e-3)
    assert not only.audio[int(1.2 * RATE):].any()  # silence (zeros) past the track's end, not a loop


def test_mpeg_ts_windows_from_the_first_frame_and_a_truncated_file_gives_what_it_holds(tmp_path):
    """MPEG-TS: a seek to the start lands on the second keyframe (2 s in), so the pass must start without one; a file
    cut in the middle (a stream format: still readable) gives correct windows up to where it ends, and no error."""
    video = make_video(tmp_path / "full.ts", fps=25.0, duration=7.0, size=(96, 96), audio_rate=None)
    data = video.path.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2])
    full, part = list(iter_windows(video.path, SPEC, stride=STRIDE)), list(iter_windows(cut, SPEC, stride=STRIDE))
    assert len(full) == 8 and 2 <= len(part) < 8 and part[-1].end < 6.0
    for w in full + part:
        assert [read_counter(f) for f in w.frames] == [_frame_at(w.start + 0.2 * i) for i in range(8)], w.start


def test_windows_are_cut_in_one_pass_with_bounded_memory(tmp_path):
    """60 s of video (74 windows, 7.3 MB of frames): the peak of traced allocations stays near the frames of the
    overlapping open windows plus the one being handed over, whatever the length (about 3.5 windows here)."""
    video = make_video(tmp_path / "long.mp4", fps=25.0, duration=60.0, size=(96, 96), audio_rate=None)
    window_bytes = SPEC.frames * SPEC.size * SPEC.size * 3  # 98 kB
    tracemalloc.start()
    try:
        count = 0
        for w in iter_windows(video.path, SPEC, stride=STRIDE):
            count += 1
            assert read_counter(w.frames[-1]) == _frame_at(w.start + 1.4) % 2**COUNTER_BITS  # the counter wraps
            del w
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 74  # 0, 0.8, ..., 58.4 (58.4 + 1.6 = 60); nothing left for a tail
    assert peak < 4.5 * window_bytes, f"peak {peak} B for {count} windows of {window_bytes} B"


# ------------------------------------------------------------------------------------------- audio only


@pytest.mark.parametrize("name", ["m4a", "wav"])
def test_audio_only_files_give_audio_windows(media, name):
    got = list(iter_windows(media[name], SPEC, stride=STRIDE, need_audio=False))
    # 4.7 s: full windows 0 .. 2.4 (2.4 + 1.6 = 4.0); 0.7 s left >= 0.4: a tail at 4.7 - 1.6 = 3.1.
    assert [w.start for w in got][:4] == pytest.approx([0.0, 0.8, 1.6, 2.4], abs=1e-6)
    assert len(got) == 5 and got[-1].start == pytest.approx(3.1, abs=0.07)  # AAC: length known to a frame
    for w in got:
        assert w.frames is None and w.thumbnail is None
        assert w.audio.dtype == np.float32 and w.audio.shape == (25600,)
        at, score = audio_time(w.audio, RATE)
        assert score > 0.9 and at == pytest.approx(w.start, abs=1e-3)


def _flac_with_cover(path, seconds: float):
    """A FLAC file of the time tone carrying a cover picture (a one-frame 'attached_pic' video stream)."""
    with av.open(str(path), "w", format="flac") as out:
        sound = out.add_stream("flac", rate=RATE, layout="mono")
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(jpeg_thumbnail(np.full((64, 64, 3), 200, np.uint8), short_side=64))
        packet.stream, packet.pts, packet.dts = cover, 0, 0
        out.mux(packet)
        frame = av.AudioFrame.from_ndarray(tone(np.arange(round(seconds * RATE)) / RATE)[None], format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = RATE, 0
        out.mux(sound.encode(frame) + sound.encode(None))
    return path


def test_a_sound_file_with_cover_art_is_audio_only(tmp_path):
    path = _flac_with_cover(tmp_path / "song.flac", 2.0)
    got = list(iter_windows(path, SPEC, stride=STRIDE, need_audio=False))
    assert [w.start for w in got] == pytest.approx([0.0, 0.4])  # 0.4 s left after 1.6 >= 0.4: a tail at 0.4
    assert all(w.frames is None and w.thumbnail is None for w in got)
    at, score = audio_time(got[1].audio, RATE)
    assert score > 0.9 and at == pytest.approx(0.4, abs=1e-3)
    assert summarize(path).has_video is False


def test_summarize_reports_streams_and_duration(media):
    video, audio = summarize(media["video"].path), summarize(media["wav"])
    assert (video.has_video, video.has_audio) == (True, True) and video.duration == pytest.approx(7.0, abs=0.1)
    assert (audio.has_video, audio.has_audio) == (False, True) and audio.duration == pytest.approx(4.7, abs=0.01)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind, reason", [("empty", "empty"), ("truncated", "corrupt"), ("text", "corrupt"),
                                          ("missing", "missing")])
def test_unreadable_files_raise_media_error_before_any_window(tmp_path, kind, reason):
    path = make_bad_files(tmp_path)[kind]
    for call in (lambda: list(iter_windows(path, SPEC, stride=STRIDE)), lambda: summarize(path)):
        with pytest.raises(MediaError) as err:
            call()
        assert err.value.reason == reason and "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_file_with_neither_video_nor_audio_is_no_media(tmp_path):
    subtitles = tmp_path / "captions.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n")
    for call in (lambda: list(iter_windows(subtitles, SPEC, stride=STRIDE)), lambda: summarize(subtitles)):
        with pytest.raises(MediaError) as err:
            call()
        assert err.value.reason == "no_media"


def test_a_decoder_failing_mid_file_raises_after_the_windows_cut_so_far(media, monkeypatch):
    real = windows_module._frames_from_start

    def failing(*args, **kwargs):
        for t, frame in real(*args, **kwargs):
            if t > 3.0:
                raise av.error.FFmpegError(errno.EIO, "simulated read error")
            yield t, frame

    monkeypatch.setattr(windows_module, "_frames_from_start", failing)
    got = []
    with pytest.raises(MediaError) as err:
        for w in iter_windows(media["video"].path, SPEC, stride=STRIDE):
            got.append(w.start)
    # windows ending at 1.6 and 2.4 were complete once frames past their end had been decoded; 3.2 never was
    assert got == pytest.approx([0.0, 0.8]) and err.value.reason == "corrupt"


def test_iter_windows_checks_its_arguments_when_called(media):
    with pytest.raises(ValueError):
        iter_windows(media["video"].path, SPEC, stride=0.0)
    with pytest.raises(ValueError):
        iter_windows(media["video"].path, SPEC, window=-1.0, stride=0.8)


# ---------------------------------------------------------------------------------------------- finding media


def test_find_media_walks_sorted_skipping_hidden_links_and_other_suffixes(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", duration=0.5, audio_rate=None).path.read_bytes()
    root = tmp_path / "root"
    for name in ["b.mp4", "B.MKV", "sub/a.wav", "sub/deeper/c.webm", ".hidden/d.mp4", "sub/.e.mp4", "f.xyz"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(clip)
    (root / "notes.txt").write_text("not media\n")
    (root / "z_alias.mp4").symlink_to(root / "b.mp4")  # the same file again: indexed once, as b.mp4
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # never descended
    outside = tmp_path / "outside.mov"
    outside.write_bytes(clip)
    (root / "sub" / "linked.mov").symlink_to(outside)  # a link to a file outside the root is followed
    (root / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    relative = [p.relative_to(root).as_posix() for p in find_media(root)]
    assert relative == ["B.MKV", "b.mp4", "sub/a.wav", "sub/deeper/c.webm", "sub/linked.mov"]


def test_find_media_probes_unknown_suffixes_when_asked(tmp_path):
    make_video(tmp_path / "video.mp4", duration=0.5, audio_rate=None).path.rename(tmp_path / "video.xyz")
    write_tone_file(tmp_path / "sound.wav", 8000, 0.5).rename(tmp_path / "sound.bin")
    (tmp_path / "notes.txt").write_text("plain text\n")
    (tmp_path / "readme.nfo").write_text("FFmpeg shows .nfo text as video (tty)\n")
    image = np.zeros((16, 16, 3), np.uint8)
    (tmp_path / "photo.dat").write_bytes(jpeg_thumbnail(image, short_side=16))  # a still image
    assert find_media(tmp_path) == []
    assert [p.name for p in find_media(tmp_path, probe_unknown=True)] == ["sound.bin", "video.xyz"]


def test_find_media_needs_a_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        find_media(tmp_path / "nowhere")
    assert {".mp4", ".mkv", ".webm", ".wav", ".flac", ".m4a"} <= MEDIA_SUFFIXES


def test_read_file_list_resolves_relative_to_the_list(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "lists").mkdir()
    for name in ("a.mp4", "b.wav"):
        (tmp_path / "media" / name).write_bytes(b"x")
    listing = tmp_path / "lists" / "files.txt"
    listing.write_text(f"# footage\n../media/b.wav\n\n  {tmp_path / 'media' / 'a.mp4'}  \n")
    assert read_file_list(listing) == [tmp_path / "lists" / "../media/b.wav", tmp_path / "media" / "a.mp4"]


@pytest.mark.parametrize("lines, line, what", [
    (["a.mp4", "missing.mp4"], 2, "no such file"),
    (["a.mp4", "# ok", "sub"], 3, "not a regular file"),
    (["a.mp4", "./a.mp4"], 2, "the same file as line 1"),
])
def test_read_file_list_names_the_bad_line(tmp_path, lines, line, what):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_file_list(listing)
    assert str(err.value).startswith(f"{listing}:{line}: ") and what in str(err.value)


def test_read_file_list_needs_a_readable_text_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_file_list(tmp_path / "nope.txt")
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        read_file_list(binary)
