"""Bad input and faults around configs, checkpoints and shard folders, through the installed `vatt` (issue 10, §2-5):
each case asserts the exit code, the first line of the message (hand-written expectations) and what is left behind.

Config ranges, checkpoint sha256 verification (export, retrieve --build/queries, evaluate; --no-verify), manifest shard
names and tar member names that point outside their folder, incomplete shard folders, a worker that finds no sample,
``--ckpt`` given a file or an exported tower, and a full disk while saving a checkpoint.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import typing
from collections import Counter
from pathlib import Path

import pytest
import torch
from mediagen import make_video

from vattcli import checkpoints as ck
from vattcli.api import build_model
from vattcli.config import RANGES, dump_yaml, load_config
from vattcli.data.shardfiles import iter_tar_samples
from vattcli.data.shards import ShardWriter
from vattcli.data.text import train_tokenizer
from vattcli.errors import CheckpointError
from vattcli.train.config import FinetuneConfig, PretrainConfig

VATT = Path(sys.executable).parent / "vatt"
CAPTIONS = [f"a {c} {s} moving {m}" for c in ("red", "blue") for s in ("square", "circle") for m in ("left", "up")]
TINY = ["--recipe", "pretrain/vatt-tiny"]


def vatt(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the installed entry point: (exit code, first line of stderr, all of stderr)."""
    proc = subprocess.run([str(VATT), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines[0] if lines else "", proc.stderr


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders (``.tmp-*``) anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob(".tmp-*")) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A vatt-tiny checkpoint with its tokenizer, and a shard folder of three captioned clips it can read."""
    root = tmp_path_factory.mktemp("faults")
    tok = train_tokenizer(CAPTIONS * 4, root / "sp", vocab_size=40)
    torch.manual_seed(0)
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", ["data.train={s: synthetic}"])
    ckpt = ck.save_checkpoint(root / "run", 1, build_model(cfg.model), config=dump_yaml(cfg), tokenizer=tok)
    shards = root / "shards"
    with ShardWriter(shards, prefix="toy") as writer:
        for i in range(3):
            clip = make_video(root / f"v{i}.mp4", fps=10.0, duration=1.2, size=(64, 64), audio_rate=16000)
            meta = {"source": f"v{i}.mp4", "start": 0.0, "end": clip.duration, "captions": [CAPTIONS[i]],
                    "duration": clip.duration}
            writer.write(f"clip{i}", {"mp4": clip.path.read_bytes(), "json": meta}, clip.duration)
    return {"root": root, "tokenizer": tok, "ckpt": ckpt, "shards": shards}


def corrupted(ckpt: Path, dest: Path, how: str) -> Path:
    """A copy of ``ckpt`` whose meta.json records another hash, or whose weights have 1000 bytes changed.

    The bytes changed are the lowest mantissa byte of 1000 float32 values in the middle of the tensor data, so the
    weights stay finite and a run with --no-verify goes through to the end."""
    copy = dest / "run" / ckpt.name
    shutil.copytree(ckpt, copy)
    if how == "hash":
        meta = json.loads((copy / ck.META).read_text())
        meta["weights_hash"] = "0" * 64
        (copy / ck.META).write_text(json.dumps(meta))
    else:
        data = bytearray((copy / ck.WEIGHTS).read_bytes())
        start = 8 + int.from_bytes(data[:8], "little")  # tensor data follows the 8-byte length and the JSON header
        middle = start + (len(data) - start) // 2 // 4 * 4
        for i in range(1000):
            data[middle + 4 * i] ^= 0x01
        (copy / ck.WEIGHTS).write_bytes(bytes(data))
    return copy


# ---------------------------------------------------------------------------------------------- config ranges


@pytest.mark.parametrize("override, first", [
    ("train.steps=-5", "train.steps=-5 is out of range (expected >= 1)"),
    ("data.batch_size=0", "data.batch_size=0 is out of range (expected >= 1)"),
    ("model.droptoken_rate=1.5", "model.droptoken_rate=1.5 is out of range (expected in [0, 1))"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]=1.0 is out of range (expected in [0, 1))"),
    ("train.stepz=10", "unknown key 'train.stepz'; did you mean 'train.steps'?"),
    ("data.batch_size=two", "data.batch_size: expected an integer, got str 'two'"),
])
def test_config_value_out_of_range_unknown_or_mistyped_is_one_line(tmp_path, override, first):
    run = tmp_path / "run"
    code, line, err = vatt("pretrain", *TINY, "data.train={s: synthetic}", f"train.run_dir={run}", override)
    assert code == 2, err
    assert first in line and "vatt-tiny.yaml" in line
    assert "Traceback" not in err
    assert not run.exists()  # nothing written: train.steps=-5 used to leave a step-0 checkpoint


def test_every_numeric_config_field_has_a_range():
    """A numeric field added without a range would pass any value: the table must name each one."""
    def numeric(tp) -> bool:
        return tp in (int, float) or any(numeric(a) for a in typing.get_args(tp) if a is not Ellipsis)

    seen, missing = set(), []
    todo = [PretrainConfig, FinetuneConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            todo += [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
            if numeric(tp) and f.name not in RANGES.get(cls.__name__, {}):
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []
    assert "weights" in RANGES["DataConfig"]  # a mapping of numbers (dict without type arguments)


# ---------------------------------------------------------------------------------------------- checkpoint sha256


def _export(ckpt: Path, tmp: Path, *flags: str) -> tuple[tuple[int, str, str], Path]:
    out = tmp / "towers"
    return vatt("export", ckpt, "--tower", "text", "--out", out, *flags), out


def _build(ckpt: Path, tmp: Path, shards: Path, *flags: str) -> tuple[tuple[int, str, str], Path]:
    home = tmp / "indexes"
    return vatt("retrieve", "--build", "idx", "--data", shards, "--ckpt", ckpt, "--index-home", home, *flags), home


def _evaluate(ckpt: Path, tmp: Path, shards: Path, *flags: str) -> tuple[tuple[int, str, str], Path]:
    out = tmp / "eval.json"
    return vatt("evaluate", "youcook2", "--ckpt", ckpt, "--data", shards, "--out", out, "--workers", "0",
                *flags), out


@pytest.mark.parametrize("how", ["hash", "bytes"])
@pytest.mark.parametrize("command", ["export", "retrieve", "evaluate"])
def test_checkpoint_that_fails_its_sha256_is_refused_unless_no_verify(world, tmp_path, command, how):
    bad = corrupted(world["ckpt"], tmp_path, how)
    run = {"export": lambda *f: _export(bad, tmp_path, *f),
           "retrieve": lambda *f: _build(bad, tmp_path, world["shards"], *f),
           "evaluate": lambda *f: _evaluate(bad, tmp_path, world["shards"], *f)}[command]
    (code, line, err), output = run()
    assert code == 2, err
    assert str(bad / "model.safetensors") in line and "sha256 does not match" in line and "--no-verify" in line
    assert not output.exists() and leftovers(tmp_path) == []
    (code, line, err), output = run("--no-verify")
    assert code == 0, err
    assert output.exists() and leftovers(tmp_path) == []


def test_one_export_hashes_a_settled_checkpoint_once_and_a_later_change_is_caught(world, tmp_path, monkeypatch):
    from vattcli.checkpoints import weights
    from vattcli.export import export_checkpoint

    copy = tmp_path / "run" / world["ckpt"].name
    shutil.copytree(world["ckpt"], copy)
    time.sleep(1.1)  # a digest is kept only for a file unchanged for a second before hashing
    calls = []
    monkeypatch.setattr(weights, "file_sha256", lambda path, real=weights.file_sha256: calls.append(path) or real(path))
    export_checkpoint(copy, tmp_path / "towers", tower="text")  # find, load_model and the record all need the hash
    assert calls == [copy / ck.WEIGHTS]
    data = bytearray((copy / ck.WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (copy / ck.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        ck.find_checkpoint(copy)
    assert len(calls) == 2


def test_query_with_a_checkpoint_whose_meta_hash_was_edited_needs_no_verify(world, tmp_path):
    (code, _, err), home = _build(world["ckpt"], tmp_path, world["shards"])
    assert code == 0, err
    bad = corrupted(world["ckpt"], tmp_path, "hash")  # same weights, so the index accepts them once unverified
    args = ["retrieve", CAPTIONS[0], "--index", "idx", "--index-home", home, "--ckpt", bad, "--json"]
    code, line, err = vatt(*args)
    assert code == 2 and "sha256 does not match" in line and str(bad / "model.safetensors") in line, err
    code, _, err = vatt(*args, "--no-verify")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------- --ckpt forms


def test_ckpt_given_its_weights_file_uses_the_folder(world, tmp_path):
    (code, _, err), out = _export(world["ckpt"] / "model.safetensors", tmp_path)
    assert code == 0, err
    meta = json.loads((out / "text" / "meta.json").read_text())
    assert meta["checkpoint"] == str(world["ckpt"].resolve())


def test_ckpt_given_some_other_file_says_what_to_pass(world, tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    (code, line, err), out = _export(stray, tmp_path)
    assert code == 2, err
    assert line.endswith(f"{stray}: a file, not a checkpoint; pass the checkpoint folder (ckpt-<step>/, holding "
                         "model.safetensors and meta.json) or its run folder")
    assert not out.exists()


def test_export_of_an_exported_tower_or_towers_folder_is_one_line(world, tmp_path):
    (code, _, err), towers = _export(world["ckpt"], tmp_path)
    assert code == 0, err
    for given, expected in ((towers / "text", f"{towers / 'text'}: an exported text tower, not a checkpoint; "
                                              f"export from the checkpoint folder ({world['ckpt'].resolve()})"),
                            (towers, f"{towers}: holds exported towers (text), not a checkpoint; export from the "
                                     "checkpoint folder")):
        code, line, err = vatt("export", given, "--out", tmp_path / "again")
        assert code == 2, err
        assert line.endswith(expected) and "missing" not in err
        assert not (tmp_path / "again").exists()


# ---------------------------------------------------------------------------------------------- saving


def test_disk_full_while_saving_is_a_checkpoint_error_and_leaves_the_old_one(tmp_path, monkeypatch):
    model = build_model("vatt-tiny")
    run = tmp_path / "run"
    previous = ck.save_checkpoint(run, 5, model)
    before = (previous / ck.WEIGHTS).read_bytes()

    def full(path: Path, model) -> None:
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ck.folder, "_write_weights", full)
    with pytest.raises(CheckpointError) as caught:
        ck.save_checkpoint(run, 5, model)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{run}: cannot save checkpoint ckpt-00000005: No space left on device (")
    assert message.endswith(" MiB free)")
    assert sorted(p.name for p in run.iterdir()) == ["ckpt-00000005"]  # no temp folder, the old one intact
    assert (previous / ck.WEIGHTS).read_bytes() == before


SAVE_UNDER_LIMIT = """
import resource, signal, sys, torch
from vattcli.api import build_model
from vattcli.checkpoints import save_checkpoint
from vattcli.errors import CheckpointError
model = build_model("vatt-tiny")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint(sys.argv[1], 3, model, train_state={"big": torch.zeros(2_000_000)})
except CheckpointError as e:
    print(e)
"""


@pytest.mark.parametrize("limit, writing", [(100_000, "weights (safetensors)"), (4_000_000, "train_state.pt (torch)")])
def test_write_refused_by_the_system_is_one_line_from_safetensors_and_torch(tmp_path, limit, writing):
    """A real failed write (file size limit: EFBIG, the path ENOSPC takes) while writing the weights, or the
    training state, which safetensors and torch report without an errno."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SAVE_UNDER_LIMIT, str(run), str(limit)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{run}: cannot save checkpoint ckpt-00000003: File too large ("), writing
    assert list(run.iterdir()) == []


