"""ESC-50: ``meta/esc50.csv`` with columns ``filename, fold, target, category, esc10, src_file, take`` and the clips
in ``audio/<filename>`` (5 s, 44.1 kHz mono WAV) [datasets.md].

There is no separate class index file: the class list is built from the CSV, ``classes[target] = category``. When
rows disagree about a target's name, the name most rows give wins (ties: the first seen) and the disagreeing rows are
skipped as ``bad_label``, as are rows whose target is not an integer. The targets must cover 0..N-1. Splits are the
five official folds (``fold1`` ... ``fold5``, each that fold's clips) and ``all``; the linear probe trains on four folds
and tests on the fifth, averaging over the five [P §4.1, A.3.2]. Clips are found by file stem in ``audio/``, so
clips converted to another audio format are found too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from vattcli.data.adapters.base import (
    AUDIO_EXTS,
    Adapter,
    MediaIndex,
    Skip,
    WorkItem,
    Window,
    read_csv_columns,
    sample_key,
)
from vattcli.errors import DataError

CSV = Path("meta") / "esc50.csv"
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
FOLDS = (1, 2, 3, 4, 5)


def class_list(rows: list[dict[str, str]], path: Path) -> list[str]:
    """``classes[target]``: the category most rows give for each integer target; targets must be 0..N-1."""
    votes: dict[int, Counter[str]] = {}
    for row in rows:
        if row["target"].isdigit():
            votes.setdefault(int(row["target"]), Counter())[row["category"]] += 1
    if sorted(votes) != list(range(len(votes))):
        raise DataError(f"{path}: column target must cover 0..N-1; found {sorted(votes)}")
    return [votes[t].most_common(1)[0][0] for t in range(len(votes))]


class ESC50(Adapter):
    """ESC-50 environmental sound classification (audio only); splits fold1..fold5 and all."""

    name = "esc50"
    description = "ESC-50 environmental sounds (audio linear probe, 5 folds)"
    splits = (*(f"fold{f}" for f in FOLDS), "all")

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        rows = list(read_csv_columns(root / CSV, COLUMNS))
        self.classes = class_list(rows, root / CSV)
        index = MediaIndex(root / "audio", AUDIO_EXTS)
        wanted = None if split == "all" else split.removeprefix("fold")
        seen: set[str] = set()
        for row in rows:
            if not row["fold"].isdigit():
                yield Skip(row["filename"], "bad_row", f"{row['filename']}: fold {row['fold']!r} is not a number")
            elif wanted is None or row["fold"] == wanted:
                yield self._entry(root, split, row, index, seen)

    def _entry(self, root: Path, split: str, row: dict[str, str], index: MediaIndex,
               seen: set[str]) -> WorkItem | Skip:
        name, target, category = row["filename"], row["target"], row["category"]
        stem = PurePosixPath(name).stem
        key = sample_key(stem)
        if key in seen:
            return Skip(name, "duplicate", f"{name}: listed twice in {CSV}")
        seen.add(key)
        classes = self.classes or []
        if not target.isdigit() or classes[int(target)] != category:
            return Skip(name, "bad_label", f"{name}: target {target!r} / category {category!r} do not match the "
                                           f"class list built from {CSV}")
        path = index.find(stem)
        if path is None:
            return Skip(name, "missing", f"{name}: not found in {root / 'audio'}")
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(),
                "label": int(target), "label_name": category, "fold": int(row["fold"]),
                "esc10": row["esc10"].lower() == "true", "src_file": row["src_file"], "take": row["take"],
                "clip_id": stem}
        return WorkItem(path, [Window(key, meta=meta)], kind="audio")
