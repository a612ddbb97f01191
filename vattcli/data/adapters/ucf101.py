"""UCF101: ``classInd.txt``, ``trainlist0{1,2,3}.txt``, ``testlist0{1,2,3}.txt`` [datasets.md].

The annotation files are read from ``<root>/ucfTrainTestlist/`` (as the official zip unpacks) or from ``<root>``
itself. ``classInd.txt`` lines are ``1 ApplyEyeMakeup``: 1-based, stored as 0-based indices. Train lists give the
1-based index after the path (``Class/v_Class_g08_c01.avi 1``); a train row whose index names a different class than
its folder is skipped as ``bad_label``. Test lists give only the path; the label is the folder, matched
case-insensitively. Videos are found by file stem under ``--root`` (``UCF-101/<Class>/<file>.avi`` or
``<Class>/<file>.avi``, any video extension). Used for the linear probe, averaged over 3 splits [P §4.1, A.3.2].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from vattcli.data.adapters.base import (
    Adapter,
    MediaIndex,
    Skip,
    WorkItem,
    Window,
    label_index,
    require_file,
    sample_key,
)
from vattcli.errors import DataError

ANNOTATION_DIR = "ucfTrainTestlist"
CLASS_FILE = "classInd.txt"


def annotation_dir(root: Path) -> Path:
    """``<root>/ucfTrainTestlist`` if it holds classInd.txt, else ``<root>`` if it does."""
    for folder in (root / ANNOTATION_DIR, root):
        if (folder / CLASS_FILE).is_file():
            return folder
    raise DataError(f"{root}: {CLASS_FILE} not found in {root / ANNOTATION_DIR} or {root}")


def read_lines(path: Path) -> list[str]:
    require_file(path, "annotation file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_ind(path: Path) -> list[str]:
    """Class names in 0-based index order from ``<1-based index> <name>`` lines (indices 1..N, each once)."""
    by_index: dict[int, str] = {}
    for number, line in enumerate(read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) in by_index:
            raise DataError(f"{path}: line {number}: expected '<index> <ClassName>' with a new index, got {line!r}")
        by_index[int(parts[0])] = parts[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DataError(f"{path}: indices must run 1..{len(by_index)} without gaps")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


class UCF101(Adapter):
    """UCF101 action recognition, three official train/test splits (train1, test1, ..., test3)."""

    name = "ucf101"
    description = "UCF101 action recognition (linear probe, 3 splits)"
    splits = ("train1", "test1", "train2", "test2", "train3", "test3")
    fps = 25.0

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        kind, split_id = split[:-1], int(split[-1])
        folder = annotation_dir(root)
        self.classes = read_class_ind(folder / CLASS_FILE)
        list_file = folder / f"{kind}list0{split_id}.txt"
        lines = read_lines(list_file)
        index = MediaIndex(root)
        seen: set[str] = set()
        for line in lines:
            yield self._entry(root, split, split_id, line, index, seen)

    def _label(self, rel: str, number: str | None) -> int | Skip:
        """The 0-based label: from the 1-based index when the list gives one (checked against the folder), else
        from the folder name."""
        classes = self.classes or []
        folder = PurePosixPath(rel).parent.name
        by_lower = {name.lower(): i for i, name in enumerate(classes)}
        if number is None:
            if folder.lower() in by_lower:
                return by_lower[folder.lower()]
            return label_index(folder, classes, {})
        if not number.isdigit() or not 1 <= int(number) <= len(classes):
            return Skip(rel, "bad_label", f"class index {number!r} is not in 1..{len(classes)} of {CLASS_FILE}")
        label = int(number) - 1
        if folder and folder.lower() != classes[label].lower():
            return Skip(rel, "bad_label", f"class index {number} is {classes[label]!r} but the folder is {folder!r}")
        return label

    def _entry(self, root: Path, split: str, split_id: int, line: str, index: MediaIndex,
               seen: set[str]) -> WorkItem | Skip:
        parts = line.split()
        rel = parts[0]
        stem = PurePosixPath(rel).stem
        key = sample_key(stem)
        if key in seen:
            return Skip(rel, "duplicate", f"{rel}: listed twice")
        seen.add(key)
        label = self._label(rel, parts[1] if len(parts) > 1 else None)
        if isinstance(label, Skip):
            return Skip(rel, label.reason, f"{rel}: {label.message}")
        path = index.find(stem)
        if path is None:
            return Skip(rel, "missing", f"{rel}: no video named {stem}.<ext> under {root}")
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(), "label": label,
                "label_name": (self.classes or [])[label], "video_id": stem, "split_id": split_id}
        return WorkItem(path, [Window(key, meta=meta)])
