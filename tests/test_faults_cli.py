"""Faults through the installed ``vatt``: usage errors, bugs, signals during training, one writer per run folder,
piped progress and what help and ``--print-config`` show. Each test asserts the exit code (0 success, 2 bad input or
usage, 130/143 stopped by SIGINT/SIGTERM, 1 only for a bug), the line the user reads, and what is left behind."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

VATT = str(Path(sys.executable).parent / "vatt")
# vatt-tiny on synthetic batches: a few seconds a run on 2 cores, no data to prepare
SYNTH = ["-r", "pretrain/vatt-tiny", "data.train={s: synthetic}", "data.batch_size=8", "train.log_every=1"]


def vatt(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([VATT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: equal trees mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def start_pretrain(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([VATT, "pretrain", *SYNTH, f"train.run_dir={run}", "train.ckpt_every=1000", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (path.exists() and path.stat().st_size) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared: {proc.communicate()}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 4-step synthetic pre-training with checkpoints at steps 2 and 4, its output piped (not a terminal)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    done = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=4", "train.ckpt_every=2")
    assert done.returncode == 0, done.stderr
    return run, done


# ------------------------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args, first, hint", [
    (["pretrain", "--bogus"], "error: No such option: --bogus", "try 'vatt pretrain --help'"),
    (["evaluate", "toy"], "error: Missing option '--ckpt'.", "try 'vatt evaluate --help'"),
    (["info", "vatt-tiny", "--frames", "two"], "error: Invalid value for '--frames'", "try 'vatt info --help'"),
    (["pretrian"], "error: No such command 'pretrian'. Did you mean 'pretrain'", "try 'vatt --help'"),
], ids=["unknown-option", "missing-required-option", "bad-int-value", "subcommand-typo"])
def test_usage_error_is_one_error_line_plus_a_hint_and_exit_2(args, first, hint, tmp_path):
    r = vatt(*args)
    assert r.returncode == 2, r.stderr
    assert lines(r.stderr)[0].startswith(first), r.stderr
    assert lines(r.stderr)[1:] == [hint]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_unknown_recipe_is_one_line_and_exit_2(tmp_path):
    r = vatt("pretrain", "-r", "pretrain/vatt-nope", f"train.run_dir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert len(lines(r.stderr)) == 1 and lines(r.stderr)[0].startswith("error: no recipe 'pretrain/vatt-nope'")
    assert not (tmp_path / "run").exists()


def test_resume_and_overwrite_together_is_a_usage_error(tmp_path):
    r = vatt("pretrain", *SYNTH, f"train.run_dir={tmp_path / 'run'}", "--resume", "latest", "--overwrite")
    assert r.returncode == 2
    assert lines(r.stderr) == ["error: --resume and --overwrite: choose one (continue the run, or delete it and start "
                               "afresh)"]
    assert not (tmp_path / "run").exists()


def test_help_shows_no_value_type_for_flags():
    """Flags take no value, so their type column is empty; options that take one keep it (``<str>``)."""
    for args in (["--help"], ["pretrain", "--help"], ["finetune", "--help"], ["evaluate", "--help"],
                 ["retrieve", "--help"], ["export", "--help"], ["info", "--help"], ["preprocess", "toy", "--help"]):
        r = vatt(*args, env={**os.environ, "COLUMNS": "160"})
        assert r.returncode == 0, (args, r.stderr)
        assert "<bool>" not in r.stdout, args
        assert re.search(r"--help\s+Show this message", r.stdout), args
    out = vatt("pretrain", "--help", env={**os.environ, "COLUMNS": "160"}).stdout
    assert re.search(r"--print-config\s+Print the resolved config", out)
    assert re.search(r"--resume\s+<str>", out)


# ------------------------------------------------------------------------------------------------- a bug

def test_unexpected_exception_is_one_line_naming_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    """A genuine bug cannot be planted in product code, so a library call the command makes is made to fail."""
    import vattcli.config
    from vattcli.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(vattcli.config, "load_config", broken)
    monkeypatch.setenv("VATT_HOME", str(tmp_path))
    assert main(["info", "vatt-tiny"]) == 1
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: internal error (RuntimeError: boom); this is a bug"), err
    logs = list((tmp_path / "logs").glob("vatt-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err[0]
    text = logs[0].read_text()
    assert text.startswith("Traceback") and "in broken" in text and "RuntimeError: boom" in text


# ------------------------------------------------------------------------------- training: signals, lock

def test_sigint_saves_a_checkpoint_names_resume_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = start_pretrain(run, "train.steps=500")
    wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ckpts = sorted(run.glob("ckpt-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "meta.json").is_file()
    step = json.loads((ckpts[0] / "meta.json").read_text())["step"]
    last = lines(err)[-1]
    assert last.startswith(f"stopped by SIGINT at step {step}: checkpoint {ckpts[0]}; continue with: vatt pretrain")
    assert last.endswith("--resume latest") and f"train.run_dir={run}" in last
    assert "Traceback" not in err
    # nothing else left behind: no lock file, no temporary checkpoint folder
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", ckpts[0].name, "metrics.jsonl"])


def test_second_writer_is_refused_naming_the_pid_then_sigterm_exits_143(tmp_path):
    run = tmp_path / "run"
    first = start_pretrain(run, "train.steps=500")
    try:
        wait_for(run / "metrics.jsonl", first)
        second = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=5")
        assert second.returncode == 2, second.stderr
        assert len(lines(second.stderr)) == 1
        assert lines(second.stderr)[0].startswith(f"error: {run}: in use by another training run (PID {first.pid} ")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, err
    ckpts = sorted(run.glob("ckpt-*"))
    assert len(ckpts) == 1
    assert re.match(rf"stopped by SIGTERM at step \d+: checkpoint {ckpts[0]}; continue with: vatt pretrain .*"
                    r"--resume latest$", lines(err)[-1])
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", ckpts[0].name, "metrics.jsonl"])


def test_run_folder_with_checkpoints_needs_resume_or_overwrite_and_is_left_untouched(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    before = tree(run)
    r = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=2")
    assert r.returncode == 2
    assert lines(r.stderr) == [f"error: {run}: already holds checkpoints of a run (latest step 4); add --resume latest "
                               "to continue it, or --overwrite to delete them and start afresh"]
    assert tree(run) == before


def test_overwrite_replaces_an_earlier_run_with_higher_steps(finished_run, tmp_path):
    """The old run reached step 4; a 2-step run with keep_last=1 must end with its own step-2 checkpoint only (before
    the fix keep-last deleted it in favour of the old step 4 and the summary named the deleted folder)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    r = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=2", "train.ckpt_every=1000",
             "train.keep_last=1", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert lines(r.stderr)[-1] == f"done: step 2, checkpoint {run / 'ckpt-00000002'}"
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000002"]
    assert [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert not (run / ".vatt.lock").exists()


def test_resuming_an_earlier_checkpoint_than_the_latest_is_refused(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    before = tree(run)
    r = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=6", "--resume", str(run / "ckpt-00000002"))
    assert r.returncode == 2
    assert lines(r.stderr) == [f"error: {run}: holds ckpt-00000004, later than {run / 'ckpt-00000002'} (step 2) to "
                               "resume from; resume into another train.run_dir, or move the later checkpoints away"]
    assert tree(run) == before


def test_resume_auto_continues_the_run_folder_it_finds(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    r = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=5", "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {run / 'ckpt-00000004'} at step 4" in r.stderr
    assert lines(r.stderr)[-1] == f"done: step 5, checkpoint {run / 'ckpt-00000005'}"


def test_resume_verifies_the_weights_hash_unless_no_verify(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    meta_path = run / "ckpt-00000004" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_hash"] = "0" * 64  # an edited hash: the weights no longer match what meta.json promises
    meta_path.write_text(json.dumps(meta))
    before = tree(run)
    r = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=5", "--resume", "latest")
    assert r.returncode == 2
    assert len(lines(r.stderr)) == 1 and lines(r.stderr)[0].startswith("error: ")
    assert "sha256" in r.stderr and str(run / "ckpt-00000004") in r.stderr
    assert tree(run) == before
    r = vatt("pretrain", *SYNTH, f"train.run_dir={run}", "train.steps=5", "--resume", "latest", "--no-verify")
    assert r.returncode == 0, r.stderr
    assert lines(r.stderr)[-1] == f"done: step 5, checkpoint {run / 'ckpt-00000005'}"


def test_piped_progress_prints_step_total_rate_and_eta(finished_run):
    err = lines(finished_run[1].stderr)
    assert re.fullmatch(r"step 1/4 \(25%\)  loss \d+(\.\d+)?  [\d.e+-]+ steps/s  ETA \d+s", err[0]), err
    assert not any(line.startswith("step 2") for line in err)  # at most one line per 10 s, and this run took less


def test_plain_progress_lines_every_10_seconds_with_rate_and_eta(monkeypatch):
    """Simulated clock: 1 step per second after a 5 s start-up; lines at the first step and then every 10 s, the rate
    measured from the first step on (start-up excluded)."""
    from rich.console import Console

    from vattcli.train import loop

    clock = iter([0.0, *(5.0 + i for i in range(31))])
    monkeypatch.setattr(loop.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = loop.PlainProgress(Console(file=out, width=200), total=100, start_step=0)
    for step in range(1, 32):
        progress.update(step, 2.5)
    assert out.getvalue().splitlines() == [
        "step 1/100 (1%)  loss 2.5  0.2 steps/s  ETA 8m15s",  # 1 step in 5 s: 99 steps at 0.2/s
        "step 11/100 (11%)  loss 2.5  1 steps/s  ETA 1m29s",
        "step 21/100 (21%)  loss 2.5  1 steps/s  ETA 1m19s",
        "step 31/100 (31%)  loss 2.5  1 steps/s  ETA 1m09s",
    ]


# --------------------------------------------------------------------------------------- what users read

def test_print_config_with_ckpt_shows_the_checkpoint_model(finished_run):
    r = vatt("finetune", "kinetics400", "--ckpt", str(finished_run[0]), "--print-config")
    assert r.returncode == 0, r.stderr
    model = yaml.safe_load(r.stdout)["model"]
    assert model["name"] == "vatt-tiny" and model["video"]["d_model"] == 64  # the recipe's own is vatt-bbs, 768
    assert model["droptoken_rate"] == 0.0  # fine-tuning settings stay the recipe's
    assert "rather than the recipe's vatt-bbs" in r.stderr


def test_finetune_result_is_lines_and_paper_figure_only_for_its_model(capsys):
    from vattcli.commands.train import _print_result

    result = {"top1": 41.666, "top5": 90.0, "count": 12, "paper": {"metric": "top1", "vatt-bbs": 79.6}}
    _print_result("kinetics400", {"eval": result, "model": "vatt-tiny"})
    assert lines(capsys.readouterr().err) == ["evaluation of vatt-tiny on kinetics400:", "  top1                 41.67",
                                              "  top5                 90.00", "  count                12",
                                              "  paper figure is for vatt-bbs, not comparable with vatt-tiny"]
    _print_result("kinetics400", {"eval": result, "model": "vatt-bbs"})
    assert lines(capsys.readouterr().err)[-1] == "  paper (top1)         79.6"


def test_a_lost_peer_is_named_as_such_not_as_a_bug(tmp_path, monkeypatch, capsys):
    """gloo reports a killed peer as a RuntimeError naming the broken connection: exit 1 (a launcher restarts the
    group), one line saying what happened, the traceback in the crash log."""
    import vattcli.train.pretrain
    from vattcli.cli import main

    def lost(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:3941")

    monkeypatch.setenv("VATT_HOME", str(tmp_path))
    monkeypatch.setattr(vattcli.train.pretrain, "run_pretrain", lost)
    code = main(["pretrain", "--recipe", "pretrain/vatt-tiny", "data.train={s: synthetic}",
                 f"train.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "lost contact with another training process" in err[0]
    assert "this is a bug" not in err[0] and list((tmp_path / "logs").glob("vatt-crash-*.log"))
