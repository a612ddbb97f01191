"""One writer per output folder (design.md, Checkpoints): a lock file naming its owner, stale locks detected.

``FolderLock(folder)`` creates ``folder/.vatt.lock`` with ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+ file
systems) holding the owner's PID, host, command and start time. A second writer gets one line naming the owner. A
lock whose owner is on this host and no longer runs (a crash, ``kill -9``) is stale: it is taken over with a note in
the log. A lock from another host is never taken over automatically, since its process cannot be checked from here;
the message says which file to remove once that job is known to be gone, unless the lock names an earlier attempt of
the job this process belongs to (``_earlier_attempt``): a job restarted by its scheduler runs only once the attempt
before it has ended, and may land on other nodes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from vattcli.errors import VattError

log = logging.getLogger(__name__)

LOCK_NAME = ".vatt.lock"


class FolderLocked(VattError):
    """Another live process writes into the folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _launch() -> dict:
    """The scheduler job this process is an attempt of, recorded in the lock. Slurm keeps ``SLURM_JOB_ID`` across
    requeues and counts them in ``SLURM_RESTART_COUNT``. torchrun keeps ``TORCHELASTIC_RUN_ID`` (its ``--rdzv-id``;
    the default "none" names no job) across the groups it restarts, and in a group one process has a given ``RANK``."""
    env, found = os.environ, {}
    if env.get("SLURM_JOB_ID"):
        found["slurm_job"] = [env["SLURM_JOB_ID"], int(env.get("SLURM_RESTART_COUNT") or 0)]
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none" and "RANK" in env:
        found["torchrun_job"] = [env["TORCHELASTIC_RUN_ID"], env["RANK"]]
    return found


def _earlier_attempt(owner: dict) -> bool:
    """Whether ``owner`` (a lock's content, from another process) was an earlier attempt of this process's job: the
    same Slurm job before a requeue (a lower restart count: Slurm requeues a job once it has ended), or the same rank
    of the same torchrun job, so of a group torchrun has replaced (it starts a group once the last one has stopped)."""
    mine = _launch()
    slurm, theirs = mine.get("slurm_job"), owner.get("slurm_job")
    if (slurm and isinstance(theirs, list) and len(theirs) == 2 and theirs[0] == slurm[0]
            and isinstance(theirs[1], int) and theirs[1] < slurm[1]):
        return True
    return "torchrun_job" in mine and owner.get("torchrun_job") == mine["torchrun_job"]


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


class FolderLock:
    """Context manager holding ``folder/.vatt.lock`` while a command writes into ``folder`` (created if needed).

    ``what`` names the job in messages ("preprocessing", "training run"). Re-entrant within one process: a second
    lock on a folder this process already holds is a no-op, so a library call inside a locked command works.
    ``name`` picks another lock file in the folder, for writers that share it by owning disjoint parts of it (the
    parts of a split preprocessing run, one lock per part): each lock file has one writer.
    """

    _held: dict[Path, int] = {}

    def __init__(self, folder: str | os.PathLike[str], what: str = "job", name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self._owned = False

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if FolderLock._held.get(key, 0):
            FolderLock._held[key] += 1
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
              "command": " ".join(sys.argv[:3]), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_launch()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if self._stale(owner):
                    log.warning("%s: removing a stale lock of PID %s (no longer running)", self.path, owner.get("pid"))
                    self.path.unlink(missing_ok=True)
                    continue
                raise FolderLocked(self._busy_message(owner)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._owned = True
            FolderLock._held[key] = 1
            return self
        raise FolderLocked(f"{self.folder}: could not take the lock {self.path} (another writer keeps taking it)")

    def _stale(self, owner: dict) -> bool:
        if not owner:  # unreadable or half-written: treat as stale only when it is old (a writer crashed mid-write)
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname():
            return _earlier_attempt(owner)
        return isinstance(pid, int) and not pid_alive(pid)

    def _busy_message(self, owner: dict) -> str:
        if not owner:
            return (f"{self.folder}: another vatt process is writing here (lock {self.path} was just created); "
                    "wait for it or use another folder")
        return (f"{self.folder}: in use by another {owner.get('what', 'vatt job')} (PID {owner.get('pid')} on "
                f"{owner.get('host')}, since {owner.get('started')}); wait for it, use another folder, or remove "
                f"{self.path} if that process is gone")

    def release(self) -> None:
        key = self.path.resolve()
        count = FolderLock._held.get(key, 0)
        if count > 1:
            FolderLock._held[key] = count - 1
            return
        FolderLock._held.pop(key, None)
        if self._owned:
            if _read_owner(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._owned = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
