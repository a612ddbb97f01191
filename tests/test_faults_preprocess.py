"""Faults and bad input for `vatt preprocess`, through the installed entry point in a subprocess (issue 10).

Each test runs `vatt preprocess` on a tiny dataset made here (counter videos from mediagen, damaged by hand where the
test needs it) and asserts the exit code, the first line of the message and what is left in the output folder: no
temporary shard, no lock file. Expected counts and reasons are written out by hand from what each fixture made.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import pytest
from mediagen import make_video

VATT = Path(sys.executable).parent / "vatt"
SIZE = (48, 64)
TIMEOUT = 120


# a run inside a Slurm array task or a Kubernetes indexed job would otherwise preprocess one part only
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY_") and k != "JOB_COMPLETION_INDEX"}


def vatt(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(VATT), *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                          **{"env": ENV, **kwargs})


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def assert_no_leftovers(out: Path) -> None:
    """No temporary shard or manifest and no lock file anywhere under the output folder."""
    names = [p.name for p in out.rglob("*")] if out.exists() else []
    assert not [n for n in names if n.startswith(".tmp-") or n == ".vatt.lock"], names


def manifest_of(out: Path, split: str = "train") -> dict:
    return json.loads((out / split / "manifest.json").read_text())


def sample_meta(out: Path, split: str = "train") -> dict[str, dict]:
    """The JSON member of every sample in the folder's shards, by key (read with tarfile, not the project's reader)."""
    metas = {}
    for tar_path in sorted((out / split).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    metas[member.name[: -len(".json")]] = json.loads(tar.extractfile(member).read())
    return metas


def write_custom(root: Path, videos: list[str]) -> Path:
    """A custom JSONL manifest listing ``videos`` (paths relative to ``root``) one per line."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.jsonl").write_text("".join(json.dumps({"video": v}) + "\n" for v in videos))
    return root


