"""Training across nodes, on one machine with gloo: two torchrun "nodes" against one node of two processes, a rank
lost and restarted by torchrun, SIGTERM to a torchrun job, a restarted job taking over its own lock, and the Slurm
example. Every run goes through the installed ``vatt`` (torchrun --no-python starts it as a user would)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
VATT = str(BIN / "vatt")
SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "pretrain.sbatch"
# vatt-tiny on synthetic batches (DropToken on, so every rank's random state matters), checkpoints every 5 steps
TINY = ["pretrain", "-r", "pretrain/vatt-tiny", "data.train={s: synthetic}", "data.batch_size=8", "train.log_every=1",
        "train.steps=30", "train.ckpt_every=5", "train.keep_last=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "VATT_HOME": str(tmp / "vatt-home"), **extra}


def torchrun(launch: list[str], vatt_args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    """torchrun with the c10d rendezvous on 127.0.0.1:``port``, starting ``vatt`` (as installed) per process."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launch, "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", f"127.0.0.1:{port}", "--no-python", VATT, *vatt_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sorted(run.glob("ckpt-*"))[-1] / "model.safetensors"))


def leftovers(run: Path) -> list[str]:
    """What a finished run must not leave: its lock, temporary checkpoint folders, temporary files."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def workers_of(launcher: int) -> dict[int, int]:
    """RANK -> PID of the processes torchrun (PID ``launcher``) has started, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or f"\nPPid:\t{launcher}\n" not in (entry / "status").read_text():
                continue
            env = dict(v.split("=", 1) for v in (entry / "environ").read_bytes().decode().split("\0") if "=" in v)
        except OSError:
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory) -> Path:
    """The reference: ``torchrun --nnodes 1 --nproc-per-node 2``, 30 steps, uninterrupted."""
    tmp = tmp_path_factory.mktemp("one-node")
    run = tmp / "run"
    proc = torchrun(["--nnodes", "1", "--nproc-per-node", "2"], [*TINY, f"train.run_dir={run}"], environment(tmp),
                    free_port())
    out = finish(proc)
    assert proc.returncode == 0, out
    assert [m["step"] for m in metrics(run)] == list(range(1, 31))
    return run


# ------------------------------------------------------------------------------------------ two nodes

