"""`vatt index build` across processes and failures, through the installed `vatt`: a SIGKILL mid-build then
`--resume`, SIGINT/SIGTERM (exit 130/143, only committed chunks left, the printed command resumes), `--part I/N` jobs
joined by `vatt index merge`, torchrun ranks, `vatt index add`, and approximate search giving exact search's answer.
Every build here is checked against the hand-computed windows of ``test_index_build``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mediagen import write_tone_file
from safetensors.numpy import load_file
from test_index_build import (CAPTIONS, EXPECTED, VATT, build_args, finish, items_of, make_world, read_counter_jpeg,
                              start, tree, vatt)

from vattcli.eval.embed import Embeddings
from vattcli.retrieval.index import RetrievalIndex

pytestmark = pytest.mark.slow
COPIES = 6  # byte-identical copies of a 2 s counter video: 4 windows each, and the same 4 rows in every copy


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    world = make_world(tmp_path_factory.mktemp("index-parts"))
    many = world["root"] / "many"
    many.mkdir()
    for i in range(COPIES):
        shutil.copy(world["media"] / "a.mp4", many / f"c{i}.mp4")
    shutil.copy(world["media"] / "broken.mp4", many / "c9-broken.mp4")
    # first in the list; its one window waits in the audio batch (builds here use --batch 2) until the end
    write_tone_file(many / "a-tone.flac", 16000, 0.5)
    world["many"] = many
    return world


def expected(world: dict) -> list[tuple[str, float, float]]:
    return [(str(world["media"] / name), start, end) for name, start, end in EXPECTED]


def expected_many(world: dict) -> list[tuple[str, float, float]]:
    a_windows = [(start, end) for name, start, end in EXPECTED if name == "a.mp4"]
    return [(str(world["many"] / "a-tone.flac"), 0.0, 0.5)] + [
        (str(world["many"] / f"c{i}.mp4"), start, end) for i in range(COPIES) for start, end in a_windows]


def check_many(world: dict, folder: Path) -> None:
    """The items of a build of ``many``; each copy's rows the same as every other copy's; each file once."""
    assert items_of(folder) == expected_many(world)
    tensors = load_file(folder / "embeddings.safetensors")
    assert tensors["rows_vt"].tolist() == list(range(1, 4 * COPIES + 1))
    for space, rows in (("video_vt", tensors["video_vt"]), ("video_va", tensors["video_va"][1:])):
        rows = rows.reshape(COPIES, 4, -1)
        np.testing.assert_allclose(rows, np.broadcast_to(rows[:1], rows.shape), atol=1e-5)
    sources = [json.loads(line)["path"] for line in (folder / "sources.jsonl").read_text().splitlines()]
    assert sources == sorted(set(sources)) and len(sources) == COPIES + 2


def wait_for_chunk(part: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not any(part.glob("chunk-*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert any(part.glob("chunk-*.json")), f"no chunk committed: {finish(proc).stderr}"


def committed_only(part: Path) -> None:
    """A part folder holds whole chunks (their three files) and nothing else: no lock, no temporary file."""
    names = sorted(os.listdir(part))
    stems = {re.fullmatch(r"(chunk-\d{6})\.(json|safetensors|thumbs)", n)[1] for n in names
             if re.fullmatch(r"(chunk-\d{6})\.(json|safetensors|thumbs)", n)}
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("json", "safetensors", "thumbs")), names


# ---------------------------------------------------------------------------------------------- crash, signals


def test_sigkill_mid_build_then_resume_indexes_each_window_once(world):
    env, home = world["env"], world["home"]
    args = build_args(world, "crash", "--commit-every", "1", "--workers", "1", "--batch", "2", media=world["many"])
    part = home / ".crash.build" / "part-001of001"
    proc = start(args, env, start_new_session=True)
    wait_for_chunk(part, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, decoding worker included, as a lost node
    assert finish(proc).returncode == -signal.SIGKILL
    assert not (part / "done.json").exists() and not (home / "crash").exists()
    finished = sum(len(json.loads(p.read_text())["sources"]) for p in part.glob("chunk-*.json"))
    (part / "chunk-000099.safetensors").write_bytes(b"\0" * 100)  # a chunk cut short: vectors without a record
    again = vatt(*args, env=env)
    assert again.returncode == 2 and "--resume" in again.stderr.splitlines()[0], again.stderr
    other = vatt(*args, "--resume", "--stride", "0.5", env=env)
    assert other.returncode == 2 and "stride" in other.stderr.splitlines()[0], other.stderr
    resumed = vatt(*args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    progress = [line for line in resumed.stderr.splitlines() if line.startswith("files ")]
    assert progress[0].startswith(f"files {finished}/{COPIES + 2} ")  # the files committed before are not redone
    check_many(world, home / "crash")
    assert sorted(os.listdir(home)) == ["crash"]


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_stops_after_committing_and_the_printed_command_resumes(world, sig, code, name):
    env, home = world["env"], world["home"]
    args = build_args(world, f"stop-{code}", "--commit-every", "1", "--workers", "1", "--batch", "2",
                      media=world["many"])
    build = home / f".stop-{code}.build"
    proc = start(args, env, start_new_session=True)
    wait_for_chunk(build / "part-001of001", proc)
    os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group; so does a scheduler's SIGTERM
    done = finish(proc)
    assert done.returncode == code, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"error: stopped by {name}") and last.endswith("--resume"), last
    assert sorted(os.listdir(build)) == ["build.json", "part-001of001"] and not (home / f"stop-{code}").exists()
    committed_only(build / "part-001of001")
    command = shlex.split(last.split("go on with: ", 1)[1])
    assert command[:3] == ["vatt", "index", "build"]
    resumed = subprocess.run([VATT, *command[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    check_many(world, home / f"stop-{code}")
    assert not build.exists()


# ---------------------------------------------------------------------------------------------- parts, torchrun


@pytest.fixture(scope="module")
def parted(world) -> Path:
    """``--part 1/2`` (a.mp4, broken.mp4: the split is a hash of the path under --videos), a refused merge, then
    ``--part 2/2`` (sub/b.mp4, sub/deep/*) and ``vatt index merge``."""
    env, home = world["env"], world["home"]
    first = vatt(*build_args(world, "parted", "--part", "1/2", "--search", "exact"), env=env)
    assert first.returncode == 0 and "vatt index merge" in first.stderr.splitlines()[-1], first.stderr
    early = vatt("index", "merge", "parted", "--index-home", home, env=env)
    assert early.returncode == 2 and "part 2/2 not finished" in early.stderr.splitlines()[0], early.stderr
    second = vatt(*build_args(world, "parted", "--part", "2/2", "--search", "exact"), env=env)
    assert second.returncode == 0, second.stderr
    merged = vatt("index", "merge", "parted", "--index-home", home, env=env)
    assert merged.returncode == 0, merged.stderr
    return home / "parted"


def test_parts_merged_give_the_single_builds_windows(parted, world):
    assert items_of(parted) == expected(world)
    assert not (world["home"] / ".parted.build").exists()
    info = json.loads((parted / "index.json").read_text())
    assert info["num_items"] == 10 and info["num_sources"] == 5


def test_merge_without_a_build_exits_2(world):
    done = vatt("index", "merge", "nothing", "--index-home", world["home"], env=world["env"])
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "no build in progress" in done.stderr


def test_torchrun_ranks_index_disjoint_parts_and_rank_0_merges(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in world["env"].items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--no-python", VATT,
                           *map(str, build_args(world, "ranks", "--workers", "1"))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert items_of(world["home"] / "ranks") == expected(world)
    assert not (world["home"] / ".ranks.build").exists()
    assert "vatt index merge" not in done.stderr  # rank 0 merged: nobody is told to


# ---------------------------------------------------------------------------------------------- add


def test_add_appends_only_new_files_after_the_old_items(world):
    env, home, media = world["env"], world["home"], world["media"]
    built = vatt(*build_args(world, "grow", media=media / "sub"), env=env)
    assert built.returncode == 0, built.stderr
    before = load_file(home / "grow" / "embeddings.safetensors")
    added = vatt("index", "add", "grow", "--videos", media, "--index-home", home, env=env)
    assert added.returncode == 0, added.stderr
    assert "adding 2 new files (3 already indexed)" in added.stderr  # a.mp4 and broken.mp4
    assert items_of(home / "grow") == expected(world)[4:] + expected(world)[:4]
    after = load_file(home / "grow" / "embeddings.safetensors")
    assert after["rows_vt"].tolist() == [0, 1, 2, 6, 7, 8, 9] and after["rows_va"].tolist() == list(range(10))
    for space, old in (("video_vt", 3), ("video_va", 6)):
        np.testing.assert_array_equal(after[space][:old], before[space])
    data = (home / "grow" / "thumbs.bin").read_bytes()
    for row, (name, t0, _) in enumerate(EXPECTED[4:] + EXPECTED[:4]):
        offset, length = (int(x) for x in after["thumbs"][row])
        if name in world["videos"]:
            assert read_counter_jpeg(data[offset:offset + length])[1] == world["videos"][name].frame_at(t0 + 0.4)
        else:
            assert length == 0
    kept = tree(home / "grow")
    again = vatt("index", "add", "grow", "--videos", media, "--index-home", home, env=env)
    assert again.returncode == 0 and again.stderr.startswith("nothing to add"), again.stderr
    assert tree(home / "grow") == kept and not (home / ".grow.build").exists()


def test_add_to_an_index_built_from_shards_exits_2(world):
    n = 3
    embeddings = Embeddings(torch.eye(n, 32), torch.eye(n, 64), torch.zeros(n, 32), torch.zeros(n, dtype=torch.bool),
                            [{"key": f"clip{i}", "source": f"v{i}.mp4", "start": 0.0, "end": 0.8} for i in range(n)])
    RetrievalIndex.build(world["home"] / "shards", embeddings, ckpt=world["ckpt"], tokenizer_sha256=None,
                         model_name="vatt-tiny")
    kept = tree(world["home"] / "shards")
    done = vatt("index", "add", "shards", "--videos", world["media"], "--index-home", world["home"], env=world["env"])
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "built from shards" in done.stderr
    assert tree(world["home"] / "shards") == kept and not (world["home"] / ".shards.build").exists()


# ---------------------------------------------------------------------------------------------- approximate search


def test_approximate_index_answers_as_the_exact_one_and_stays_approximate_after_add(parted, world):
    pytest.importorskip("faiss")
    env, home, media = world["env"], world["home"], world["media"]
    built = vatt(*build_args(world, "approx", "--search", "approximate", media=media / "sub"), env=env)
    assert built.returncode == 0, built.stderr
    added = vatt("index", "add", "approx", "--videos", media, "--index-home", home, env=env)
    assert added.returncode == 0, added.stderr
    assert items_of(home / "approx") == expected(world)[4:] + expected(world)[:4]
    assert (home / "approx" / "ann-vt.faiss").is_file() and (home / "approx" / "ann-va.faiss").is_file()
    search = json.loads((home / "approx" / "index.json").read_text())["search"]
    assert search["vt"]["kind"] != "exact" and search["vt"]["n"] == 7 and search["va"]["n"] == 10
    answers = {}
    for name in ("approx", "parted"):
        done = vatt("retrieve", CAPTIONS[0], "--index", name, "--index-home", home, "--json", "-k", "5", env=env)
        assert done.returncode == 0, done.stderr
        answers[name] = json.loads(done.stdout)["results"]
    assert [(r["source"], r["start"]) for r in answers["approx"]] == [(r["source"], r["start"])
                                                                      for r in answers["parted"]]
    np.testing.assert_allclose([r["score"] for r in answers["approx"]], [r["score"] for r in answers["parted"]],
                               atol=1e-6)
