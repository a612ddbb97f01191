"""Retrieval indexes: a folder of L2-normalised clip embeddings searched exactly (one matmul + top-k).

Layout of an index folder::

    embeddings.safetensors   "video_vt" (N, d_vt) and "video_va" (N, d_va), float32, unit rows
    items.jsonl              one line per row: key, source, start, end, caption and/or label
    index.json               format version, created, num_items, checkpoint, weights_hash, tokenizer_sha256,
                             model_name, dims

The two spaces are the ones the official evaluation compares: text queries against ``video_vt`` (S_vt) and
video/audio queries against ``video_va`` (S_va) [P §3.3; C experiments/pretrain.py; reference §4].

Where indexes live: a bare name (``--index toy``) is ``$VATT_HOME/indexes/<name>``, with ``VATT_HOME`` defaulting
to ``~/.vatt``; anything that looks like a path (contains a slash, starts with ``.`` or ``~``, or is an existing
folder) is used as a path. An index records the weights hash of the checkpoint that built it, and queries refuse any
other checkpoint: embeddings from two different networks are not comparable.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vattcli.errors import VattError

FORMAT = "vatt-index"
FORMAT_VERSION = 1
EMBEDDINGS = "embeddings.safetensors"
ITEMS = "items.jsonl"
INFO = "index.json"
SPACES = {"vt": "video_vt", "va": "video_va"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TMP_PREFIX = ".tmp-index-"


class IndexFormatError(VattError):
    """An index folder that is missing, incomplete or inconsistent."""


class SearchHit(NamedTuple):
    rank: int  # 1-based
    score: float  # cosine similarity
    item: dict[str, Any]


def index_home() -> Path:
    """``$VATT_HOME/indexes`` (``VATT_HOME`` defaults to ``~/.vatt``), read at call time."""
    return Path(os.environ.get("VATT_HOME") or "~/.vatt").expanduser() / "indexes"


def list_indexes(home: Path | None = None) -> list[str]:
    """Names of the complete indexes under ``home`` (default ``index_home()``)."""
    home = index_home() if home is None else Path(home)
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if p.is_dir() and (p / INFO).is_file())


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def resolve_index(name_or_path: str | os.PathLike[str], home: Path | None = None) -> Path:
    """The folder an index name or path stands for (it need not exist yet)."""
    text = os.fspath(name_or_path)
    if _looks_like_path(text) or Path(text).is_dir():
        return Path(text).expanduser()
    if not _NAME_RE.fullmatch(text):
        raise VattError(f"index name {text!r}: expected letters, digits, '.', '_' or '-' (or a folder path)")
    return (index_home() if home is None else Path(home)) / text


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse to build over an existing index (or any existing path) unless ``overwrite``."""
    if folder.exists() and not overwrite:
        raise VattError(f"{folder}: an index (or other file) already exists there; pass --overwrite to replace it")
    if folder.exists() and not (folder / INFO).is_file() and any(folder.iterdir()):
        raise VattError(f"{folder}: exists and is not a retrieval index; refusing to replace it")


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


