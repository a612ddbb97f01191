"""``vatt preprocess``: turn a dataset's raw files into training-ready shards, in parallel, resumably.

Work items from an adapter are processed in worker processes (transcode to H.264 MP4 at the dataset's fps with the
short side at 256 px and a keyframe every second, audio to mono 48 kHz FLAC [datasets.md]); the main process writes
the samples into tar shards (``ShardWriter``: atomic shards, a manifest with counts per skip reason). A bad file is
skipped and counted, never fatal; an unusable input as a whole (no annotation file, a wrong CSV header) raises
``DataError`` (exit 2). ``--resume`` keeps finished shards and skips the samples they hold.

Wrong data never passes silently (design.md, Errors): a video that decodes with errors or ends well before the
length its container declares is skipped as ``corrupt`` or ``truncated`` (``media_problem``), unless
``keep_partial`` keeps it with ``partial: true`` in its metadata; a soundtrack that covers much less than the video
is padded with silence and the sample flagged ``audio_padded``. Flags are counted per shard and in the manifest's
``counts.flagged``. One writer per output folder (``FolderLock``); SIGINT/SIGTERM stop cleanly: finished shards and
the manifest (``complete: false``) stay, and ``PreprocessStopped`` (exit 130/143) names the command that resumes.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vattcli.data.adapters.base import Adapter, Skip, WorkItem
from vattcli.data.parts import Layout, Part, select
from vattcli.data.shards import ShardWriter, read_manifest
from vattcli.errors import DataError, MediaError, VattError
from vattcli.locking import FolderLock

TOP_SKIP_REASONS = 5  # skip reasons the summary shows, each with one example


class PreprocessStopped(VattError):
    """SIGINT/SIGTERM stopped the run; finished shards are kept. Exit code 128 + signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class Settings:
    fps: float
    short_side: int = 256
    audio_rate: int = 48_000
    keyframe_interval_s: float = 1.0
    keep_partial: bool = False  # keep truncated/corrupt videos' decodable part (flagged partial) instead of skipping


@dataclass
class Result:
    """One sample from a worker: its members, seconds of media and flags (counted, never fatal)."""

    key: str
    members: dict[str, Any]
    seconds: float
    flags: tuple[str, ...] = ()


def audio_padded_flag(padded: float, duration: float) -> bool:
    """A soundtrack counts as much shorter than its video when the silence added to it exceeds 10 % of the sample,
    capped at 0.5 s (an AAC track routinely ends a frame or two, tens of ms, before its video) and at least 0.1 s."""
    return padded > max(0.1, min(0.5, 0.1 * duration))


def _video_window(item: WorkItem, window, settings: Settings) -> Result:
    from vattcli.data.media_write import media_problem, transcode_to_bytes

    mp4, flac, stats = transcode_to_bytes(item.source, window.start, window.end, fps=settings.fps,
                                          short_side=settings.short_side, audio_rate=settings.audio_rate,
                                          keyframe_interval_s=settings.keyframe_interval_s, name=item.name)
    if stats["frames"] == 0:
        raise MediaError(f"{item.name}: no frames in [{window.start}, {window.end})", "too_short")
    extra: dict[str, Any] = {}
    flags: list[str] = []
    problem = media_problem(stats, item.name)
    if problem is not None:
        if not settings.keep_partial:
            raise MediaError(problem[1], problem[0])
        extra.update(partial=True, partial_reason=problem[0], partial_detail=problem[1])
        flags.append("partial")
    padded = stats["audio_padded_seconds"]
    if item.audio_source is not None:
        flac, padded = _flac_window(item.audio_source, window.start, stats["duration"], settings.audio_rate)
        stats = {**stats, "has_audio": True, "audio_rate": settings.audio_rate}
    if stats["has_audio"]:
        extra["audio_padded_seconds"] = round(padded, 3)
        if audio_padded_flag(padded, stats["duration"]):
            flags.append("audio_padded")
    meta = {**window.meta, "key": window.key, "start": window.start, "end": window.end, **{
        k: stats[k] for k in ("fps", "duration", "width", "height", "has_audio", "audio_rate")}, **extra}
    members = {"mp4": mp4, "json": meta}
    if flac is not None:
        members["flac"] = flac
    return Result(window.key, members, float(stats["duration"]), tuple(flags))


