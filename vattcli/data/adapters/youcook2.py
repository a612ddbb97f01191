"""YouCook2: one clip per annotated segment, for zero-shot text-to-video retrieval [P §4.1; reference §7].

Annotations [datasets.md]: ``youcookii_annotations_trainval.json`` = {"database": {video_id: {"subset":
"training"/"validation", "recipe_type", "duration", "annotations": [{"id", "segment": [start, end], "sentence"}]}}}.
Videos: ``<subset>/<recipe_type>/<video_id>.mp4`` or any other layout (found by file stem). Split ``val`` is the
retrieval pool (every segment of the validation videos, ~3.3k clips), ``train`` the training videos' segments.
A segment with an empty sentence is skipped as ``empty_caption``, one with an unusable time range as ``bad_row``;
a video missing on disk is one ``missing`` skip whose message counts its segments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from vattcli.data.adapters.base import Adapter, MediaIndex, Skip, Window, WorkItem, read_json, sample_key
from vattcli.errors import DataError

ANNOTATION_FILE = "youcookii_annotations_trainval.json"
SUBSETS = {"train": "training", "val": "validation"}


class YouCook2(Adapter):
    """YouCook2 segments with their sentences; ``val`` is the zero-shot retrieval pool."""

    name: ClassVar[str] = "youcook2"
    description: ClassVar[str] = "YouCook2: one clip per annotated segment (zero-shot text-to-video retrieval)"
    splits: ClassVar[tuple[str, ...]] = ("val", "train")
    fps: ClassVar[float] = 25.0

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        path = root / ANNOTATION_FILE
        data = read_json(path, "annotation file")
        database = data.get("database") if isinstance(data, dict) else None
        if not isinstance(database, dict):
            raise DataError(f"{path}: expected an object with a 'database' object mapping video_id -> annotations")
        media = MediaIndex(root)
        for video_id, video in database.items():
            if isinstance(video, dict) and video.get("subset") == SUBSETS[split]:
                yield from self._video_items(root, split, str(video_id), video, media)

    def _video_items(self, root: Path, split: str, video_id: str, video: dict[str, Any],
                     media: MediaIndex) -> Iterator[WorkItem | Skip]:
        annotations = video.get("annotations")
        if not isinstance(annotations, list):
            yield Skip(video_id, "bad_row", f"{video_id}: expected a list 'annotations'")
            return
        source = media.find(video_id)
        if source is None:
            yield Skip(video_id, "missing", f"{video_id}: no video file named {video_id}.<ext> under {root} "
                                            f"({len(annotations)} segments)")
            return
        base = {"dataset": self.name, "split": split, "source": source.relative_to(root).as_posix(),
                "video_id": video_id, "recipe_type": str(video.get("recipe_type", ""))}
        windows = []
        for n, annotation in enumerate(annotations):
            window = segment_window(video_id, n, annotation, base)
            if isinstance(window, Skip):
                yield window
            else:
                windows.append(window)
        if windows:
            yield WorkItem(source, windows)


def segment_window(video_id: str, n: int, annotation: Any, base: dict[str, Any]) -> Window | Skip:
    """The window of the n-th annotation of a video, or why it is unusable."""
    item = f"{video_id}#{n}"
    if not isinstance(annotation, dict):
        return Skip(item, "bad_row", f"{video_id}: annotation {n} is not an object")
    segment, sentence = annotation.get("segment"), annotation.get("sentence")
    segment_id = annotation.get("id", n)
    if not (isinstance(segment, list) and len(segment) == 2 and all(_is_number(t) for t in segment)
            and 0 <= segment[0] < segment[1]):
        return Skip(item, "bad_row", f"{video_id}: segment {segment_id} has no valid [start, end]: {segment!r}")
    if not isinstance(sentence, str) or not sentence.strip():
        return Skip(item, "empty_caption", f"{video_id}: segment {segment_id} has no sentence")
    start, end = float(segment[0]), float(segment[1])
    meta = {**base, "captions": [sentence.strip()], "segment_id": segment_id, "segment": [start, end]}
    return Window(sample_key(video_id, f"{n:03d}"), start, end, meta)  # position, unique even if ids repeat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
