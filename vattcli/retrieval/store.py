"""The index folder on disk (format version 2; version 1 folders, written before thumbnails and approximate search,
are read too)::

    index.json               format, version, created, counts, checkpoint, weights_hash, tokenizer_sha256, model_name,
                             dims, search (per space: "exact" or the approximate index's tuned plan), build settings
    embeddings.safetensors   "video_vt" (N_vt, d_vt) and "video_va" (N_va, d_va): float32 unit rows;
                             "rows_vt" / "rows_va" (int64): the item each row belongs to (a window of an audio-only file
                             has a row in S_va only); "thumbs" (N, 2) int64: offset and length of each item's JPEG in
                             thumbs.bin (length 0: none)
    items.jsonl              one line per item: key, source, source_id, start, end, caption and/or label
    sources.jsonl            one line per indexed file: path, size, mtime, duration, streams, windows (raw-media builds)
    thumbs.bin               the thumbnails, one JPEG after another
    ann-vt.faiss, ann-va.faiss   the approximate index of a space, when index.json says it has one

Item lines are read on demand (``Items`` keeps only their byte offsets), so a million-item index opens in a moment.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from vattcli.errors import VattError
from vattcli.retrieval.names import INFO

FORMAT = "vatt-index"
FORMAT_VERSION = 2
EMBEDDINGS = "embeddings.safetensors"
ITEMS = "items.jsonl"
SOURCES = "sources.jsonl"
THUMBS = "thumbs.bin"
SPACES = {"vt": "video_vt", "va": "video_va"}
ROWS = {"vt": "rows_vt", "va": "rows_va"}
_TMP_PREFIX = ".tmp-index-"


class IndexFormatError(VattError):
    """An index folder that is missing, incomplete or inconsistent."""


def ann_file(space: str) -> str:
    return f"ann-{space}.faiss"


@dataclass
class IndexContent:
    """Everything an index folder holds but ``index.json``: ``vectors[space]`` (rows, d) unit float32 rows,
    ``rows[space]`` the item of each row, one ``items`` entry per item, and optionally one thumbnail per item (None:
    no thumbnail) and the indexed files (``sources``; items refer to them by ``source_id``)."""

    items: list[dict[str, Any]]
    vectors: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    thumbnails: Sequence[bytes | None] | None = None
    sources: list[dict[str, Any]] | None = None


class Items(Sequence):
    """The lines of ``items.jsonl`` as dicts, parsed when asked for (a line's byte offsets are all that is kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise IndexFormatError(f"{path}: cannot read item list ({e.strerror})") from e
        self._data = data
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) if size else np.zeros(0, np.int64)
        if size and (not len(ends) or ends[-1] != size - 1):
            ends = np.append(ends, size)
        self._ends = ends
        self._starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else ends

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        line = bytes(self._data[self._starts[i]:self._ends[i]])
        try:
            item = json.loads(line)
        except ValueError as e:
            raise IndexFormatError(f"{self.path}:{int(i) + 1}: not a JSON object ({e})") from e
        if not isinstance(item, dict):
            raise IndexFormatError(f"{self.path}:{int(i) + 1}: expected a JSON object per line")
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, Items)) and list(self) == list(other)


def read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: not a retrieval index (expected \"format\": \"{FORMAT}\")")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(f"{path}: format_version {version!r} is not supported (this vatt reads up to "
                               f"{FORMAT_VERSION})")
    missing = [k for k in ("num_items", "checkpoint", "weights_hash", "dims") if k not in info]
    if missing or not isinstance(info["dims"], dict) or not all(isinstance(info["dims"].get(s), int) for s in SPACES):
        raise IndexFormatError(f"{path}: fields missing or malformed: {', '.join(missing) or 'dims'}")
    return info


def read_sources(folder: Path) -> list[dict[str, Any]]:
    path = folder / SOURCES
    if not path.is_file():
        return []
    try:
        sources = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path}: not readable JSON lines ({e})") from e
    if not all(isinstance(s, dict) and isinstance(s.get("path"), str) for s in sources):
        raise IndexFormatError(f"{path}: expected one object with a \"path\" per line")
    return sources


def write_thumbnails(thumbnails: Sequence[bytes | None], out: Path) -> torch.Tensor:
    """The JPEGs one after another in ``out`` (flushed to disk); returns the (N, 2) offset/length table (0, 0: none)."""
    table = np.zeros((len(thumbnails), 2), np.int64)
    offset = 0
    with open(out, "wb") as f:
        for i, jpeg in enumerate(thumbnails):
            if jpeg:
                f.write(jpeg)
                table[i] = (offset, len(jpeg))
                offset += len(jpeg)
        f.flush()
        os.fsync(f.fileno())
    return torch.from_numpy(table)


def write_folder(folder: Path, info: dict[str, Any], content: IndexContent,
                 extra: dict[str, Callable[[Path], None]] | None = None) -> None:
    """Write an index into ``.tmp-index-<name>-<pid>`` next to ``folder``, then swap it in (the old index, if any,
    is renamed aside first and removed last, so ``folder`` is never half written). ``extra`` maps further file
    names to functions writing them (the approximate indexes)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{_TMP_PREFIX}{folder.name}-{os.getpid()}")
    trash = tmp.with_name(tmp.name + ".old")
    for stale in (tmp, trash):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors = {SPACES[s]: content.vectors[s].contiguous() for s in SPACES}
        tensors.update({ROWS[s]: content.rows[s].to(torch.int64).clone() for s in SPACES})
        if content.thumbnails is not None:
            tensors["thumbs"] = write_thumbnails(content.thumbnails, tmp / THUMBS)
        save_file(tensors, str(tmp / EMBEDDINGS), metadata={"format": FORMAT})
        _readable_as_umask_allows(tmp / EMBEDDINGS)  # safetensors writes 0600; a server of another user reads it
        with open(tmp / ITEMS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in content.items)
        if content.sources is not None:
            with open(tmp / SOURCES, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in content.sources)
        for name, write in (extra or {}).items():
            write(tmp / name)
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _fsync_folder(tmp)
        _swap_in(tmp, folder, trash)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _readable_as_umask_allows(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _swap_in(tmp: Path, folder: Path, trash: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` goes to ``trash`` first and comes back if that fails."""
    replaced = folder.exists()
    if replaced:
        os.replace(folder, trash)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if replaced:
            os.replace(trash, folder)
        raise