@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on CPU, as the tests of torchrun runs")
def test_two_torchrun_nodes_train_as_one_node_with_two_processes(one_node_run, tmp_path):
    """Two torchrun agents meet at one c10d rendezvous, each starting one process, and share the run folder (a
    shared file system): losses and weights equal the single node's, and one rank alone wrote the run folder."""
    run, port = tmp_path / "run", free_port()
    nodes = [torchrun(["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-id", "two-nodes"],
                      [*TINY, f"train.run_dir={run}"], environment(tmp_path), port) for _ in range(2)]
    outputs = [finish(node) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sum(o.count("done: step 30, checkpoint") for o in outputs) == 1  # the main rank's summary, once
    one, two = metrics(one_node_run), metrics(run)
    assert [m["step"] for m in two] == list(range(1, 31))
    for a, b in zip(one, two):
        for key in ("loss", "loss_va", "loss_vt"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), (a, b)
    a, b = final_weights(one_node_run), final_weights(run)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000025", "ckpt-00000030"]
    assert leftovers(run) == []


# ----------------------------------------------------------------------------------------- lost rank

@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers in /proc")
def test_sigkilled_rank_is_restarted_by_torchrun_and_ends_bit_identical(one_node_run, tmp_path):
    """``--max-restarts 2`` with ``--resume auto``: the first group starts afresh; rank 0 (the checkpoint writer
    and lock holder) is SIGKILLed after the first checkpoint; torchrun restarts the group, which takes over the dead
    rank's lock, resumes from the latest complete checkpoint (each rank its own RNG and data position) and ends
    with the weights of the uninterrupted run, bit for bit on CPU, and one metrics record per step."""
    run = tmp_path / "run"
    proc = torchrun(["--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "2", "--rdzv-id", "lost-rank"],
                    [*TINY, f"train.run_dir={run}", "--resume", "auto"], environment(tmp_path), free_port())
    try:
        deadline = time.time() + 180
        while not list(run.glob("ckpt-*/meta.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        ranks = workers_of(proc.pid)
        assert sorted(ranks) == [0, 1], (ranks, proc.poll())
        os.kill(ranks[0], signal.SIGKILL)
    finally:
        out = finish(proc)
    assert proc.returncode == 0, out
    assert f"--resume auto: no checkpoint in {run} yet, starting afresh" in out
    assert f"{run / '.vatt.lock'}: removing a stale lock of PID {ranks[0]}" in out
    resumed = re.findall(rf"resumed from {re.escape(str(run))}/ckpt-(\d+) at step (\d+)", out)
    assert len(resumed) == 1 and 5 <= int(resumed[0][1]) < 30, out
    a, b = final_weights(one_node_run), final_weights(run)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in metrics(one_node_run)]
    assert leftovers(run) == []


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused_in_one_line(one_node_run, tmp_path):
    """A torchrun --nnodes MIN:MAX restart on fewer nodes: each process's data position and RNG were saved for a
    world of 2, so one process refuses the checkpoint, and leaves the run folder as it was."""
    run = tmp_path / "run"
    shutil.copytree(one_node_run, run)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    r = subprocess.run([VATT, *TINY, f"train.run_dir={run}", "train.steps=40", "--resume", "auto"],
                       capture_output=True, text=True, timeout=300, env=environment(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"error: {run / 'ckpt-00000030'}: written by 2 training processes, this run has "
                                     "1; resume it with 2 (the data position and random state are per process)"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


# ---------------------------------------------------------------------------------- SIGTERM, restarts

def _toy_torchrun(run: Path, toy: Path, tmp: Path, *extra: str) -> subprocess.Popen:
    args = ["pretrain", "-r", "pretrain/vatt-tiny", f"data.train={{howto100m: {toy / 'shards/howto100m'}}}",
            f"data.tokenizer={toy / 'tokenizer.model'}", "data.batch_size=8", "data.num_workers=1",
            "data.shuffle_buffer=16", "model.dropout=0.1", "train.log_every=1", "train.steps=12",
            "train.ckpt_every=1000", f"train.run_dir={run}", "--resume", "auto", *extra]
    return torchrun(["--nnodes", "1", "--nproc-per-node", "2"], args, environment(tmp), free_port())


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_every_rank_at_one_step_then_resume_auto_continues(toy_data, tmp_path):
    """A scheduler stopping a torchrun job signals torchrun, which sends SIGTERM to each rank's whole process group,
    DataLoader workers included: the ranks agree on one step, save it, and ``--resume auto`` then ends with the
    uninterrupted run's weights (real shards read by a worker, dropout and DropToken on)."""
    straight = tmp_path / "straight"
    proc = _toy_torchrun(straight, toy_data, tmp_path)
    out = finish(proc)
    assert proc.returncode == 0, out

    run = tmp_path / "run"
    proc = _toy_torchrun(run, toy_data, tmp_path)
    try:
        deadline = time.time() + 180
        log = run / "metrics.jsonl"
        while (not log.exists() or log.read_text().count("\n") < 3) and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
    finally:
        out = finish(proc)
    assert "is killed by signal" not in out and "internal error" not in out, out
    stopped = [int(s) for s in re.findall(r"stopped by SIGTERM at step (\d+): checkpoint", out)]
    assert len(stopped) == 1 and 3 <= stopped[0] < 12, out
    assert sorted(p.name for p in run.glob("ckpt-*")) == [f"ckpt-{stopped[0]:08d}"]
    assert leftovers(run) == []

    proc = _toy_torchrun(run, toy_data, tmp_path)
    out = finish(proc)
    assert proc.returncode == 0, out
    assert f"resumed from {run / f'ckpt-{stopped[0]:08d}'} at step {stopped[0]}" in out
    a, b = final_weights(straight), final_weights(run)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_resume_auto_starts_afresh_then_resumes_and_keeps_one_metrics_record_per_step(tmp_path):
    """The first start of a job finds no checkpoint; a restart after a lost attempt finds the step-4 checkpoint and
    metrics that attempt logged after it (steps 5-6, the last line cut short by the kill): those are dropped, since
    the resumed run logs the steps again."""
    run = tmp_path / "run"
    args = [VATT, *TINY, f"train.run_dir={run}", "train.ckpt_every=2"]
    first = subprocess.run([*args, "train.steps=4", "--resume", "auto"], capture_output=True, text=True, timeout=300,
                           env=environment(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines()[0] == f"--resume auto: no checkpoint in {run} yet, starting afresh"
    lost = [json.dumps({"step": s, "loss": 99.0}) + "\n" for s in (5, 6)]
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write("".join(lost) + '{"step": 7, "lo')
    again = subprocess.run([*args, "train.steps=6", "--resume", "auto"], capture_output=True, text=True, timeout=300,
                           env=environment(tmp_path))
    assert again.returncode == 0, again.stderr
    assert f"resumed from {run / 'ckpt-00000004'} at step 4" in again.stderr
    records = metrics(run)
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 6]
    assert 99.0 not in [m["loss"] for m in records]
    assert leftovers(run) == []


# ------------------------------------------------------------------------------------ a restarted job's lock

def _lock(run: Path, **owner: object) -> str:
    run.mkdir(parents=True)
    text = json.dumps({"pid": 4242, "host": "node-gone", "what": "training run", "command": "vatt pretrain",
                       "started": "2026-01-01T00:00:00+0000", **owner})
    (run / ".vatt.lock").write_text(text)
    return text


@pytest.mark.parametrize("owner, env", [
    ({"slurm_job": ["8812", 0]}, {"SLURM_JOB_ID": "8812", "SLURM_RESTART_COUNT": "1"}),
    ({"torchrun_job": ["job-7", "0"]}, {"TORCHELASTIC_RUN_ID": "job-7", "RANK": "0", "WORLD_SIZE": "1"}),
], ids=["slurm-requeued", "torchrun-restarted"])
def test_lock_left_on_another_host_by_an_earlier_attempt_of_the_job_is_taken_over(owner, env, tmp_path):
    run = tmp_path / "run"
    _lock(run, **owner)
    r = subprocess.run([VATT, *TINY, f"train.run_dir={run}", "train.steps=1", "--resume", "auto"],
                       capture_output=True, text=True, timeout=300, env=environment(tmp_path, **env))
    assert r.returncode == 0, r.stderr
    assert f"{run / '.vatt.lock'}: removing a stale lock of PID 4242" in r.stderr
    assert r.stderr.splitlines()[-1] == f"done: step 1, checkpoint {run / 'ckpt-00000001'}"
    assert leftovers(run) == []


@pytest.mark.parametrize("owner, env", [
    ({"slurm_job": ["8812", 1]}, {"SLURM_JOB_ID": "8812", "SLURM_RESTART_COUNT": "1"}),
    ({"torchrun_job": ["job-7", "0"]}, {"TORCHELASTIC_RUN_ID": "job-8", "RANK": "0", "WORLD_SIZE": "1"}),
    ({}, {}),
], ids=["slurm-same-attempt", "torchrun-other-job", "no-scheduler"])
def test_lock_on_another_host_of_another_job_or_attempt_is_refused(owner, env, tmp_path):
    run = tmp_path / "run"
    text = _lock(run, **owner)
    r = subprocess.run([VATT, *TINY, f"train.run_dir={run}", "train.steps=1", "--resume", "auto"],
                       capture_output=True, text=True, timeout=300, env=environment(tmp_path, **env))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"error: {run}: in use by another training run (PID 4242 on node-gone, since "
                                     f"2026-01-01T00:00:00+0000); wait for it, use another folder, or remove "
                                     f"{run / '.vatt.lock'} if that process is gone"]
    assert (run / ".vatt.lock").read_text() == text
    assert sorted(p.name for p in run.iterdir()) == [".vatt.lock"]


# ------------------------------------------------------------------------------------------- Slurm example

def test_slurm_example_is_valid_bash_and_uses_only_options_vatt_pretrain_has():
    assert subprocess.run(["bash", "-n", str(SLURM_SCRIPT)], capture_output=True).returncode == 0
    calls = [line for line in SLURM_SCRIPT.read_text().splitlines() if "vatt pretrain" in line and
             not line.lstrip().startswith("#")]
    assert len(calls) == 1
    options = set(re.findall(r"\s(--[a-z-]+)", calls[0].split("vatt pretrain", 1)[1]))
    assert options == {"--recipe", "--resume"}
    shown = subprocess.run([VATT, "pretrain", "--help"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"}).stdout
    assert all(option in shown for option in options), shown
    recipe = re.search(r"RECIPE=\$\{RECIPE:-([\w/-]+)\}", SLURM_SCRIPT.read_text()).group(1)
    assert (SLURM_SCRIPT.parents[2] / "recipes" / f"{recipe}.yaml").is_file()


def _fake_slurm(tmp: Path, exit_codes: list[int]) -> dict[str, str]:
    """``srun`` running its command here, ``vatt`` exiting with the next of ``exit_codes`` and logging its
    arguments, ``scontrol`` logging its arguments: the script's control flow without a cluster."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (tmp / "codes").write_text("".join(f"{c}\n" for c in exit_codes))
    scripts = {
        "srun": 'while [ "${1#-}" != "$1" ]; do shift; done; exec "$@"',
        "vatt": f'echo "$*" >> {tmp}/vatt.log; code=$(head -1 {tmp}/codes); sed -i 1d {tmp}/codes; exit "$code"',
        "scontrol": f'echo "$*" >> {tmp}/scontrol.log',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "8812",
            "SLURM_JOB_NODELIST": "node[01-04]", "RESTARTS": "2"}


@pytest.mark.parametrize("codes, script_exit, runs, requeued", [
    ([0], 0, 1, False),
    ([143], 143, 1, True),  # stopped before the time limit with a checkpoint: back in the queue
    ([137, 0], 0, 2, False),  # a lost rank: started again in the allocation
    ([1, 1, 1], 1, 3, False),  # RESTARTS=2: three starts, then the job fails
    ([2], 2, 1, False),  # bad input: a restart would fail the same way
], ids=["finished", "time-limit", "lost-rank", "restarts-spent", "bad-input"])
def test_slurm_example_requeues_after_a_checkpoint_and_restarts_a_lost_rank(codes, script_exit, runs, requeued,
                                                                           tmp_path):
    env = _fake_slurm(tmp_path, codes)
    r = subprocess.run(["bash", str(SLURM_SCRIPT), "data.train.howto100m=/shared/shards"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == script_exit, r.stdout + r.stderr
    calls = (tmp_path / "vatt.log").read_text().splitlines()
    assert calls == ["pretrain --recipe pretrain/vatt-bbs train.run_dir=runs/pretrain-bbs --resume auto "
                     "data.train.howto100m=/shared/shards"] * runs
    assert (tmp_path / "scontrol.log").exists() == requeued
    if requeued:
        assert (tmp_path / "scontrol.log").read_text() == "requeue 8812\n"
