"""HMDB51: ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`` [datasets.md].

Each split file lists one class's videos as ``file.avi <id>`` with id 1 = train, 2 = test, 0 = unused in that
split; unused rows are simply not part of the split (not counted as skipped). The class list is the sorted class names
of the split files (there is no official index file). The split files are read from
``<root>/testTrainMulti_7030_splits/`` or, if that folder is absent, from ``<root>``. Videos are looked up at
``<root>/<class>/<file>``, then by file stem anywhere under ``--root``. Used for the linear probe, averaged over
3 splits [P §4.1, A.3.2].
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from vattcli.data.adapters.base import Adapter, MediaIndex, Skip, WorkItem, Window, sample_key
from vattcli.data.adapters.ucf101 import read_lines
from vattcli.errors import DataError

SPLIT_DIR = "testTrainMulti_7030_splits"
SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[123])\.txt$")
SPLIT_IDS = {"train": "1", "test": "2"}  # "0": not used in this split


def split_files(root: Path) -> tuple[Path, list[str]]:
    """The folder holding the split files and the sorted class names found in it."""
    for folder in (root / SPLIT_DIR, root):
        names = {m["cls"] for p in folder.glob("*_test_split*.txt") if (m := SPLIT_FILE.match(p.name))}
        if names:
            return folder, sorted(names)
    raise DataError(f"{root}: no <class>_test_split{{1,2,3}}.txt files in {root / SPLIT_DIR} or {root}")


class HMDB51(Adapter):
    """HMDB51 action recognition, three official train/test splits (train1, test1, ..., test3)."""

    name = "hmdb51"
    description = "HMDB51 action recognition (linear probe, 3 splits)"
    splits = ("train1", "test1", "train2", "test2", "train3", "test3")
    fps = 25.0

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        kind, split_id = split[:-1], int(split[-1])
        folder, self.classes = split_files(root)
        index = MediaIndex(root)
        seen: set[str] = set()
        for label, cls in enumerate(self.classes):
            list_file = folder / f"{cls}_test_split{split_id}.txt"
            for line in read_lines(list_file):
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    yield Skip(f"{list_file.name}: {line}", "bad_row",
                               f"{list_file}: expected '<file>.avi <0|1|2>', got {line!r}")
                elif parts[1] == SPLIT_IDS[kind]:
                    yield self._entry(root, split, split_id, cls, label, parts[0], index, seen)

    def _entry(self, root: Path, split: str, split_id: int, cls: str, label: int, file: str, index: MediaIndex,
               seen: set[str]) -> WorkItem | Skip:
        stem = PurePosixPath(file).stem
        key = sample_key(cls, stem)
        if key in seen:
            return Skip(file, "duplicate", f"{cls}/{file}: listed twice")
        seen.add(key)
        exact = root / cls / file
        path = exact if exact.is_file() else index.find(stem)
        if path is None:
            return Skip(file, "missing", f"{cls}/{file}: not found under {root}")
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(), "label": label,
                "label_name": cls, "video_id": stem, "split_id": split_id}
        return WorkItem(path, [Window(key, meta=meta)])
