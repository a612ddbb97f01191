"""Tar shards: the writer (layout, atomicity, manifest, resume) and the resumable streaming reader."""

from __future__ import annotations

import errno
import itertools
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
import torch

from vattcli.data.reader import MAX_UNDECODED_IN_A_ROW, ResumableLoader, ShardDataset
from vattcli.data.shardfiles import expand_urls
from vattcli.data.shards import ShardWriter, read_manifest
from vattcli.errors import DataError, MediaError

EXTS = ("mp4", "flac", "json")


def _key(i: int) -> str:
    return f"clip_{i:04d}"


def _members(i: int) -> dict[str, object]:
    return {
        "mp4": f"video-{i}".encode() * (i % 4 + 1),
        "flac": bytes([i % 251]) * (50 + i),
        "json": {"caption": f"c{i}"},
    }


def _write(out: Path, n: int, max_samples: int, **kwargs: object) -> Path:
    with ShardWriter(out, prefix="train", max_samples=max_samples, **kwargs) as writer:
        for i in range(n):
            writer.write(_key(i), _members(i), seconds=2.5)
    return out


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _keys_of(batches: list[list[str]]) -> list[str]:
    return [k for batch in batches for k in batch]


def _collate_keys(samples: list[dict]) -> list[str]:
    return [s["__key__"] for s in samples]


# -- writer -----------------------------------------------------------------------------------------------------


def test_shard_count_and_member_layout(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=23, max_samples=5)
    shards = [f"train-{i:06d}.tar" for i in range(5)]
    assert _files(out) == sorted(shards + [s.replace(".tar", ".keys.json") for s in shards] + ["manifest.json"])
    sizes = [5, 5, 5, 5, 3]
    start = 0
    for name, size in zip(shards, sizes):
        expected = [f"{_key(i)}.{ext}" for i in range(start, start + size) for ext in EXTS]
        assert _tar_names(out / name) == expected
        with tarfile.open(out / name) as tar:
            assert tar.extractfile(f"{_key(start)}.mp4").read() == f"video-{start}".encode() * (start % 4 + 1)
            assert json.loads(tar.extractfile(f"{_key(start)}.json").read()) == {"caption": f"c{start}"}
        assert json.loads((out / name.replace(".tar", ".keys.json")).read_text()) == [
            _key(i) for i in range(start, start + size)]
        start += size


def test_max_bytes_starts_a_new_shard(tmp_path: Path) -> None:
    # each sample: one 512-byte header + 1000 bytes padded to 1024 = 1536; 3 fit in 5000, a 4th would not
    with ShardWriter(tmp_path / "out", prefix="train", max_bytes=5000) as writer:
        for i in range(7):
            writer.write(_key(i), {"flac": b"x" * 1000})
    assert [s["samples"] for s in read_manifest(tmp_path / "out")["shards"]] == [3, 3, 1]


def test_crash_mid_shard_leaves_no_partial_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out, prefix="train", max_samples=5) as writer:
            for i in range(7):
                writer.write(_key(i), _members(i))
            assert ".tmp-train-000001.tar" in _files(out) and "train-000001.tar" not in _files(out)
            raise RuntimeError("boom")
    assert _files(out) == ["manifest.json", "train-000000.keys.json", "train-000000.tar"]
    manifest = read_manifest(out)
    assert manifest["complete"] is False and manifest["counts"]["written"] == 5


