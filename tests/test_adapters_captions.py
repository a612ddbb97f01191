"""Caption datasets (HowTo100M, YouCook2, MSR-VTT) and custom JSONL manifests: official annotation files written
here, tiny counter videos from mediagen (frame i shows the number i), the real preprocessing run, shards read back.

Expected windows and neighbour sets are worked out by hand in the comments, not computed with the code under test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mediagen import audio_time, make_video, read_counter, write_tone_file

from vattcli.data.adapters import get_adapter
from vattcli.data.adapters.base import Skip, WorkItem
from vattcli.data.media import decode_clip
from vattcli.data.preprocess import Settings, run_preprocess
from vattcli.data.shardfiles import iter_tar_samples
from vattcli.data.shards import read_manifest
from vattcli.errors import DataError

SIZE = (48, 64)


def read_samples(folder: Path) -> dict[str, dict]:
    manifest = read_manifest(folder / "manifest.json")
    samples = {}
    for shard in manifest["shards"]:
        for sample in iter_tar_samples(str(folder / shard["name"]), Counter()):
            samples[sample["__key__"]] = sample
    return samples


def first_counter(sample: dict, fps: float) -> int:
    clip = decode_clip(sample["mp4"], 0.0, 1, fps, need_audio=False)
    return read_counter(clip.frames[0])


def video(path: Path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_video(path, size=SIZE, **kwargs)


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ HowTo100M

HOWTO_CAPTIONS = {
    "vidA": {"start": [0.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
             "end": [1.0, 3.0, 3.0, 8.0, 5.5, 6.4, 7.2],
             "text": ["first", "second", "  ", "third", "fourth", "fifth", "sixth"]},
    "vidB": {"start": [0.0], "end": [2.0], "text": ["not on disk"]},
}
# Caption mid-points of vidA: 0 -> 0.75, 1 -> 2.5, 3 -> 6.0, 4 -> 5.25, 5 -> 6.2, 6 -> 7.1 (2 is empty).
# Windows, widened around the mid-point to 3.2 s: 0 -> [-0.85, 2.35] shifted to [0, 3.2]; 1 -> [0.9, 4.1];
# 3 -> [4, 8] (already 4 s long); 4 -> [3.65, 6.85]; 5 -> [4.6, 7.8]; 6 -> [5.5, 8.7].
HOWTO_WINDOWS = {0: (0.0, 3.2), 1: (0.9, 4.1), 3: (4.0, 8.0), 4: (3.65, 6.85), 5: (4.6, 7.8), 6: (5.5, 8.7)}
# Three nearest (own first), by mid-point distance:
# 1 (2.5): 0 at 1.75, 4 at 2.75, 3 at 3.5   4 (5.25): 3 at 0.75, 5 at 0.95, 6 at 1.85   0 (0.75): 1, 4, 3
HOWTO_NEAREST3 = {0: ["first", "second", "fourth"], 1: ["second", "first", "fourth"],
                  4: ["fourth", "third", "fifth"], 6: ["sixth", "fifth", "third"]}


@pytest.fixture(scope="module")
def howto(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("howto")
    write_json(root / "caption.json", HOWTO_CAPTIONS)
    (root / "HowTo100M_v1.csv").write_text("category_1,video_id,rank,task_id,category_2\n"
                                           "Food and Entertaining,vidA,3,1234,Recipes\n", encoding="utf-8")
    video(root / "videos" / "vidA.mp4", fps=10.0, duration=8.0, audio_rate=16000)
    adapter = get_adapter("howto100m", num_captions=3)
    settings = Settings(fps=10.0, short_side=48, audio_rate=16000)
    summary = run_preprocess(adapter, root, root / "out", "train", settings=settings, workers=1)
    return root, summary, read_samples(root / "out" / "train")


def test_howto_counts_and_skips(howto) -> None:
    _, summary, samples = howto
    assert summary["written"] == 6
    assert summary["skipped"] == {"empty_caption": 1, "missing": 1}
    assert sorted(samples) == [f"vidA_{i:05d}" for i in (0, 1, 3, 4, 5, 6)]


def test_howto_windows_widen_to_3_2_s_and_clamp_at_0(howto) -> None:
    _, _, samples = howto
    for index, (start, end) in HOWTO_WINDOWS.items():
        meta = samples[f"vidA_{index:05d}"]["json"]
        assert meta["start"] == pytest.approx(start, abs=1e-6)
        assert meta["end"] == pytest.approx(end, abs=1e-6)
        assert meta["caption_index"] == index
        # the shard's first frame is the source frame on screen at the window start (10 fps source)
        assert first_counter(samples[f"vidA_{index:05d}"], 10.0) == int(start * 10 + 1e-6)
    # a window past the end of the 8 s video stops with the video
    assert samples["vidA_00006"]["json"]["duration"] == pytest.approx(2.5, abs=0.11)
    assert samples["vidA_00001"]["json"]["duration"] == pytest.approx(3.2, abs=0.11)


def test_howto_nearest_captions_own_first(howto) -> None:
    _, _, samples = howto
    for index, expected in HOWTO_NEAREST3.items():
        meta = samples[f"vidA_{index:05d}"]["json"]
        assert meta["captions"] == expected
        assert len(meta["caption_starts"]) == len(meta["caption_ends"]) == 3
    meta = samples["vidA_00001"]["json"]
    assert meta["caption_starts"] == [2.0, 0.5, 5.0] and meta["caption_ends"] == [3.0, 1.0, 5.5]
    assert meta["video_id"] == "vidA" and meta["dataset"] == "howto100m" and meta["source"] == "videos/vidA.mp4"
    assert meta["category_1"] == "Food and Entertaining" and meta["task_id"] == "1234"
    assert "flac" in samples["vidA_00001"]


def test_howto_default_five_captions_and_max_windows(howto) -> None:
    root, _, _ = howto
    items = [e for e in get_adapter("howto100m").items(root, "train") if isinstance(e, WorkItem)]
    windows = {w.meta["caption_index"]: w for w in items[0].windows}
    # caption 1 (mid 2.5): then 0 (1.75), 4 (2.75), 3 (3.5), 5 (3.7)
    assert windows[1].meta["captions"] == ["second", "first", "fourth", "third", "fifth"]
    limited = [e for e in get_adapter("howto100m", max_windows_per_video=2).items(root, "train")
               if isinstance(e, WorkItem)]
    # 6 usable captions, 2 evenly spaced: the 1st and the 4th (caption indices 0 and 4)
    assert [w.meta["caption_index"] for w in limited[0].windows] == [0, 4]


def test_howto_raw_captions_option_and_bad_files(tmp_path: Path) -> None:
    write_json(tmp_path / "raw_caption.json", {"v": {"start": [0], "end": [1], "text": ["Raw Text"]}})
    (tmp_path / "v.mkv").write_bytes(b"")  # found by stem and extension; not decoded here
    entries = list(get_adapter("howto100m", captions="raw_caption.json").items(tmp_path, "train"))
    assert entries[0].windows[0].meta["captions"] == ["Raw Text"] and entries[0].source.suffix == ".mkv"
    with pytest.raises(DataError, match="caption.json"):
        list(get_adapter("howto100m").items(tmp_path, "train"))
    write_json(tmp_path / "caption.json", ["not", "a", "dict"])
    with pytest.raises(DataError, match="video_id"):
        list(get_adapter("howto100m").items(tmp_path, "train"))
    write_json(tmp_path / "caption.json", {"v": {"start": [0], "end": [1], "text": ["x"]}})
    (tmp_path / "HowTo100M_v1.csv").write_text("id,category\nv,Food\n", encoding="utf-8")
    with pytest.raises(DataError, match="video_id, task_id, rank, category_1, category_2"):
        list(get_adapter("howto100m").items(tmp_path, "train"))


# ------------------------------------------------------------------------------------------------ YouCook2

YOUCOOK = {"database": {
    "ycA": {"subset": "validation", "recipe_type": "113", "duration": 6.0, "annotations": [
        {"id": 0, "segment": [0.52, 2.0], "sentence": "crack the eggs"},
        {"id": 1, "segment": [2.5, 4.6], "sentence": "whisk them"},
        {"id": 2, "segment": [4.6, 5.5], "sentence": ""}]},
    "ycB": {"subset": "validation", "recipe_type": "113", "duration": 9.0, "annotations": [
        {"id": 0, "segment": [1, 2], "sentence": "missing video"}]},
    "ycT": {"subset": "training", "recipe_type": "201", "duration": 9.0, "annotations": [
        {"id": 0, "segment": [1, 2], "sentence": "a training segment"}]},
}}


def test_youcook2_one_sample_per_validation_segment(tmp_path: Path) -> None:
    write_json(tmp_path / "youcookii_annotations_trainval.json", YOUCOOK)
    video(tmp_path / "validation" / "113" / "ycA.mp4", fps=25.0, duration=6.0, audio_rate=None)
    summary = run_preprocess(get_adapter("youcook2"), tmp_path, tmp_path / "out", "val",
                             settings=Settings(fps=25.0, short_side=48), workers=1)
    assert summary["written"] == 2 and summary["skipped"] == {"empty_caption": 1, "missing": 1}
    samples = read_samples(tmp_path / "out" / "val")
    for key, (segment_id, start, end, sentence) in {"ycA_000": (0, 0.52, 2.0, "crack the eggs"),
                                                    "ycA_001": (1, 2.5, 4.6, "whisk them")}.items():
        meta = samples[key]["json"]
        assert meta["captions"] == [sentence] and meta["segment_id"] == segment_id
        assert meta["recipe_type"] == "113" and meta["video_id"] == "ycA"
        assert (meta["start"], meta["end"]) == (start, end)
        assert meta["duration"] == pytest.approx(end - start, abs=0.041)
        # the clip starts at the segment start: counter of the frame on screen then (25 fps), within one frame
        assert abs(first_counter(samples[key], 25.0) - int(start * 25 + 1e-6)) <= 1
    train = list(get_adapter("youcook2").items(tmp_path, "train"))
    assert [(type(e), e.reason) for e in train] == [(Skip, "missing")]


def test_youcook2_without_database_is_a_data_error(tmp_path: Path) -> None:
    write_json(tmp_path / "youcookii_annotations_trainval.json", {"results": {}})
    with pytest.raises(DataError, match="database"):
        list(get_adapter("youcook2").items(tmp_path, "val"))


# ------------------------------------------------------------------------------------------------ MSR-VTT


def test_msrvtt_1k_a_reads_columns_by_name(tmp_path: Path) -> None:
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "video_id,key,sentence,vid_key\nvideo7,ret0,a man is singing,msr7\nvideo9,ret1,a dog runs,msr9\n",
        encoding="utf-8")
    video(tmp_path / "TestVideo" / "video7.mp4", fps=25.0, duration=1.0, audio_rate=None)
    summary = run_preprocess(get_adapter("msrvtt"), tmp_path, tmp_path / "out", "test",
                             settings=Settings(fps=25.0, short_side=48), workers=1)
    assert summary["written"] == 1 and summary["skipped"] == {"missing": 1}
    meta = read_samples(tmp_path / "out" / "test")["video7"]["json"]
    assert meta["captions"] == ["a man is singing"] and meta["video_id"] == "video7"
    assert meta["start"] == 0.0 and meta["end"] is None and meta["duration"] == pytest.approx(1.0, abs=0.041)


def test_msrvtt_train_takes_all_captions_of_the_9k_list(tmp_path: Path) -> None:
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\nvideo1\nvideo2\n", encoding="utf-8")
    write_json(tmp_path / "MSRVTT_data.json", {"videos": [], "sentences": [
        {"video_id": "video1", "caption": "one", "sen_id": 0}, {"video_id": "video3", "caption": "other"},
        {"video_id": "video1", "caption": " "}, {"video_id": "video1", "caption": "two"}]})
    for name in ("video1", "video2"):
        (tmp_path / f"{name}.mp4").write_bytes(b"")  # never decoded here
    entries = list(get_adapter("msrvtt").items(tmp_path, "train"))
    assert entries[0].windows[0].meta["captions"] == ["one", "two"]
    assert isinstance(entries[1], Skip) and entries[1].reason == "empty_caption"


def test_msrvtt_wrong_header_names_the_columns(tmp_path: Path) -> None:
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("id,video,caption\n0,video7,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="MSRVTT_JSFUSION_test.csv: expected columns key, vid_key, video_id, sentence"):
        list(get_adapter("msrvtt").items(tmp_path, "test"))


# ------------------------------------------------------------------------------------------------ custom


def test_custom_manifest_captions_labels_audio_and_bad_lines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    video(data / "a.mp4", fps=25.0, duration=3.0, audio_rate=None)
    video(data / "b.mp4", fps=25.0, duration=1.0, audio_rate=None)
    silent = video(tmp_path / "elsewhere" / "c.mp4", fps=25.0, duration=1.2, audio_rate=None)
    write_tone_file(data / "sound.flac", 16000, 1.2)
    lines = [
        {"video": "a.mp4", "captions": [{"start": 0.4, "end": 0.6, "text": "hello"},
                                        {"start": 2.0, "end": 2.4, "text": "world"},
                                        {"start": 1.0, "end": 1.0, "text": ""}]},
        {"video": "b.mp4", "label": "dog"},
        {"video": str(silent.path), "audio": "sound.flac", "label": "cat"},
        {"audio": "sound.flac", "label": "bird"},
        {"video": "gone.mp4", "label": "dog"},
    ]
    text = "\n".join(json.dumps(line) for line in lines[:2]) + "\n{not json\n\n"
    (data / "manifest.jsonl").write_text(text + "\n".join(json.dumps(line) for line in lines[2:]) + "\n")
    adapter = get_adapter("custom", split="holdout")
    assert "holdout" in adapter.splits and "any_name" in adapter.splits and "../x" not in adapter.splits
    summary = run_preprocess(adapter, data, tmp_path / "out", "holdout",
                             settings=Settings(fps=25.0, short_side=48, audio_rate=16000), workers=2)
    assert summary["written"] == 5
    assert summary["skipped"] == {"bad_row": 1, "missing": 1, "empty_caption": 1}
    manifest = read_manifest(tmp_path / "out" / "holdout" / "manifest.json")
    assert manifest["settings"]["classes"] == ["bird", "cat", "dog"]
    samples = read_samples(tmp_path / "out" / "holdout")
    # captions [0.4, 0.6] -> window [0, 3.2] (clamped), [2.0, 2.4] -> [0.6, 3.8]; the 3 s video ends both early
    hello, world = samples["000001_a_00000"]["json"], samples["000001_a_00001"]["json"]
    assert hello["captions"] == ["hello", "world"] and world["captions"] == ["world", "hello"]
    assert (hello["start"], world["start"]) == (0.0, pytest.approx(0.6))
    assert first_counter(samples["000001_a_00001"], 25.0) == 15
    assert "label" not in hello
    assert samples["000002_b"]["json"]["label"] == 2 and samples["000002_b"]["json"]["label_name"] == "dog"
    cat = samples["000005_c"]
    assert cat["json"]["label"] == 1 and cat["json"]["source"] == str(silent.path)
    # the video has no soundtrack: the FLAC is the separate tone file, from its start
    audio = decode_clip(cat["mp4"], 0.0, 25, 25.0, audio_rate=16000, audio_src=cat["flac"]).audio
    start, score = audio_time(audio, 16000, 0.0, 0.5)
    assert abs(start) < 0.002 and score > 0.9
    bird = samples["000006_sound"]
    assert "mp4" not in bird and bird["json"]["label_name"] == "bird" and "flac" in bird


def test_custom_manifest_as_a_file_and_integer_labels(tmp_path: Path) -> None:
    manifest = tmp_path / "list.jsonl"
    (tmp_path / "x.mp4").write_bytes(b"")
    manifest.write_text('{"video": "x.mp4", "label": 3}\n{"video": "x.mp4", "label": 0}\n[1, 2]\n')
    adapter = get_adapter("custom")
    entries = list(adapter.items(manifest, "train"))
    assert [e.reason for e in entries if isinstance(e, Skip)] == ["bad_row"]
    labels = [e.windows[0].meta["label"] for e in entries if isinstance(e, WorkItem)]
    assert labels == [3, 0] and adapter.classes == ["0", "1", "2", "3"]
    with pytest.raises(DataError, match="manifest"):
        list(adapter.items(tmp_path / "nothing_here", "train"))


def test_caption_windows_never_start_before_zero() -> None:
    from vattcli.data.adapters.howto100m import widen

    # brute force over a grid: length >= 3.2, start >= 0, the caption inside, centred unless shifted at 0
    for start in np.arange(0.0, 5.0, 0.25):
        for length in np.arange(0.0, 5.0, 0.5):
            lo, hi = widen(float(start), float(start + length), 3.2)
            assert lo >= 0 and hi - lo >= 3.2 - 1e-6 and lo <= start and hi >= start + length - 1e-6
            if lo > 0:
                assert (lo + hi) / 2 == pytest.approx(start + length / 2)
