"""A user's own data, described by a JSONL manifest [datasets.md "custom"].

``--root`` is the manifest file itself or a folder holding ``manifest.jsonl``. One JSON object a line:

    {"video": "clips/a.mp4", "audio": "sounds/a.flac", "captions": [{"start": 0, "end": 4.5, "text": "..."}]}
    {"video": "clips/b.mp4", "label": "dog"}

Paths are relative to the manifest's folder (or absolute). ``audio`` (optional) replaces the container's soundtrack;
a line with only ``audio`` gives an audio sample. ``captions`` become caption windows exactly as for HowTo100M
(``vattcli.data.adapters.howto100m.caption_windows``: widened to ``clip_seconds``, with the ``num_captions`` nearest
captions); otherwise the whole file is one sample. ``label`` (a name or an integer index) is recorded as "label" and
"label_name"; the class list is the sorted names, or "0".."max" when every label is an integer. A line that is not
valid JSON or lacks a usable field is skipped as ``bad_row``, a file that does not exist as ``missing``.

The split name is free-form (it only names the output folder ``OUT/<split>``): any name made of letters, digits,
'-' and '_' is accepted; option ``split`` sets the default ("train").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vattcli.data.adapters.base import Adapter, Skip, Window, WorkItem, require_file, sample_key
from vattcli.data.adapters.howto100m import (
    CLIP_SECONDS,
    NUM_CAPTIONS,
    caption_windows,
    parse_captions,
    positive_float,
    positive_int,
    window_meta,
)
from vattcli.errors import ConfigError

MANIFEST_NAME = "manifest.jsonl"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


class FreeSplits(tuple):
    """The splits of a custom manifest: any folder-safe name is accepted; the first one is the default."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _SPLIT_NAME.fullmatch(name) is not None


@dataclass
class Row:
    """One usable manifest line."""

    line: int
    video: Path | None
    audio: Path | None
    captions: Any  # the raw "captions" list, or None
    label: str | int | None


class Custom(Adapter):
    """Samples listed in a JSONL manifest: caption windows, labelled whole files, or plain whole files."""

    name: ClassVar[str] = "custom"
    description: ClassVar[str] = "custom: your own videos/audio listed in a JSONL manifest (captions or labels)"
    fps: ClassVar[float] = 25.0

    def __init__(self, split: str = "train", clip_seconds: float = CLIP_SECONDS, num_captions: int = NUM_CAPTIONS,
                 **options: Any) -> None:
        super().__init__(split=split, clip_seconds=clip_seconds, num_captions=num_captions, **options)
        if not isinstance(split, str) or _SPLIT_NAME.fullmatch(split) is None:
            raise ConfigError(f"option split: expected a name of letters, digits, '-' and '_', got {split!r}")
        self.splits = FreeSplits((split,))
        self.clip_seconds = positive_float(clip_seconds, "clip_seconds")
        self.num_captions = positive_int(num_captions, "num_captions")

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        path = root / MANIFEST_NAME if root.is_dir() else root
        require_file(path, "manifest (JSONL, one {\"video\", \"audio\", \"captions\" | \"label\"} object a line)")
        rows: list[Row] = []
        skips: list[Skip] = []
        for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if raw.strip():
                parsed = parse_row(raw, n, path)
                (skips if isinstance(parsed, Skip) else rows).append(parsed)
        lookup = self._set_classes([r.label for r in rows if r.label is not None])
        yield from skips
        for row in rows:
            yield from self._row_items(row, path.parent, split, lookup)

    def _set_classes(self, labels: list[str | int]) -> dict[str | int, int]:
        """Class list and label -> index: integer labels are indices; otherwise names are sorted."""
        if not labels:
            return {}
        if all(isinstance(label, int) for label in labels):
            self.classes = [str(i) for i in range(max(labels) + 1)]
            return {i: i for i in range(len(self.classes))}
        self.classes = sorted({str(label) for label in labels})
        index = {name: i for i, name in enumerate(self.classes)}
        return {label: index[str(label)] for label in labels}

    def _row_items(self, row: Row, folder: Path, split: str, lookup: dict[str | int, int]) -> Iterator[WorkItem | Skip]:
        for media in (row.video, row.audio):
            if media is not None and not media.is_file():
                yield Skip(str(media), "missing", f"manifest line {row.line}: {media} does not exist")
                return
        source = row.video or row.audio
        base: dict[str, Any] = {"dataset": self.name, "split": split, "source": _relative(source, folder),
                                "line": row.line}
        if row.audio is not None and row.video is not None:
            base["audio_source"] = _relative(row.audio, folder)
        if row.label is not None:
            base["label"] = lookup[row.label]
            base["label_name"] = self.classes[base["label"]]
        key = sample_key(f"{row.line:06d}", source.stem)
        windows = [Window(key, 0.0, None, base)]
        if row.captions is not None:
            windows = []
            parsed = parse_captions(_columns(row.captions), f"manifest line {row.line}")
            if isinstance(parsed, str):
                yield Skip(str(source), "bad_row", parsed)
                return
            captions, caption_skips = parsed
            yield from caption_skips
            for w in caption_windows(captions, clip_seconds=self.clip_seconds, num_captions=self.num_captions):
                windows.append(Window(sample_key(key, f"{w.captions[0].index:05d}"), w.start, w.end,
                                      {**base, **window_meta(w)}))
        if windows:
            kind = "video" if row.video is not None else "audio"
            yield WorkItem(source, windows, kind, row.audio if row.video is not None else None)


def parse_row(raw: bytes, line: int, path: Path) -> Row | Skip:
    """One manifest line as a Row, or a ``bad_row`` Skip saying what is wrong with it."""
    item = f"{path.name}:{line}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return Skip(item, "bad_row", f"{path}: line {line} is not valid JSON ({e})")
    if not isinstance(obj, dict):
        return Skip(item, "bad_row", f"{path}: line {line}: expected a JSON object")
    paths = {}
    for field in ("video", "audio"):
        value = obj.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            return Skip(item, "bad_row", f"{path}: line {line}: '{field}' must be a path string")
        paths[field] = None if value is None else path.parent / value  # an absolute value stays absolute
    if paths["video"] is None and paths["audio"] is None:
        return Skip(item, "bad_row", f"{path}: line {line}: expected a 'video' or 'audio' path")
    label = obj.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int)) or label == ""
                              or (isinstance(label, int) and label < 0)):
        return Skip(item, "bad_row", f"{path}: line {line}: 'label' must be a name or a non-negative integer")
    captions = obj.get("captions")
    if captions is not None and not (isinstance(captions, list) and captions
                                     and all(isinstance(c, dict) for c in captions)):
        return Skip(item, "bad_row", f"{path}: line {line}: 'captions' must be a non-empty list of "
                                     f"{{start, end, text}}")
    return Row(line, paths["video"], paths["audio"], captions, label)


def _columns(captions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """[{start, end, text}, ...] in HowTo100M's column form {"start": [...], "end": [...], "text": [...]}."""
    return {f: [c.get(f) for c in captions] for f in ("start", "end", "text")}


def _relative(path: Path, folder: Path) -> str:
    """The path relative to the manifest's folder when it lies inside it, else absolute."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)
