"""Shared timing for the benchmarks: seconds per call of ``step``, synchronising CUDA around the loop."""

from __future__ import annotations

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
