"""Classification adapters (Kinetics, MiT, UCF101, HMDB51, ESC-50, AudioSet, ImageNet) on tiny official layouts.

Each fixture writes the dataset's official annotation files and real media (counter videos with a time tone from
mediagen, each with its own length so a sample's duration tells which file it came from), runs the preprocessing
and reads the shards back. Expected labels and counts are written out by hand from what the fixture wrote.
"""

from __future__ import annotations

import io
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from mediagen import audio_time, draw_counter, make_video, read_counter, write_tone_file
from rich.console import Console

from vattcli.data.adapters import get_adapter
from vattcli.data.adapters.base import Skip, WorkItem
from vattcli.data.media import decode_clip, decode_image
from vattcli.data.media_write import write_image
from vattcli.data.preprocess import Settings, run_preprocess
from vattcli.data.shardfiles import iter_tar_samples
from vattcli.data.shards import read_manifest
from vattcli.errors import DataError

FPS = 25.0


def video(path: Path, frames: int, audio: bool = True) -> None:
    """A 48x64 counter video of ``frames`` frames at 25 fps (duration frames/25 s), with the tone unless ``audio``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    make_video(path, fps=FPS, duration=frames / FPS, size=(48, 64), audio_rate=48000 if audio else None)


def avi(path: Path, frames: int) -> None:
    """A 48x64 counter video in AVI with MPEG-4 part 2 (as UCF101/HMDB51 ship), no audio, ``frames`` at 25 fps.

    Written here rather than with mediagen.make_video, which leaves the codec time base unset so AVI timestamps
    come out shifted by a frame.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, int(FPS))
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_counter(i, 48, 64), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def placeholder(path: Path) -> None:
    """A file that exists but is never decoded (for tests that only look at the adapter's items)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def preprocess(name: str, root: Path, out: Path, split: str, workers: int = 1, **options):
    """Run the preprocessing; return (summary, samples by key, manifest)."""
    adapter = get_adapter(name, **options)
    summary = run_preprocess(adapter, root, out, split, settings=Settings(fps=adapter.fps, short_side=48),
                             workers=workers, console=Console(file=io.StringIO()))
    samples = {}
    for shard in sorted((out / split).glob("*.tar")):
        for sample in iter_tar_samples(str(shard), Counter()):
            samples[sample["__key__"]] = sample
    return summary, samples, read_manifest(out / split)


def items(name: str, root: Path, split: str, **options) -> tuple[list[WorkItem], Counter]:
    adapter = get_adapter(name, **options)
    entries = list(adapter.items(root, split))
    works = [e for e in entries if isinstance(e, WorkItem)]
    return works, Counter(e.reason for e in entries if isinstance(e, Skip))


def first_counters(mp4: bytes, n: int = 3) -> list[int]:
    clip = decode_clip(mp4, 0.0, n, fps=FPS, need_audio=False)
    return [read_counter(frame) for frame in clip.frames]


def labels_of(samples: dict) -> dict[str, tuple]:
    return {k: (s["json"]["label"], s["json"]["label_name"]) for k, s in samples.items()}


# ---------------------------------------------------------------------------------------------------- Kinetics


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinetics")
    write(root / "train.csv", "label,youtube_id,time_start,time_end,split\n"
          "abseiling,aaa,0,10,train\n"
          "air drumming,-bb_b,5,15,train\n"
          "abseiling,ccc,1,11,train\n"
          "abseiling,ddd,0,10,train\n"
          "air drumming,eee,0,10,train\n"
          "air drumming,fff,30,40,train\n")
    video(root / "train/abseiling/aaa_000000_000010.mp4", 10)
    video(root / "train/air drumming/-bb_b_000005_000015.mp4", 12)
    placeholder(root / "train/abseiling/ddd_000000_000010.mp4")  # zero bytes
    write(root / "train/air drumming/eee_000000_000010.mp4", "not a video at all\n" * 10)
    video(root / "train/air drumming/fff_000030_000040.mp4", 14, audio=False)
    write(root / "validate.csv", "label,youtube_id,time_start,time_end,split,is_cc\n"
          "air drumming,ggg,0,10,val,0\n"
          "juggling fire,hhh,0,10,val,0\n")
    video(root / "val/ggg_000000_000010.mp4", 16)  # flat folder
    placeholder(root / "val/hhh_000000_000010.mp4")
    write(root / "test.csv", "youtube_id,time_start,time_end,split\niii,0,10,test\n")
    video(root / "test/iii_000000_000010.mp4", 10)
    return root


def test_kinetics_train_labels_skips_and_media(kinetics_root, tmp_path):
    summary, samples, manifest = preprocess("kinetics400", kinetics_root, tmp_path, "train", workers=2)
    assert summary["written"] == 3
    assert summary["skipped"] == {"missing": 1, "empty": 1, "corrupt": 1}
    assert labels_of(samples) == {"aaa_000000_000010": (0, "abseiling"), "-bb_b_000005_000015": (1, "air drumming"),
                                  "fff_000030_000040": (1, "air drumming")}
    assert manifest["settings"]["classes"] == ["abseiling", "air drumming"]
    assert manifest["settings"]["dataset"] == "kinetics400"
    durations = {k: s["json"]["duration"] for k, s in samples.items()}
    assert durations == pytest.approx({"aaa_000000_000010": 0.4, "-bb_b_000005_000015": 0.48,
                                       "fff_000030_000040": 0.56})
    meta = samples["-bb_b_000005_000015"]["json"]
    assert (meta["dataset"], meta["split"], meta["video_id"], meta["time_start"], meta["time_end"]) == \
        ("kinetics400", "train", "-bb_b", 5, 15)
    assert meta["source"] == "train/air drumming/-bb_b_000005_000015.mp4"
    assert first_counters(samples["aaa_000000_000010"]["mp4"]) == [0, 1, 2]


def test_kinetics_video_without_audio_is_kept(kinetics_root, tmp_path):
    _, samples, _ = preprocess("kinetics400", kinetics_root, tmp_path, "train")
    assert samples["fff_000030_000040"]["json"]["has_audio"] is False
    assert "flac" not in samples["fff_000030_000040"]
    assert samples["aaa_000000_000010"]["json"]["has_audio"] is True
    audio, rate = sf.read(io.BytesIO(samples["aaa_000000_000010"]["flac"]), dtype="float32")
    assert rate == 48000 and len(audio) == round(0.4 * 48000)
    start, peak = audio_time(audio[4800:9600], rate, 0.0, 0.4)
    assert start == pytest.approx(0.1, abs=2e-3) and peak > 0.9


def test_kinetics_val_uses_train_classes_and_flat_folder(kinetics_root, tmp_path):
    summary, samples, _ = preprocess("kinetics600", kinetics_root, tmp_path, "val")
    assert summary["written"] == 1 and summary["skipped"] == {"bad_label": 1}
    assert labels_of(samples) == {"ggg_000000_000010": (1, "air drumming")}
    assert samples["ggg_000000_000010"]["json"]["source"] == "val/ggg_000000_000010.mp4"
    assert samples["ggg_000000_000010"]["json"]["dataset"] == "kinetics600"
    assert first_counters(samples["ggg_000000_000010"]["mp4"]) == [0, 1, 2]


def test_kinetics_test_split_without_labels(kinetics_root):
    works, skips = items("kinetics700", kinetics_root, "test")
    assert not skips and len(works) == 1
    meta = works[0].windows[0].meta
    assert (meta["label"], meta["label_name"], meta["split"]) == (-1, None, "test")
    assert works[0].source == kinetics_root / "test/iii_000000_000010.mp4"


def test_kinetics_test_split_with_empty_label_column(tmp_path):
    write(tmp_path / "test.csv", "label,youtube_id,time_start,time_end,split\n,jjj,0,10,test\nbowling,kkk,0,10,test\n")
    for stem in ("jjj_000000_000010", "kkk_000000_000010"):
        placeholder(tmp_path / f"{stem}.mp4")
    works, skips = items("kinetics400", tmp_path, "test")
    assert [(w.windows[0].meta["label"], w.windows[0].meta["label_name"]) for w in works] == [(-1, None),
                                                                                               (0, "bowling")]
    assert not skips


def test_kinetics_classes_from_split_csv_without_train(tmp_path):
    write(tmp_path / "validate.csv",
          "label,youtube_id,time_start,time_end,split\nzumba,a,0,10,val\nbowling,b,0,10,val\n")
    placeholder(tmp_path / "a_000000_000010.mp4")
    adapter = get_adapter("kinetics400")
    entries = list(adapter.items(tmp_path, "val"))
    assert adapter.classes == ["bowling", "zumba"]
    assert [e.windows[0].meta["label"] if isinstance(e, WorkItem) else e.reason for e in entries] == [1, "missing"]


def test_kinetics_wrong_header(tmp_path):
    write(tmp_path / "train.csv", "name,video,start,end\nabseiling,aaa,0,10\n")
    with pytest.raises(DataError, match="label, youtube_id, time_start, time_end"):
        items("kinetics400", tmp_path, "train")


# -------------------------------------------------------------------------------------------- Moments in Time


@pytest.fixture(scope="module")
def mit_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mit")
    write(root / "moments_categories.txt", "applauding,1\nbarking,0\n")  # index order, not file order
    write(root / "trainingSet.csv", "applauding/yt-aaa_1.mp4,applauding,3,0\n"
          "barking/bbb.mp4,barking,2,1\n"
          "barking/ccc.mp4,barking,3,0\n"
          "applauding/ddd.mp4,flying,3,0\n")
    video(root / "training/applauding/yt-aaa_1.mp4", 10)
    video(root / "training/barking/bbb.mp4", 12)
    placeholder(root / "training/applauding/ddd.mp4")
    write(root / "validationSet.csv", "barking/vvv.mp4,barking,3,0\n")
    placeholder(root / "validation/barking/vvv.mp4")
    return root


def test_mit_train(mit_root, tmp_path):
    summary, samples, manifest = preprocess("mit", mit_root, tmp_path, "train")
    assert summary["written"] == 2 and summary["skipped"] == {"missing": 1, "bad_label": 1}
    assert labels_of(samples) == {"applauding-yt-aaa_1": (1, "applauding"), "barking-bbb": (0, "barking")}
    assert manifest["settings"]["classes"] == ["barking", "applauding"]
    assert samples["barking-bbb"]["json"]["duration"] == pytest.approx(0.48)
    assert samples["applauding-yt-aaa_1"]["json"]["video_id"] == "applauding/yt-aaa_1"
    assert first_counters(samples["barking-bbb"]["mp4"]) == [0, 1, 2]


def test_mit_val_split_reads_validation_folder(mit_root):
    works, skips = items("mit", mit_root, "val")
    assert not skips and [w.source for w in works] == [mit_root / "validation/barking/vvv.mp4"]
    assert works[0].windows[0].meta["label"] == 0


def test_mit_header_detection(mit_root, tmp_path):
    root = tmp_path / "hdr"
    write(root / "moments_categories.txt", "barking,0\n")
    write(root / "trainingSet.csv", "path,label,agreement\nbarking/x.mp4,barking,3\n")
    placeholder(root / "training/barking/x.mp4")
    works, _ = items("mit", root, "train")
    assert [w.windows[0].meta["label_name"] for w in works] == ["barking"]
    write(root / "trainingSet.csv", "video,category\nbarking/x.mp4,barking\n")
    with pytest.raises(DataError, match="path, label"):
        items("mit", root, "train")


# ----------------------------------------------------------------------------------------------------- UCF101


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf")
    lists = root / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n3 HandstandPushups\n")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
          "Archery/v_Archery_g08_c01.avi 2\n"
          "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\n"
          "Archery/v_Archery_g09_c01.avi 2\n"
          "Archery/v_Archery_g10_c01.avi 7\n"
          "Archery/v_Archery_g11_c01.avi 1\n")
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nBogus/v_Bogus_g01_c01.avi\n")
    write(lists / "trainlist02.txt", "Archery/v_Archery_g01_c01.avi 2\n")
    write(lists / "testlist02.txt", "Archery/v_Archery_g08_c01.avi\n")
    avi(root / "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 10)
    avi(root / "UCF-101/Archery/v_Archery_g08_c01.avi", 12)
    avi(root / "UCF-101/HandstandPushups/v_HandStandPushups_g08_c01.avi", 14)
    for name in ("Archery/v_Archery_g10_c01", "Archery/v_Archery_g11_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
                 "Bogus/v_Bogus_g01_c01", "Archery/v_Archery_g01_c01"):
        placeholder(root / f"UCF-101/{name}.avi")
    return root


def test_ucf101_train1_one_based_class_index(ucf_root, tmp_path):
    summary, samples, manifest = preprocess("ucf101", ucf_root, tmp_path, "train1")
    assert summary["written"] == 3 and summary["skipped"] == {"missing": 1, "bad_label": 2}
    assert labels_of(samples) == {"v_ApplyEyeMakeup_g08_c01": (0, "ApplyEyeMakeup"),
                                  "v_Archery_g08_c01": (1, "Archery"),
                                  "v_HandStandPushups_g08_c01": (2, "HandstandPushups")}
    assert manifest["settings"]["classes"] == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert samples["v_Archery_g08_c01"]["json"]["split_id"] == 1
    assert samples["v_HandStandPushups_g08_c01"]["json"]["duration"] == pytest.approx(0.56)
    assert first_counters(samples["v_Archery_g08_c01"]["mp4"]) == [0, 1, 2]


def test_ucf101_test_and_other_splits(ucf_root):
    works, skips = items("ucf101", ucf_root, "test1")
    assert [(w.windows[0].key, w.windows[0].meta["label"]) for w in works] == [("v_ApplyEyeMakeup_g01_c01", 0)]
    assert skips == {"bad_label": 1}
    for split in ("train2", "test2"):
        works, skips = items("ucf101", ucf_root, split)
        stem = "v_Archery_g01_c01" if split == "train2" else "v_Archery_g08_c01"
        assert [(w.windows[0].key, w.windows[0].meta["label"], w.windows[0].meta["split_id"]) for w in works] == \
            [(stem, 1, 2)] and not skips


def test_ucf101_annotations_in_root_and_videos_without_ucf101_folder(tmp_path):
    write(tmp_path / "classInd.txt", "1 Biking\n2 Diving\n")
    write(tmp_path / "testlist03.txt", "Diving/v_Diving_g01_c01.avi\n")
    placeholder(tmp_path / "Diving/v_Diving_g01_c01.avi")
    works, _ = items("ucf101", tmp_path, "test3")
    assert [(w.source, w.windows[0].meta["label"]) for w in works] == [(tmp_path / "Diving/v_Diving_g01_c01.avi", 1)]


def test_ucf101_bad_class_file(tmp_path):
    write(tmp_path / "classInd.txt", "ApplyEyeMakeup 1\n")
    write(tmp_path / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    with pytest.raises(DataError, match="<index> <ClassName>"):
        items("ucf101", tmp_path, "train1")


# ----------------------------------------------------------------------------------------------------- HMDB51


@pytest.fixture(scope="module")
def hmdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hmdb")
    splits = root / "testTrainMulti_7030_splits"
    write(splits / "brush_hair_test_split1.txt", "a_brush.avi 1 \nb_brush.avi 2 \nc_brush.avi 0 \n")
    write(splits / "cartwheel_test_split1.txt", "d_cart.avi 2 \ne_cart.avi 1 \nm_cart.avi 1 \nx_cart.avi 3 \n")
    write(splits / "brush_hair_test_split2.txt", "a_brush.avi 2 \nb_brush.avi 1 \nc_brush.avi 1 \n")
    write(splits / "cartwheel_test_split2.txt", "d_cart.avi 0 \ne_cart.avi 2 \n")
    avi(root / "brush_hair/a_brush.avi", 10)
    avi(root / "cartwheel/e_cart.avi", 12)
    for name in ("brush_hair/b_brush", "brush_hair/c_brush", "cartwheel/d_cart", "cartwheel/x_cart"):
        placeholder(root / f"{name}.avi")
    return root


def test_hmdb51_train1(hmdb_root, tmp_path):
    summary, samples, manifest = preprocess("hmdb51", hmdb_root, tmp_path, "train1")
    assert summary["written"] == 2 and summary["skipped"] == {"missing": 1, "bad_row": 1}
    assert labels_of(samples) == {"brush_hair_a_brush": (0, "brush_hair"), "cartwheel_e_cart": (1, "cartwheel")}
    assert manifest["settings"]["classes"] == ["brush_hair", "cartwheel"]
    assert samples["cartwheel_e_cart"]["json"]["duration"] == pytest.approx(0.48)
    assert first_counters(samples["brush_hair_a_brush"]["mp4"]) == [0, 1, 2]


@pytest.mark.parametrize("split, expected", [
    ("test1", [("b_brush", 0), ("d_cart", 1)]),
    ("train2", [("b_brush", 0), ("c_brush", 0)]),
    ("test2", [("a_brush", 0), ("e_cart", 1)]),
])
def test_hmdb51_split_ids(hmdb_root, split, expected):
    works, skips = items("hmdb51", hmdb_root, split)
    assert [(w.windows[0].meta["video_id"], w.windows[0].meta["label"]) for w in works] == expected
    assert skips == ({"bad_row": 1} if split == "test1" else {})


def test_hmdb51_missing_split_files(hmdb_root, tmp_path):
    with pytest.raises(DataError, match="brush_hair_test_split3.txt"):
        items("hmdb51", hmdb_root, "train3")
    with pytest.raises(DataError, match="test_split"):
        items("hmdb51", tmp_path, "train1")


# ----------------------------------------------------------------------------------------------------- ESC-50

ESC_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


@pytest.fixture(scope="module")
def esc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("esc50")
    write(root / "meta/esc50.csv", ESC_HEADER +
          "1-100-A-0.wav,1,0,dog,True,100,A\n"
          "1-200-A-1.wav,1,1,rooster,False,200,A\n"
          "2-300-A-0.wav,2,0,dog,True,300,A\n"
          "2-400-A-1.wav,2,1,rooster,False,400,B\n"
          "1-500-A-0.wav,1,0,dog,True,500,A\n"
          "1-600-A-1.wav,1,1,cat,False,600,A\n")
    (root / "audio").mkdir()
    write_tone_file(root / "audio/1-100-A-0.wav", 44100, 0.5)
    write_tone_file(root / "audio/1-200-A-1.wav", 44100, 0.7)
    for name in ("2-300-A-0", "2-400-A-1", "1-600-A-1"):
        placeholder(root / f"audio/{name}.wav")
    return root


def test_esc50_fold1_end_to_end(esc_root, tmp_path):
    summary, samples, manifest = preprocess("esc50", esc_root, tmp_path, "fold1")
    assert summary["written"] == 2 and summary["skipped"] == {"missing": 1, "bad_label": 1}
    assert labels_of(samples) == {"1-100-A-0": (0, "dog"), "1-200-A-1": (1, "rooster")}
    assert manifest["settings"]["classes"] == ["dog", "rooster"]
    meta = samples["1-200-A-1"]["json"]
    assert (meta["fold"], meta["esc10"], meta["source"]) == (1, False, "audio/1-200-A-1.wav")
    audio, rate = sf.read(io.BytesIO(samples["1-100-A-0"]["flac"]), dtype="float32")
    assert rate == 48000 and abs(len(audio) - 0.5 * 48000) <= 2
    start, peak = audio_time(audio[9600:19200], rate, 0.0, 0.5)
    assert start == pytest.approx(0.2, abs=2e-3) and peak > 0.9


def test_esc50_items_per_fold_and_all(esc_root):
    works, skips = items("esc50", esc_root, "fold2")
    assert [(w.windows[0].key, w.windows[0].meta["label"], w.kind) for w in works] == \
        [("2-300-A-0", 0, "audio"), ("2-400-A-1", 1, "audio")] and not skips
    works, skips = items("esc50", esc_root, "all")
    assert len(works) == 4 and skips == {"missing": 1, "bad_label": 1}
    assert not items("esc50", esc_root, "fold5")[0]


def test_esc50_wrong_header(tmp_path):
    write(tmp_path / "meta/esc50.csv", "file,fold,target,category\n1-100-A-0.wav,1,0,dog\n")
    (tmp_path / "audio").mkdir()
    with pytest.raises(DataError, match="filename, fold, target, category, esc10, src_file, take"):
        items("esc50", tmp_path, "fold1")


# --------------------------------------------------------------------------------------------------- AudioSet

AUDIOSET_CLASSES = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n' \
                   '2,/m/04rlf,"Music"\n'
AUDIOSET_HEAD = "# Segments csv created Sun Mar  5 10:54:25 2017\n" \
                "# num_ytids=5, num_segs=5, num_unique_labels=3, num_positive_labels=7\n" \
                "# YTID, start_seconds, end_seconds, positive_labels\n"


@pytest.fixture(scope="module")
def audioset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audioset")
    write(root / "class_labels_indices.csv", AUDIOSET_CLASSES)
    write(root / "balanced_train_segments.csv", AUDIOSET_HEAD +
          '--aaa_bb, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
          'ccc, 0.000, 10.000, "/m/04rlf,/m/unknown"\n'
          'ddd, 5.500, 15.500, "/m/unknown"\n'
          'eee, 10.000, 20.000, "/m/04rlf"\n'
          'fff, 1.000, 2.000, "/m/09x0r"\n')
    write(root / "eval_segments.csv", AUDIOSET_HEAD + 'fff, 1.000, 2.000, "/m/04rlf"\n')
    video(root / "videos/--aaa_bb_30.000_40.000.mp4", 10)
    video(root / "videos/ccc_0_10.mp4", 12)
    video(root / "videos/fff.mp4", 40)  # 1.6 s
    placeholder(root / "videos/ddd_5.5_15.5.mp4")
    return root


def test_audioset_multi_label_and_header(audioset_root, tmp_path):
    summary, samples, manifest = preprocess("audioset", audioset_root, tmp_path, "balanced_train")
    assert summary["written"] == 3 and summary["skipped"] == {"bad_label": 1, "missing": 1}
    got = {k: (s["json"]["labels"], s["json"]["label_names"]) for k, s in samples.items()}
    assert got == {"--aaa_bb_30-000_40-000": ([0, 1], ["Speech", "Male speech, man speaking"]),
                   "ccc_0-000_10-000": ([2], ["Music"]), "fff_1-000_2-000": ([0], ["Speech"])}
    assert manifest["settings"]["unknown_mids"] == {"/m/unknown": 2}
    assert manifest["settings"]["classes"] == ["Speech", "Male speech, man speaking", "Music"]
    durations = {k: s["json"]["duration"] for k, s in samples.items()}
    assert durations == pytest.approx({"--aaa_bb_30-000_40-000": 0.4, "ccc_0-000_10-000": 0.48,
                                       "fff_1-000_2-000": 1.6})  # <YTID>.mp4 is taken whole by default
    assert "captions" not in samples["ccc_0-000_10-000"]["json"]


def test_audioset_cut_full_videos(audioset_root, tmp_path):
    summary, samples, _ = preprocess("audioset", audioset_root, tmp_path, "eval", cut_full_videos="true")
    assert summary["written"] == 1 and not summary["skipped"]
    sample = samples["fff_1-000_2-000"]
    assert sample["json"]["labels"] == [2]
    assert sample["json"]["duration"] == pytest.approx(0.6)  # [1.0, 2.0) cut from a 1.6 s video
    assert first_counters(sample["mp4"]) == [25, 26, 27]


def test_audioset_file_name_variants(tmp_path):
    write(tmp_path / "class_labels_indices.csv", AUDIOSET_CLASSES)
    write(tmp_path / "eval_segments.csv", AUDIOSET_HEAD +
          'ggg, 5.500, 15.500, "/m/09x0r"\nhhh, 30.000, 40.000, "/m/09x0r"\niii, 30, 40, "/m/09x0r"\n'
          'jjj, 7.250, 17.250, "/m/09x0r"\n')
    for name in ("ggg_5.5_15.5.mkv", "hhh_30_40.webm", "iii_30.000_40.000.mp4", "jjj_7.25_17.25.mp4"):
        placeholder(tmp_path / name)
    works, skips = items("audioset", tmp_path, "eval")
    assert [w.source.name for w in works] == ["ggg_5.5_15.5.mkv", "hhh_30_40.webm", "iii_30.000_40.000.mp4",
                                             "jjj_7.25_17.25.mp4"] and not skips
    assert all((w.windows[0].start, w.windows[0].end) == (0.0, None) for w in works)


def test_audioset_wrong_header(tmp_path):
    write(tmp_path / "class_labels_indices.csv", AUDIOSET_CLASSES)
    write(tmp_path / "eval_segments.csv", "# a\n# b\n# YTID, start, end, labels\nfff, 1.0, 2.0, \"/m/09x0r\"\n")
    with pytest.raises(DataError, match="YTID, start_seconds, end_seconds, positive_labels"):
        items("audioset", tmp_path, "eval")


# --------------------------------------------------------------------------------------------------- ImageNet

COLOURS = {"a": (220, 30, 30), "b": (30, 200, 40), "c": (40, 50, 210), "v1": (200, 200, 30)}


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    for rel, name in (("train/n01440764", "a"), ("train/n01440764", "b"), ("train/n01443537", "c"),
                      ("val/n01443537", "v1"), ("val/n09999999", "v2")):
        (root / rel).mkdir(parents=True, exist_ok=True)
        write_image(root / rel / f"{name}.JPEG", np.full((40, 56, 3), COLOURS.get(name, (0, 0, 0)), np.uint8))
    placeholder(root / "val/n01440764/v3.JPEG")  # zero bytes
    (root / "val/n01440764/v4.JPEG").symlink_to(root / "val/n01440764/gone.JPEG")  # broken link
    write_image(root / "val/flat.JPEG", np.zeros((40, 56, 3), np.uint8))
    return root


def test_imagenet_train(imagenet_root, tmp_path):
    summary, samples, manifest = preprocess("imagenet", imagenet_root, tmp_path, "train")
    assert summary["written"] == 3 and not summary["skipped"]
    assert labels_of(samples) == {"n01440764_a": (0, "n01440764"), "n01440764_b": (0, "n01440764"),
                                  "n01443537_c": (1, "n01443537")}
    assert manifest["settings"]["classes"] == ["n01440764", "n01443537"]
    for key, sample in samples.items():
        image = decode_image(sample["jpg"])
        assert image.shape == (40, 56, 3) and (sample["json"]["height"], sample["json"]["width"]) == (40, 56)
        assert np.abs(image.reshape(-1, 3).mean(0) - COLOURS[key.split("_")[1]]).max() < 8


def test_imagenet_val_skips(imagenet_root, tmp_path):
    summary, samples, _ = preprocess("imagenet", imagenet_root, tmp_path, "val")
    assert summary["written"] == 1
    assert summary["skipped"] == {"bad_label": 2, "empty": 1, "missing": 1}
    assert labels_of(samples) == {"n01443537_v1": (1, "n01443537")}


def test_imagenet_missing_split(tmp_path):
    (tmp_path / "train/n01").mkdir(parents=True)
    with pytest.raises(DataError, match="val"):
        items("imagenet", tmp_path, "val")