def test_manifest_counts_skips_and_hours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ShardWriter(out, prefix="train", max_samples=4, settings={"fps": 10, "size": (256, 256)}) as writer:
        for i in range(10):
            writer.write(_key(i), _members(i), seconds=2.5)
        writer.skip("a.mp4", "corrupt", "moov atom not found")
        writer.skip("b.mp4", "missing", "no such file")
        for i in range(149):
            writer.skip(f"c{i}.mp4", "corrupt", "bad")
    m = read_manifest(out)
    assert m["counts"]["written"] == 10 and m["total_samples"] == 10
    assert m["counts"]["skipped"] == {"corrupt": 150, "missing": 1}
    assert len(m["counts"]["skipped_examples"]) == 100
    assert m["counts"]["skipped_examples"][:2] == [
        {"item": "a.mp4", "reason": "corrupt", "message": "moov atom not found"},
        {"item": "b.mp4", "reason": "missing", "message": "no such file"}]
    assert m["hours"] == pytest.approx(25.0 / 3600.0)
    assert m["settings"] == {"fps": 10, "size": [256, 256]} and m["complete"] is True
    assert m["format_version"] == 1 and m["vatt_version"] and m["created"] and m["updated"]
    assert [(s["name"], s["samples"], s["bytes"]) for s in m["shards"]] == [
        (f"train-{i:06d}.tar", n, (out / f"train-{i:06d}.tar").stat().st_size) for i, n in enumerate([4, 4, 2])]


