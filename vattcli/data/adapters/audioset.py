"""AudioSet: ``{balanced_train,unbalanced_train,eval}_segments.csv`` and ``class_labels_indices.csv`` [datasets.md].

The segment files open with three lines starting with '#'; the third names the columns
(``# YTID, start_seconds, end_seconds, positive_labels``), and ``positive_labels`` is a quoted comma-separated list
of MIDs (``"/m/09x0r,/m/05zppz"``). ``class_labels_indices.csv`` (``index,mid,display_name``, 527 classes) gives
the class order. A MID missing from the class list is dropped from its sample and counted per MID in the manifest
settings (``unknown_mids``); a sample left without any label is skipped as ``bad_label``.

Downloaders name files differently, so a segment's file is looked up by these stems, in order, anywhere under
``--root``: ``<YTID>_<start>_<end>`` with the times as written in the CSV, then formatted ``%.3f``, ``%.1f``, as
integers and ``%g``; then ``<YTID>`` alone. A ``<YTID>_<start>_<end>`` file is the cut clip and is stored whole. A
``<YTID>`` file is also taken as the already-cut 10 s clip, unless the option ``cut_full_videos=True`` says such files
are the full YouTube videos, in which case [start, end) is cut from them.

Clips are stored at 25 fps (every dataset but HowTo100M [C data/dataloaders.py DEFAULT_FPS]). For pre-training
AudioSet gives video-audio pairs only: its labels are ignored and it has no text [P §4.1, A.1.1].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vattcli.data.adapters.base import Adapter, MediaIndex, Skip, WorkItem, Window, read_csv_columns, sample_key
from vattcli.errors import ConfigError, DataError

SPLIT_FILES = {"balanced_train": "balanced_train_segments.csv", "unbalanced_train": "unbalanced_train_segments.csv",
               "eval": "eval_segments.csv"}
SEGMENT_COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")
CLASS_FILE = "class_labels_indices.csv"
CLASS_COLUMNS = ("index", "mid", "display_name")


def read_class_labels(path: Path) -> tuple[list[str], dict[str, int]]:
    """(display names in index order, MID -> index); the indices must be 0..N-1, each once."""
    rows = list(read_csv_columns(path, CLASS_COLUMNS))
    indices = [r["index"] for r in rows]
    if not all(i.isdigit() for i in indices) or sorted(map(int, indices)) != list(range(len(rows))):
        raise DataError(f"{path}: column index must run 0..{len(rows) - 1}, each once")
    rows.sort(key=lambda r: int(r["index"]))
    return [r["display_name"] for r in rows], {r["mid"]: int(r["index"]) for r in rows}


def stem_candidates(ytid: str, start_text: str, end_text: str) -> list[str]:
    """File stems a downloader may have used for this segment, most specific first (see the module docstring)."""
    start, end = float(start_text), float(end_text)
    pairs = [(start_text, end_text), (f"{start:.3f}", f"{end:.3f}"), (f"{start:.1f}", f"{end:.1f}"),
             (str(int(start)), str(int(end))), (f"{start:g}", f"{end:g}")]
    stems = [f"{ytid}_{s}_{e}" for s, e in pairs]
    return list(dict.fromkeys([*stems, ytid]))


def as_flag(value: Any, name: str) -> bool:
    """A boolean option given as a bool or as text (true/false, yes/no, 1/0) from the command line."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"audioset: option {name} must be true or false, got {value!r}")


class AudioSet(Adapter):
    """AudioSet segments: multi-label audio events; splits balanced_train, unbalanced_train, eval."""

    name = "audioset"
    description = "AudioSet 10 s clips (pre-training video-audio pairs; audio event classification)"
    splits = ("balanced_train", "unbalanced_train", "eval")
    fps = 25.0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cut_full_videos = as_flag(options.get("cut_full_videos", False), "cut_full_videos")
        self.unknown_mids: Counter[str] = Counter()

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "cut_full_videos": self.cut_full_videos,
                "unknown_mids": dict(sorted(self.unknown_mids.items()))}

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        rows = read_csv_columns(root / SPLIT_FILES[split], SEGMENT_COLUMNS, skip_comment_lines=True)
        self.classes, by_mid = read_class_labels(root / CLASS_FILE)
        self.unknown_mids = Counter()
        index = MediaIndex(root)
        seen: set[str] = set()
        for row in rows:
            yield self._entry(root, split, row, by_mid, index, seen)

    def _labels(self, ytid: str, text: str, by_mid: dict[str, int]) -> list[int] | Skip:
        """Class indices of the quoted MID list; unknown MIDs are counted and dropped."""
        mids = [m.strip() for m in text.split(",") if m.strip()]
        self.unknown_mids.update(m for m in mids if m not in by_mid)
        labels = sorted({by_mid[m] for m in mids if m in by_mid})
        if not labels:
            return Skip(ytid, "bad_label", f"{ytid}: none of the labels {text!r} is in {CLASS_FILE}")
        return labels

    def _entry(self, root: Path, split: str, row: dict[str, str], by_mid: dict[str, int], index: MediaIndex,
               seen: set[str]) -> WorkItem | Skip:
        ytid, start_text, end_text = row["YTID"], row["start_seconds"], row["end_seconds"]
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            return Skip(ytid, "bad_row", f"{ytid}: start/end {start_text!r}, {end_text!r} are not numbers")
        key = sample_key(ytid, f"{start:.3f}", f"{end:.3f}")
        if not ytid or key in seen:
            return Skip(key, "duplicate" if ytid else "bad_row", f"{key}: empty or repeated YTID row")
        seen.add(key)
        labels = self._labels(ytid, row["positive_labels"], by_mid)
        if isinstance(labels, Skip):
            return labels
        path = index.find(*stem_candidates(ytid, start_text, end_text))
        if path is None:
            return Skip(ytid, "missing", f"{ytid}: no video named {ytid}_{start_text}_{end_text}.<ext> or "
                                         f"{ytid}.<ext> under {root}")
        cut = self.cut_full_videos and path.stem == ytid
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(), "video_id": ytid,
                "start_seconds": start, "end_seconds": end, "labels": labels,
                "label_names": [(self.classes or [])[i] for i in labels]}
        window = Window(key, start if cut else 0.0, end if cut else None, meta)
        return WorkItem(path, [window])
