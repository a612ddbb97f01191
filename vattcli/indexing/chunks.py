"""The parts of an index build on disk, written so that a crash loses at most the files in flight.

A build of index NAME keeps its work in ``.NAME.build/`` next to where the index will be (``retrieval.names``)::

    build.json                       the settings every part and every resume must share
    part-001of004/.vatt.lock         one writer per part
    part-001of004/chunk-000001.*     a committed chunk: .safetensors (vectors, row ids, thumbnail offsets),
                                     .thumbs (JPEGs), .json (its sources and items; written last, by rename)
    part-001of004/done.json          the part finished: every file of its share is in a chunk

A chunk holds whole files only (every window of a file, or the file's skip record), and its ``.json`` is renamed into
place after the other two are on disk: a chunk without it was cut short and is removed on resume, and a file is
either in exactly one committed chunk or indexed again. Resume therefore never duplicates a window.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors.torch import save_file

from vattcli.errors import VattError
from vattcli.retrieval.store import write_thumbnails
from vattcli.retrieval.tensors import SafetensorsFile

BUILD = "build.json"
DONE = "done.json"
_CHUNK = re.compile(r"chunk-(\d{6})\.json")
_PART = re.compile(r"part-(\d+)of(\d+)")


def part_name(index: int, count: int) -> str:
    width = max(3, len(str(count)))
    return f"part-{index:0{width}d}of{count:0{width}d}"


def part_folders(build: Path) -> dict[int, tuple[int, Path]]:
    """{part index: (count, folder)} of the parts present under ``build``."""
    found = {}
    for path in sorted(build.glob("part-*")):
        match = _PART.fullmatch(path.name)
        if match and path.is_dir():
            found[int(match[1])] = (int(match[2]), path)
    return found


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file and a rename, flushed to disk first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class FileWindows:
    """The embedded windows of one source file, waiting for a chunk."""

    source: dict[str, Any]  # path, size, mtime, duration, has_video, has_audio, windows, (skipped: reason, message)
    items: list[dict[str, Any]] = field(default_factory=list)  # start, end per window
    vt: list[torch.Tensor | None] = field(default_factory=list)  # one (d_vt,) per window; None: audio only
    va: list[torch.Tensor] = field(default_factory=list)  # one (d_va,) per window
    has_vt: list[bool] = field(default_factory=list)
    thumbs: list[bytes | None] = field(default_factory=list)


class PartWriter:
    """Appends whole files to the chunks of one part folder."""

    def __init__(self, folder: Path, dims: dict[str, int]) -> None:
        self.folder, self.dims = folder, dims
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("chunk-*"):
            if not (folder / f"{stale.name.split('.')[0]}.json").is_file():
                stale.unlink()
        for stale in folder.glob(".chunk-*"):
            stale.unlink()
        numbers = [int(m[1]) for p in folder.iterdir() if (m := _CHUNK.fullmatch(p.name))]
        self.next = max(numbers, default=0) + 1
        self.pending: list[FileWindows] = []

    def add(self, done: FileWindows) -> None:
        self.pending.append(done)

    @property
    def pending_windows(self) -> int:
        return sum(len(f.items) for f in self.pending)

    def flush(self) -> int:
        """Commit the pending files as one chunk; returns how many windows it held."""
        if not self.pending:
            return 0
        stem = self.folder / f"chunk-{self.next:06d}"
        items, sources, thumbs = [], [], []
        vt, va, rows_vt = [], [], []
        for local, fw in enumerate(self.pending):
            sources.append(fw.source)
            for item, v_vt, v_va, has_vt, thumb in zip(fw.items, fw.vt, fw.va, fw.has_vt, fw.thumbs):
                if has_vt:
                    vt.append(v_vt)
                    rows_vt.append(len(items))
                va.append(v_va)
                items.append({**item, "source_id": local})
                thumbs.append(thumb)
        table = write_thumbnails(thumbs, Path(f"{stem}.thumbs"))
        tensors = {"vt": _stack(vt, self.dims["vt"]), "va": _stack(va, self.dims["va"]),
                   "rows_vt": torch.tensor(rows_vt, dtype=torch.int64),
                   "rows_va": torch.arange(len(items), dtype=torch.int64), "thumbs": table}
        save_file(tensors, f"{stem}.safetensors")
        with open(f"{stem}.safetensors", "rb") as f:
            os.fsync(f.fileno())
        write_json(Path(f"{stem}.json"), {"sources": sources, "items": items})
        self.next += 1
        self.pending = []
        return len(items)


def _stack(rows: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.stack(rows).float().contiguous() if rows else torch.zeros(0, dim)


@dataclass
class Chunk:
    stem: Path
    sources: list[dict[str, Any]]
    items: list[dict[str, Any]]

    def tensors(self) -> SafetensorsFile:
        return SafetensorsFile(Path(f"{self.stem}.safetensors"))

    @functools.cached_property
    def _thumbs(self) -> Any:
        return open(f"{self.stem}.thumbs", "rb")  # one handle per chunk: a merge reads every item's thumbnail

    def thumbnail(self, offset: int, length: int) -> bytes | None:
        if length <= 0:
            return None
        return os.pread(self._thumbs.fileno(), length, offset)


def read_chunks(part: Path) -> list[Chunk]:
    """The committed chunks of a part folder, in order."""
    chunks = []
    for path in sorted(part.glob("chunk-*.json")):
        if not _CHUNK.fullmatch(path.name):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise VattError(f"{path}: unreadable chunk record ({e}); remove the chunk's three files and resume") from e
        chunks.append(Chunk(path.with_suffix(""), data["sources"], data["items"]))
    return chunks


def done_paths(part: Path) -> set[str]:
    """The source paths a part has already committed (indexed or skipped)."""
    return {s["path"] for chunk in read_chunks(part) for s in chunk.sources}


class ChunkThumbnails(Sequence):
    """The thumbnails of a list of chunks as one sequence, read from their files one at a time (a merge never holds
    them all in memory)."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.refs: list[tuple[Chunk, int, int]] = []
        for chunk in chunks:
            table = chunk.tensors().array("thumbs")
            self.refs.extend((chunk, int(o), int(n)) for o, n in table)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> bytes | None:  # type: ignore[override]
        chunk, offset, length = self.refs[i]  # IndexError past the end, as a Sequence must
        return chunk.thumbnail(offset, length)

    def __iter__(self) -> Iterator[bytes | None]:
        return (self[i] for i in range(len(self)))
