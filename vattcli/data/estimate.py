"""``vatt preprocess NAME --estimate``: size a preprocessing run (a job array) before submitting it.

A deterministic sample of the sources (ordered by the hash of their stable name, ``vattcli.data.parts``, so the same
sample every time and spread over the whole listing) is probed for its duration: the media hours to process are the
sampled windows' seconds, extrapolated to every source. The rate is measured here, not assumed: a few of the sampled
windows (at most ``MEASURE_SECONDS`` of media each) go through the same transcoding as a real run, in this process on
one core, timed by CPU time (``time.process_time``: every thread of the process, i.e. core-seconds). The output size
is the measured bytes per second of media (per sample for images) times the media to process. Nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from vattcli.data.adapters.base import Adapter, Skip, Window, WorkItem
from vattcli.data.parts import names_base, stable_name
from vattcli.data.preprocess import Result, Settings, process_item
from vattcli.errors import DataError, MediaError

MEASURE_WINDOWS = 4  # windows transcoded to measure the rate
MEASURE_SECONDS = 10.0  # of media at most per measured window, so one long video does not take minutes


def _sources(adapter: Adapter, root: Path, split: str, limit: int | None) -> list[WorkItem]:
    items = [e for e in adapter.items(Path(root), split) if not isinstance(e, Skip)]
    return items[:limit] if limit is not None else items


def _window_seconds(item: WorkItem, duration: float) -> float:
    """Seconds of media the item's windows cover in a source of ``duration`` s (what a run transcodes)."""
    return sum(max(0.0, min(duration, w.end if w.end is not None else duration) - w.start) for w in item.windows)


def _probe(item: WorkItem) -> float | None:
    """The source's duration in seconds (0 for images), None when it cannot be read."""
    if item.kind == "image":
        return 0.0
    from vattcli.data.media import probe

    try:
        return probe(item.source, name=item.name).duration
    except (MediaError, OSError, ValueError, RuntimeError):
        return None


def _measure(items: list[WorkItem], settings: Settings) -> dict[str, float]:
    """Transcode up to MEASURE_WINDOWS windows of ``items`` (the first of each) here; CPU seconds, media seconds,
    output bytes and windows that gave a sample."""
    done = {"windows": 0, "cpu_seconds": 0.0, "media_seconds": 0.0, "bytes": 0}
    for item in items:
        if done["windows"] >= MEASURE_WINDOWS:
            break
        first = item.windows[0]
        end = first.start + MEASURE_SECONDS if first.end is None else min(first.end, first.start + MEASURE_SECONDS)
        window = Window(first.key, first.start, end if item.kind != "image" else None, first.meta)
        started = time.process_time()
        [result] = process_item((WorkItem(item.source, [window], item.kind, item.audio_source), settings))
        elapsed = time.process_time() - started
        if isinstance(result, Result):
            done["windows"] += 1
            done["cpu_seconds"] += elapsed
            done["media_seconds"] += result.seconds
            done["bytes"] += sum(len(json.dumps(v).encode()) if isinstance(v, (dict, list)) else len(v)
                                 for v in result.members.values())
    return done


def estimate_run(adapter: Adapter, root: Path, split: str, *, settings: Settings, sample: int = 20,
                 limit: int | None = None) -> dict[str, Any]:
    """Media hours, core-hours at the rate measured on this machine, and output bytes for one split."""
    items = _sources(adapter, root, split, limit)
    if not items:
        raise DataError(f"{adapter.name}/{split}: found no inputs under {root}; nothing to estimate")
    base = names_base(root)
    ranked = sorted(items, key=lambda i: hashlib.sha256(stable_name(i, base).encode("utf-8", "surrogateescape"))
                    .digest())
    picked = ranked[:sample]
    durations = [_probe(item) for item in picked]
    readable = [item for item, d in zip(picked, durations) if d is not None]
    sampled_seconds = sum(_window_seconds(i, d) for i, d in zip(picked, durations) if d is not None)
    source_seconds = sum(d for d in durations if d is not None)
    measured = _measure(readable, settings)
    if not measured["windows"] or measured["cpu_seconds"] <= 0:
        raise DataError(f"{adapter.name}/{split}: none of the {len(readable)} readable sampled sources gave a sample "
                        "to measure the rate on (see `vatt preprocess ... --limit 20` for the skip reasons)")
    scale = len(items) / len(picked)
    windows = sum(len(i.windows) for i in items)
    media_seconds = sampled_seconds * scale
    if measured["media_seconds"] > 0:  # video and audio: per second of media
        rate = measured["media_seconds"] / measured["cpu_seconds"]
        core_seconds = media_seconds / rate
        output = media_seconds * measured["bytes"] / measured["media_seconds"]
    else:  # images: per sample
        rate = None
        core_seconds = windows * measured["cpu_seconds"] / measured["windows"]
        output = windows * measured["bytes"] / measured["windows"]
    return {"dataset": adapter.name, "split": split, "sources": len(items), "samples": windows,
            "sample": len(picked), "unreadable": len(picked) - len(readable),
            "media_hours": media_seconds / 3600, "source_hours": source_seconds * scale / 3600,
            "measured": measured, "realtime_per_core": rate, "core_hours": core_seconds / 3600,
            "bytes_per_media_second": measured["bytes"] / measured["media_seconds"] if rate else None,
            "output_bytes": output}


def _hours(hours: float) -> str:
    if hours >= 10:
        return f"{hours:,.1f} h"
    return f"{hours:.3g} h" if hours >= 0.01 else f"{hours:.3g} h ({hours * 3600:.3g} s)"


def _size(n: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n, step = n / 1000, step + 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


def estimate_lines(e: dict[str, Any]) -> list[str]:
    """The estimate as plain lines: media hours, core-hours, output size, each saying what it rests on."""
    m = e["measured"]
    lines = [f"estimate for {e['dataset']}/{e['split']}: {e['sources']} sources, {e['samples']} samples; probed a "
             f"sample of {e['sample']} sources (by name hash), {e['unreadable']} unreadable",
             f"media hours to process: {_hours(e['media_hours'])} (extrapolated from the sample; the sources hold "
             f"{_hours(e['source_hours'])})"]
    if e["realtime_per_core"] is not None:
        lines.append(f"rate on this machine: {e['realtime_per_core']:.1f}x real time per core (measured: "
                     f"{m['windows']} windows, {m['media_seconds']:.1f} s of media in {m['cpu_seconds']:.2f} s of CPU)")
    else:
        lines.append(f"rate on this machine: {m['cpu_seconds'] / m['windows']:.3f} s of CPU per sample (measured on "
                     f"{m['windows']} samples)")
    lines.append(f"expected core-hours: {_hours(e['core_hours'])} (e.g. {_hours(e['core_hours'] / 64)} on 64 cores)")
    per = (f"{_size(e['bytes_per_media_second'])} per second of media" if e["bytes_per_media_second"] is not None
           else f"{_size(m['bytes'] / m['windows'])} per sample")
    lines.append(f"expected output size: {_size(e['output_bytes'])} ({per}, measured on the sample)")
    return lines
