"""`vatt index build` over a folder of raw media, through the installed `vatt`: which windows it cuts (hand-computed
from ``window_starts``), what it stores for each (both spaces' rows computed here independently, thumbnails read
back with the frame counter), the skip record of a corrupt file, piped progress, text and audio queries against a
float64 brute force, `vatt index list | info | remove`, and bad input (exit 2, one line, nothing left behind).

Crashes, signals, parts, torchrun, `add` and approximate search are in ``test_index_parts.py`` (slower).
"""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mediagen import make_audio_only, make_bad_files, make_video, read_counter, write_tone_file
from safetensors.numpy import load_file

from vattcli.api import build_model, load_model, load_tokenizer
from vattcli.checkpoints import save_checkpoint
from vattcli.config import dump_yaml, load_config
from vattcli.core.model import Classifier, build_backbone
from vattcli.data.media import decode_clip, read_audio
from vattcli.data.text import train_tokenizer
from vattcli.data.transforms import center_crop, to_model_range
from vattcli.eval.query import clip_spec_from_checkpoint, encode_text
from vattcli.locking import FolderLock
from vattcli.train.config import PretrainConfig

VATT = str(Path(sys.executable).parent / "vatt")
CAPTIONS = ["a red square moving left", "a blue circle moving up", "a green triangle moving right", "a tone"]
# The windows of the media folder (window 0.8 s, stride 0.4 s), by the rule of ``window_starts``: full windows at
# 0, 0.4, ... while they fit, then one ending at the end if at least stride / 2 = 0.2 s is left after the last.
# a.mp4 (2.0 s): 0, 0.4, 0.8, 1.2 (the last ends at 2.0, nothing left). sub/b.mp4 (1.5 s): 0, 0.4 (ends 1.2), then
# 0.3 s left: a tail window 0.7-1.5. short.flac (0.5 s, shorter than a window): one window at 0, ending at 0.5.
# tone.m4a (1.3 s): 0, 0.4 (ends 1.2), 0.1 s left (< 0.2): no tail. broken.mp4: skipped. Sorted by path, start.
EXPECTED = [("a.mp4", 0.0, 0.8), ("a.mp4", 0.4, 1.2), ("a.mp4", 0.8, 1.6), ("a.mp4", 1.2, 2.0),
            ("sub/b.mp4", 0.0, 0.8), ("sub/b.mp4", 0.4, 1.2), ("sub/b.mp4", 0.7, 1.5),
            ("sub/deep/short.flac", 0.0, 0.5), ("sub/deep/tone.m4a", 0.0, 0.8), ("sub/deep/tone.m4a", 0.4, 1.2)]


