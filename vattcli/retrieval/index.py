"""Retrieval indexes: L2-normalised clip embeddings in the two common spaces, searched exactly (one matmul + top-k)
or, past a size threshold, through an approximate (FAISS) index tuned when the index is written (``vattcli.ann``).

The two spaces are the ones the official evaluation compares: text queries against ``video_vt`` (S_vt) and
video/audio queries against ``video_va`` (S_va) [P §3.3; C experiments/pretrain.py; reference §4]. The folder layout
is in ``vattcli.retrieval.store``, names in ``vattcli.retrieval.names``. An index records the weights hash of the
checkpoint that built it, and queries refuse any other checkpoint: embeddings from two networks are not comparable.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vattcli.errors import VattError
from vattcli.retrieval.names import INFO, check_target, missing_message, resolve_index
from vattcli.retrieval.store import (EMBEDDINGS, FORMAT, FORMAT_VERSION, ITEMS, ROWS, SPACES, THUMBS,
                                     IndexContent, IndexFormatError, Items, ann_file, read_info, read_sources,
                                     write_folder)
from vattcli.retrieval.tensors import SafetensorsFile

SEARCH_CHOICES = ("auto", "exact", "approximate")


class SearchHit(NamedTuple):
    rank: int  # 1-based
    score: float  # cosine similarity
    item: dict[str, Any]
    row: int = -1  # the item's position in items.jsonl


def item_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``items.jsonl`` line for one clip's metadata (as ``embed_clips`` gives it): key, source, start, end, the
    first caption and the label name (or id) where the clip has them."""
    item: dict[str, Any] = {"key": meta.get("key"), "source": meta.get("source") or meta.get("video"),
                            "start": meta.get("start"), "end": meta.get("end")}
    captions = [c for c in meta.get("captions") or [] if isinstance(c, str) and c.strip()]
    if captions:
        item["caption"] = captions[0]
    label = meta.get("label_name", meta.get("label"))
    if label is not None:
        item["label"] = label
    return item


