"""Training state stored with a checkpoint: RNG states and ``train_state.pt`` (optimizer, scheduler, step, data
position), restricted to the types ``torch.load(weights_only=True)`` accepts, so loading never unpickles code."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
import os
from typing import Any, Mapping

import numpy as np
import torch

from vattcli.errors import CheckpointError

TRAIN_STATE = "train_state.pt"


def capture_rng() -> dict:
    """RNG states of python ``random``, numpy's global generator, torch CPU and (when present) every CUDA device,
    as types ``torch.load(weights_only=True)`` accepts (numpy's key array becomes an int64 tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Undo ``capture_rng``. CUDA states are restored for the devices both runs have."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


_PLAIN = (str, bytes, int, float, bool, type(None), torch.dtype, torch.device)


def check_plain(obj: Any, where: str) -> None:
    """Refuse, before writing, anything ``torch.load(weights_only=True)`` would refuse on resume."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            check_plain(key, f"{where} key {key!r}")
            check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple, torch.Size):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    else:
        raise CheckpointError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot go into "
                              f"{TRAIN_STATE} (loaded with weights_only=True); use tensors, dicts, lists or numbers")


def load_train_state(ckpt_dir: str | os.PathLike[str]) -> dict:
    """The checkpoint's ``train_state.pt`` (``step``, ``rng`` and what the trainer stored), loaded weights-only."""
    path = Path(ckpt_dir) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state in this checkpoint (saved without one?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise CheckpointError(f"{path}: cannot load training state ({type(e).__name__})") from e