def vatt(*args: object, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([VATT, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start(args: list, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([VATT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def vatt_all(commands: dict[str, list], env: dict) -> dict[str, subprocess.CompletedProcess]:
    """Several `vatt` commands at once (each is mostly Python start-up, so this saves time), by name."""
    procs = {name: start(args, env) for name, args in commands.items()}
    return {name: finish(proc) for name, proc in procs.items()}


def make_world(root: Path) -> dict:
    """A vatt-tiny checkpoint with a tokenizer, and a media folder: two counter videos of different lengths (taller
    than wide, so the centre crop keeps the whole counter), two audio-only files, a corrupt MP4 and two files a walk
    must pass over (a hidden video, a text file)."""
    root = root.resolve()
    tokenizer = train_tokenizer(CAPTIONS * 8, root / "sp", vocab_size=32)
    torch.manual_seed(0)
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", ["data.train={s: synthetic}"])
    ckpt = save_checkpoint(root / "run", 1, build_model(cfg.model), config=dump_yaml(cfg), tokenizer=tokenizer)
    spec = clip_spec_from_checkpoint(ckpt)
    assert (spec.frames, spec.fps, spec.size, spec.audio_rate) == (8, 10.0, 64, 16000)  # a 0.8 s window
    media = root / "media"
    (media / "sub" / "deep").mkdir(parents=True)
    videos = {"a.mp4": make_video(media / "a.mp4", fps=10.0, duration=2.0, size=(80, 64), audio_rate=16000),
              "sub/b.mp4": make_video(media / "sub" / "b.mp4", fps=10.0, duration=1.5, size=(72, 64),
                                      audio_rate=16000)}
    make_audio_only(media / "sub" / "deep" / "tone.m4a", duration=1.3, rate=16000)
    write_tone_file(media / "sub" / "deep" / "short.flac", 16000, 0.5)
    (root / "bad-media").mkdir()
    shutil.copy(make_bad_files(root / "bad-media")["truncated"], media / "broken.mp4")
    make_video(media / ".hidden.mp4", duration=1.0, audio_rate=None)
    (media / "notes.txt").write_text("not media\n")
    env = {**os.environ, "VATT_HOME": str(root / "vatt-home"), "OMP_NUM_THREADS": "1"}
    return {"root": root, "ckpt": ckpt, "media": media, "videos": videos, "home": root / "indexes", "env": env}


def build_args(world: dict, name: str, *extra: object, media: Path | None = None) -> list:
    return ["index", "build", name, "--videos", media or world["media"], "--ckpt", world["ckpt"], "--window", "0.8",
            "--stride", "0.4", "--index-home", world["home"], *extra]


def items_of(folder: Path) -> list[tuple[str, float, float]]:
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    return [(item["source"], item["start"], item["end"]) for item in items]


def read_counter_jpeg(data: bytes) -> tuple[tuple[int, ...], int]:
    """(shape, frame counter) of a JPEG, decoded with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return frame.shape, read_counter(frame)


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: equal trees mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_world(tmp_path_factory.mktemp("index-build"))


@pytest.fixture(scope="module")
def built(world) -> subprocess.CompletedProcess:
    """The reference build: two decoding workers (files finish out of order), batches of 3, exact search."""
    done = vatt(*build_args(world, "main", "--workers", "2", "--batch", "3", "--search", "exact"), env=world["env"])
    assert done.returncode == 0, done.stderr
    return done


def expected(world: dict) -> list[tuple[str, float, float]]:
    return [(str(world["media"] / name), start, end) for name, start, end in EXPECTED]


# ---------------------------------------------------------------------------------------------- what is stored


def test_build_cuts_every_media_file_into_the_hand_computed_windows(built, world):
    folder = world["home"] / "main"
    info = json.loads((folder / "index.json").read_text())
    assert info["num_items"] == 10 and info["counts"] == {"vt": 7, "va": 10} and info["num_sources"] == 5
    assert info["settings"]["window"] == 0.8 and info["settings"]["stride"] == 0.4
    assert items_of(folder) == expected(world)
    tensors = load_file(folder / "embeddings.safetensors")
    assert tensors["rows_vt"].tolist() == list(range(7))  # a.mp4 and sub/b.mp4: 4 + 3 video windows
    assert tensors["rows_va"].tolist() == list(range(10))  # ... and the 3 windows of the two audio-only files
    assert tensors["video_vt"].shape == (7, 32) and tensors["video_va"].shape == (10, 64)
    for space in ("video_vt", "video_va"):
        np.testing.assert_allclose(np.linalg.norm(tensors[space], axis=1), 1.0, atol=1e-5)
    assert sorted(os.listdir(world["home"])) == ["main"]  # no build folder, no temporary index left


def test_corrupt_file_is_recorded_with_its_reason_and_reported_in_one_line(built, world):
    sources = [json.loads(line) for line in (world["home"] / "main" / "sources.jsonl").read_text().splitlines()]
    media = world["media"]
    assert [s["path"] for s in sources] == [str(media / n) for n in ("a.mp4", "broken.mp4", "sub/b.mp4",
                                                                     "sub/deep/short.flac", "sub/deep/tone.m4a")]
    assert [s.get("windows") for s in sources] == [4, None, 3, 1, 2]
    assert [s.get("has_video") for s in sources] == [True, None, True, False, False]
    assert sources[1]["skipped"] == "corrupt" and "broken.mp4" in sources[1]["message"]
    skipped = [line for line in built.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped 1 file(s) (corrupt")
    assert skipped[0].count(str(media / "broken.mp4")) == 1


def test_thumbnails_are_jpegs_of_each_video_windows_middle_frame_and_absent_for_audio(built, world):
    folder = world["home"] / "main"
    table = load_file(folder / "embeddings.safetensors")["thumbs"]
    data = (folder / "thumbs.bin").read_bytes()
    for row, (name, start, _) in enumerate(EXPECTED):
        offset, length = (int(x) for x in table[row])
        if name.endswith((".m4a", ".flac")):
            assert length == 0
            continue
        shape, counter = read_counter_jpeg(data[offset:offset + length])
        # the middle model frame: frame 4 of 8 at start + 4 * 0.1 s, centre-cropped to 64 px, shown at 112 px
        assert shape == (112, 112, 3) and counter == world["videos"][name].frame_at(start + 0.4), (name, start)


def test_stored_rows_are_the_models_embeddings_of_those_windows(built, world):
    folder = world["home"] / "main"
    tensors = load_file(folder / "embeddings.safetensors")
    model = load_model(world["ckpt"])
    media = world["media"]
    with torch.no_grad():
        for row, name, start in ((1, "a.mp4", 0.4), (6, "sub/b.mp4", 0.7)):  # a full window and a tail window
            clip = decode_clip(media / name, start, 8, 10.0, audio_rate=16000, need_audio=False)
            out = model(video=to_model_range(center_crop(clip.frames, 64))[None])
            for space in ("vt", "va"):
                cosine = F.cosine_similarity(out[f"video_{space}"][0], torch.from_numpy(tensors[f"video_{space}"][row]),
                                             dim=0)
                assert cosine >= 0.9999, (name, start, space)
        for row, name, start in ((7, "sub/deep/short.flac", 0.0), (9, "sub/deep/tone.m4a", 0.4)):
            samples, _ = read_audio(media / name, rate=16000, start=start, duration=0.8)
            audio = np.zeros(12800, np.float32)  # 0.8 s at 16 kHz, zero-padded past the file's end
            audio[:len(samples)] = samples[:12800]
            out = model(audio=torch.from_numpy(audio)[None])["audio_va"][0]
            assert F.cosine_similarity(out, torch.from_numpy(tensors["video_va"][row]), dim=0) >= 0.9999, name


def test_piped_progress_shows_files_done_of_total_and_the_eta(built):
    lines = built.stderr.splitlines()
    assert any("files 5/5" in line and "ETA" in line for line in lines), built.stderr
    assert "built index" in lines[-1] and "10 windows from 5 files" in lines[-1]


# ---------------------------------------------------------------------------------------------- searching it


@pytest.fixture(scope="module")
def queries(built, world) -> dict[str, subprocess.CompletedProcess]:
    """A text query (top 5) and an audio query with short.flac (0.5 s: its middle window is the whole file, at 0)."""
    index = ["--index", "main", "--index-home", world["home"], "--json"]
    return vatt_all({"text": ["retrieve", CAPTIONS[2], *index, "-k", "5"],
                     "audio": ["retrieve", "--audio", world["media"] / "sub/deep/short.flac", *index, "-k", "3"]},
                    world["env"])


def test_text_query_ranks_video_windows_as_a_float64_brute_force_does(queries, world):
    done = queries["text"]
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    tensors = load_file(world["home"] / "main" / "embeddings.safetensors")
    model = load_model(world["ckpt"])
    query = encode_text(model, load_tokenizer(world["ckpt"]), [CAPTIONS[2]], max_len=16)[0].double().numpy()
    matrix = tensors["video_vt"].astype(np.float64)
    scores = matrix @ (query / np.linalg.norm(query)) / np.linalg.norm(matrix, axis=1)
    order = np.argsort(-scores, kind="stable")[:5]
    wanted = [expected(world)[int(tensors["rows_vt"][i])] for i in order]
    assert [(r["source"], r["start"], r["end"]) for r in results] == wanted
    np.testing.assert_allclose([r["score"] for r in results], scores[order], atol=1e-5)


def test_audio_query_finds_the_audio_only_window_it_was_cut_from(queries, world):
    done = queries["audio"]
    assert done.returncode == 0, done.stderr
    top = json.loads(done.stdout)["results"][0]
    source = str(world["media"] / "sub/deep/short.flac")
    assert (top["source"], top["start"], top["end"]) == (source, 0.0, 0.5) and top["score"] > 0.9999


# ---------------------------------------------------------------------------------------------- list, info, remove


def test_list_and_info_describe_the_indexes_under_the_home(built, world):
    home = world["home"]
    shutil.copytree(home / "main", world["root"] / "list-home" / "main")
    (world["root"] / "list-home" / ".pending.build").mkdir()
    listing = ["--index-home", world["root"] / "list-home"]
    table, as_json, info = vatt_all({"table": ["index", "list", *listing],
                                     "json": ["index", "list", "--json", *listing],
                                     "info": ["index", "info", "main", *listing]}, world["env"]).values()
    assert table.returncode == as_json.returncode == info.returncode == 0, (table.stderr, info.stderr)
    row = next(line for line in table.stdout.splitlines() if " main " in line)
    assert row.split("│")[2].strip() == "10" and row.split("│")[3].strip() == "5"
    assert "build in progress: pending" in table.stderr
    listed = json.loads(as_json.stdout)
    assert [(r["name"], r["items"], r["sources"]) for r in listed["indexes"]] == [("main", 10, 5)]
    assert listed["building"] == ["pending"]
    described = json.loads(info.stdout)
    assert described["num_items"] == 10 and described["counts"] == {"vt": 7, "va": 10}
    assert described["folder"] == str(world["root"] / "list-home" / "main") and described["bytes"] > 0


def _answer_no(args: list, env: dict) -> tuple[subprocess.Popen, int]:
    """`vatt` with a terminal as its stdin, on which the user answers "n" (and the terminal's other end)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([VATT, *map(str, args)], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    os.close(slave)
    os.write(master, b"n\n")
    return proc, master


def test_remove_asks_for_yes_refuses_unknown_names_and_running_builds(built, world):
    home, env = world["root"] / "remove-home", world["env"]
    shutil.copytree(world["home"] / "main", home / "old")
    part = home / ".old.build" / "part-001of001"
    part.mkdir(parents=True)
    (part / "chunk-000001.json").write_text("{}")
    (home / ".gone.build" / "part-001of002").mkdir(parents=True)  # a build that never made an index
    asking, terminal = _answer_no(["index", "remove", "old", "--index-home", home], env)
    with FolderLock(part, what="index build"):  # a live build of this index holds its part
        refused = vatt_all({"--yes": ["index", "remove", "old", "--index-home", home],  # stdin is no terminal
                            "'nosuch' not found": ["index", "remove", "nosuch", "--yes", "--index-home", home],
                            "in use by another index build": ["index", "remove", "old", "--yes", "--index-home",
                                                              home]}, env)
    for words, done in refused.items():
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr
    declined = finish(asking)
    os.close(terminal)
    assert declined.returncode == 0 and declined.stderr.startswith(f"kept {home / 'old'}"), declined.stderr
    assert (home / "old" / "index.json").is_file() and part.is_dir()
    done = vatt_all({"old": ["index", "remove", "old", "--yes", "--index-home", home],
                     "gone": ["index", "remove", "gone", "--yes", "--index-home", home]}, env)
    assert done["old"].returncode == done["gone"].returncode == 0, (done["old"].stderr, done["gone"].stderr)
    assert done["old"].stderr.strip() == f"removed {home / 'old'} and the unfinished build {home / '.old.build'}"
    assert done["gone"].stderr.strip() == f"removed the unfinished build {home / '.gone.build'}"
    assert os.listdir(home) == []


# ---------------------------------------------------------------------------------------------- bad input


def _classifier_checkpoint(root: Path) -> Path:
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", ["data.train={s: synthetic}"])
    model = Classifier(build_backbone(cfg.model, "video"), 3)
    return save_checkpoint(root / "classifier", 1, model, config=dump_yaml(cfg) + "task: toy\n")


def _bad_cases(world: dict) -> dict[str, tuple[list, dict, str]]:
    """case -> (arguments after `vatt index build NAME`, extra environment, words the one line must hold)."""
    root, media, ckpt = world["root"], world["media"], world["ckpt"]
    for folder in ("empty", "texts"):
        (root / folder).mkdir(exist_ok=True)
    (root / "texts" / "readme.txt").write_text("not media\n")
    (root / "texts" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    listing = root / "list.txt"
    listing.write_text(f"# two files\n{media / 'a.mp4'}\n{media / 'gone.mp4'}\n")
    cut = ["--window", "0.8", "--stride", "0.4"]
    src = ["--videos", media, "--ckpt", ckpt, *cut]
    return {
        "missing folder": (["--videos", root / "nope", "--ckpt", ckpt], {}, "nope: not a folder"),
        "empty folder": (["--videos", root / "empty", "--ckpt", ckpt], {}, "no media files"),
        "only non-media": (["--videos", root / "texts", "--ckpt", ckpt], {}, "no media files"),
        "videos and files": (["--videos", media, "--files", listing, "--ckpt", ckpt], {}, "--videos"),
        "neither": (["--ckpt", ckpt], {}, "--videos"),
        "window 0": ([*src, "--window", "0"], {}, "--window"),
        "stride -1": ([*src, "--stride", "-1"], {}, "--stride"),
        "batch 0": ([*src, "--batch", "0"], {}, "--batch"),
        "workers -1": ([*src, "--workers", "-1"], {}, "--workers"),
        "memory budget": ([*src, "--memory-budget", "lots"], {}, "--memory-budget lots"),
        "infinite memory budget": ([*src, "--memory-budget", "inf"], {}, "--memory-budget inf"),
        "search kind": ([*src, "--search", "fastest"], {}, "--search"),
        "missing file in list": (["--files", listing, "--ckpt", ckpt, *cut], {}, f"{listing}:3"),
        "part 3/2": ([*src, "--part", "3/2"], {}, "--part 3/2"),
        "part under torchrun": ([*src, "--part", "1/2"], {"RANK": "0", "WORLD_SIZE": "2"}, "torchrun"),
        "missing checkpoint": (["--videos", media, "--ckpt", root / "no-ckpt", *cut], {}, "no-ckpt"),
        "classifier checkpoint": (["--videos", media, "--ckpt", _classifier_checkpoint(root), *cut], {},
                                  "classifier"),
        "data with videos": ([*src, "--data", root / "shards"], {}, "--data"),
    }


@pytest.fixture(scope="module")
def bad_runs(world, built) -> dict[str, tuple[subprocess.CompletedProcess, Path, dict]]:
    """Every bad invocation at once (each in a home of its own), plus one over the existing index ``main``."""
    cases = _bad_cases(world)
    before = tree(world["home"])
    procs = {}
    for case, (args, extra, _) in cases.items():
        home = world["root"] / "bad" / case.replace(" ", "-") / "home"
        home.parent.mkdir(parents=True)
        procs[case] = start(["index", "build", "x", *args, "--index-home", home], {**world["env"], **extra},
                            cwd=home.parent), home
    results = {case: (finish(proc), home) for case, (proc, home) in procs.items()}
    over = {"existing index": build_args(world, "main"),  # and --resume with no build of it to resume
            "resume over existing index": build_args(world, "main", "--resume")}
    results.update({case: (done, world["home"]) for case, done in vatt_all(over, world["env"]).items()})
    return results, before, {**{c: w for c, (_, _, w) in cases.items()}, **{c: "--overwrite" for c in over}}


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "only non-media", "videos and files", "neither",
                                  "window 0", "stride -1", "batch 0", "workers -1", "memory budget",
                                  "infinite memory budget", "search kind", "missing file in list", "part 3/2",
                                  "part under torchrun", "missing checkpoint", "classifier checkpoint",
                                  "data with videos", "existing index", "resume over existing index"])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(bad_runs, world, case):
    results, before, words = bad_runs
    done, home = results[case]
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and words[case] in lines[0], lines[0]
    if case.endswith("existing index"):
        assert tree(world["home"]) == before
    else:
        assert not home.exists() and os.listdir(home.parent) == [], os.listdir(home.parent)


def test_folder_of_only_corrupt_media_exits_2_and_keeps_no_build(built, world):
    folder = world["root"] / "only-corrupt"
    folder.mkdir()
    shutil.copy(world["media"] / "broken.mp4", folder / "x.mp4")
    home = world["root"] / "only-corrupt-home"
    done = vatt("index", "build", "x", "--videos", folder, "--ckpt", world["ckpt"], "--workers", "0",
                "--index-home", home, env=world["env"])
    assert done.returncode == 2 and "no window of any file could be indexed" in done.stderr.splitlines()[-1]
    assert "x.mp4" in done.stderr and not (home.exists() and os.listdir(home)), os.listdir(home)


def test_an_approximate_index_below_its_recall_target_is_reported_with_the_measured_recall():
    from types import SimpleNamespace

    from vattcli.indexing.run import recall_warnings

    plans = {"vt": {"kind": "exact"},
             "va": {"kind": "ivf", "nlist": 4096, "nprobe": 4096, "recall_at_10": 0.4913, "target_recall": 0.95,
                    "target_met": False}}
    lines = recall_warnings(SimpleNamespace(info={"search": plans}))
    assert lines == ["warning: va: the approximate index reaches recall@10 0.491, below the target 0.95, even "
                     "scanning 4096 of 4096 lists; rebuild with --search exact for exact results"]
    plans["va"]["target_met"] = True
    assert recall_warnings(SimpleNamespace(info={"search": plans})) == []