def unit_rows(matrix: Any, name: str) -> torch.Tensor:
    matrix = torch.as_tensor(matrix).detach().to("cpu", torch.float32)
    if matrix.dim() != 2 or matrix.shape[0] == 0:
        raise VattError(f"index {name}: expected a non-empty (N, d) matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise VattError(f"index {name}: embeddings contain NaN or infinite values")
    return F.normalize(matrix, dim=1).contiguous()


def plan_search(content: IndexContent, search: str, memory_budget: int | None,
                exact_below: int | None) -> dict[str, dict[str, Any]]:
    """Per space: {"kind": "exact"} or the approximate index's plan (``vattcli.ann.choose_plan``)."""
    if search not in SEARCH_CHOICES:
        raise VattError(f"--search {search!r}: expected one of {', '.join(SEARCH_CHOICES)}")
    if search == "exact":
        return {s: {"kind": "exact"} for s in SPACES}
    from vattcli.ann import EXACT_BELOW, choose_plan

    below = 0 if search == "approximate" else (EXACT_BELOW if exact_below is None else exact_below)
    return {s: choose_plan(int(v.shape[0]), int(v.shape[1]), memory_budget=memory_budget, exact_below=below)
            for s, v in content.vectors.items()}


class RetrievalIndex:
    """Cosine-similarity search over one model's clip embeddings (see the module docstring)."""

    def __init__(self, folder: Path, info: dict[str, Any], items: Sequence[dict[str, Any]],
                 tensors: SafetensorsFile | None = None, matrices: dict[str, torch.Tensor] | None = None) -> None:
        self.folder, self.info, self.items = folder, info, items
        self._file = tensors
        self._matrices = matrices
        self._ann: dict[str, Any] = {}
        self._sources: list[dict[str, Any]] | None = None

    name = property(lambda self: self.folder.name)
    weights_hash = property(lambda self: self.info["weights_hash"])
    tokenizer_sha256 = property(lambda self: self.info.get("tokenizer_sha256"))
    checkpoint = property(lambda self: Path(self.info["checkpoint"]))

    def __len__(self) -> int:
        return len(self.items)

    def search_kind(self, space: str) -> str:
        return (self.info.get("search") or {}).get(space, {}).get("kind", "exact")

    @property
    def matrices(self) -> dict[str, torch.Tensor]:
        """The embeddings of both spaces as float32 tensors (read from disk the first time they are needed)."""
        if self._matrices is None:
            self._matrices = {s: torch.from_numpy(np.array(self._file.array(SPACES[s]), np.float32))
                              for s in SPACES}
        return self._matrices

    def rows(self, space: str) -> np.ndarray:
        """The item of each row of ``space``'s matrix."""
        if self._file is not None and ROWS[space] in self._file:
            return self._file.array(ROWS[space])
        return np.arange(self.info["counts"][space] if "counts" in self.info else len(self.items))

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The indexed files (raw-media builds; empty for an index built from shards)."""
        if self._sources is None:
            self._sources = read_sources(self.folder)
        return self._sources

    def thumbnail(self, item: int) -> bytes | None:
        """The JPEG thumbnail of item ``item`` (None when the index has none for it)."""
        if self._file is None or "thumbs" not in self._file or not 0 <= item < len(self.items):
            return None
        offset, length = (int(x) for x in self._file.array("thumbs")[item])
        if length <= 0:
            return None
        with open(self.folder / THUMBS, "rb") as f:
            return os.pread(f.fileno(), length, offset)

    # ---------------------------------------------------------------------------------------------- writing

    @classmethod
    def build(cls, folder: str | os.PathLike[str], embeddings: Any, *, ckpt: str | os.PathLike[str],
              tokenizer_sha256: str | None, model_name: str, overwrite: bool = False, verify: bool = True,
              search: str = "auto", memory_budget: int | None = None) -> "RetrievalIndex":
        """An index of evaluation clips: ``embeddings`` (``video_vt``, ``video_va``, ``meta``: one row per clip in
        both spaces), written atomically into ``folder``."""
        vt, va = unit_rows(embeddings.video_vt, "video_vt"), unit_rows(embeddings.video_va, "video_va")
        meta = list(embeddings.meta)
        if not (len(meta) == vt.shape[0] == va.shape[0]):
            raise VattError(f"index {Path(folder).name}: {vt.shape[0]} video_vt rows, {va.shape[0]} video_va rows "
                            f"and {len(meta)} metadata entries; expected one of each per clip")
        rows = torch.arange(len(meta))
        content = IndexContent([item_from_meta(m) for m in meta], {"vt": vt, "va": va}, {"vt": rows, "va": rows})
        return cls.write(folder, content, ckpt=ckpt, tokenizer_sha256=tokenizer_sha256, model_name=model_name,
                         overwrite=overwrite, verify=verify, search=search, memory_budget=memory_budget)

    @classmethod
    def write(cls, folder: str | os.PathLike[str], content: IndexContent, *, ckpt: str | os.PathLike[str],
              tokenizer_sha256: str | None, model_name: str, overwrite: bool = False, verify: bool = True,
              search: str = "auto", memory_budget: int | None = None, exact_below: int | None = None,
              settings: dict[str, Any] | None = None) -> "RetrievalIndex":
        """Write ``content`` as an index folder atomically (approximate indexes built and tuned first where the
        search plan asks for them). ``verify``: check ``ckpt``'s weights against their recorded sha256."""
        from vattcli.checkpoints import find_checkpoint, weights_hash

        folder = Path(folder).expanduser()
        ckpt = find_checkpoint(ckpt, verify=verify)
        check_target(folder, overwrite)
        _check_content(folder.name, content)
        plans = plan_search(content, search, memory_budget, exact_below)
        extra, anns = {}, {}
        for space, plan in plans.items():
            if plan["kind"] != "exact":
                from vattcli.ann import AnnIndex

                anns[space] = AnnIndex.build(content.vectors[space].numpy(), plan)
                plans[space] = anns[space].plan
                extra[ann_file(space)] = anns[space].save
        info = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "num_items": len(content.items), "counts": {s: int(v.shape[0]) for s, v in content.vectors.items()},
                "num_sources": len(content.sources or []), "checkpoint": str(Path(ckpt).resolve()),
                "weights_hash": weights_hash(ckpt), "tokenizer_sha256": tokenizer_sha256, "model_name": model_name,
                "dims": {s: int(v.shape[1]) for s, v in content.vectors.items()}, "search": plans,
                "thumbnails": content.thumbnails is not None, "settings": settings or {}}
        write_folder(folder, info, content, extra)
        return cls.load(folder)

    # ---------------------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str], *, home: Path | None = None) -> "RetrievalIndex":
        """Open an index by name (under ``home``, default ``index_home()``) or by folder path."""
        folder = resolve_index(name_or_path, home)
        if not (folder / INFO).is_file():
            raise IndexFormatError(missing_message(os.fspath(name_or_path), folder, home))
        info = read_info(folder / INFO)
        tensors = SafetensorsFile(folder / EMBEDDINGS)
        counts = info.get("counts") or {s: info["num_items"] for s in SPACES}
        for space, key in SPACES.items():
            got = tensors.shape(key)
            want = (counts[space], info["dims"][space])
            if got != want:
                raise IndexFormatError(f"{folder / EMBEDDINGS}: tensor {key!r} has shape {got}, index.json says {want}")
        items = Items(folder / ITEMS)
        if len(items) != info["num_items"]:
            raise IndexFormatError(f"{folder / ITEMS}: {len(items)} lines, index.json says {info['num_items']} "
                                   "items")
        return cls(folder, info, items, tensors)

    # ---------------------------------------------------------------------------------------------- querying

    def check_checkpoint(self, ckpt: str | os.PathLike[str], *, verify: bool = True) -> None:
        """Refuse a checkpoint whose weights differ from those that built this index (``verify``: and from its own
        ``meta.json``)."""
        from vattcli.checkpoints import find_checkpoint, weights_hash

        folder = find_checkpoint(ckpt, verify=verify)
        found = weights_hash(folder)
        if found != self.weights_hash:
            raise VattError(f"{folder}: weights hash {found} differs from {self.weights_hash}, the checkpoint that "
                            f"built index {self.name!r}; use that checkpoint or rebuild the index")

    def search(self, query: torch.Tensor | Sequence[float], space: str = "vt",
               top_k: int = 10) -> list[SearchHit] | list[list[SearchHit]]:
        """The ``top_k`` items most cosine-similar to ``query`` in ``space`` ("vt" or "va"), best first.

        ``query`` is one vector (d,) -> a list of hits, or a batch (Q, d) -> one list per query. Exact indexes score
        every row (one (Q, d) x (d, N) matmul); approximate ones take 4 * top_k candidates from the FAISS index and
        rescore them with the stored vectors, so a returned score is always the exact cosine."""
        if space not in SPACES:
            raise VattError(f"search space {space!r}: expected one of {', '.join(SPACES)}")
        if top_k < 1:
            raise VattError(f"top_k: expected at least 1, got {top_k}")
        dim = self.info["dims"][space]
        q = torch.as_tensor(query).detach().to("cpu", torch.float32)
        single = q.dim() == 1
        q = q.reshape(1, -1) if single else q
        if q.dim() != 2 or q.shape[1] != dim:
            raise VattError(f"query of shape {tuple(torch.as_tensor(query).shape)} does not fit index {self.name!r} "
                            f"(space {space}: {dim}-d)")
        if not torch.isfinite(q).all():
            raise VattError("query embedding contains NaN or infinite values")
        q = F.normalize(q, dim=1)
        if self.search_kind(space) == "exact":
            values, indices = torch.mm(q, self.matrices[space].t()).topk(min(top_k, self.matrices[space].shape[0]))
            found = [(v.tolist(), i.tolist()) for v, i in zip(values, indices)]
        else:
            found = self._approximate(q.numpy(), space, top_k)
        rows = self.rows(space)
        hits = [[SearchHit(rank, score, dict(self.items[int(rows[r])]), int(rows[r]))
                 for rank, (score, r) in enumerate(zip(scores, ids), 1)] for scores, ids in found]
        return hits[0] if single else hits

    def _approximate(self, q: np.ndarray, space: str, top_k: int) -> list[tuple[list[float], list[int]]]:
        if space not in self._ann:
            from vattcli.ann import AnnIndex

            self._ann[space] = AnnIndex.load(self.folder / ann_file(space), self.info["search"][space])
        ann = self._ann[space]
        _, candidates = ann.search(q, min(len(ann), 4 * top_k))
        matrix = self._file.array(SPACES[space])
        found = []
        for query, ids in zip(q, candidates):
            ids = ids[ids >= 0]
            scores = np.asarray(matrix[np.sort(ids)], np.float32) @ query
            order = np.argsort(-scores, kind="stable")[:top_k]
            found.append((scores[order].tolist(), np.sort(ids)[order].tolist()))
        return found



def _check_content(name: str, content: IndexContent) -> None:
    n = len(content.items)
    for space in SPACES:
        vectors, rows = content.vectors[space], content.rows[space]
        if vectors.dim() != 2 or rows.shape != (vectors.shape[0],):
            raise VattError(f"index {name}: space {space} has {tuple(vectors.shape)} vectors and {tuple(rows.shape)} "
                            "row ids; expected one id per row")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise VattError(f"index {name}: space {space} refers to items outside 0..{n - 1}")
    if content.thumbnails is not None and len(content.thumbnails) != n:
        raise VattError(f"index {name}: {len(content.thumbnails)} thumbnails for {n} items")
    if n == 0:
        raise VattError(f"index {name}: no items to index")
