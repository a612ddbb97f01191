"""Model weights in safetensors: every tensor once, shared modules restored, strict fit checks.

Aliases of shared modules (the VATT-MA encoder registered under ``video``/``audio``/``text``) are listed in the
safetensors metadata and restored on load. A tensor that does not fit is one clear error naming it, never a silent
partial load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vattcli.errors import CheckpointError

WEIGHTS = "model.safetensors"
ALIASES_KEY = "vatt_aliases"  # safetensors metadata: alias -> stored name (shared modules)
_MAX_LISTED = 8

Reshape = Callable[[str, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class LoadResult(NamedTuple):
    """What ``load_weights`` did besides plain copies (all empty after a strict load without a hook)."""

    missing: list[str]
    unexpected: list[str]
    reshaped: list[str]


# ---------------------------------------------------------------------------------------------- weights

def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameter names go into the file: DDP/DataParallel and ``torch.compile`` wrappers removed."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State-dict tensors stored once each, and ``alias -> stored name`` for names that are the same tensor.

    Persistent buffers (BatchNorm running statistics) are in the state dict and so are saved. Distinct views into one
    storage (not the same tensor) are cloned, since safetensors refuses overlapping storage.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in _unwrap(model).state_dict().items():
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.cpu().contiguous()
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in by_view:
            aliases[name] = by_view[view]
            continue
        by_view[view] = name
        tensors[name] = (t.clone() if ptr in storages else t).cpu().contiguous()
        storages.add(ptr)
    return tensors, aliases


def _write_weights(path: Path, model: nn.Module) -> None:
    """Write the safetensors file; a failed write is the ``OSError`` behind it (safetensors reports it as a
    ``SafetensorError`` that only names the errno in its text, "... (os error 28)")."""
    tensors, aliases = _unique_tensors(model)
    try:
        save_file(tensors, str(path), metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every name the saved model had, aliases pointing at their stored tensor."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    for alias, stored in aliases.items():
        tensors[alias] = tensors[stored]
    return tensors


def listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def load_weights(model: nn.Module, ckpt_dir: str | os.PathLike[str], *, strict: bool = True, prefix: str = "",
                 reshape: Reshape | None = None) -> LoadResult:
    """Copy a checkpoint's weights into ``model``, or refuse with one error naming every misfit.

    ``prefix="video."`` loads only the tensors under that prefix, stripped, so a backbone alone can take one tower of a
    pre-training checkpoint. ``strict=False`` tolerates missing and unexpected tensors but never a shape mismatch,
    unless ``reshape(name, saved, own)`` returns a tensor of the model's shape (the fine-tuning path resamples
    ``...positions.tables.N`` to a new grid this way); ``name`` is the model's name, the prefix already stripped.
    """
    path = Path(ckpt_dir) / WEIGHTS
    saved = _read_weights(path)
    if prefix:
        saved = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        if not saved:
            raise CheckpointError(f"{path}: no tensors under prefix {prefix!r}")
    target = _unwrap(model)
    own = target.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    mismatched, reshaped, source = [], [], {}
    for name in (k for k in own if k in saved):
        tensor = saved[name]
        if tensor.shape != own[name].shape:
            new = reshape(name, tensor, own[name]) if reshape is not None else None
            if new is None or new.shape != own[name].shape:
                got = "" if new is None else f", reshape hook gave {tuple(new.shape)}"
                mismatched.append(f"{name} (checkpoint {tuple(tensor.shape)}, model {tuple(own[name].shape)}{got})")
                continue
            tensor = new
            reshaped.append(name)
        source[name] = tensor
    problems = [f"shape mismatch: {listed(mismatched)}"] if mismatched else []
    if strict and missing:
        problems.append(f"missing from checkpoint: {listed(missing)}")
    if strict and unexpected:
        problems.append(f"not in model: {listed(unexpected)}")
    if problems:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(problems))
    target.load_state_dict(source, strict=False)
    return LoadResult(missing, unexpected, reshaped)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_HASHES: dict[tuple, str] = {}
_SETTLED_NS = 1_000_000_000


def weights_hash(ckpt_dir: str | os.PathLike[str]) -> str:
    """sha256 hex digest of ``model.safetensors``, read once per process while the file stays the same.

    One command finds, verifies, loads and records a checkpoint through several functions; the digest is kept by
    (path, device, inode, size, mtime, ctime), so the file is hashed once. As git does for racily clean files, a
    digest is kept only when the file had not changed for a second before hashing began: a later write then always
    moves its mtime/ctime, even on file systems whose clocks tick in milliseconds.
    """
    path = Path(ckpt_dir) / WEIGHTS
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _HASHES:
            return _HASHES[key]
        started = time.time_ns()
        digest = file_sha256(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights ({e.strerror})") from e
    if max(st.st_mtime_ns, st.st_ctime_ns) < started - _SETTLED_NS:
        _HASHES[key] = digest
    return digest