def test_disk_full_is_a_clear_error_and_removes_the_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = itertools.count()
    real_addfile = tarfile.TarFile.addfile

    def addfile(self: tarfile.TarFile, *args: object, **kwargs: object) -> None:
        if next(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_addfile(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{out}: disk full"):
        _write(out, n=5, max_samples=10)
    assert _files(out) == []


def test_resume_keeps_finished_shards_and_continues_numbering(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with ShardWriter(out, prefix="train", max_samples=5, settings={"fps": 10}) as writer:
            for i in range(12):
                writer.write(_key(i), _members(i))
            raise RuntimeError("killed")
    first = (out / "train-000000.tar").read_bytes()
    (out / "train-000002.tar").write_bytes(b"renamed before the manifest was written")
    with ShardWriter(out, prefix="train", max_samples=5, settings={"fps": 10}, resume=True) as writer:
        assert writer.done_keys == {_key(i) for i in range(10)}
        for i in range(23):
            if _key(i) not in writer.done_keys:
                writer.write(_key(i), _members(i))
    assert (out / "train-000000.tar").read_bytes() == first
    m = read_manifest(out)
    assert [s["name"] for s in m["shards"]] == [f"train-{i:06d}.tar" for i in range(5)]
    assert m["counts"]["written"] == 23
    names = [n for s in m["shards"] for n in _tar_names(out / s["name"])]
    assert names == [f"{_key(i)}.{ext}" for i in range(23) for ext in EXTS]
    with pytest.raises(DataError, match="settings differ"):
        ShardWriter(out, prefix="train", settings={"fps": 25}, resume=True)


def test_refuses_a_folder_with_other_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"notes\.txt.*--overwrite"):
        ShardWriter(out, prefix="train")
    _write(out, n=3, max_samples=2, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    clean = _write(tmp_path / "clean", n=6, max_samples=2)
    with pytest.raises(DataError, match="previous run"):
        ShardWriter(clean, prefix="train")
    _write(clean, n=1, max_samples=2, overwrite=True)
    assert _files(clean) == ["manifest.json", "train-000000.keys.json", "train-000000.tar"]


@pytest.mark.parametrize("key", ["a.b", "a/b", "a\\b", "", " a", "a\nb"])
def test_rejects_keys_webdataset_cannot_split(tmp_path: Path, key: str) -> None:
    with ShardWriter(tmp_path / "out") as writer:
        with pytest.raises(DataError, match="sample key"):
            writer.write(key, {"mp4": b"x"})


def test_rejects_a_key_written_twice(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "out") as writer:
        writer.write("clip-1_a", {"mp4": b"x"})
        with pytest.raises(DataError, match="written twice"):
            writer.write("clip-1_a", {"mp4": b"y"})


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no shard manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a shard manifest"):
        read_manifest(tmp_path)


# -- reader -----------------------------------------------------------------------------------------------------


def test_urls_from_folder_brace_and_glob(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=10, max_samples=2)
    shards = [str(out / f"train-{i:06d}.tar") for i in range(5)]
    assert expand_urls(out) == shards
    assert expand_urls(f"{out}/train-{{000001..000003}}.tar") == shards[1:4]
    assert expand_urls(f"{out}/train-00000[0,4].tar") == [shards[0], shards[4]]
    with pytest.raises(DataError, match="no such shard"):
        expand_urls(f"{out}/train-{{000004..000005}}.tar")


def test_each_sample_once_per_epoch_across_two_ranks_and_two_workers(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=37, max_samples=4)
    seen: list[list[str]] = []
    for rank in (0, 1):
        ds = ShardDataset(out, shuffle_buffer=5, seed=7, epochs=1, rank=rank, world_size=2,
                          decode=lambda s: (s["__key__"], s["mp4"], s["json"]["caption"]))
        loader = ResumableLoader(ds, batch_size=3, num_workers=2, collate_fn=list)
        samples = [s for batch in loader for s in batch]
        for key, mp4, caption in samples:
            i = int(key.split("_")[1])
            assert mp4 == f"video-{i}".encode() * (i % 4 + 1) and caption == f"c{i}"
        seen.append([key for key, _, _ in samples])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [_key(i) for i in range(37)]


def test_shuffle_changes_order_not_set_and_same_seed_same_order(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=30, max_samples=5)
    written = [_key(i) for i in range(30)]

    def keys(**kwargs: object) -> list[str]:
        return [s["__key__"] for s in ShardDataset(out, **kwargs)]

    assert keys(epochs=1) == written
    two_epochs = keys(shuffle_buffer=8, seed=1, epochs=2)
    first, second = two_epochs[:30], two_epochs[30:]
    assert sorted(first) == written and sorted(second) == written
    assert first != written and second != first
    assert keys(shuffle_buffer=8, seed=1, epochs=2) == two_epochs
    assert keys(shuffle_buffer=8, seed=2, epochs=1) != first


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_the_same_sequence(tmp_path: Path, num_workers: int) -> None:
    out = _write(tmp_path / "out", n=23, max_samples=5)  # shards of 5,5,5,5,3: the workers run out at different times

    def loader() -> ResumableLoader:
        ds = ShardDataset(out, shuffle_buffer=4, seed=3, epochs=2)
        return ResumableLoader(ds, batch_size=3, num_workers=num_workers, collate_fn=_collate_keys)

    full = list(loader())
    assert sorted(_keys_of(full)) == sorted([_key(i) for i in range(23)] * 2)
    for k in (1, 6, len(full) - 2):
        first = loader()
        head = list(itertools.islice(iter(first), k))
        path = tmp_path / f"state-{k}.pt"
        torch.save(first.state_dict(), path)
        resumed = loader()
        resumed.load_state_dict(torch.load(path, weights_only=True))
        assert _keys_of(head) + _keys_of(list(resumed)) == _keys_of(full), f"resumed after {k} batches"


def test_loader_state_is_per_rank_and_checks_the_setup(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=8, max_samples=2)
    states = []
    for rank in (0, 1):
        loader = ResumableLoader(ShardDataset(out, rank=rank, world_size=2), batch_size=None)
        assert next(iter(loader))["__key__"] == _key(2 * rank)  # rank r reads shards r, r+2 in order
        states.append(loader.state_dict())
    merged = {**states[0], "ranks": {**states[0]["ranks"], **states[1]["ranks"]}}
    assert merged["ranks"] == {"0": {"epoch": 0, "next_worker": 0, "workers": {"0": [0, 1]}},
                               "1": {"epoch": 0, "next_worker": 0, "workers": {"0": [0, 1]}}}
    rank1 = ResumableLoader(ShardDataset(out, rank=1, world_size=2, epochs=1), batch_size=None)
    rank1.load_state_dict(merged)
    assert [s["__key__"] for s in rank1] == [_key(i) for i in (3, 6, 7)]
    other = ResumableLoader(ShardDataset(out, rank=1, world_size=2), batch_size=None, num_workers=2)
    with pytest.raises(DataError, match="num_workers was 1"):
        other.load_state_dict(merged)


def test_resampled_is_endless_and_draws_from_all_shards(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=12, max_samples=3)
    samples = list(itertools.islice(ShardDataset(out, resampled=True, seed=5), 300))
    assert len(samples) == 300
    assert {Path(s["__shard__"]).name for s in samples} == {f"train-{i:06d}.tar" for i in range(4)}
    assert {s["__key__"] for s in samples} == {_key(i) for i in range(12)}


def test_corrupt_shards_members_and_decode_errors_are_skipped_and_counted(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", n=12, max_samples=4)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 40)
    data = (out / "train-000001.tar").read_bytes()
    cut_mid, cut_edge = tmp_path / "cut_mid.tar", tmp_path / "cut_edge.tar"
    cut_mid.write_bytes(data[: 3 * 512 + 100])  # mid-way into the second member of the first sample
    cut_edge.write_bytes(data[: 4 * 512])  # right after its second member: tarfile alone sees a shorter archive
    bad_json = tmp_path / "bad"
    with ShardWriter(bad_json, prefix="x") as writer:
        writer.write("ok", {"json": b'{"caption": "fine"}'})
        writer.write("broken", {"json": b"{not json"})

    def decode(sample: dict) -> str:
        if sample["__key__"] == _key(10):
            raise MediaError("undecodable", "corrupt")
        return sample["__key__"]

    urls = [out / "train-000000.tar", garbage, cut_mid, cut_edge, bad_json / "x-000000.tar", out / "train-000002.tar"]
    ds = ShardDataset(urls, epochs=1, decode=decode)
    loader = ResumableLoader(ds, batch_size=None)
    expected = [_key(i) for i in range(4)] + ["ok"] + [_key(i) for i in (8, 9, 11)]
    assert list(loader) == expected
    assert loader.skipped == {"corrupt_shard": 3, "bad_member": 1, "decode_error": 1}
    assert list(ShardDataset(urls, epochs=1, decode=decode)) == expected


def test_an_endless_stream_in_which_nothing_decodes_stops_with_one_line(tmp_path: Path) -> None:
    folder = _write(tmp_path / "s", 5, max_samples=2)
    calls = []

    def never(sample: dict) -> dict:
        calls.append(sample["__key__"])
        raise MediaError(f"{sample['__key__']}: wrong clip size for this model")

    dataset = ShardDataset(expand_urls(str(folder)), decode=never, resampled=True)  # endless: never runs dry
    with pytest.raises(DataError, match=rf"{MAX_UNDECODED_IN_A_ROW} samples in a row could not be decoded"):
        next(iter(dataset))
    assert len(calls) == MAX_UNDECODED_IN_A_ROW


def test_decode_failures_between_successes_do_not_stop_the_stream(tmp_path: Path) -> None:
    folder = _write(tmp_path / "s", 4, max_samples=2)

    def every_other(sample: dict) -> dict:
        if sample["__index__"] % 2:
            raise MediaError("odd one out")
        return sample

    dataset = ShardDataset(expand_urls(str(folder)), decode=every_other, resampled=True)
    taken = list(itertools.islice(iter(dataset), 3 * MAX_UNDECODED_IN_A_ROW))
    assert len(taken) == 3 * MAX_UNDECODED_IN_A_ROW


def _idle_worker() -> None:
    from vattcli.data.reader import workers_ignore_sigterm

    workers_ignore_sigterm(0)
    time.sleep(60)


@pytest.mark.skipif(not hasattr(__import__("signal"), "sigwaitinfo"), reason="needs sigwaitinfo (Linux)")
def test_loader_workers_ignore_a_sigterm_from_outside_but_not_from_their_parent() -> None:
    """A job-wide SIGTERM (Slurm, torchrun) must not kill a DataLoader worker mid-step; its parent's terminate() must."""
    import multiprocessing
    import subprocess

    worker = multiprocessing.get_context("fork").Process(target=_idle_worker, daemon=True)
    worker.start()
    time.sleep(0.5)
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
    worker.join(1.0)
    assert worker.is_alive()
    worker.terminate()  # sent by the parent
    worker.join(5.0)
    assert not worker.is_alive() and worker.exitcode == 0
