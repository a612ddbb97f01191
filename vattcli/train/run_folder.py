"""The run folder's policy: one writer (the main rank, holding the lock), a folder holding checkpoints is continued
or replaced but never mixed into, and what a resume starts from.

design.md, Checkpoints: one writer per output folder; a folder that already holds a run needs ``--resume`` or
``--overwrite``. On several processes every decision here is taken by the main rank and broadcast
(``from_main``): the ranks of a multi-node run see the run folder through a shared file system whose caches may
lag (a checkpoint renamed into place seconds ago can be missing from another node's listing), and two ranks that
disagreed about where to start would train silently diverging models.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vattcli.checkpoints import TMP_PREFIX, CheckpointManager, find_checkpoint, read_meta
from vattcli.errors import CheckpointError, ConfigError, VattError
from vattcli.locking import FolderLock
from vattcli.train.distributed import DistInfo, from_main

RUN_FILES = ("best.json", "metrics.jsonl", "eval.json", "config.yaml")  # what a run writes beside its checkpoints
METRICS = "metrics.jsonl"


def clear_run(run: Path) -> None:
    """``--overwrite``: delete an earlier run's checkpoints and records (only what a run writes; nothing else).
    Called once the new run is set up, so a run that fails to start leaves the old one intact. Each checkpoint is
    first renamed out of the ``ckpt-*`` namespace, so an interrupted clean-up never leaves a half-deleted folder
    that looks like a checkpoint (the next save removes such leftovers)."""
    for ckpt in run.glob("ckpt-*"):
        trash = run / f"{TMP_PREFIX}{ckpt.name[len('ckpt-'):]}-{os.getpid()}.old"
        os.replace(ckpt, trash)
        shutil.rmtree(trash)
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "tb", ignore_errors=True)


def _check_run_dir(run: Path, resume: str | None, overwrite: bool) -> None:
    """A folder holding checkpoints is continued (``--resume``, ``auto`` included) or replaced (``--overwrite``),
    never mixed into."""
    if resume or overwrite or not any(run.glob("ckpt-*")):
        return
    latest = CheckpointManager(run, keep_last=None).latest()
    last = f"latest step {read_meta(latest)['step']}" if latest is not None else "none of them complete"
    raise CheckpointError(f"{run}: already holds checkpoints of a run ({last}); add --resume latest to continue "
                          "it, or --overwrite to delete them and start afresh")


def _claim(lock: FolderLock, run: Path, resume: str | None, overwrite: bool) -> None:
    lock.acquire()
    try:
        _check_run_dir(run, resume, overwrite)
    except VattError:
        lock.release()
        raise


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, info: DistInfo, *, resume: str | None = None,
                  overwrite: bool = False) -> Iterator[Path]:
    """Hold the run folder's lock (main rank) for the whole run, after checking what it holds: one writer per run
    folder (design.md). On several ranks the main rank's verdict is broadcast, so every rank stops with one error."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the run, or delete it and start afresh)")
    run = Path(run_dir)
    existed = run.exists()
    lock = FolderLock(run, "training run") if info.is_main else None
    from_main(lambda: _claim(lock, run, resume, overwrite), info)
    try:
        yield run
    finally:
        if lock is not None:
            lock.release()
            if not existed and run.is_dir() and not any(run.iterdir()):
                run.rmdir()  # a run that wrote nothing leaves no empty folder behind


def _refuse_later_checkpoints(run: Path, ckpt: Path) -> None:
    """Resuming from an earlier step than the run folder's latest would interleave two histories, and keep-last
    (which keeps the highest steps) would then delete this run's new checkpoints in favour of the old ones."""
    newest = CheckpointManager(run, keep_last=None).latest()
    step = int(read_meta(ckpt)["step"])
    if newest is not None and int(read_meta(newest)["step"]) > step:
        raise CheckpointError(f"{run}: holds {newest.name}, later than {ckpt} (step {step}) to resume "
                              "from; resume into another train.run_dir, or move the later checkpoints away")


def resume_point(spec: str, run: Path, *, verify: bool = True) -> Path | None:
    """The checkpoint ``--resume spec`` continues from: 'latest', 'best' or a folder; 'auto' is the latest complete
    one, or None (start afresh) when the run folder has none yet, so one command serves the first start and every
    restart of a job (torchrun ``--max-restarts``, a requeued Slurm job). ``verify`` checks the weights hash: a
    corrupted checkpoint is an error, never a fresh start."""
    if spec == "auto":
        if CheckpointManager(run, keep_last=None).latest() is None:
            return None
        spec = "latest"
    ckpt = find_checkpoint(spec, run, verify=verify)
    _refuse_later_checkpoints(run, ckpt)
    return ckpt


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line that is not a whole record (a writer killed mid-line)."""
    if not line.endswith("\n"):
        return None
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def trim_metrics(run: Path, step: int) -> None:
    """Keep the metrics.jsonl records up to ``step``, where a resumed run continues: later ones were written by an
    attempt lost after its last checkpoint (a killed rank, a preempted node), and the resumed run logs those steps
    again, so the file keeps one record per step. A last line cut short by a killed writer goes too."""
    path = run / METRICS
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f".{METRICS}.{os.getpid()}")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
