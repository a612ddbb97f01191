"""``vatt preprocess``: turn a dataset's raw files into training-ready shards, in parallel, resumably.

Work items from an adapter are processed in worker processes (transcode to H.264 MP4 at the dataset's fps with the
short side at 256 px and a keyframe every second, audio to mono 48 kHz FLAC [datasets.md]); the main process writes
the samples into tar shards (``ShardWriter``: atomic shards, a manifest with counts per skip reason). A bad file is
skipped and counted, never fatal; an unusable input as a whole (no annotation file, a wrong CSV header) raises
``DataError`` (exit 2). ``--resume`` keeps finished shards and skips the samples they hold.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vattcli.data.adapters.base import Adapter, Skip, WorkItem
from vattcli.data.shards import ShardWriter, read_manifest
from vattcli.errors import MediaError, VattError


@dataclass(frozen=True)
class Settings:
    fps: float
    short_side: int = 256
    audio_rate: int = 48_000
    keyframe_interval_s: float = 1.0


Result = tuple[str, dict[str, Any], float]  # key, members, seconds of media


def _video_window(item: WorkItem, window, settings: Settings) -> Result:
    from vattcli.data.media_write import transcode_to_bytes

    mp4, flac, stats = transcode_to_bytes(item.source, window.start, window.end, fps=settings.fps,
                                          short_side=settings.short_side, audio_rate=settings.audio_rate,
                                          keyframe_interval_s=settings.keyframe_interval_s, name=item.name)
    if stats["frames"] == 0:
        raise MediaError(f"{item.name}: no frames in [{window.start}, {window.end})", "too_short")
    if item.audio_source is not None:
        flac = _flac_window(item.audio_source, window.start, stats["duration"], settings.audio_rate)
        stats = {**stats, "has_audio": True, "audio_rate": settings.audio_rate}
    meta = {**window.meta, "key": window.key, "start": window.start, "end": window.end, **{
        k: stats[k] for k in ("fps", "duration", "width", "height", "has_audio", "audio_rate")}}
    members = {"mp4": mp4, "json": meta}
    if flac is not None:
        members["flac"] = flac
    return window.key, members, float(stats["duration"])


def _flac_window(source: Path, start: float, duration: float, rate: int) -> bytes:
    """FLAC bytes of [start, start + duration) of a separate audio file, zero-padded to the video's length."""
    import numpy as np

    from vattcli.data.media import read_audio
    from vattcli.data.media_write import encode_flac

    audio, _ = read_audio(source, rate=rate, start=start, duration=duration, name=str(source))
    n = round(duration * rate)
    return encode_flac(np.pad(audio[:n], (0, max(0, n - audio.size))), rate)


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
    return window.key, {"flac": encode_flac(audio, rate), "json": meta}, seconds


def _image_window(item: WorkItem, window, settings: Settings) -> Result:
    from vattcli.data.media import decode_image

    data = Path(item.source).read_bytes()
    image = decode_image(data, name=item.name)
    ext = Path(item.source).suffix.lower().lstrip(".") or "jpg"
    ext = "jpg" if ext == "jpeg" else ext
    meta = {**window.meta, "key": window.key, "height": int(image.shape[0]), "width": int(image.shape[1])}
    return window.key, {ext: data, "json": meta}, 0.0


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


def run_preprocess(adapter: Adapter, root: Path, out: Path, split: str, *, settings: Settings, workers: int = 1,
                   limit: int | None = None, resume: bool = False, overwrite: bool = False,
                   max_samples: int = 1000, max_shard_bytes: int = 300 << 20,
                   console: Console | None = None) -> dict[str, Any]:
    """Write the shards of one split of one dataset into ``out/split``; returns the summary."""
    console = console or Console(stderr=True)
    if split not in adapter.splits:
        raise VattError(f"{adapter.name}: unknown split {split!r}; choose from {', '.join(adapter.splits)}")
    started = time.perf_counter()
    items: list[WorkItem] = []
    early_skips: list[Skip] = []
    for entry in adapter.items(Path(root), split):
        if isinstance(entry, Skip):
            early_skips.append(entry)
        elif limit is None or len(items) < limit:
            items.append(entry)
    record = {"dataset": adapter.name, "split": split, "fps": settings.fps, "short_side": settings.short_side,
              "audio_rate": settings.audio_rate, "keyframe_interval_s": settings.keyframe_interval_s,
              "root": str(root), **adapter.settings()}
    seconds = 0.0
    with ShardWriter(out / split, prefix=split, max_samples=max_samples, max_bytes=max_shard_bytes, settings=record,
                     resume=resume, overwrite=overwrite) as writer:
        for skip in early_skips:
            writer.skip(skip.item, skip.reason, skip.message)
        done = writer.done_keys
        todo = []
        for item in items:
            remaining = [w for w in item.windows if w.key not in done]
            if remaining:
                todo.append(WorkItem(item.source, remaining, item.kind, item.audio_source))
        total = sum(len(i.windows) for i in todo)
        with _progress(console) as progress:
            task = progress.add_task(f"{adapter.name}/{split}", total=total, rate="")
            for results in _map(process_item, [(i, settings) for i in todo], workers):
                for result in results:
                    if isinstance(result, Skip):
                        writer.skip(result.item, result.reason, result.message)
                    else:
                        key, members, secs = result
                        writer.write(key, members, seconds=secs)
                        seconds += secs
                    elapsed = time.perf_counter() - started
                    progress.update(task, advance=1, rate=f"{seconds / max(elapsed, 1e-9):.1f}x real time")
    manifest = read_manifest(out / split / "manifest.json")
    elapsed = time.perf_counter() - started
    summary = {"dataset": adapter.name, "split": split, "out": str(out / split),
               "written": manifest["counts"]["written"], "skipped": dict(manifest["counts"]["skipped"]),
               "already_done": len(done), "hours": seconds / 3600, "seconds": elapsed,
               "realtime_per_core": seconds / max(elapsed, 1e-9) / max(1, workers)}
    return summary


def _map(fn, jobs: list, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize=1)


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['dataset']} / {summary['split']} -> {summary['out']}", show_header=False)
    table.add_row("written", str(summary["written"]))
    if summary["already_done"]:
        table.add_row("already done (resume)", str(summary["already_done"]))
    for reason, count in sorted(summary["skipped"].items()):
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row("hours of media", f"{summary['hours']:.3f}")
    table.add_row("time", f"{summary['seconds']:.1f} s ({summary['realtime_per_core']:.1f}x real time per core)")
    return table


def summary_json(summary: dict[str, Any]) -> str:
    buf = io.StringIO()
    json.dump(summary, buf, indent=2)
    return buf.getvalue()
