"""ImageNet in the ImageFolder layout: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` [datasets.md].

The class list is the sorted wnid folders of ``train/`` (of the split's own folder when ``train/`` is absent), so
train and val share indices. Images are stored as they are (no re-encoding); fine-tuning repeats each image along time
to fill one temporal patch [P §4.2.3, A.3.1]. An image lying directly in the split folder (the flat official val
archive, before the usual "valprep" step sorts it into wnid folders) has no label and is skipped as ``bad_label``; a
wnid folder of val that train lacks is skipped as ``bad_label`` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vattcli.data.adapters.base import Adapter, Skip, WorkItem, Window, label_index, sample_key
from vattcli.errors import DataError

IMAGE_EXTS = (".jpeg", ".jpg", ".png")


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the sub-folders (wnids) of ``folder``."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{folder}: no class folders (expected ImageFolder layout <split>/<wnid>/*.JPEG)")
    return names


class ImageNet(Adapter):
    """ImageNet (ILSVRC-2012) image classification in ImageFolder layout; splits train and val."""

    name = "imagenet"
    description = "ImageNet image classification (transfer: images repeated along time)"
    splits = ("train", "val")

    def items(self, root: Path, split: str) -> Iterator[WorkItem | Skip]:
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: split folder not found (expected ImageFolder layout {split}/<wnid>/*.JPEG)")
        train = root / "train"
        self.classes = class_folders(train if train.is_dir() else folder)
        lookup = {name: i for i, name in enumerate(self.classes)}
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTS and not path.is_dir():
                yield self._entry(root, split, path.relative_to(folder), lookup)

    def _entry(self, root: Path, split: str, rel: Path, lookup: dict[str, int]) -> WorkItem | Skip:
        path = root / split / rel
        if len(rel.parts) < 2:
            return Skip(str(path), "bad_label", f"{path}: not inside a <wnid>/ folder, so it has no label")
        wnid = rel.parts[0]
        label = label_index(wnid, self.classes or [], lookup)
        if isinstance(label, Skip):
            return Skip(str(path), label.reason, f"{path}: {label.message}")
        if not path.is_file():
            return Skip(str(path), "missing", f"{path}: not a readable file (broken link?)")
        meta = {"dataset": self.name, "split": split, "source": path.relative_to(root).as_posix(), "label": label,
                "label_name": wnid, "wnid": wnid, "image_id": path.stem}
        return WorkItem(path, [Window(sample_key(*rel.with_suffix("").parts), meta=meta)], kind="image")