# ---------------------------------------------------------------------------------------------- shard folders


def _manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_shard_name_with_a_path_is_refused(world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../../etc/passwd"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    (code, line, err), home = _build(world["ckpt"], tmp_path, shards)
    assert code == 2, err
    assert line.endswith(f"{shards / 'manifest.json'}: shard name '../../../etc/passwd' is not a file name inside "
                         "this folder (names must not be empty, absolute, or contain '/', '\\' or '..')")
    assert not (home / "idx").exists()


def test_tar_members_named_with_a_path_are_skipped_and_counted(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("k0.json", "../x.json", "/abs.json", "a/b.json", "..\\y.json", "k1.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    skipped = Counter()
    samples = list(iter_tar_samples(str(path), skipped))
    assert [s["__key__"] for s in samples] == ["k0", "k1"]
    assert skipped == {"unsafe_name": 4}


def _incomplete(world, tmp_path: Path) -> Path:
    """An interrupted preprocessing: two finished shards of one clip each, ``complete: false``."""
    folder = tmp_path / "partial"
    writer = ShardWriter(folder, prefix="toy", max_samples=1)
    for i in range(2):
        clip = make_video(tmp_path / f"p{i}.mp4", fps=10.0, duration=1.2, size=(64, 64), audio_rate=16000)
        writer.write(f"clip{i}", {"mp4": clip.path.read_bytes(), "json": {"captions": [CAPTIONS[i]]}})
    writer.abort()
    assert json.loads((folder / "manifest.json").read_text())["complete"] is False
    return folder


def test_pretrain_refuses_an_incomplete_shard_folder_unless_allowed(world, tmp_path):
    folder = _incomplete(world, tmp_path)
    run = tmp_path / "run"
    args = ["pretrain", *TINY, f"data.train={{h: {folder}}}", f"data.tokenizer={world['tokenizer']}",
            f"train.run_dir={run}", "train.steps=1", "data.batch_size=2", "data.num_workers=0"]
    code, line, err = vatt(*args)
    assert code == 2, err
    assert line.endswith(f"{folder}: incomplete shard folder (manifest says complete: false; 2 samples in 2 shards, "
                         "from an interrupted `vatt preprocess`); finish it with `vatt preprocess ... --resume` or "
                         "use it as it is with data.allow_incomplete=true")
    assert not list(run.glob("ckpt-*")) and leftovers(tmp_path) == []
    code, _, err = vatt(*args, "data.allow_incomplete=true")
    assert code == 0, err
    assert "incomplete shard folder" in err  # the warning line
    assert [p.name for p in run.glob("ckpt-*")] == ["ckpt-00000001"]


READ_BAD_SHARDS = """
import itertools, sys
from vattcli.data.reader import ResumableLoader, ShardDataset
from vattcli.errors import DataError
loader = ResumableLoader(ShardDataset(sys.argv[1], decode=lambda s: s["json"]["i"]), batch_size=None, num_workers=2)
try:
    print(list(itertools.islice(loader, 6)))
except DataError as e:
    print(e)
"""


def test_endless_stream_with_bad_shards_neither_hangs_nor_spins(tmp_path):
    """Two workers, shards in order: the worker holding the corrupt shard stops (it used to spin through empty epochs
    while the DataLoader waited for it); when every shard is corrupt the pass ends in one DataError."""
    with ShardWriter(tmp_path, prefix="s", max_samples=2) as writer:
        for i in range(4):
            writer.write(f"k{i}", {"json": {"i": i}})
    shards = [tmp_path / f"s-00000{i}.tar" for i in range(2)]

    def read() -> str:
        proc = subprocess.run([sys.executable, "-c", READ_BAD_SHARDS, str(tmp_path)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout.strip()

    shards[0].write_bytes(b"\x01" * shards[0].stat().st_size)
    assert read() == "[2, 3, 2, 3, 2, 3]"
    shards[1].write_bytes(b"\x01" * shards[1].stat().st_size)
    assert read() == (f"{shards[0]}: none of the 2 shards from here on gives this process a sample (corrupt or "
                      "empty, or fewer shards than processes; see the warnings above)")


def test_index_building_uses_an_incomplete_folder_with_a_warning(world, tmp_path):
    folder = _incomplete(world, tmp_path)
    (code, _, err), home = _build(world["ckpt"], tmp_path, folder)
    assert code == 0, err
    assert f"{folder}: incomplete shard folder (2 samples in 2 shards, from an interrupted `vatt preprocess`); " \
           "using what it holds" in err
    assert json.loads((home / "idx" / "index.json").read_text())["num_items"] == 2


def test_no_shard_yielding_a_sample_is_one_line_not_a_worker_traceback(world, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(world["shards"], folder)
    tar = folder / "toy-000000.tar"
    tar.write_bytes(b"\x01" * tar.stat().st_size)
    run = tmp_path / "run"
    code, line, err = vatt("pretrain", *TINY, f"data.train={{h: {folder}}}", f"data.tokenizer={world['tokenizer']}",
                           f"train.run_dir={run}", "train.steps=2", "data.batch_size=2", "data.num_workers=2")
    assert code == 2, err
    assert "Traceback" not in err and "DataLoader worker" not in err
    errors = [x for x in err.splitlines() if x.startswith("error:")]  # another worker's warning may print after it
    assert len(errors) == 1 and errors[0].endswith(f"dataset 'h': no shard yields samples ({tar} ...)"), err
    assert not list(run.glob("ckpt-*")) and leftovers(tmp_path) == []