def video(path: Path, seconds: float = 2.0, audio: bool = True, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_video(path, fps=25.0, duration=seconds, size=SIZE, audio_rate=48000 if audio else None, **kwargs)
    return path


def corrupt_middle(path: Path) -> Path:
    """A 4 s video-only MP4 with 5 % of its bytes overwritten at the middle of the file (inside the video data)."""
    video(path, 4.0, audio=False)
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    middle = len(data) // 2
    for i in range(middle, middle + len(data) // 20):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return path


def faststart(src: Path, dst: Path) -> Path:
    """``src`` remuxed with its index at the front (how web MP4s ship), so a cut file still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# ------------------------------------------------------------------------------------------- damaged media


def test_corrupt_middle_is_skipped_as_corrupt(tmp_path):
    video(tmp_path / "in/good.mp4")
    corrupt_middle(tmp_path / "in/bad.mp4")
    root = write_custom(tmp_path / "in", ["good.mp4", "bad.mp4"])
    result = vatt("preprocess", "custom", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "out")
    assert manifest["complete"] is True
    assert manifest["counts"]["written"] == 1 and manifest["counts"]["skipped"] == {"corrupt": 1}
    assert list(sample_meta(tmp_path / "out")) == ["000001_good"]
    assert "corrupt (1), e.g." in result.stdout and "bad.mp4: corrupt: " in result.stdout
    assert_no_leftovers(tmp_path / "out")


def test_corrupt_middle_is_kept_and_flagged_with_keep_partial(tmp_path):
    video(tmp_path / "in/good.mp4")
    corrupt_middle(tmp_path / "in/bad.mp4")
    root = write_custom(tmp_path / "in", ["good.mp4", "bad.mp4"])
    result = vatt("preprocess", "custom", "--root", root, "--out", tmp_path / "out", "--workers", "1",
                  "--keep-partial")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "out")
    assert manifest["settings"]["keep_partial"] is True
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["skipped"] == {}
    assert manifest["counts"]["flagged"] == {"partial": 1}
    metas = sample_meta(tmp_path / "out")
    assert metas["000002_bad"]["partial"] is True and metas["000002_bad"]["partial_reason"] == "corrupt"
    assert "partial" not in metas["000001_good"]
    assert "flagged partial (1)" in result.stdout
    assert_no_leftovers(tmp_path / "out")


@pytest.mark.parametrize("container, fraction", [("mkv", 0.05), ("mkv", 0.3), ("mp4", 0.3)])
def test_truncated_video_is_skipped_as_truncated(tmp_path, container, fraction):
    src = video(tmp_path / f"src.{container}", 4.0)
    damaged = tmp_path / "in" / f"cut.{container}"
    damaged.parent.mkdir(parents=True)
    if container == "mp4":
        faststart(src, damaged)
    else:
        shutil.copy(src, damaged)
    cut(damaged, fraction)
    video(tmp_path / "in/good.mp4")
    root = write_custom(tmp_path / "in", [damaged.name, "good.mp4"])
    result = vatt("preprocess", "custom", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "out")
    assert manifest["counts"]["written"] == 1 and manifest["counts"]["skipped"] == {"truncated": 1}
    example = manifest["counts"]["skipped_examples"][0]["message"]
    assert "truncated" in example and "4.0" in example  # names the declared length (4 s)
    assert_no_leftovers(tmp_path / "out")


def test_audio_shorter_than_video_is_flagged_and_counted(tmp_path):
    # 3 s of video, sound only during the first second: 2 s of silence are padded in
    video(tmp_path / "in/short_sound.mp4", 3.0, audio_spans=[(0.0, 1.0)])
    video(tmp_path / "in/good.mp4", 3.0)
    root = write_custom(tmp_path / "in", ["short_sound.mp4", "good.mp4"])
    result = vatt("preprocess", "custom", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    metas = sample_meta(tmp_path / "out")
    assert 1.8 < metas["000001_short_sound"]["audio_padded_seconds"] < 2.2
    assert metas["000002_good"]["audio_padded_seconds"] < 0.1
    manifest = manifest_of(tmp_path / "out")
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["flagged"] == {"audio_padded": 1}
    assert "flagged audio_padded (1)" in result.stdout
    assert_no_leftovers(tmp_path / "out")


# ------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("option, value, named", [
    ("--fps", "-1", "--fps"), ("--size", "0", "--size"), ("--workers", "0", "--workers"),
    ("--audio-rate", "0", "--audio-rate"), ("--shard-samples", "0", "--shard-samples"), ("--limit", "0", "--limit"),
])
def test_numeric_option_out_of_range_is_one_line_and_exit_2(tmp_path, option, value, named):
    root = write_custom(tmp_path / "in", ["a.mp4"])
    result = vatt("preprocess", "custom", "--root", root, "--out", tmp_path / "out", option, value)
    assert result.returncode == 2, result.stderr
    line = first_line(result.stderr)
    assert named in line and "expected" in line and value in line, line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_every_input_unusable_exits_2_naming_the_top_reason(tmp_path):
    corrupt_middle(tmp_path / "in/bad.mp4")
    (tmp_path / "in/notes.mp4").write_text("not a video\n" * 20)
    root = write_custom(tmp_path / "in", ["bad.mp4", "notes.mp4", "gone.mp4"])
    result = vatt("preprocess", "custom", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 2, result.stderr
    line = first_line(result.stderr)
    assert "0 of 3 written" in line and "top skip reason: corrupt (2)" in line, line
    assert str(tmp_path / "out/train/manifest.json") in line
    assert manifest_of(tmp_path / "out")["counts"]["skipped"] == {"corrupt": 2, "missing": 1}
    assert_no_leftovers(tmp_path / "out")


def test_no_inputs_at_all_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/manifest.jsonl").write_text("")
    result = vatt("preprocess", "custom", "--root", tmp_path / "in", "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "0 of 0 written" in first_line(result.stderr)
    assert_no_leftovers(tmp_path / "out")


# ------------------------------------------------------------------------------------------- stopping


@pytest.fixture
def many_videos(tmp_path) -> Path:
    """40 two-second videos in a custom manifest, long enough a run to stop in the middle: v00 has sound only in
    its first half second (flagged audio_padded), v01..v39 are copies of one ordinary video."""
    video(tmp_path / "in/v00.mp4", audio_spans=[(0.0, 0.5)])
    ordinary = video(tmp_path / "in/v01.mp4")
    for i in range(2, 40):
        shutil.copy(ordinary, tmp_path / f"in/v{i:02d}.mp4")
    return write_custom(tmp_path / "in", [f"v{i:02d}.mp4" for i in range(40)])


def wait_for(path: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def stop_mid_run(root: Path, out: Path, sig: signal.Signals, group: bool) -> subprocess.CompletedProcess:
    """Start a run with one sample per shard, freeze it once a shard is finished, send ``sig`` (to the whole process
    group as a terminal's Ctrl-C does, or to the main process as a scheduler does), then let it go on."""
    cmd = [str(VATT), "preprocess", "custom", "--root", str(root), "--out", str(out), "--workers", "2",
           "--shard-samples", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=ENV)
    try:
        wait_for(out / "train/manifest.json")
        os.killpg(proc.pid, signal.SIGSTOP)
        (os.killpg if group else os.kill)(proc.pid, sig)
        os.killpg(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def stopped_by(root: Path, out: Path, sig: signal.Signals, group: bool, code: int) -> tuple[str, str]:
    """``stop_mid_run``, then what every stop must show: exit ``code``, a first line naming the signal and
    ``--resume``, no traceback. Returns that line and the whole stderr."""
    result = stop_mid_run(root, out, sig, group)
    assert result.returncode == code, result.stderr
    line = first_line(result.stderr)
    assert f"stopped by {sig.name}" in line and "--resume" in line, line
    assert "Traceback" not in result.stderr
    return line, result.stderr


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, many_videos):
    out = tmp_path / "out"
    line, stderr = stopped_by(many_videos, out, signal.SIGINT, group=True, code=130)
    assert "KeyboardInterrupt" not in stderr  # workers stay quiet
    manifest = manifest_of(out)
    assert manifest["complete"] is False and 1 <= manifest["counts"]["written"] < 40
    assert len(sample_meta(out)) == manifest["counts"]["written"]  # no shard on disk that the manifest misses
    assert_no_leftovers(out)
    command = shlex.split(line.split("run: ", 1)[1])
    assert command[:3] == ["vatt", "preprocess", "custom"] and command[-1] == "--resume"
    again = vatt(*command[1:])
    assert again.returncode == 0, again.stderr
    manifest = manifest_of(out)
    assert manifest["complete"] is True and manifest["counts"]["written"] == 40
    assert manifest["counts"]["flagged"] == {"audio_padded": 1}  # counted once, whichever run wrote v00
    assert sorted(sample_meta(out)) == [f"{i + 1:06d}_v{i:02d}" for i in range(40)]
    assert_no_leftovers(out)


def test_sigterm_stops_with_143_and_keeps_finished_shards(tmp_path, many_videos):
    out = tmp_path / "out"
    stopped_by(many_videos, out, signal.SIGTERM, group=False, code=143)
    manifest = manifest_of(out)
    assert manifest["complete"] is False
    assert len(sample_meta(out)) == manifest["counts"]["written"] >= 1  # every listed shard is whole
    assert_no_leftovers(out)


def test_second_run_into_the_same_out_is_refused_naming_the_owner(tmp_path, many_videos):
    out = tmp_path / "out"
    first = subprocess.Popen([str(VATT), "preprocess", "custom", "--root", str(many_videos), "--out", str(out),
                              "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(out / ".vatt.lock")
        os.kill(first.pid, signal.SIGSTOP)  # hold the first run mid-way, lock taken
        second = vatt("preprocess", "custom", "--root", many_videos, "--out", out, "--workers", "1")
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        line = first_line(second.stderr)
        assert f"PID {first.pid}" in line and "preprocessing" in line, line
        assert "Traceback" not in second.stderr
        assert first.wait(timeout=TIMEOUT) == 0  # the refused run took nothing from the first one
    finally:
        if first.poll() is None:
            first.kill()
    assert manifest_of(out)["counts"]["written"] == 40
    assert_no_leftovers(out)


# ------------------------------------------------------------------------------------------- finding files


def kinetics_layout(root: Path, stems: list[str]) -> None:
    """train.csv with one row per stem (youtube id, 0-10 s), label 'a'."""
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"a,{stem},0,10,train\n" for stem in stems)
    (root / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n" + rows)


def test_videos_with_any_extension_are_found(tmp_path):
    root = tmp_path / "k400"
    kinetics_layout(root, ["avi", "mkv", "ogg", "mpeg"])
    video(root / "train/a/avi_000000_000010.avi", codec="mpeg4")
    video(root / "train/a/mkv_000000_000010.mkv")
    video(root / "train/a/ogg_000000_000010.ogg", audio=False, codec="libvpx")  # VP8 video in Ogg
    video(root / "train/a/mpeg_000000_000010.mpeg", audio=False, codec="mpeg1video")
    (root / "train/a/avi_000000_000010.json").write_text("{}")  # sidecars never count as the video
    result = vatt("preprocess", "kinetics400", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "out")
    assert manifest["counts"]["written"] == 4 and manifest["counts"]["skipped"] == {}
    sources = {m["source"] for m in sample_meta(tmp_path / "out").values()}
    assert sources == {"train/a/avi_000000_000010.avi", "train/a/mkv_000000_000010.mkv",
                       "train/a/ogg_000000_000010.ogg", "train/a/mpeg_000000_000010.mpeg"}
    assert_no_leftovers(tmp_path / "out")


def test_mp4_is_preferred_when_several_files_share_a_stem(tmp_path):
    root = tmp_path / "k400"
    kinetics_layout(root, ["both"])
    video(root / "train/a/both_000000_000010.avi", 1.0, codec="mpeg4")
    video(root / "train/a/both_000000_000010.mp4", 2.0)
    video(root / "train/a/both_000000_000010.webm", 1.0, audio=False, codec="libvpx")
    result = vatt("preprocess", "kinetics400", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    [meta] = sample_meta(tmp_path / "out").values()
    assert meta["source"] == "train/a/both_000000_000010.mp4" and abs(meta["duration"] - 2.0) < 0.05
    assert_no_leftovers(tmp_path / "out")


def test_howto100m_finds_an_avi(tmp_path):
    root = tmp_path / "howto"
    video(root / "videos/vid_one.avi", 2.0, codec="mpeg4")
    (root / "caption.json").write_text(json.dumps({"vid_one": {"start": [0.0], "end": [1.5], "text": ["stir"]}}))
    result = vatt("preprocess", "howto100m", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(tmp_path / "out")
    assert manifest["counts"]["written"] == 1 and manifest["counts"]["skipped"] == {}
    assert_no_leftovers(tmp_path / "out")


def test_summary_names_top_skip_reasons_with_an_example_and_the_manifest(tmp_path):
    root = tmp_path / "k400"
    kinetics_layout(root, ["good", "gone1", "gone2", "broken"])
    video(root / "train/a/good_000000_000010.mp4")
    corrupt_middle(root / "train/a/broken_000000_000010.mp4")
    result = vatt("preprocess", "kinetics400", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("top skip reasons:")
    missing, corrupt = lines[start + 1], lines[start + 2]  # most frequent first
    assert missing.startswith("  missing (2), e.g. gone1_000000_000010: no video file named"), missing
    assert corrupt.startswith("  corrupt (1), e.g. ") and "broken_000000_000010.mp4: corrupt:" in corrupt, corrupt
    assert f"manifest: {tmp_path / 'out/train/manifest.json'}" in lines
    assert_no_leftovers(tmp_path / "out")
