"""Preprocessing in parts (issue 12): `vatt preprocess NAME --part I/N`, `vatt preprocess merge`, `--estimate`.

Everything runs through the installed `vatt` in subprocesses on a dataset made here: 12 two-second videos listed in a
custom manifest (keys ``000001_v00`` .. ``000012_v11``, written out by hand below) plus one line naming a file that
does not exist (one ``missing`` skip). Each test asserts the exit code, the first line of stderr and what is left in
the output folder (no temporary file, no lock file).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from mediagen import make_video

from vattcli.data.folders import shard_urls
from vattcli.errors import DataError

VATT = Path(sys.executable).parent / "vatt"
TIMEOUT = 120
KEYS = {f"{i + 1:06d}_v{i:02d}" for i in range(12)}  # custom adapter keys: manifest line, then the file stem
SCHEDULER_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT",
                  "JOB_COMPLETION_INDEX", "VATT_PARTS")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any scheduler variable (the tests may run inside a Slurm job), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SCHEDULER_VARS}
    return {**env, **extra}


def vatt(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VATT), *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                          env=env or clean_env())


def part_cmd(root: Path, out: Path, part: str, *extra: str) -> list[str]:
    return [str(VATT), "preprocess", "custom", "--root", str(root), "--out", str(out), "--workers", "1",
            "--part", part, *extra]


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def leftovers(out: Path) -> list[str]:
    """Temporary files and lock files anywhere under ``out`` (none may survive a run, a kill + resume, a merge)."""
    names = [p.name for p in out.rglob("*")] if out.exists() else []
    return [n for n in names if n.startswith(".tmp-") or (n.startswith(".vatt") and n.endswith(".lock"))]


def tar_keys(paths: list[Path] | list[str]) -> list[str]:
    """Sample keys in tar shards, read with tarfile (not the project's reader), one per sample's json member."""
    keys = []
    for path in paths:
        with tarfile.open(path) as tar:
            keys += [m.name[: -len(".json")] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def part_keys(out: Path, index: int) -> list[str]:
    return tar_keys(sorted((out / "train").glob(f"train-p{index:03d}of003-*.tar")))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parts-in")
    make_video(root / "v00.mp4", fps=25.0, duration=2.0, size=(48, 64), audio_rate=48000)
    for i in range(1, 12):
        shutil.copy(root / "v00.mp4", root / f"v{i:02d}.mp4")
    lines = [{"video": f"v{i:02d}.mp4"} for i in range(12)] + [{"video": "gone.mp4"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory) -> Path:
    """The same dataset preprocessed in one run (the reference key set)."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = vatt("preprocess", "custom", "--root", dataset, "--out", out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def three_parts(dataset, tmp_path_factory) -> tuple[Path, list[str]]:
    """Parts 1/3, 2/3 and 3/3 run as three concurrent processes into one --out (not merged); their first lines."""
    out = tmp_path_factory.mktemp("parts") / "out"
    procs = [subprocess.Popen(part_cmd(dataset, out, f"{i}/3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=clean_env()) for i in (1, 2, 3)]
    results = [p.communicate(timeout=TIMEOUT) + (p.returncode,) for p in procs]
    for _, stderr, code in results:
        assert code == 0, stderr
    return out, [first_line(stderr) for _, stderr, _ in results]


@pytest.fixture
def parts_copy(three_parts, tmp_path) -> Path:
    """A copy of the unmerged three-part folder a test may change."""
    return Path(shutil.copytree(three_parts[0], tmp_path / "out", symlinks=True))


# ------------------------------------------------------------------------------------------- split and merge


def test_three_concurrent_parts_give_exactly_the_single_run_keys(three_parts, single, tmp_path):
    out, lines = three_parts
    assert lines == ["part 1/3 from --part", "part 2/3 from --part", "part 3/3 from --part"]
    per_part = [part_keys(out, i) for i in (1, 2, 3)]
    assert all(per_part), per_part  # 12 sources over 3 parts: none is empty for these names
    union = [k for keys in per_part for k in keys]
    assert len(union) == len(set(union)) == 12  # no duplicates across or within parts
    assert set(union) == KEYS == set(tar_keys(sorted((single / "train").glob("*.tar"))))
    merged = Path(shutil.copytree(out, tmp_path / "merged"))
    result = vatt("preprocess", "merge", merged)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((merged / "train/manifest.json").read_text())
    assert manifest["complete"] is True and manifest["counts"]["written"] == 12
    assert manifest["counts"]["skipped"] == {"missing": 1}  # the one line naming gone.mp4, counted once
    assert abs(manifest["seconds"] - 24.0) < 0.1  # 12 videos of 2 s
    urls = shard_urls(merged / "train")  # what training reads
    assert sorted(tar_keys(urls)) == sorted(KEYS)
    assert leftovers(merged) == [] and leftovers(out) == []


def test_merge_again_rewrites_the_same_manifest(parts_copy):
    assert vatt("preprocess", "merge", parts_copy, "--split", "train").returncode == 0
    before = json.loads((parts_copy / "train/manifest.json").read_text())
    again = vatt("preprocess", "merge", parts_copy)
    assert again.returncode == 0, again.stderr
    after = json.loads((parts_copy / "train/manifest.json").read_text())
    assert after["shards"] == before["shards"] and after["counts"] == before["counts"]
    assert leftovers(parts_copy) == []


def test_training_refuses_parts_that_are_not_merged(parts_copy):
    with pytest.raises(DataError, match=r"3 of 3 parts .* no merged manifest.json; run `vatt preprocess merge"):
        shard_urls(parts_copy)
    with pytest.raises(DataError, match="vatt preprocess merge"):
        shard_urls(parts_copy / "train")


def test_merge_with_a_missing_part_refuses_naming_it_and_writes_nothing(parts_copy):
    for path in (parts_copy / "train").glob("*p002of003*"):
        path.unlink()
    before = sorted(p.name for p in (parts_copy / "train").iterdir())
    result = vatt("preprocess", "merge", parts_copy)
    assert result.returncode == 2, result.stderr
    line = first_line(result.stderr)
    assert "missing part(s) 2/3" in line and "--part 2/3 --resume" in line, line
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in (parts_copy / "train").iterdir()) == before  # no manifest.json, nothing else
    assert leftovers(parts_copy) == []


def test_merge_with_an_incomplete_part_refuses_naming_it(parts_copy):
    path = parts_copy / "train/manifest.p003of003.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
    result = vatt("preprocess", "merge", parts_copy)
    assert result.returncode == 2, result.stderr
    line = first_line(result.stderr)
    assert "incomplete part(s) (complete: false) 3/3" in line and "missing" not in line, line
    assert not (parts_copy / "train/manifest.json").exists()
    assert leftovers(parts_copy) == []


def test_merge_refuses_a_key_held_by_two_parts(parts_copy):
    taken = part_keys(parts_copy, 1)[0]
    [sidecar] = (parts_copy / "train").glob("train-p002of003-*.keys.json")
    keys = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps([taken, *keys[1:]]))  # part 2 now claims a sample of part 1
    result = vatt("preprocess", "merge", parts_copy)
    assert result.returncode == 2, result.stderr
    line = first_line(result.stderr)
    assert f"key '{taken}' occurs twice" in line and "part 1/3" in line and "part 2/3" in line, line
    assert not (parts_copy / "train/manifest.json").exists()


def test_rerunning_a_part_after_the_merge_removes_the_merged_manifest(parts_copy, dataset):
    assert vatt("preprocess", "merge", parts_copy).returncode == 0
    result = subprocess.run(part_cmd(dataset, parts_copy, "2/3", "--resume"), capture_output=True, text=True,
                            timeout=TIMEOUT, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "removed the merged" in result.stderr and "vatt preprocess merge" in result.stderr
    assert not (parts_copy / "train/manifest.json").exists()
    with pytest.raises(DataError, match="vatt preprocess merge"):
        shard_urls(parts_copy)
    assert vatt("preprocess", "merge", parts_copy).returncode == 0
    assert sorted(tar_keys(shard_urls(parts_copy))) == sorted(KEYS)


# ------------------------------------------------------------------------------------------- crash and resume


def wait_for(path: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_part_killed_with_sigkill_resumes_and_the_merge_is_exact(dataset, three_parts, tmp_path):
    out = tmp_path / "out"
    # one worker: the samples come one after another, so the kill lands mid-run even on a loaded machine
    proc = subprocess.Popen(part_cmd(dataset, out, "1/3", "--shard-samples", "1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env(), start_new_session=True)
    try:
        wait_for(out / "train/manifest.p001of003.json")
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a preempted node
        proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed = json.loads((out / "train/manifest.p001of003.json").read_text())
    assert killed["complete"] is False and 1 <= len(killed["shards"]) < 5, killed["shards"]
    kept = {s["name"]: (out / "train" / s["name"]).stat().st_mtime_ns for s in killed["shards"]}
    resume = part_cmd(dataset, out, "1/3", "--shard-samples", "1", "--resume")
    resume[resume.index("--workers") + 1] = "2"  # on a machine with another core count
    again = subprocess.run(resume, capture_output=True, text=True, timeout=TIMEOUT, env=clean_env())
    assert again.returncode == 0, again.stderr
    assert first_line(again.stderr) == "part 1/3 from --part"
    assert {n: (out / "train" / n).stat().st_mtime_ns for n in kept} == kept  # finished shards kept as they were
    assert sorted(part_keys(out, 1)) == sorted(part_keys(three_parts[0], 1))
    for path in (three_parts[0] / "train").glob("*p00[23]of003*"):  # the other two parts, run elsewhere
        shutil.copy(path, out / "train" / path.name)
    assert vatt("preprocess", "merge", out).returncode == 0
    keys = tar_keys(shard_urls(out))
    assert len(keys) == 12 and set(keys) == KEYS
    assert leftovers(out) == []  # the dead run's lock and temporary shard are gone


def test_the_same_part_twice_at_once_is_refused_but_another_part_runs(dataset, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(part_cmd(dataset, out, "1/3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=clean_env())
    try:
        wait_for(out / ".vatt.train-p001of003.lock")
        os.kill(first.pid, signal.SIGSTOP)  # part 1 holds its lock, mid-run
        same = subprocess.run(part_cmd(dataset, out, "1/3"), capture_output=True, text=True, timeout=TIMEOUT,
                              env=clean_env())
        other = subprocess.run(part_cmd(dataset, out, "2/3"), capture_output=True, text=True, timeout=TIMEOUT,
                               env=clean_env())
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=TIMEOUT) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert same.returncode == 2, same.stderr
    lines = same.stderr.strip().splitlines()
    assert lines[0] == "part 1/3 from --part"
    assert f"PID {first.pid}" in lines[1] and "part 1/3" in lines[1], lines
    assert other.returncode == 0, other.stderr
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------- choosing the part


@pytest.mark.parametrize("env, args, line, part", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "3"}, [],
     "part 3/3 from SLURM_ARRAY_TASK_ID=5 (SLURM_ARRAY_TASK_MIN=3, SLURM_ARRAY_TASK_COUNT=3)", 3),
    ({"JOB_COMPLETION_INDEX": "0", "VATT_PARTS": "3"}, [], "part 1/3 from JOB_COMPLETION_INDEX=0 (VATT_PARTS=3)", 1),
    ({"JOB_COMPLETION_INDEX": "1"}, ["--parts", "3"], "part 2/3 from JOB_COMPLETION_INDEX=1 (--parts 3)", 2),
])
def test_part_from_the_scheduler_environment_shows_on_the_first_line(dataset, tmp_path, env, args, line, part):
    out = tmp_path / "out"
    result = vatt("preprocess", "custom", "--root", dataset, "--out", out, "--workers", "1", *args,
                  env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    assert first_line(result.stderr) == line, result.stderr  # one line, however narrow the terminal
    assert sorted(p.name for p in (out / "train").glob("manifest*.json")) == [f"manifest.p00{part}of003.json"]
    assert leftovers(out) == []


@pytest.mark.parametrize("env, args, named", [
    ({}, ["--part", "0/3"], "--part 0/3: expected 1 <= I <= 3"),
    ({}, ["--part", "4/3"], "--part 4/3: expected 1 <= I <= 3"),
    ({}, ["--part", "x"], "--part x: expected I/N"),
    ({}, ["--part", "3/0"], "--part 3/0: expected I/N"),
    ({}, ["--part", "2/3", "--parts", "4"], "--parts 4 differs"),
    ({"JOB_COMPLETION_INDEX": "2"}, [], "JOB_COMPLETION_INDEX=2 is set but the number of parts is not"),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "4",
      "SLURM_ARRAY_TASK_COUNT": "3"}, [], "must be a plain range"),
])
def test_a_bad_part_is_one_line_and_exit_2(dataset, tmp_path, env, args, named):
    result = vatt("preprocess", "custom", "--root", dataset, "--out", tmp_path / "out", *args, env=clean_env(**env))
    assert result.returncode == 2, result.stderr
    assert named in first_line(result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- estimate


def test_estimate_prints_hours_core_hours_and_size_and_writes_nothing(dataset, single, tmp_path):
    out = tmp_path / "out"
    text = vatt("preprocess", "custom", "--root", dataset, "--out", out, "--estimate", "--sample", "5")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "12 sources" in lines[0] and "sample of 5 sources" in lines[0], lines
    assert any(line.startswith("media hours to process: 0.00667 h") for line in lines), lines  # 12 x 2 s
    assert any(line.startswith("expected core-hours: ") for line in lines), lines
    assert any("x real time per core (measured: 4 windows" in line for line in lines), lines
    assert any(line.startswith("expected output size: ") for line in lines), lines
    result = vatt("preprocess", "custom", "--root", dataset, "--estimate", "--sample", "5", "--json")
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["sources"] == 12 and estimate["sample"] == 5 and estimate["unreadable"] == 0
    assert abs(estimate["media_hours"] * 3600 - 24.0) < 0.1
    assert estimate["core_hours"] > 0 and estimate["realtime_per_core"] > 0
    written = sum(s["bytes"] for s in json.loads((single / "train/manifest.json").read_text())["shards"])
    assert 0.5 * written < estimate["output_bytes"] < 2.0 * written  # against what a real run wrote
    assert not out.exists()
