"""Moments in Time: ``trainingSet.csv`` / ``validationSet.csv`` and ``moments_categories.txt`` [datasets.md].

The official split files have no header: each row is ``path/to/video.mp4,label,...`` (the path relative to
``training/`` or ``validation/``, then the label, then annotator counts that are not used). A first row whose first
cell is not a video path is taken as a header instead, and must then name the columns ``path`` and ``label``.
``moments_categories.txt`` lines are ``label,index``; the class list is in index order (339 classes in v1).
Videos are looked up at ``<root>/training/<path>`` (``validation/`` for val), then at ``<root>/<path>``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from vattcli.data.adapters.base import (
    Adapter,
    Skip,
    WorkItem,
    Window,
    is_media_name,
    label_index,
    read_csv_columns,
    require_file,
    sample_key,
)
from vattcli.errors import DataError

SPLITS = {"train": ("trainingSet.csv", "training"), "val": ("validationSet.csv", "validation")}
CATEGORIES = "moments_categories.txt"
HEADER_COLUMNS = ("path", "label")


def read_text_rows(path: Path) -> list[list[str]]:
    """Non-empty CSV rows of a UTF-8 text file, cells stripped."""
    require_file(path, "annotation file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    rows = [[cell.strip() for cell in row] for row in csv.reader(text.splitlines())]
    return [row for row in rows if any(row)]


def read_categories(path: Path) -> list[str]:
    """Class names in index order from ``label,index`` lines; the indices must be 0..N-1, each once."""
    by_index: dict[int, str] = {}
    for number, row in enumerate(read_text_rows(path), 1):
        if len(row) != 2 or not row[1].isdigit() or not row[0]:
            raise DataError(f"{path}: line {number}: expected 'label,index', got {','.join(row)!r}")
        if int(row[1]) in by_index:
            raise DataError(f"{path}: line {number}: index {row[1]} appears twice")
        by_index[int(row[1])] = row[0]
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{path}: indices must run 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def read_split_rows(path: Path) -> list[tuple[str, str] | None]:
    """(video path, label) per row, None for a row with fewer than two cells; header detected as documented above."""
    rows = read_text_rows(path)
    if rows and not (PurePosixPath(rows[0][0]).suffix and is_media_name(rows[0][0])):
        return [(row["path"], row["label"]) for row in read_csv_columns(path, HEADER_COLUMNS)]
    return [(row[0], row[1]) if len(row) >= 2 else None for row in rows]


class MomentsInTime(Adapter):
    """Moments in Time video classification; splits train (trainingSet.csv) and val (validationSet.csv)."""

    name = "mit"
    description = "Moments in Time action classification (fine-tuning, top-1/top-5 on val)"
    splits = ("train", "val")
    fps = 25.0

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        csv_name, folder = SPLITS[split]
        self.classes = read_categories(root / CATEGORIES)
        lookup = {name: i for i, name in enumerate(self.classes)}
        seen: set[str] = set()
        for number, row in enumerate(read_split_rows(root / csv_name), 1):
            if row is None:
                yield Skip(f"{csv_name}:{number}", "bad_row", f"{csv_name}: row {number}: expected 'path,label,...'")
                continue
            yield self._entry(root, split, folder, row, lookup, seen)

    def _entry(self, root: Path, split: str, folder: str, row: tuple[str, str], lookup: dict[str, int],
               seen: set[str]) -> WorkItem | Skip:
        rel, label_name = row
        video_id = PurePosixPath(rel).with_suffix("").as_posix()
        key = sample_key(video_id)
        if key in seen:
            return Skip(rel, "duplicate", f"{rel}: listed twice (sample key {key})")
        seen.add(key)
        label = label_index(label_name, self.classes or [], lookup)
        if isinstance(label, Skip):
            return Skip(rel, label.reason, f"{rel}: {label.message}")
        path = next((p for p in (root / folder / rel, root / rel) if p.is_file()), None)
        if path is None:
            return Skip(rel, "missing", f"{rel}: not found under {root / folder} or {root}")
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(), "label": label,
                "label_name": label_name, "video_id": video_id}
        return WorkItem(path, [Window(key, meta=meta)])