def _flac_window(source: Path, start: float, duration: float, rate: int) -> tuple[bytes, float]:
    """(FLAC bytes of [start, start + duration) of a separate audio file, zero-padded to the video's length,
    seconds of padding)."""
    import numpy as np

    from vattcli.data.media import read_audio
    from vattcli.data.media_write import encode_flac

    audio, _ = read_audio(source, rate=rate, start=start, duration=duration, name=str(source))
    n = round(duration * rate)
    missing = max(0, n - audio.size)
    return encode_flac(np.pad(audio[:n], (0, missing)), rate), missing / rate


def _audio_window(item: WorkItem, window, settings: Settings) -> Result:
    from vattcli.data.media import read_audio
    from vattcli.data.media_write import encode_flac

    duration = None if window.end is None else window.end - window.start
    audio, rate = read_audio(item.source, rate=settings.audio_rate, start=window.start, duration=duration,
                             name=item.name)
    if audio.size == 0:
        raise MediaError(f"{item.name}: no audio samples", "empty")
    seconds = audio.size / rate
    meta = {**window.meta, "key": window.key, "start": window.start, "duration": seconds, "has_audio": True,
            "audio_rate": rate}
    return Result(window.key, {"flac": encode_flac(audio, rate), "json": meta}, seconds)


def _image_window(item: WorkItem, window, settings: Settings) -> Result:
    from vattcli.data.media import decode_image

    data = Path(item.source).read_bytes()
    image = decode_image(data, name=item.name)
    ext = Path(item.source).suffix.lower().lstrip(".") or "jpg"
    ext = "jpg" if ext == "jpeg" else ext
    meta = {**window.meta, "key": window.key, "height": int(image.shape[0]), "width": int(image.shape[1])}
    return Result(window.key, {ext: data, "json": meta}, 0.0)


_KINDS = {"video": _video_window, "audio": _audio_window, "image": _image_window}


def process_item(job: tuple[WorkItem, Settings]) -> list[Result | Skip]:
    """Worker: every window of one source, each a sample or a Skip (a bad file never stops the run)."""
    item, settings = job
    out: list[Result | Skip] = []
    for window in item.windows:
        try:
            out.append(_KINDS[item.kind](item, window, settings))
        except MediaError as e:
            out.append(Skip(item.name, e.reason, str(e)))
        except (OSError, ValueError, RuntimeError) as e:  # decoder errors surface under several types
            out.append(Skip(item.name, "corrupt", f"{item.name}: {e}"))
    return out


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=False, disable=not console.is_terminal)


