"""Shard folders written by ``vatt preprocess``: find the manifest, list its shards, read its class names.

Every stage reads shards through these helpers (training, evaluation, index building), so they live in ``data/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vattcli.data.parts import part_manifests
from vattcli.data.shardfiles import expand_urls
from vattcli.data.shards import MANIFEST, read_manifest
from vattcli.errors import DataError

log = logging.getLogger(__name__)


def shard_folder(path: str | Path, split: str | None = None) -> Path:
    """The folder holding a manifest: ``path`` itself, ``path/<split>``, or the only split folder under it.

    A folder holding only the part manifests of a split run (``vatt preprocess ... --part I/N``) is refused naming
    ``vatt preprocess merge``: until the merge has checked that every part is complete, it is part of a dataset.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if split and (path / split / MANIFEST).is_file():
        return path / split
    subs = sorted(p.parent for p in path.glob(f"*/{MANIFEST}")) if path.is_dir() else []
    if len(subs) == 1:
        return subs[0]
    _refuse_unmerged(path, split)
    found = f"; found splits: {', '.join(p.name for p in subs)}" if subs else ""
    raise DataError(f"{path}: no shards (expected {MANIFEST} from `vatt preprocess` here or in a split folder"
                    f"{', e.g. ' + split if split else ''}){found}")


def _refuse_unmerged(path: Path, split: str | None) -> None:
    """Raise DataError when ``path`` (or its split folder) holds part manifests but no merged manifest."""
    candidates = [path, *([path / split] if split else sorted(p for p in path.iterdir() if p.is_dir()))] \
        if path.is_dir() else []
    for folder in candidates:
        found = part_manifests(folder)
        if found and not (folder / MANIFEST).is_file():
            count = max(found)
            raise DataError(f"{folder}: holds {len(found[count])} of {count} parts of a split `vatt preprocess` run "
                            f"but no merged {MANIFEST}; run `vatt preprocess merge {folder.parent} --split "
                            f"{folder.name}` once every part is done")


def shard_urls(path: str | Path, split: str | None = None, *, allow_incomplete: bool = False) -> list[str]:
    """Shard files of a folder written by ``vatt preprocess`` (or a glob/brace pattern).

    A folder whose manifest says ``complete: false`` (an interrupted `vatt preprocess`) holds valid shards but only
    part of the set: it is refused unless ``allow_incomplete`` (training: ``data.allow_incomplete=true``), and then
    used with a warning line. Evaluation and index building pass ``allow_incomplete=True``: their reports give the
    pool size and the missing clips, so a partial set shows in every figure they print.
    """
    text = str(path)
    if any(c in text for c in "*?{"):
        return expand_urls(text)
    folder = shard_folder(path, split)
    manifest = read_manifest(folder)
    if manifest.get("complete") is False:
        held = f"{manifest['counts'].get('written', '?')} samples in {len(manifest['shards'])} shards"
        if not allow_incomplete:
            raise DataError(f"{folder}: incomplete shard folder (manifest says complete: false; {held}, from an "
                            "interrupted `vatt preprocess`); finish it with `vatt preprocess ... --resume` or use it "
                            "as it is with data.allow_incomplete=true")
        log.warning("%s: incomplete shard folder (%s, from an interrupted `vatt preprocess`); using what it holds",
                    folder, held)
    shards = [str(folder / s["name"]) for s in manifest["shards"]]
    if not shards:
        raise DataError(f"{folder}: the manifest lists no shards (was the preprocessing run empty?)")
    return shards


def manifest_classes(path: str | Path, split: str | None = None) -> list[str] | None:
    """The label names a classification adapter recorded in the shard manifest (None for caption sets)."""
    return read_manifest(shard_folder(path, split)).get("settings", {}).get("classes")
