"""MSR-VTT: whole videos with their captions, for zero-shot retrieval on the 1k-A test split [P §4.1].

Annotations [datasets.md]: split ``test`` is 1k-A, ``MSRVTT_JSFUSION_test.csv`` (columns key, vid_key, video_id,
sentence: one caption per video); split ``train`` is the 9k training list ``MSRVTT_train.9k.csv`` (column video_id)
with all captions of each video (20) from ``MSRVTT_data.json`` (``sentences``: [{video_id, caption}], file order).
Videos ``video0.mp4`` ... (any extension) anywhere under the root. One whole-video sample per video. Empty captions
are dropped; a video left without any is skipped as ``empty_caption``, a missing video as ``missing``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

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
from vattcli.errors import DataError

TEST_CSV = "MSRVTT_JSFUSION_test.csv"
TEST_COLUMNS = ("key", "vid_key", "video_id", "sentence")
TRAIN_CSV = "MSRVTT_train.9k.csv"
DATA_JSON = "MSRVTT_data.json"


class MSRVTT(Adapter):
    """MSR-VTT videos with captions: ``test`` = 1k-A (one caption each), ``train`` = 9k (all 20 captions)."""

    name: ClassVar[str] = "msrvtt"
    description: ClassVar[str] = "MSR-VTT: whole videos with captions (zero-shot retrieval on 1k-A)"
    splits: ClassVar[tuple[str, ...]] = ("test", "train")
    fps: ClassVar[float] = 25.0

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        rows = list(self._test_rows(root) if split == "test" else self._train_rows(root))
        media = MediaIndex(root)
        for video_id, captions, extra in rows:
            source = media.find(video_id)
            if source is None:
                yield Skip(video_id, "missing", f"{video_id}: no video file named {video_id}.<ext> under {root}")
                continue
            captions = [c.strip() for c in captions if c.strip()]
            if not captions:
                yield Skip(video_id, "empty_caption", f"{video_id}: no non-empty caption")
                continue
            meta = {"dataset": self.name, "split": split, "source": source.relative_to(root).as_posix(),
                    "video_id": video_id, "captions": captions, **extra}
            yield WorkItem(source, [Window(sample_key(video_id), 0.0, None, meta)])

    def _test_rows(self, root: Path) -> Iterator[tuple[str, list[str], dict[str, str]]]:
        for row in read_csv_columns(root / TEST_CSV, TEST_COLUMNS):
            yield row["video_id"], [row["sentence"]], {"pair_key": row["key"]}

    def _train_rows(self, root: Path) -> Iterator[tuple[str, list[str], dict[str, str]]]:
        video_ids = [row["video_id"] for row in read_csv_columns(root / TRAIN_CSV, ("video_id",))]
        by_video = self._sentences(root / DATA_JSON)
        for video_id in video_ids:
            yield video_id, by_video.get(video_id, []), {}

    @staticmethod
    def _sentences(path: Path) -> dict[str, list[str]]:
        data = read_json(path, "caption file")
        sentences = data.get("sentences") if isinstance(data, dict) else None
        if not isinstance(sentences, list):
            raise DataError(f"{path}: expected an object with a list 'sentences' of {{video_id, caption}}")
        by_video: dict[str, list[str]] = defaultdict(list)
        for entry in sentences:
            if isinstance(entry, dict) and isinstance(entry.get("caption"), str) and "video_id" in entry:
                by_video[str(entry["video_id"])].append(entry["caption"])
        return by_video