def _unit_rows(matrix: torch.Tensor, name: str) -> torch.Tensor:
    matrix = torch.as_tensor(matrix).detach().to("cpu", torch.float32)
    if matrix.dim() != 2 or matrix.shape[0] == 0:
        raise VattError(f"index {name}: expected a non-empty (N, d) matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise VattError(f"index {name}: embeddings contain NaN or infinite values")
    return F.normalize(matrix, dim=1).contiguous()


class RetrievalIndex:
    """Exact cosine-similarity search over one model's clip embeddings (see the module docstring)."""

    def __init__(self, folder: Path, info: dict[str, Any], video_vt: torch.Tensor, video_va: torch.Tensor,
                 items: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.info = info
        self.matrices = {"vt": video_vt.contiguous(), "va": video_va.contiguous()}
        self.items = items

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def weights_hash(self) -> str:
        return self.info["weights_hash"]

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.info.get("tokenizer_sha256")

    @property
    def checkpoint(self) -> Path:
        return Path(self.info["checkpoint"])

    def __len__(self) -> int:
        return len(self.items)

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def build(cls, folder: str | os.PathLike[str], embeddings: Any, *, ckpt: str | os.PathLike[str],
              tokenizer_sha256: str | None, model_name: str, overwrite: bool = False,
              verify: bool = True) -> "RetrievalIndex":
        """Write an index from ``embeddings`` (an ``Embeddings``: ``video_vt``, ``video_va``, ``meta``) into
        ``folder`` atomically: everything goes into a temporary sibling folder that is renamed when complete.
        ``verify``: check ``ckpt``'s weights against their recorded sha256 (hashed once per process)."""
        from vattcli.checkpoints import find_checkpoint, weights_hash

        folder = Path(folder).expanduser()
        ckpt = find_checkpoint(ckpt, verify=verify)
        check_target(folder, overwrite)
        vt, va = _unit_rows(embeddings.video_vt, "video_vt"), _unit_rows(embeddings.video_va, "video_va")
        meta = list(embeddings.meta)
        if not (len(meta) == vt.shape[0] == va.shape[0]):
            raise VattError(f"index {folder.name}: {vt.shape[0]} video_vt rows, {va.shape[0]} video_va rows and "
                            f"{len(meta)} metadata entries; expected one of each per clip")
        info = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "num_items": len(meta), "checkpoint": str(Path(ckpt).resolve()), "weights_hash": weights_hash(ckpt),
                "tokenizer_sha256": tokenizer_sha256, "model_name": model_name,
                "dims": {"vt": vt.shape[1], "va": va.shape[1]}}
        items = [item_from_meta(m) for m in meta]
        _write_atomically(folder, info, {"video_vt": vt, "video_va": va}, items)
        return cls(folder, info, vt, va, items)

    # ---------------------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str], *, home: Path | None = None) -> "RetrievalIndex":
        """Open an index by name (under ``home``, default ``index_home()``) or by folder path."""
        folder = resolve_index(name_or_path, home)
        if not (folder / INFO).is_file():
            raise IndexFormatError(_missing_message(os.fspath(name_or_path), folder, home))
        info = _read_info(folder / INFO)
        try:
            tensors = load_file(str(folder / EMBEDDINGS))
        except (SafetensorError, OSError) as e:
            raise IndexFormatError(f"{folder / EMBEDDINGS}: not a readable safetensors file ({e})") from e
        items = _read_items(folder / ITEMS)
        for space, key in SPACES.items():
            got = tuple(tensors[key].shape) if key in tensors else None
            want = (info["num_items"], info["dims"][space])
            if got != want:
                raise IndexFormatError(f"{folder / EMBEDDINGS}: tensor {key!r} has shape {got}, index.json says {want}")
        if len(items) != info["num_items"]:
            raise IndexFormatError(f"{folder / ITEMS}: {len(items)} lines, index.json says {info['num_items']} items")
        return cls(folder, info, tensors["video_vt"].float().contiguous(), tensors["video_va"].float().contiguous(),
                   items)

    # ---------------------------------------------------------------------------------------------- querying

    def check_checkpoint(self, ckpt: str | os.PathLike[str], *, verify: bool = True) -> None:
        """Refuse a checkpoint whose weights differ from those that built this index (``verify``: and from its own
        ``meta.json``)."""
        from vattcli.checkpoints import find_checkpoint, weights_hash

        folder = find_checkpoint(ckpt, verify=verify)
        found = weights_hash(folder)
        if found != self.weights_hash:
            raise VattError(f"{folder}: weights hash {found} differs from {self.weights_hash}, the checkpoint that "
                            f"built index {self.name!r}; use that checkpoint or rebuild the index with --build")

    def search(self, query: torch.Tensor | Sequence[float], space: str = "vt",
               top_k: int = 10) -> list[SearchHit] | list[list[SearchHit]]:
        """The ``top_k`` items most cosine-similar to ``query`` in ``space`` ("vt" or "va"), best first.

        ``query`` is one vector (d,) -> a list of hits, or a batch (Q, d) -> one list per query. Exact: the scores
        of every item are computed (a single (Q, d) x (d, N) matmul) and the top-k taken."""
        if space not in SPACES:
            raise VattError(f"search space {space!r}: expected one of {', '.join(SPACES)}")
        if top_k < 1:
            raise VattError(f"top_k: expected at least 1, got {top_k}")
        matrix = self.matrices[space]
        q = torch.as_tensor(query).detach().to("cpu", torch.float32)
        single = q.dim() == 1
        q = q.reshape(1, -1) if single else q
        if q.dim() != 2 or q.shape[1] != matrix.shape[1]:
            raise VattError(f"query of shape {tuple(torch.as_tensor(query).shape)} does not fit index {self.name!r} "
                            f"(space {space}: {matrix.shape[1]}-d)")
        if not torch.isfinite(q).all():
            raise VattError("query embedding contains NaN or infinite values")
        scores = torch.mm(F.normalize(q, dim=1), matrix.t())
        values, indices = scores.topk(min(top_k, matrix.shape[0]), dim=1)
        hits = [self._hits(vals.tolist(), idx.tolist()) for vals, idx in zip(values, indices)]
        return hits[0] if single else hits

    def _hits(self, scores: list[float], rows: list[int]) -> list[SearchHit]:
        return [SearchHit(rank, score, dict(self.items[row])) for rank, (score, row) in enumerate(zip(scores, rows), 1)]


def _missing_message(given: str, folder: Path, home: Path | None) -> str:
    if _looks_like_path(given) or folder.exists():
        return f"{folder}: not a retrieval index (no {INFO})"
    home = index_home() if home is None else Path(home)
    names = list_indexes(home)
    available = ", ".join(names) or "none (build one: vatt retrieve --build NAME --data SHARDS --ckpt CKPT)"
    return f"index {given!r} not found in {home}; available: {available}"


def _read_info(path: Path) -> dict[str, Any]:
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
    if missing or not all(isinstance(info["dims"].get(s), int) for s in SPACES):
        raise IndexFormatError(f"{path}: fields missing or malformed: {', '.join(missing) or 'dims'}")
    return info


def _read_items(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise IndexFormatError(f"{path}: cannot read item list ({e.strerror})") from e
    items = []
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except ValueError as e:
            raise IndexFormatError(f"{path}:{number}: not a JSON object ({e})") from e
        if not isinstance(item, dict):
            raise IndexFormatError(f"{path}:{number}: expected a JSON object per line")
        items.append(item)
    return items


def _write_atomically(folder: Path, info: dict[str, Any], tensors: dict[str, torch.Tensor],
                      items: list[dict[str, Any]]) -> None:
    """Write into ``.tmp-index-<name>-<pid>`` next to ``folder``, then swap it in (the old index, if any, is
    renamed aside first and removed last, so ``folder`` is never half written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{_TMP_PREFIX}{folder.name}-{os.getpid()}")
    trash = tmp.with_name(tmp.name + ".old")
    for stale in (tmp, trash):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / EMBEDDINGS), metadata={"format": FORMAT})
        with open(tmp / ITEMS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _swap_in(tmp, folder, trash)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


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
