"""One writer per folder: the lock file, a second writer refused, stale locks taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from vattcli.locking import LOCK_NAME, FolderLock, FolderLocked


def test_lock_is_created_and_removed(tmp_path):
    with FolderLock(tmp_path / "out", "test job"):
        owner = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_second_writer_from_another_live_process_is_refused(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(),
                                                     "what": "preprocessing", "started": "now"}))
        with pytest.raises(FolderLocked, match=rf"in use by another preprocessing \(PID {child.pid}"):
            FolderLock(tmp_path).acquire()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == child.pid  # left alone
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with FolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "some-other-node"}))
    with pytest.raises(FolderLocked, match="some-other-node"):
        FolderLock(tmp_path).acquire()


def test_reentrant_within_one_process(tmp_path):
    with FolderLock(tmp_path):
        with FolderLock(tmp_path):
            pass
        assert (tmp_path / LOCK_NAME).exists()  # the outer holder still owns it
    assert not (tmp_path / LOCK_NAME).exists()
