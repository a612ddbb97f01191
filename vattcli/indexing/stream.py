"""Decoding in worker processes: each DataLoader worker takes every W-th file of the part's list and yields its
windows, then one record that the file is finished (or why it was skipped).

Windows reach the main process as soon as they are decoded; the main process embeds them in batches and keeps a file
until its end record and every one of its windows have arrived (``indexing.build``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vattcli.data.pipeline import ClipSpec
from vattcli.data.reader import workers_ignore_sigterm
from vattcli.data.windows import iter_windows, summarize
from vattcli.errors import VattError


def source_record(path: Path) -> dict[str, Any]:
    """What identifies a source file: its absolute path, size and modification time."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime": round(st.st_mtime, 3)}


class WindowStream(IterableDataset):
    """Yields ``{"kind": "window", "file": i, "start", "end", "video" | None, "audio" | None, "thumb"}`` for each
    window of each file, then ``{"kind": "end", "file": i, "source": record}``; a file that cannot be decoded gives
    only its end record, with ``skipped`` and the reason (its windows decoded before a mid-file error are dropped
    by the main process: a file is indexed whole or not at all)."""

    def __init__(self, files: list[Path], spec: ClipSpec, window: float, stride: float) -> None:
        self.files, self.spec, self.window, self.stride = files, spec, window, stride

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(worker, len(self.files), workers):
            yield from self._file(i)

    def _file(self, i: int) -> Iterator[dict[str, Any]]:
        path = self.files[i]
        try:
            record = source_record(path)
            summary = summarize(path)
            record.update(duration=round(float(summary.duration), 3), has_video=bool(summary.has_video),
                          has_audio=bool(summary.has_audio))
            count = 0
            for w in iter_windows(path, self.spec, window=self.window, stride=self.stride,
                                  need_audio=not summary.has_video):
                count += 1
                yield {"kind": "window", "file": i, "start": float(w.start), "end": float(w.end),
                       "video": None if w.frames is None else torch.from_numpy(np.ascontiguousarray(w.frames)),
                       "audio": None if w.audio is None else torch.from_numpy(np.ascontiguousarray(w.audio)),
                       "thumb": w.thumbnail}
            record["windows"] = count
            if count == 0:
                record.update(skipped="empty", message="no window could be cut")
        except (VattError, OSError) as e:
            yield {"kind": "end", "file": i, "source": skip_record(path, e)}
            return
        yield {"kind": "end", "file": i, "source": record}


def skip_record(path: Path, error: Exception) -> dict[str, Any]:
    """The record of a file that could not be indexed: why, and its size and modification time when it has them
    (``vatt index add`` tries it again once it has changed)."""
    try:
        record = source_record(path)
    except OSError:
        record = {"path": str(path)}
    reason = getattr(error, "reason", None) or ("unreadable" if isinstance(error, OSError) else "corrupt")
    return {**record, "skipped": reason, "message": (str(error).splitlines() or [""])[0][:300]}


def worker_init(worker_id: int) -> None:
    """Ctrl-C and a job-wide SIGTERM reach the workers too: only the main process decides how to stop (it saves the
    finished files first), so workers ignore SIGINT and take SIGTERM from their parent only (``reader``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    workers_ignore_sigterm(worker_id)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
