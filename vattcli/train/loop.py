"""One training loop for every task: device and precision, accumulation, clipping, non-finite guards, logging,
checkpoints, resume and clean stops on SIGTERM/SIGINT.

A task gives a ``step_fn(model, batch) -> {"loss": tensor, other scalar parts}`` and a loader with
``state_dict``/``load_state_dict``. On CUDA the loop uses bf16 autocast, fused optimisers (``build_optimizer``),
non-blocking copies from pinned memory with the next batch already requested from the workers, and optionally
``torch.compile`` and the other throughput switches of ``TrainConfig`` (``train.speed``); on CPU it runs in fp32.
A preempted job saves a checkpoint at the end of the step it is in, so at most that step is lost, and
``--resume latest`` continues bit for bit on CPU (weights, optimiser, RNG, data position).
On several processes a checkpoint holds every rank's RNG state and data position, and the main rank alone writes
it; a resume needs the same number of processes. The run folder's policy (one writer, what a resume starts from) is
in ``run_folder``.
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

from vattcli.checkpoints import CheckpointManager, capture_rng, load_train_state, load_weights, restore_rng
from vattcli.data.pipeline import finish_batch
from vattcli.errors import CheckpointError, VattError
from vattcli.progress import duration
from vattcli.train.config import OptimConfig, TrainConfig
from vattcli.train.distributed import (DistInfo, all_reduce_mean, from_main, gather_objects, max_over_ranks,
                                       on_every_rank, unwrap)
from vattcli.train.optim import build_optimizer, learning_rate, set_lr
from vattcli.train.run_folder import resume_point, trim_metrics
from vattcli.train.speed import apply_model_switches, attention_context, check_switches, compile_step

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
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            log.warning("second SIGINT: stopping at once, without a checkpoint of this step")
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("received %s: saving a checkpoint at the end of this step", self.signal_name)

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, nothing to restore
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class PlainProgress:
    """Progress as plain lines for logs and pipes (design.md, Progress): the first step, then at most one line
    every ``every_s`` seconds, with step/total, the last loss, the rate and the ETA. The rate is measured from the
    first step on, so the start-up (data workers, first batch) does not inflate the ETA after the first line."""

    def __init__(self, console: Console, total: int, start_step: int, every_s: float = 10.0) -> None:
        self.console, self.total, self.every_s = console, total, every_s
        self.origin = (start_step, time.monotonic())
        self.last: float | None = None

    def update(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every_s:
            return
        rate = (step - self.origin[0]) / max(now - self.origin[1], 1e-9)
        if self.last is None:
            self.origin = (step, now)
        self.last = now
        eta = (self.total - step) / rate if rate > 0 else math.inf
        self.console.print(f"step {step}/{self.total} ({step / max(self.total, 1):.0%})  loss {loss:.4g}  "
                           f"{rate:.3g} steps/s  ETA {duration(eta)}", markup=False, highlight=False, soft_wrap=True)


class Trainer:
    """Runs ``steps`` optimiser steps of ``step_fn`` over ``loader`` and keeps the run folder up to date."""

    def __init__(self, *, model: nn.Module, step_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
                 loader: Any, train: TrainConfig, optim: OptimConfig, info: DistInfo, config_yaml: str,
                 tokenizer: Path | None = None, flops_per_sample: float = 0.0, global_batch: int = 1,
                 clip_params: Iterable[nn.Parameter] | None = None, console: Console | None = None,
                 on_checkpoint: Callable[[int], dict[str, float]] | None = None, compile_whole_step: bool = False,
                 ) -> None:
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
        check_switches(train, info.device)
        apply_model_switches(unwrap(model), train)
        self.run_step = compile_step(step_fn, model, train, info, whole=compile_whole_step)
        peak = train.peak_tflops * 1e12 if train.peak_tflops else (
            H100_BF16_PEAK if info.device.type == "cuda" else None)
        self.peak = peak * info.world_size if peak else None
        self.tensorboard = _tensorboard(self.run_dir) if info.is_main else None

    # ----------------------------------------------------------------------------------------- state
    def resume(self, spec: str, *, verify: bool = True) -> None:
        """Load weights, optimiser, RNG and data position from a checkpoint ('latest', 'best', 'auto' or a folder:
        ``run_folder.resume_point``; 'auto' without a checkpoint starts afresh). The main rank picks the checkpoint
        and verifies its weights hash unless ``verify`` is off; every rank loads that one, and an error on any rank
        stops them all. The metrics of steps after it (a lost attempt's) are dropped, since they are trained again."""
        ckpt = from_main(lambda: resume_point(spec, self.run_dir, verify=verify), self.info)
        if ckpt is not None:
            on_every_rank(lambda: self._load(ckpt), self.info)
        if self.info.is_main:
            trim_metrics(self.run_dir, self.step)
            self.console.print(f"resumed from {ckpt} at step {self.step}" if ckpt is not None else
                               f"--resume {spec}: no checkpoint in {self.run_dir} yet, starting afresh")

    def _load(self, ckpt: Path) -> None:
        """This rank's part of ``ckpt``: its RNG states and data position (each rank's own), the shared weights and
        optimiser. Refused when the checkpoint was written by another number of processes: each one's data stream
        is a function of (rank, world size) [data.reader], so its position cannot be carried over to another split,
        nor its random state to another rank (a torchrun ``--nnodes MIN:MAX`` restart on fewer nodes lands here)."""
        state = load_train_state(ckpt)
        saved = state.get("world_size", self.info.world_size)  # absent from checkpoints older than the check
        if saved != self.info.world_size:
            raise CheckpointError(f"{ckpt}: written by {saved} training processes, this run has "
                                  f"{self.info.world_size}; resume it with {saved} (the data position and random "
                                  "state are per process)")
        load_weights(unwrap(self.model), ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        if "data" in state and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["data"])
        self.step = int(state["step"])
        restore_rng(state.get("rng_ranks", {}).get(str(self.info.rank), state["rng"]))

    def save(self, metrics: dict[str, float] | None = None) -> Path | None:
        """A checkpoint of this step, written by the main rank with every rank's data position and RNG states."""
        data_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}
        metric = None
        if self.on_checkpoint is not None:
            metrics = {**(metrics or {}), **self.on_checkpoint(self.step)}
            metric = metrics.get("val_metric")
        ranks = gather_objects((data_state, capture_rng()), self.info)
        if not self.info.is_main:
            return None
        state = {"optimizer": self.optimizer.state_dict(), "data": _merge_loader_states([d for d, _ in ranks]),
                 "rng": ranks[0][1], "rng_ranks": {str(r): rng for r, (_, rng) in enumerate(ranks)},
                 "world_size": self.info.world_size, "step": self.step}
        ckpt = self.manager.save(self.step, unwrap(self.model), config=self.config_yaml, tokenizer=self.tokenizer,
                                 train_state=state, metrics=metrics or {}, metric=metric)
        if not ckpt.is_dir():  # keep-last kept later steps of another run: never report a deleted checkpoint
            raise TrainingError(f"{ckpt}: deleted by keep-last cleanup right after saving, because {self.run_dir} "
                                "holds later checkpoints of another run; use a fresh train.run_dir or --overwrite")
        return ckpt

    # ------------------------------------------------------------------------------------------ loop
    def _agreed_stop(self, stop: StopRequest) -> str:
        """The signal that stops every rank at the end of this step, or '' to go on. Each rank gets its SIGTERM at
        its own point of a step (from Slurm, or torchrun's agent), so the ranks vote: a rank stopping alone would
        gather its checkpoint while the others wait in the next step's collectives."""
        signum = signal.Signals[stop.signal_name].value if stop.requested else 0
        signum = max_over_ranks(signum, self.info)
        return signal.Signals(signum).name if signum else ""

    def _update(self, batch: Any) -> dict[str, float] | None:
        """Forward/backward over micro-batches and one optimiser step; None when the loss was not finite."""
        micro = _split(batch, self.cfg.grad_accum)
        totals: dict[str, torch.Tensor] = {}
        for i, part in enumerate(micro):
            sync = contextlib.nullcontext()
            if i < len(micro) - 1 and hasattr(self.model, "no_sync"):
                sync = self.model.no_sync()
            with sync, attention_context(self.cfg.attention_backend):
                with torch.autocast(self.info.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    out = self.run_step(self.model, part)
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

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns the last logged losses and why it stopped ("finished", or the signal's
        name, "SIGINT"/"SIGTERM", after saving a checkpoint of the last step)."""
        total = self.cfg.steps
        self.model.train()
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        stats, last = StepStats(), {}
        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), console=self.console,
                            disable=not (self.info.is_main and self.console.is_terminal))
        log_path = self.run_dir / "metrics.jsonl"
        stopped = "finished"
        plain = PlainProgress(self.console, total, self.step) if self.info.is_main and progress.disable else None
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
                if plain is not None:
                    plain.update(self.step, values["loss"])
                if self.info.is_main and (self.step % self.cfg.log_every == 0 or self.step == total):
                    self._log(stats, lr, progress, task, log_file)
                    stats = StepStats()
                signal_name = self._agreed_stop(stop)
                if signal_name:
                    stopped = signal_name
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


def _merge_loader_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Every rank's loader state in one (each holds its own entry under ``ranks``)."""
    merged = dict(states[0])
    if "ranks" in merged:
        merged["ranks"] = {k: v for s in states for k, v in s.get("ranks", {}).items()}
    return merged
