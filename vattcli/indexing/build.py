"""Indexing one part of a file list: decode in worker processes, embed in batches on the device, commit whole files
to chunks (``indexing.chunks``), show files, hours of media and the ETA, and stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import inspect
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from vattcli.data.pipeline import ClipSpec
from vattcli.errors import VattError
from vattcli.indexing.chunks import DONE, FileWindows, PartWriter, done_paths, write_json
from vattcli.indexing.embed import WindowBatcher
from vattcli.indexing.stream import WindowStream, worker_init
from vattcli.progress import duration


# a worker's windows need not wait for the other workers' turn (``in_order``: torch >= 2.6; pyproject allows 2.4)
_UNORDERED = {"in_order": False} if "in_order" in inspect.signature(DataLoader.__init__).parameters else {}


class IndexStopped(VattError):
    """A build stopped by SIGINT/SIGTERM after committing every finished file; ``--resume`` goes on."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 130 if signum == signal.SIGINT else 143  # design.md: stopped by SIGINT / SIGTERM


@dataclass
class BuildSettings:
    window: float
    stride: float
    batch: int = 16
    workers: int = 2
    chunk_windows: int = 4096  # windows per committed chunk ...
    chunk_seconds: float = 60.0  # ... or whatever is whole after this long, so a crash loses at most a minute


@dataclass
class PartReport:
    files: int = 0  # files finished in this run (indexed or skipped)
    windows: int = 0
    seconds: float = 0.0  # media seconds indexed in this run
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0


class _Progress:
    """Files done/total, hours of media, windows/s and the ETA (from media seconds per second, the steady rate of
    a run whose files differ in length): a line at the start, then at most one every ``every`` seconds (plain
    lines, so logs and pipes get them too)."""

    def __init__(self, console: Console, total_files: int, already: int, every: float) -> None:
        self.console, self.total, self.already, self.every = console, total_files, already, every
        self.start = time.monotonic()
        self.last = -math.inf

    def update(self, report: PartReport, remaining_hint: float | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        done = self.already + report.files
        rate = report.seconds / elapsed
        if report.files and remaining_hint is None:
            remaining_hint = report.seconds / report.files * (self.total - done)
        eta = remaining_hint / rate if rate > 0 and remaining_hint is not None else math.inf
        self.console.print(f"files {done}/{self.total}  media {report.seconds / 3600:.2f} h  "
                           f"{report.windows / elapsed:.1f} windows/s  {rate:.1f} media s/s  ETA {duration(eta)}",
                           markup=False, highlight=False, soft_wrap=True)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop commits what is whole and raises ``IndexStopped``. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopFlag":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def index_part(files: list[Path], folder: Path, model: torch.nn.Module, spec: ClipSpec, settings: BuildSettings, *,
               device: torch.device, dims: dict[str, int], console: Console, resume_hint: str,
               every: float = 10.0, on_window: Callable[[int], None] | None = None) -> PartReport:
    """Index ``files`` (this part's share) into the part ``folder``: files already committed there are skipped, so
    calling it again after a crash resumes. Writes ``done.json`` when every file is committed."""
    writer = PartWriter(folder, dims)
    done = done_paths(folder)
    todo = [f for f in files if str(f) not in done]
    report = PartReport()
    progress = _Progress(console, len(files), len(files) - len(todo), every)
    model.eval()
    batcher = WindowBatcher(model, device, spec.size, settings.batch)
    if todo:
        progress.update(report, None, force=True)
        with _StopFlag() as stop:
            _run(todo, writer, batcher, spec, settings, report, progress, stop, on_window)
            if stop.signum is not None:
                name = "SIGINT" if stop.signum == signal.SIGINT else "SIGTERM"
                raise IndexStopped(f"stopped by {name} after saving {report.files} finished files in {folder}; go on "
                                   f"with: {resume_hint}", stop.signum)
    progress.update(report, 0.0, force=True)
    write_json(folder / DONE, {"files": len(files)})
    return report


def _run(todo: list[Path], writer: PartWriter, batcher: WindowBatcher, spec: ClipSpec, settings: BuildSettings,
         report: PartReport, progress: _Progress, stop: _StopFlag, on_window: Callable[[int], None] | None) -> None:
    started = time.monotonic()
    last_commit = time.monotonic()
    open_files: dict[int, FileWindows] = {}
    ended: dict[int, FileWindows] = {}
    workers = min(settings.workers, len(todo))
    loader = DataLoader(WindowStream(todo, spec, settings.window, settings.stride), batch_size=None,
                        num_workers=workers, worker_init_fn=worker_init if workers else None,
                        prefetch_factor=4 if workers else None, **_UNORDERED)
    iterator = iter(loader)
    try:
        for sample in iterator:
            fw = open_files.setdefault(sample["file"], FileWindows({}))
            if sample["kind"] == "window":
                batcher.add(fw, sample)
                report.windows += 1
                if on_window is not None:
                    on_window(report.windows)
            else:
                fw.source = sample["source"]
                ended[sample["file"]] = open_files.pop(sample["file"])
            _commit_whole(ended, batcher, writer, report)
            if stop.signum is not None:
                break
            if writer.pending_windows >= settings.chunk_windows or (
                    writer.pending and time.monotonic() - last_commit > settings.chunk_seconds):
                writer.flush()
                last_commit = time.monotonic()
            progress.update(report, None)
        # after a stop too: the windows waiting for a batch are embedded, so every file that has ended is whole
        # and kept (a file still open is indexed again on resume)
        batcher.flush()
        _commit_whole(ended, batcher, writer, report)
        writer.flush()
    finally:
        del iterator
    report.elapsed = time.monotonic() - started


def _commit_whole(ended: dict[int, FileWindows], batcher: WindowBatcher, writer: PartWriter,
                  report: PartReport) -> None:
    """Move every ended file whose windows are all embedded to the writer (a skipped file: its record only)."""
    for number in list(ended):
        fw = ended[number]
        if fw.source.get("skipped"):
            batcher.drop(fw)
            reason = fw.source["skipped"]
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
            report.examples.setdefault(reason, f"{fw.source['path']}: {fw.source.get('message', reason)}")
            report.windows -= len(fw.items)
            fw.items, fw.vt, fw.va, fw.has_vt, fw.thumbs = [], [], [], [], []
        elif batcher.waiting(fw):
            continue
        del ended[number]
        writer.add(fw)
        report.files += 1
        report.seconds += float(fw.source.get("duration") or 0.0)
