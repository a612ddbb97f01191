"""Joining the parts of a build (and, for ``vatt index add``, the index they extend) into one index folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from vattcli.errors import VattError
from vattcli.indexing.chunks import DONE, Chunk, ChunkThumbnails, part_folders, read_chunks
from vattcli.retrieval.index import RetrievalIndex
from vattcli.retrieval.store import IndexContent


class _Joined(Sequence):
    """Two sequences end to end (the thumbnails of the index being extended, then those of the new chunks)."""

    def __init__(self, first: Sequence, second: Sequence) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]

    def __iter__(self) -> Iterator[Any]:
        yield from self.first
        yield from self.second


class _BaseThumbnails(Sequence):
    def __init__(self, index: RetrievalIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> bytes | None:  # type: ignore[override]
        if not 0 <= i < len(self.index):
            raise IndexError(i)
        return self.index.thumbnail(i)

    def __iter__(self) -> Iterator[bytes | None]:
        return (self.index.thumbnail(i) for i in range(len(self.index)))


def complete_chunks(build: Path, resume_hint: str) -> list[Chunk]:
    """Every committed chunk of every part, in part order; refuses (one line) while a part is missing or unfinished."""
    parts = part_folders(build)
    if not parts:
        raise VattError(f"{build}: no parts to merge (nothing was indexed yet)")
    counts = {count for count, _ in parts.values()}
    if len(counts) != 1:
        raise VattError(f"{build}: parts of different splits ({', '.join(map(str, sorted(counts)))} parts); start "
                        "again with --overwrite")
    (count,) = counts
    unfinished = [i for i in range(1, count + 1) if i not in parts or not (parts[i][1] / DONE).is_file()]
    if unfinished:
        listed = ", ".join(f"{i}/{count}" for i in unfinished[:5]) + (" ..." if len(unfinished) > 5 else "")
        raise VattError(f"{build}: part {listed} not finished; run it ({resume_hint} --part I/{count} --resume), "
                        "then merge")
    return [chunk for i in range(1, count + 1) for chunk in read_chunks(parts[i][1])]


class _Permuted(Sequence):
    """``seq`` read in the order ``order``."""

    def __init__(self, seq: Sequence, order: np.ndarray) -> None:
        self.seq, self.order = seq, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.seq[int(self.order[i])]

    def __iter__(self) -> Iterator[Any]:
        return (self.seq[int(j)] for j in self.order)


def _items_of(chunks: list[Chunk], source_base: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """The new items and sources, each sorted by source path (and items by start): the same index whatever order
    the workers and parts finished in. Returns them and ``order``: the chunk-order position of each sorted item."""
    sources = sorted((s for chunk in chunks for s in chunk.sources), key=lambda s: s["path"])
    ids = {s["path"]: source_base + i for i, s in enumerate(sources)}
    found = []
    for chunk in chunks:
        for item in chunk.items:
            path = chunk.sources[int(item["source_id"])]["path"]
            start, end = round(float(item["start"]), 3), round(float(item["end"]), 3)
            found.append({"key": f"{Path(path).name}@{start:.2f}", "source": path, "source_id": ids[path],
                          "start": start, "end": end})
    order = np.array(sorted(range(len(found)), key=lambda i: (found[i]["source"], found[i]["start"])), np.int64)
    return [found[i] for i in order], sources, order


def content_from(chunks: list[Chunk], dims: dict[str, int], base: RetrievalIndex | None = None) -> IndexContent:
    """The index content of ``base`` (if any) followed by the windows of ``chunks``."""
    base_items = list(base.items) if base is not None else []
    base_sources = list(base.sources) if base is not None else []
    items, sources, order = _items_of(chunks, len(base_sources))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    vectors, rows = {}, {}
    for space in ("vt", "va"):
        new_vectors, new_ids, offset = [], [], 0
        for chunk in chunks:
            tensors = chunk.tensors()
            new_vectors.append(np.array(tensors.array(space), np.float32).reshape(-1, dims[space]))
            new_ids.append(np.array(tensors.array(f"rows_{space}"), np.int64) + offset)
            offset += len(chunk.items)
        ids = position[np.concatenate(new_ids)] if new_ids else np.zeros(0, np.int64)
        by_item = np.argsort(ids, kind="stable")
        matrix = np.concatenate(new_vectors)[by_item] if new_vectors else np.zeros((0, dims[space]), np.float32)
        parts = [torch.from_numpy(matrix)]
        ids_t = [torch.from_numpy(ids[by_item] + len(base_items))]
        if base is not None:
            parts.insert(0, base.matrices[space])
            ids_t.insert(0, torch.from_numpy(np.array(base.rows(space), np.int64)))
        vectors[space], rows[space] = torch.cat(parts), torch.cat(ids_t)
    thumbs: Sequence[bytes | None] = _Permuted(ChunkThumbnails(chunks), order)
    if base is not None:
        thumbs = _Joined(_BaseThumbnails(base), thumbs)
    return IndexContent(base_items + items, vectors, rows, thumbs, base_sources + sources)


class NothingIndexed(VattError):
    """Every file of the build was skipped: there is no index to write, and nothing to resume."""


def skipped_sources(chunks: list[Chunk]) -> dict[str, list[dict[str, Any]]]:
    """The records of the files the parts skipped, by reason."""
    skipped: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks:
        for source in chunk.sources:
            if source.get("skipped"):
                skipped.setdefault(source["skipped"], []).append(source)
    return skipped


def merge_into(chunks: list[Chunk], target: Path, *, base: RetrievalIndex | None, dims: dict[str, int],
               overwrite: bool = False, **write: Any) -> RetrievalIndex:
    """Write the index ``target`` from the finished parts' ``chunks`` (after ``base``'s items when extending it)."""
    content = content_from(chunks, dims, base)
    if not content.items:
        raise NothingIndexed(f"{target}: no window of any file could be indexed (every file was skipped)")
    return RetrievalIndex.write(target, content, overwrite=overwrite or base is not None, **write)