class FlaggingShardWriter(ShardWriter):
    """A ShardWriter that also counts flagged samples: ``shards[].flagged`` per finished shard (kept on resume, as
    the writer keeps the entries of the shards it resumes from) and their sum in ``counts.flagged``.

    A shard holds the samples written since the previous one, in order, so the flags of shard i of this run are the
    next ``samples`` entries of the flags recorded per ``write``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept = len(ShardWriter.manifest(self)["shards"])
        self._flags: list[tuple[str, ...]] = []

    def write(self, key: str, members: Any, seconds: float = 0.0, flags: Iterable[str] = ()) -> None:
        self._flags.append(tuple(flags))  # before writing: a full shard is finished inside write
        try:
            super().write(key, members, seconds)
        except BaseException:
            self._flags.pop()
            raise

    def manifest(self, complete: bool = False) -> dict[str, Any]:
        manifest = super().manifest(complete)
        shards, used, total = [], 0, Counter()
        for i, shard in enumerate(manifest["shards"]):
            shard = dict(shard)
            if i >= self._kept:
                held = self._flags[used:used + shard["samples"]]
                shard["flagged"] = dict(Counter(f for flags in held for f in flags))
                used += shard["samples"]
            total.update(shard.get("flagged") or {})
            shards.append(shard)
        return {**manifest, "shards": shards, "counts": {**manifest["counts"], "flagged": dict(total)}}


class _Signalled(BaseException):
    """Raised in the main thread by the SIGINT/SIGTERM handler (not an Exception: nothing on the way catches it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """SIGINT/SIGTERM raise ``_Signalled`` in the main thread, so the worker pool is terminated and the ShardWriter
    drops only the shard being written. Inside ``deferred()`` (writing a sample, which may finish a shard and rewrite
    the manifest) the signal waits until the block is done, so a finished shard is always listed. While stopping, a
    further SIGTERM is ignored and a second SIGINT aborts at once (``KeyboardInterrupt``), as in training."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.deferring:
            self.pending = signum
            return
        raise _Signalled(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise _Signalled(self.pending)

    def __enter__(self) -> _StopSignals:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay with whoever handles them there
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group, and only the main process stops the run (a worker
    would otherwise print a KeyboardInterrupt traceback); SIGTERM from ``Pool.terminate`` ends it silently."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _results(jobs: list, workers: int) -> Iterator[Iterable[list[Result | Skip]]]:
    """``process_item`` over ``jobs``, in ``workers`` spawned processes (results in completion order)."""
    if workers <= 1 or len(jobs) <= 1:
        yield map(process_item, jobs)
        return
    ctx = multiprocessing.get_context("spawn")
    try:  # workers inherit SIGINT ignored from their first instruction, before the initializer runs
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        previous = None
    try:
        pool = ctx.Pool(min(workers, len(jobs)), initializer=_ignore_sigint)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    with pool:
        yield pool.imap_unordered(process_item, jobs, chunksize=1)


@dataclass
class _Tally:
    """What this run wrote and skipped, beyond the writer's counts: media seconds and one example per skip reason."""

    seconds: float = 0.0
    examples: dict[str, Skip] = field(default_factory=dict)

    def skip(self, writer: ShardWriter, skip: Skip) -> None:
        writer.skip(skip.item, skip.reason, skip.message)
        self.examples.setdefault(skip.reason, skip)


def _collect(adapter: Adapter, root: Path, split: str, limit: int | None) -> tuple[list[WorkItem], list[Skip]]:
    items: list[WorkItem] = []
    early_skips: list[Skip] = []
    for entry in adapter.items(Path(root), split):
        if isinstance(entry, Skip):
            early_skips.append(entry)
        elif limit is None or len(items) < limit:
            items.append(entry)
    return items, early_skips


def _write_all(writer: FlaggingShardWriter, items: list[WorkItem], settings: Settings, workers: int,
               console: Console, title: str, tally: _Tally, stop: _StopSignals) -> None:
    done = writer.done_keys
    todo = []
    for item in items:
        remaining = [w for w in item.windows if w.key not in done]
        if remaining:
            todo.append(WorkItem(item.source, remaining, item.kind, item.audio_source))
    started = time.perf_counter()
    with _progress(console) as progress, _results([(i, settings) for i in todo], workers) as results:
        task = progress.add_task(title, total=sum(len(i.windows) for i in todo), rate="")
        for batch in results:
            for result in batch:
                if isinstance(result, Skip):
                    tally.skip(writer, result)
                else:
                    with stop.deferred():
                        writer.write(result.key, result.members, seconds=result.seconds, flags=result.flags)
                    tally.seconds += result.seconds
                elapsed = time.perf_counter() - started
                progress.update(task, advance=1, rate=f"{tally.seconds / max(elapsed, 1e-9):.1f}x real time")


def run_preprocess(adapter: Adapter, root: Path, out: Path, split: str, *, settings: Settings, workers: int = 1,
                   limit: int | None = None, resume: bool = False, overwrite: bool = False,
                   max_samples: int = 1000, max_shard_bytes: int = 300 << 20,
                   console: Console | None = None, resume_command: str | None = None,
                   part: Part | None = None) -> dict[str, Any]:
    """Write the shards of one split of one dataset into ``out/split``; returns the summary.

    Holds ``out``'s lock for the run (one writer per folder). SIGINT/SIGTERM raise ``PreprocessStopped`` naming
    ``resume_command`` (the command line that continues the run) once the finished shards are safe. With ``part``,
    only that part's share of the sources is written, under that part's own names and lock (``vattcli.data.parts``).
    """
    console = console or Console(stderr=True)
    if split not in adapter.splits:
        raise VattError(f"{adapter.name}: unknown split {split!r}; choose from {', '.join(adapter.splits)}")
    started = time.perf_counter()
    folder = Path(out) / split
    record = {"dataset": adapter.name, "split": split, "fps": settings.fps, "short_side": settings.short_side,
              "audio_rate": settings.audio_rate, "keyframe_interval_s": settings.keyframe_interval_s,
              "keep_partial": settings.keep_partial, "root": str(root)}
    tally = _Tally()
    layout = Layout(split, part)
    with FolderLock(out, layout.what, name=layout.lock_name), _StopSignals() as stop:
        try:
            layout.check(folder)
            items, early_skips = _collect(adapter, root, split, limit)
            inputs = len(items) + len(early_skips)
            if part is not None:
                items, early_skips = select(items, early_skips, root, part)
            with FlaggingShardWriter(folder, prefix=layout.prefix, max_samples=max_samples, max_bytes=max_shard_bytes,
                                     settings={**record, **adapter.settings(), **layout.settings(limit)},
                                     resume=resume, overwrite=overwrite, manifest_name=layout.manifest,
                                     neighbours=layout.neighbours) as writer:
                for note in layout.unmerge(folder):
                    console.print(note, markup=False, highlight=False, soft_wrap=True)
                for skip in early_skips:
                    tally.skip(writer, skip)
                already_done = len(writer.done_keys)
                _write_all(writer, items, settings, workers, console, f"{adapter.name}/{layout.prefix}", tally, stop)
                with stop.deferred():
                    writer.close()  # the last shard and the final manifest (complete: true)
        except _Signalled as signalled:
            raise _stopped(signalled.signum, folder / layout.manifest, resume_command) from None
    manifest = read_manifest(folder / layout.manifest)
    elapsed = time.perf_counter() - started
    skipped = dict(manifest["counts"]["skipped"])
    top = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SKIP_REASONS]
    return {"dataset": adapter.name, "split": split, "out": str(folder), "manifest": str(folder / layout.manifest),
            "part": str(part) if part else None, "dataset_inputs": inputs,
            "written": manifest["counts"]["written"], "skipped": skipped,
            "top_skips": [{"reason": r, "count": n, "item": tally.examples[r].item,
                           "message": tally.examples[r].message} for r, n in top if r in tally.examples],
            "flagged": dict(manifest["counts"].get("flagged", {})), "already_done": already_done,
            "hours": tally.seconds / 3600, "seconds": elapsed,
            "realtime_per_core": tally.seconds / max(elapsed, 1e-9) / max(1, workers)}


def _stopped(signum: int, path: Path, resume_command: str | None) -> PreprocessStopped:
    """The one line a stopped run prints: what was kept (``path``: the run's manifest) and the command that
    continues."""
    name = signal.Signals(signum).name
    how = f"run: {resume_command}" if resume_command else "rerun the same command with --resume"
    folder = path.parent
    try:
        manifest = read_manifest(path)
    except DataError:
        return PreprocessStopped(f"stopped by {name} before the first shard was finished (nothing kept in {folder}); "
                                 f"to continue, {how}", signum)
    kept = f"{manifest['counts']['written']} samples in {len(manifest['shards'])} finished shards"
    if manifest["complete"]:
        return PreprocessStopped(f"stopped by {name} as the run ended: all {kept} are in {folder} (manifest "
                                 "complete: true); nothing left to resume", signum)
    return PreprocessStopped(f"stopped by {name}: {kept} kept in {folder} (manifest complete: false); to continue, "
                             f"{how}", signum)
