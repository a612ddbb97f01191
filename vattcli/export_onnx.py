"""ONNX towers: ``torch.onnx.export`` with free batch, clip and caption axes, checked against PyTorch in ONNX Runtime.

Positional tables are resampled with a spline matrix built in Python per size (``tokenizers.resample_table``), which a
trace would freeze at the export size; while tracing, ``_GraphPositions`` computes the same spline with graph
operations on the grid size (``tokenizers.spline_solve``), so one graph serves every clip and caption length.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vattcli.core.tokenizers import PositionalTables, spline_solve
from vattcli.errors import VattError

ONNX_OPSET = 17
# Input axes an ONNX tower leaves free (names as the graph gives them); text is (B, L): K captions go as B*K rows.
ONNX_AXES = {"video": {0: "batch", 2: "frames", 3: "height", 4: "width"}, "audio": {0: "batch", 1: "samples"},
             "text": {0: "batch", 1: "length"}}


class _TupleOutputs(nn.Module):
    """A tower whose outputs are a tuple in ``OUTPUTS`` order, as ``torch.onnx.export`` names them."""

    def __init__(self, tower: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.tower, self.keys = tower, keys

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.tower(x)
        return tuple(out[k] for k in self.keys)


def example_input(tower: str, shape: list[int], vocab_size: int, seed: int = 0) -> torch.Tensor:
    """A random input of ``shape``: signals uniform in [-1, 1]; text ids in [1, vocab) with the last quarter padded,
    so the padding mask is part of what is traced and checked."""
    gen = torch.Generator().manual_seed(seed)
    if tower != "text":
        return torch.rand(shape, generator=gen) * 2 - 1
    ids = torch.randint(1, vocab_size, shape, generator=gen)
    ids[..., shape[-1] - shape[-1] // 4:] = 0
    return ids


class _GraphPositions(nn.Module):
    """``PositionalTables`` (same tables, LayerNorm, dropout) whose spline resampling [``tokenizers.resample_table``,
    built in Python per size, which a trace would freeze] is graph operations on the grid size: the matrix is
    ``query(n) @ solve`` in float64, cast to the table's dtype, so one ONNX graph serves any clip or caption length."""

    def __init__(self, positions: PositionalTables) -> None:
        super().__init__()
        self.tables, self.norm, self.drop = positions.tables, positions.norm, positions.drop
        self.num_buckets = positions.num_buckets  # DropToken's count (identity in eval)
        for i, n in enumerate(positions.sizes):
            nodes = torch.arange(n, dtype=torch.float64) / n
            self.register_buffer(f"nodes{i}", nodes, persistent=False)
            self.register_buffer(f"solve{i}", spline_solve(n) if n > 1 else None, persistent=False)

    def _resample(self, i: int, n: Any) -> torch.Tensor:
        table, nodes, solve = self.tables[i], getattr(self, f"nodes{i}"), getattr(self, f"solve{i}")
        if solve is None:  # a one-row table: the spline is the constant [tokenizers._spline_matrix]
            return table.expand(n, -1)
        y = torch.arange(n, dtype=torch.float64, device=table.device) / n
        query = torch.cat([(y[:, None] - nodes[None, :]).abs() ** 3, torch.ones_like(y)[:, None], y[:, None]], 1)
        # At its own size PyTorch takes the table as it is, where the spline is the identity only up to the system's
        # conditioning (|solve| ~ 1e9 for 1200 buckets): so does the graph (Where wants one shape: pad, then cut).
        exact = F.pad(table, (0, 0, 0, n))[:n]
        return torch.where(torch.as_tensor(n == table.shape[0]), exact, (query @ solve).to(table) @ table)

    def forward(self, tokens: torch.Tensor, grid: tuple[Any, ...]) -> torch.Tensor:
        d, total = self.tables[0].shape[1], 0
        for axis, n in enumerate(grid):  # t-major, then h, then w, as PositionalTables.embedding
            shape = [1] * len(grid) + [d]
            shape[axis] = -1
            total = total + self._resample(axis, n).reshape(shape)
        return self.drop(tokens + self.norm(total.reshape(-1, d)))


@contextlib.contextmanager
def _graph_positions(backbone: nn.Module) -> Iterator[None]:
    """``backbone`` with ``_GraphPositions`` for its positional tables while tracing (the MS text backbone has none:
    T5's relative bias is computed from the length already)."""
    positions = getattr(backbone, "positions", None)
    backbone.positions = positions if positions is None else _GraphPositions(positions)
    try:
        yield
    finally:
        backbone.positions = positions


@torch.no_grad()
def export_onnx(module: nn.Module, tower: str, outputs: tuple[str, ...], shape: list[int], vocab_size: int,
                path: Path) -> float | None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: ``dynamic_axes`` and this model trace
    reliably with it), opset 17, the ``ONNX_AXES`` free; traced at batch 2, so no axis is specialised to size 1.
    Then, when onnxruntime is installed, ``_onnx_parity`` (refused above tolerance)."""
    wrapper = _TupleOutputs(module, outputs).eval()
    outputs = list(outputs)
    with _graph_positions(getattr(module, tower)), warnings.catch_warnings():
        # Warnings on Python-side checks that hold for every input (a patch fits, DropToken is off in eval) and on the
        # padding mask's reversed Slice; the parity check below, at other batch sizes, shows the graph generalises.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(wrapper, (example_input(tower, [2, *shape[1:]], vocab_size),), str(path),
                          input_names=[tower], output_names=outputs, opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={tower: ONNX_AXES[tower], **{name: {0: "batch"} for name in outputs}})
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    return _onnx_parity(path, wrapper, tower, [example_input(tower, [batch, *shape[1:]], vocab_size, seed=batch)
                                               for batch in (1, 3)])


def _onnx_parity(path: Path, wrapper: _TupleOutputs, tower: str, inputs: list[torch.Tensor]) -> float:
    """Largest |ONNX Runtime - PyTorch| over ``inputs``, ORT at its default graph optimisation; refused past 1e-4
    (+ 1e-3 relative)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        got = [torch.from_numpy(g) for g in session.run(None, {tower: x.numpy()})]
        for name, g, w in zip(wrapper.keys, got, wrapper(x)):
            if w.dtype == torch.bool:
                ok, diff = torch.equal(g.bool(), w), 0.0
            else:
                diff = float((g.double() - w.double()).abs().max()) if g.shape == w.shape else float("inf")
                ok = diff < float("inf") and torch.allclose(g.double(), w.double(), rtol=1e-3, atol=1e-4)
            if not ok:
                raise VattError(f"{path}: ONNX Runtime's {name} differs from PyTorch's at batch {x.shape[0]} (max "
                                f"abs diff {diff:.2e}); the export is not usable")
            worst = max(worst, diff)
    return worst
