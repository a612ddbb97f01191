"""Kinetics-400/600/700: ``train.csv``, ``validate.csv``, ``test.csv`` with columns ``label, youtube_id, time_start,
time_end, split`` (some releases add ``is_cc``) [datasets.md].

Videos are the already-cut 10 s segments, named ``<youtube_id>_<start:06d>_<end:06d>.<ext>``, either in
``<split>/<label>/`` folders or flat; they are found by that stem anywhere under ``--root``, so either layout (and any
video extension) works. Each is stored whole, at 25 fps, for fine-tuning and evaluation on the validation split
[P §4.2.1, A.2.5; C data/dataloaders.py].

The class list is the sorted unique labels of ``train.csv`` when it exists (so every split shares the training
indices), else of the split's own CSV. Some releases ship ``test.csv`` without labels (no ``label`` column, or an
empty one): such test rows get label -1 and label_name null.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vattcli.data.adapters.base import (
    Adapter,
    MediaIndex,
    Skip,
    WorkItem,
    Window,
    label_index,
    read_csv_columns,
    sample_key,
)
from vattcli.errors import ConfigError

VARIANTS = (400, 600, 700)
SPLIT_FILES = {"train": "train.csv", "val": "validate.csv", "test": "test.csv"}
SEGMENT_COLUMNS = ("youtube_id", "time_start", "time_end")
LABELED_COLUMNS = ("label", *SEGMENT_COLUMNS)
NO_LABEL = -1


class Kinetics(Adapter):
    """Kinetics-``variant`` (400, 600 or 700) video classification; splits train, val (validate.csv), test."""

    name = "kinetics400"  # per instance: kinetics<variant>
    description = "Kinetics-400/600/700 action classification (fine-tuning, top-1/top-5 on val)"
    splits = ("train", "val", "test")
    fps = 25.0

    def __init__(self, variant: int | str = 400, **options: Any) -> None:
        super().__init__(variant=variant, **options)
        try:
            self.variant = int(variant)
        except (TypeError, ValueError):
            self.variant = 0
        if self.variant not in VARIANTS:
            raise ConfigError(f"kinetics: variant must be one of {', '.join(map(str, VARIANTS))}, got {variant!r}")
        self.name = f"kinetics{self.variant}"

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        csv_path = root / SPLIT_FILES[split]
        required = SEGMENT_COLUMNS if split == "test" else LABELED_COLUMNS
        rows = list(read_csv_columns(csv_path, required))
        self.classes = self._class_list(root, split, rows)
        lookup = {name: i for i, name in enumerate(self.classes)}
        index = MediaIndex(root)
        seen: set[str] = set()
        for row in rows:
            yield self._entry(root, split, row, lookup, index, seen)

    def _class_list(self, root: Path, split: str, split_rows: list[dict[str, str]]) -> list[str]:
        """Sorted labels of train.csv if present (shared indices across splits), else of the split's rows."""
        train_csv = root / SPLIT_FILES["train"]
        use_train = split != "train" and train_csv.is_file()
        rows = read_csv_columns(train_csv, LABELED_COLUMNS) if use_train else split_rows
        return sorted({row["label"] for row in rows if row.get("label")})

    def _entry(self, root: Path, split: str, row: dict[str, str], lookup: dict[str, int], index: MediaIndex,
               seen: set[str]) -> WorkItem | Skip:
        ytid = row["youtube_id"]
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except (OverflowError, ValueError):
            return Skip(ytid, "bad_row", f"{ytid}: time_start/time_end {row['time_start']!r}, {row['time_end']!r} "
                                         "are not numbers")
        stem = f"{ytid}_{start:06d}_{end:06d}"
        if not ytid or stem in seen:
            return Skip(stem, "duplicate" if ytid else "bad_row", f"{stem}: empty or repeated youtube_id row")
        seen.add(stem)
        label_name = row.get("label") or None
        if label_name is None and split != "test":
            return Skip(stem, "bad_label", f"{stem}: empty label")
        label = NO_LABEL if label_name is None else label_index(label_name, self.classes or [], lookup)
        if isinstance(label, Skip):
            return Skip(stem, label.reason, f"{stem}: {label.message}")
        path = index.find(stem)
        if path is None:
            return Skip(stem, "missing", f"{stem}: no video file named {stem}.<ext> under {root}")
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(), "label": label,
                "label_name": label_name, "video_id": ytid, "time_start": start, "time_end": end}
        return WorkItem(path, [Window(sample_key(stem), meta=meta)])
