"""What every dataset adapter shares: work items, skips, and readers for the official annotation formats.

An adapter reads a dataset's official annotation files under ``--root`` and yields one ``WorkItem`` per sample to
write (or a ``Skip`` for a row it cannot use: a missing video after link rot, a label not in the class list). The
runner (``vattcli.data.preprocess``) turns work items into shard samples in worker processes.
"""

from __future__ import annotations

import abc
import csv
import difflib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vattcli.errors import DataError

# Media is found by file stem with any extension (PyAV probes the content, not the name); these orders only break
# ties when several files share a stem (.mp4 first), and NOT_MEDIA_EXTS names what is never a source.
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpeg", ".mpg", ".ogv", ".ogg", ".ts", ".flv",
              ".3gp", ".wmv")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac")
NOT_MEDIA_EXTS = frozenset({
    ".json", ".jsonl", ".txt", ".csv", ".tsv", ".md", ".html", ".xml", ".yaml", ".yml", ".srt", ".vtt", ".ass",
    ".part", ".tmp", ".ytdl", ".lock", ".log", ".pkl", ".npy", ".npz", ".zip", ".tar", ".gz", ".py", ".sh", ".pdf",
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp",  # thumbnails next to videos; images have their own adapter
})


def is_media_name(name: str | Path) -> bool:
    """Whether a file name may be a media source: not hidden, and not a known text/partial/image extension."""
    path = Path(name)
    return bool(path.stem) and not path.name.startswith(".") and path.suffix.lower() not in NOT_MEDIA_EXTS


@dataclass
class Window:
    """One sample cut from a source: [start, end) seconds (None: to the end) and its JSON metadata."""

    key: str
    start: float = 0.0
    end: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkItem:
    """One source file and the samples to cut from it (several for HowTo100M's caption windows)."""

    source: Path
    windows: list[Window]
    kind: Literal["video", "audio", "image"] = "video"
    audio_source: Path | None = None  # a separate soundtrack (custom manifests); default: the container's audio

    @property
    def name(self) -> str:
        return str(self.source)


@dataclass
class Skip:
    """A row that yields no sample: ``reason`` is a short tag counted in the manifest (missing, bad_label, ...)."""

    item: str
    reason: str
    message: str


class Adapter(abc.ABC):
    """Base class: ``items(root, split)`` yields WorkItems and Skips; class attributes describe the dataset."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train",)
    fps: ClassVar[float] = 25.0  # fine-tuning sets are stored at 25 fps; pre-training clips at 10 [C dataloaders.py]

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.classes: list[str] | None = None  # label names in index order, written to the manifest

    @abc.abstractmethod
    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        """Read the official annotations of ``split`` under ``root``; raise DataError if they are unusable."""

    def settings(self) -> dict[str, Any]:
        """Extra settings recorded in the manifest (the runner adds fps, sizes, versions)."""
        return {"classes": self.classes} if self.classes is not None else {}


def sample_key(*parts: Any) -> str:
    """A shard-safe key from parts: letters, digits, '-' and '_' only (WebDataset keys may not hold dots)."""
    text = "_".join(str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def read_csv_columns(path: Path, required: Sequence[str], *, skip_comment_lines: bool = False,
                     delimiter: str = ",") -> Iterator[dict[str, str]]:
    """Rows of a CSV read by column name; a header without ``required`` columns is one clear error naming them.

    ``skip_comment_lines`` drops leading lines that start with '#' (AudioSet's three header lines; the last of them,
    '# YTID, start_seconds, ...', holds the column names).
    """
    require_file(path, "annotation file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    lines = text.splitlines()
    if skip_comment_lines:
        comments = [ln for ln in lines if ln.startswith("#")]
        lines = [ln for ln in lines if not ln.startswith("#")]
        if comments:
            lines.insert(0, comments[-1].lstrip("#").strip())
    reader = csv.DictReader(lines, delimiter=delimiter, skipinitialspace=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: expected columns {', '.join(required)}; missing {', '.join(missing)} "
                        f"(found: {', '.join(header) or 'no header'})")
    for row in reader:
        yield {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}


def read_json(path: Path, what: str) -> Any:
    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


class MediaIndex:
    """Finds media files under a root by file stem, whatever the sub-folders and extension (link-rot tolerant).

    Any file ``is_media_name`` accepts is a candidate: PyAV opens far more containers than a fixed list names
    (.avi, .mpeg, Ogg/Theora...), and a file that is not media is skipped as corrupt when decoded, not reported
    missing. When several files share a stem, the extension earliest in ``prefer`` wins (.mp4 first for videos), then
    any other, then the first path in sorted order.
    """

    def __init__(self, root: Path, prefer: Sequence[str] = VIDEO_EXTS) -> None:
        if not root.is_dir():
            raise DataError(f"{root}: media folder not found")
        self.root = root
        self.by_stem: dict[str, Path] = {}
        rank = {ext: i for i, ext in enumerate(prefer)}
        for path in sorted(root.rglob("*")):
            if not is_media_name(path) or not path.is_file():
                continue
            held = self.by_stem.get(path.stem)
            if held is None or rank.get(path.suffix.lower(), len(rank)) < rank.get(held.suffix.lower(), len(rank)):
                self.by_stem[path.stem] = path

    def find(self, *stems: str) -> Path | None:
        for stem in stems:
            if stem in self.by_stem:
                return self.by_stem[stem]
        return None

    def __len__(self) -> int:
        return len(self.by_stem)


def label_index(label: str, classes: Sequence[str], lookup: dict[str, int]) -> int | Skip:
    """Index of ``label`` or a Skip naming the closest known class."""
    if label in lookup:
        return lookup[label]
    close = difflib.get_close_matches(label, list(classes), n=1)
    hint = f" (closest: {close[0]!r})" if close else ""
    return Skip(label, "bad_label", f"label {label!r} is not in the class list{hint}")
