"""HowTo100M: long instructional videos cut into caption-aligned windows for video-audio-text pretraining.

Annotations [datasets.md]: ``caption.json`` (or ``raw_caption.json``), a dict video_id -> {"start": [...],
"end": [...], "text": [...]} in seconds, and optionally ``HowTo100M_v1.csv`` (video_id, task_id, rank, category_1,
category_2), used only to record the task and categories in each sample's metadata. Videos are
``<video_id>.<any extension>`` anywhere under the root (``.mp4`` preferred when several share the id). Stored at
10 fps [C data/dataloaders.py REF_FPS].

Windowing. The official HowTo100M loader is unreleased [reference §10, I#1689; open uncertainty 6]: the paper only
says the MIL-NCE positive set is the 5 captions nearest in time to the clip [P §3.4], and the code feeds
``max_context_sentences + 1 = 5`` captions per clip [C configs/dataset.py]. What this module does, a choice:

- one sample per non-empty caption; its window is the caption's [start, end] widened symmetrically around its
  mid-point to at least ``clip_seconds`` (3.2 s, the 32 frames at 10 fps the model reads [P §4.1]); a window that
  would start before 0 is shifted to start at 0 (so it keeps its full length); the end is not clamped (the
  transcoder stops where the video does);
- its captions: its own first, then the ``num_captions - 1`` other captions of the same video whose mid-points are
  nearest to its own mid-point (ties: the earlier caption first), in order of distance; fewer when the video has
  fewer captions. No distance cut-off is applied.

Empty captions are dropped before windowing and each is counted as skip reason ``empty_caption`` (one with an
invalid time range as ``bad_row``); a video with no usable caption yields no sample. A video missing on disk is one
``missing`` skip (its captions are not counted).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vattcli.data.adapters.base import (
    Adapter,
    MediaIndex,
    Skip,
    Window,
    WorkItem,
    read_csv_columns,
    read_json,
    sample_key,
)
from vattcli.errors import ConfigError, DataError

CLIP_SECONDS = 3.2  # 32 frames at 10 fps [P §4.1]
NUM_CAPTIONS = 5  # the caption itself + max_context_sentences=4 [P §3.4; C configs/dataset.py]
META_COLUMNS = ("video_id", "task_id", "rank", "category_1", "category_2")


@dataclass(frozen=True)
class Caption:
    """One caption of a video: ``index`` is its position in the annotation file (kept in keys and metadata)."""

    index: int
    start: float
    end: float
    text: str

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


@dataclass(frozen=True)
class CaptionWindow:
    """The clip cut for ``captions[0]`` and its positive set (own caption first, then nearest neighbours)."""

    start: float
    end: float
    captions: tuple[Caption, ...]


def widen(start: float, end: float, clip_seconds: float) -> tuple[float, float]:
    """[start, end] widened symmetrically to at least ``clip_seconds``, shifted right if it would start before 0."""
    length = max(end - start, clip_seconds)
    lo = (start + end) / 2 - length / 2
    lo = max(0.0, lo)
    return round(lo, 6), round(lo + length, 6)  # no 9.100000000000001 in the metadata


def nearest_captions(captions: Sequence[Caption], i: int, k: int) -> tuple[Caption, ...]:
    """captions[i] then the k-1 others nearest by mid-point distance (ties: earlier index first)."""
    own = captions[i]
    others = sorted((c for j, c in enumerate(captions) if j != i), key=lambda c: (abs(c.mid - own.mid), c.index))
    return (own, *others[: max(0, k - 1)])


def caption_windows(captions: Sequence[Caption], *, clip_seconds: float = CLIP_SECONDS,
                    num_captions: int = NUM_CAPTIONS) -> list[CaptionWindow]:
    """One window per caption of a video (all captions non-empty), in the given order."""
    windows = []
    for i, caption in enumerate(captions):
        start, end = widen(caption.start, caption.end, clip_seconds)
        windows.append(CaptionWindow(start, end, nearest_captions(captions, i, num_captions)))
    return windows


def spread(n: int, limit: int | None) -> list[int]:
    """``limit`` indices out of range(n), evenly spaced over it (all of them when limit is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


def window_meta(window: CaptionWindow) -> dict[str, Any]:
    """The caption part of a sample's metadata (the MIL-NCE positive set and where each caption sits)."""
    return {"captions": [c.text for c in window.captions],
            "caption_starts": [c.start for c in window.captions],
            "caption_ends": [c.end for c in window.captions],
            "caption_index": window.captions[0].index}


def parse_captions(entry: Any, where: str) -> tuple[list[Caption], list[Skip]] | str:
    """(usable captions, a Skip per unusable one) from one {"start", "end", "text"} entry, or why it is unusable.

    An empty caption is skipped as ``empty_caption``, one with an invalid time range as ``bad_row``.
    """
    if not isinstance(entry, dict) or not all(isinstance(entry.get(f), list) for f in ("start", "end", "text")):
        return f"{where}: expected an object with lists 'start', 'end' and 'text'"
    starts, ends, texts = entry["start"], entry["end"], entry["text"]
    if not len(starts) == len(ends) == len(texts):
        return f"{where}: 'start', 'end' and 'text' have different lengths ({len(starts)}, {len(ends)}, {len(texts)})"
    captions, skips = [], []
    for i, (start, end, text) in enumerate(zip(starts, ends, texts)):
        text = "" if text is None else str(text).strip()  # bare numbers occur in the processed captions
        if not (_is_number(start) and _is_number(end) and 0 <= start <= end):
            skips.append(Skip(f"{where}#{i}", "bad_row", f"{where}: caption {i} has an invalid time range "
                                                         f"[{start!r}, {end!r}]"))
        elif not text:
            skips.append(Skip(f"{where}#{i}", "empty_caption", f"{where}: caption {i} is empty"))
        else:
            captions.append(Caption(i, float(start), float(end), text))
    return captions, skips


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    """An adapter option that must be a positive integer (or None)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"option {name}: expected a positive integer, got {value!r}")
    return value


def positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"option {name}: expected a positive number of seconds, got {value!r}")
    return float(value)


class HowTo100M(Adapter):
    """Caption windows of HowTo100M videos, each with its 5 temporally nearest captions (MIL-NCE positives)."""

    name: ClassVar[str] = "howto100m"
    description: ClassVar[str] = "HowTo100M: caption-aligned windows with neighbouring captions (pretraining)"
    splits: ClassVar[tuple[str, ...]] = ("train",)
    fps: ClassVar[float] = 10.0

    def __init__(self, captions: str = "caption.json", clip_seconds: float = CLIP_SECONDS,
                 num_captions: int = NUM_CAPTIONS, max_windows_per_video: int | None = None, **options: Any) -> None:
        super().__init__(captions=captions, clip_seconds=clip_seconds, num_captions=num_captions,
                         max_windows_per_video=max_windows_per_video, **options)
        self.caption_file = str(captions)
        self.clip_seconds = positive_float(clip_seconds, "clip_seconds")
        self.num_captions = positive_int(num_captions, "num_captions")
        self.max_windows = positive_int(max_windows_per_video, "max_windows_per_video", allow_none=True)

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        path = root / self.caption_file
        data = read_json(path, "caption file (video_id -> {start, end, text})")
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object mapping video_id -> {{start, end, text}}")
        tasks = self._task_meta(root)
        media = MediaIndex(root)
        for video_id, entry in data.items():
            yield from self._video_items(root, split, str(video_id), entry, media, tasks.get(str(video_id), {}))

    def _task_meta(self, root: Path) -> dict[str, dict[str, str]]:
        path = root / "HowTo100M_v1.csv"
        if not path.is_file():
            return {}
        rows = read_csv_columns(path, META_COLUMNS)
        return {row["video_id"]: {c: row[c] for c in META_COLUMNS[1:]} for row in rows}

    def _video_items(self, root: Path, split: str, video_id: str, entry: Any, media: MediaIndex,
                     task: dict[str, str]) -> Iterator[WorkItem | Skip]:
        source = media.find(video_id)
        if source is None:
            yield Skip(video_id, "missing", f"{video_id}: no video file named {video_id}.<ext> under {root}")
            return
        parsed = parse_captions(entry, video_id)
        if isinstance(parsed, str):
            yield Skip(video_id, "bad_row", parsed)
            return
        captions, skips = parsed
        yield from skips
        if not captions:
            return
        windows = caption_windows(captions, clip_seconds=self.clip_seconds, num_captions=self.num_captions)
        base = {"dataset": self.name, "split": split, "source": source.relative_to(root).as_posix(),
                "video_id": video_id, **task}
        chosen = [windows[i] for i in spread(len(windows), self.max_windows)]
        yield WorkItem(source, [Window(sample_key(video_id, f"{w.captions[0].index:05d}"), w.start, w.end,
                                       {**base, **window_meta(w)}) for w in chosen])
