"""Shared pieces of the benchmarks: seconds per call of ``step`` (synchronising CUDA around the loop), and the result
printed as one JSON line and optionally written to a file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch


def timed(step: Callable[[], None], device: torch.device, iters: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def emit(result: dict, path: str | None) -> None:
    """Print ``result`` as one JSON line; also write it, indented, to ``path`` when given."""
    print(json.dumps(result))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
