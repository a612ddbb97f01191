"""One training loop for every task: device and precision, accumulation, clipping, non-finite guards, logging,
checkpoints, resume and clean stops on SIGTERM/SIGINT.

A task gives a ``step_fn(model, batch) -> {"loss": tensor, other scalar parts}`` and a loader with
``state_dict``/``load_state_dict``. On CUDA the loop uses bf16 autocast, fused optimisers (``build_optimizer``),
non-blocking copies from pinned memory with the next batch already requested from the workers, and optionally
``torch.compile``; on CPU it runs in fp32. A preempted job saves a checkpoint at the end of the step it is in, so at
most that step is lost, and ``--resume latest`` continues bit for bit on CPU (weights, optimiser, RNG, data position).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from vattcli.checkpoints import (CheckpointManager, capture_rng, find_checkpoint, load_train_state, load_weights,
                                 restore_rng)
from vattcli.data.pipeline import finish_batch
from vattcli.errors import CheckpointError, VattError
from vattcli.train.config import OptimConfig, TrainConfig
from vattcli.train.distributed import DistInfo, all_reduce_mean, unwrap
from vattcli.train.optim import build_optimizer, learning_rate, set_lr

log = logging.getLogger(__name__)
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of H100/H200 (design.md)


class TrainingError(VattError):
    """Training cannot go on (e.g. the loss stayed non-finite for several steps)."""


@dataclass
class StepStats:
    """Running averages over the current logging interval."""

    parts: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    data_s: float = 0.0
    total_s: float = 0.0

    def add(self, parts: dict[str, float], data_s: float, total_s: float) -> None:
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        self.steps += 1
        self.data_s += data_s
        self.total_s += total_s

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.steps) for k, v in self.parts.items()}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _split(batch: Any, parts: int) -> list[Any]:
    """Micro-batches for gradient accumulation (tensors split along dim 0, everything else repeated)."""
    if parts == 1:
        return [batch]
    tensors = {k: v.chunk(parts) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    return [{k: (tensors[k][i] if k in tensors else v) for k, v in batch.items()} for i in range(parts)]


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the step and exits. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: saving a checkpoint at the end of this step", signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, nothing to restore
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs ``steps`` optimiser steps of ``step_fn`` over ``loader`` and keeps the run folder up to date."""

    def __init__(self, *, model: nn.Module, step_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
                 loader: Any, train: TrainConfig, optim: OptimConfig, info: DistInfo, config_yaml: str,
                 tokenizer: Path | None = None, flops_per_sample: float = 0.0, global_batch: int = 1,
                 clip_params: Iterable[nn.Parameter] | None = None, console: Console | None = None,
                 on_checkpoint: Callable[[int], dict[str, float]] | None = None) -> None:
        self.model, self.step_fn, self.loader, self.cfg, self.optim_cfg = model, step_fn, loader, train, optim
        self.info, self.config_yaml, self.tokenizer = info, config_yaml, tokenizer
        self.flops_per_sample, self.global_batch = flops_per_sample, global_batch
        self.run_dir = Path(train.run_dir)
        self.console = console or Console(stderr=True)
        self.optimizer = build_optimizer(optim, model.parameters(), info.device)
        self.clip_params = list(clip_params) if clip_params is not None else [p for p in model.parameters()]
        self.clip_params = [p for p in self.clip_params if p.requires_grad]
        self.manager = CheckpointManager(self.run_dir, keep_last=train.keep_last) if info.is_main else None
        self.on_checkpoint = on_checkpoint
        self.step = 0
        self.bad_steps = 0
        precision = train.precision if train.precision != "auto" else ("bf16" if info.device.type == "cuda" else "fp32")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.compiled = torch.compile(model) if train.compile else model
        peak = train.peak_tflops * 1e12 if train.peak_tflops else (
            H100_BF16_PEAK if info.device.type == "cuda" else None)
        self.peak = peak * info.world_size if peak else None
        self.tensorboard = _tensorboard(self.run_dir) if info.is_main else None

    # ----------------------------------------------------------------------------------------- state
    def resume(self, spec: str) -> None:
        """Load weights, optimiser, RNG and data position from a checkpoint ('latest', 'best' or a folder);
        'auto' resumes from the latest one if the run folder has one and starts afresh otherwise."""
        try:
            ckpt = find_checkpoint("latest" if spec == "auto" else spec, self.run_dir)
        except CheckpointError:
            if spec == "auto":
                return
            raise
        load_weights(unwrap(self.model), ckpt)
        state = load_train_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        if "data" in state and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["data"])
        self.step = int(state["step"])
        restore_rng(state["rng"])
        if self.info.is_main:
            self.console.print(f"resumed from {ckpt} at step {self.step}")

    def save(self, metrics: dict[str, float] | None = None) -> Path | None:
        data_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}
        if self.info.distributed:
            data_state = _gather_loader_states(data_state)
        metric = None
        if self.on_checkpoint is not None:
            metrics = {**(metrics or {}), **self.on_checkpoint(self.step)}
            metric = metrics.get("val_metric")
        if not self.info.is_main:
            return None
        state = {"optimizer": self.optimizer.state_dict(), "data": data_state, "rng": capture_rng(),
                 "step": self.step}
        return self.manager.save(self.step, unwrap(self.model), config=self.config_yaml, tokenizer=self.tokenizer,
                                 train_state=state, metrics=metrics or {}, metric=metric)

    # ------------------------------------------------------------------------------------------ loop
    def _update(self, batch: Any) -> dict[str, float] | None:
        """Forward/backward over micro-batches and one optimiser step; None when the loss was not finite."""
        micro = _split(batch, self.cfg.grad_accum)
        totals: dict[str, torch.Tensor] = {}
        for i, part in enumerate(micro):
            sync = contextlib.nullcontext()
            if i < len(micro) - 1 and hasattr(self.compiled, "no_sync"):
                sync = self.compiled.no_sync()
            with sync, torch.autocast(self.info.device.type, dtype=self.autocast_dtype,
                                      enabled=self.autocast_dtype is not None):
                out = self.step_fn(self.compiled, part)
            (out["loss"] / len(micro)).backward()
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro)
        values = {k: all_reduce_mean(float(v), self.info) for k, v in totals.items()}
        if not math.isfinite(values["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.optim_cfg.clip_norm:
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.clip_params, self.optim_cfg.clip_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return values

    def _log(self, stats: StepStats, lr: float, progress: Progress, task: Any, log_file: Any) -> None:
        step_s = stats.total_s / max(1, stats.steps)
        record = {"step": self.step, **stats.means(), "lr": lr, "samples_per_s": self.global_batch / step_s,
                  "data_wait": stats.data_s / max(stats.total_s, 1e-9), "time": time.time()}
        if self.peak and self.flops_per_sample:
            record["mfu"] = self.flops_per_sample * record["samples_per_s"] / self.peak
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if self.tensorboard is not None:
            for k, v in record.items():
                if k not in ("step", "time"):
                    self.tensorboard.add_scalar(k, v, self.step)
        parts = " ".join(f"{k} {v:.4f}" for k, v in stats.means().items())
        mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
        progress.update(task, completed=self.step, status=f"{parts} lr {lr:.2e} {record['samples_per_s']:.1f}/s"
                        f"{mfu} data {record['data_wait']:.0%}")
        if not progress.console.is_terminal:
            self.console.print(f"step {self.step}: {parts} lr {lr:.2e}", highlight=False)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns the last logged losses and why it stopped."""
        total = self.cfg.steps
        self.model.train()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stats, last = StepStats(), {}
        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), console=self.console,
                            disable=not (self.info.is_main and self.console.is_terminal))
        log_path = self.run_dir / "metrics.jsonl"
        stopped = "finished"
        with StopRequest() as stop, progress, \
                (open(log_path, "a", encoding="utf-8") if self.info.is_main else contextlib.nullcontext()) as log_file:
            task = progress.add_task("train", total=total, completed=self.step, status="")
            batches = iter(self.loader)
            while self.step < total:
                t0 = time.perf_counter()
                try:
                    batch = finish_batch(_to_device(next(batches), self.info.device))
                except StopIteration:
                    batches = iter(self.loader)
                    continue
                t_data = time.perf_counter() - t0
                lr = learning_rate(self.optim_cfg, self.step, total)
                set_lr(self.optimizer, lr)
                values = self._update(batch)
                self.step += 1
                if values is None:
                    self.bad_steps += 1
                    self.console.print(f"[yellow]warning:[/] step {self.step}: non-finite loss, update skipped "
                                       f"({self.bad_steps} in a row)")
                    if self.bad_steps >= self.cfg.max_bad_steps:
                        raise TrainingError(f"the loss was not finite for {self.bad_steps} steps in a row "
                                            f"(last at step {self.step}); lower optim.lr or check the data")
                    continue
                self.bad_steps = 0
                if self.info.device.type == "cuda":
                    torch.cuda.synchronize(self.info.device)
                stats.add(values, t_data, time.perf_counter() - t0)
                last = values
                if self.info.is_main and (self.step % self.cfg.log_every == 0 or self.step == total):
                    self._log(stats, lr, progress, task, log_file)
                    stats = StepStats()
                if stop.requested:
                    stopped = "signal"
                    break
                if self.step % self.cfg.ckpt_every == 0 and self.step < total:
                    self.save(last)
        ckpt = self.save(last)
        return {"step": self.step, "stopped": stopped, "losses": last, "checkpoint": str(ckpt) if ckpt else None}


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer under ``run_dir/tb`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _gather_loader_states(state: dict[str, Any]) -> dict[str, Any]:
    """Merge every rank's loader state (each holds its own entry under ``ranks``)."""
    import torch.distributed as dist

    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    merged = dict(states[0])
    if "ranks" in merged:
        merged["ranks"] = {k: v for s in states for k, v in s.get("ranks", {}).items()}
    return merged
