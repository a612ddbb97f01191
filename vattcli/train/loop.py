"""One training loop for every task: device and precision, accumulation, clipping, non-finite guards, logging,
checkpoints, resume and clean stops on SIGTERM/SIGINT.

A task gives a ``step_fn(model, batch) -> {"loss": tensor, other scalar parts}`` and a loader with
``state_dict``/``load_state_dict``. On CUDA the loop uses bf16 autocast, fused optimisers (``build_optimizer``),
non-blocking copies from pinned memory with the next batch already requested from the workers, and optionally
``torch.compile``; on CPU it runs in fp32. A preempted job saves a checkpoint at the end of the step it is in, so at
most that step is lost, and ``--resume latest`` continues bit for bit on CPU (weights, optimiser, RNG, data position).
One writer per run folder (design.md, Checkpoints): ``claim_run_dir`` holds its lock for the whole run and refuses
to mix a fresh start with an earlier run's checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
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

from vattcli.checkpoints import (TMP_PREFIX, CheckpointManager, capture_rng, find_checkpoint, load_train_state,
                                 load_weights, read_meta, restore_rng)
from vattcli.data.pipeline import finish_batch
from vattcli.errors import CheckpointError, ConfigError, VattError
from vattcli.locking import FolderLock
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


def _duration(seconds: float) -> str:
    """``215`` -> ``3m35s``; ``4000`` -> ``1h06m``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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
                           f"{rate:.3g} steps/s  ETA {_duration(eta)}", markup=False, highlight=False, soft_wrap=True)


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
    def resume(self, spec: str, *, verify: bool = True) -> None:
        """Load weights, optimiser, RNG and data position from a checkpoint ('latest', 'best' or a folder);
        'auto' resumes from the latest one if the run folder has one and starts afresh otherwise. ``verify`` checks
        the weights hash first (``--no-verify`` skips it): a corrupted checkpoint is an error, never a fresh start."""
        if spec == "auto":
            if CheckpointManager(self.run_dir, keep_last=None).latest() is None:
                return
            spec = "latest"
        ckpt = find_checkpoint(spec, self.run_dir, verify=verify)
        self._refuse_later_checkpoints(ckpt)
        load_weights(unwrap(self.model), ckpt)
        state = load_train_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        if "data" in state and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["data"])
        self.step = int(state["step"])
        restore_rng(state["rng"])
        if self.info.is_main:
            self.console.print(f"resumed from {ckpt} at step {self.step}")

    def _refuse_later_checkpoints(self, ckpt: Path) -> None:
        """Resuming from an earlier step than the run folder's latest would interleave two histories, and keep-last
        (which keeps the highest steps) would then delete this run's new checkpoints in favour of the old ones."""
        newest = CheckpointManager(self.run_dir, keep_last=None).latest()
        step = int(read_meta(ckpt)["step"])
        if newest is not None and int(read_meta(newest)["step"]) > step:
            raise CheckpointError(f"{self.run_dir}: holds {newest.name}, later than {ckpt} (step {step}) to resume "
                                  "from; resume into another train.run_dir, or move the later checkpoints away")

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
        ckpt = self.manager.save(self.step, unwrap(self.model), config=self.config_yaml, tokenizer=self.tokenizer,
                                 train_state=state, metrics=metrics or {}, metric=metric)
        if not ckpt.is_dir():  # keep-last kept later steps of another run: never report a deleted checkpoint
            raise TrainingError(f"{ckpt}: deleted by keep-last cleanup right after saving, because {self.run_dir} "
                                "holds later checkpoints of another run; use a fresh train.run_dir or --overwrite")
        return ckpt

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

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns the last logged losses and why it stopped ("finished", or the signal's
        name, "SIGINT"/"SIGTERM", after saving a checkpoint of the last step)."""
        total = self.cfg.steps
        self.model.train()
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
                if stop.requested:
                    stopped = stop.signal_name
                    break
                if self.step % self.cfg.ckpt_every == 0 and self.step < total:
                    self.save(last)
        ckpt = self.save(last)
        return {"step": self.step, "stopped": stopped, "losses": last, "checkpoint": str(ckpt) if ckpt else None}


RUN_FILES = ("best.json", "metrics.jsonl", "eval.json", "config.yaml")  # what a run writes beside its checkpoints


def clear_run(run: Path) -> None:
    """``--overwrite``: delete an earlier run's checkpoints and records (only what a run writes; nothing else).
    Called once the new run is set up, so a run that fails to start leaves the old one intact. Each checkpoint is
    first renamed out of the ``ckpt-*`` namespace, so an interrupted clean-up never leaves a half-deleted folder
    that looks like a checkpoint (the next save removes such leftovers)."""
    for ckpt in run.glob("ckpt-*"):
        trash = run / f"{TMP_PREFIX}{ckpt.name[len('ckpt-'):]}-{os.getpid()}.old"
        os.replace(ckpt, trash)
        shutil.rmtree(trash)
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "tb", ignore_errors=True)


def _check_run_dir(run: Path, resume: str | None, overwrite: bool) -> None:
    """A folder holding checkpoints is continued (``--resume``) or replaced (``--overwrite``), never mixed into."""
    if resume or overwrite or not any(run.glob("ckpt-*")):
        return
    latest = CheckpointManager(run, keep_last=None).latest()
    last = f"latest step {read_meta(latest)['step']}" if latest is not None else "none of them complete"
    raise CheckpointError(f"{run}: already holds checkpoints of a run ({last}); add --resume latest to continue "
                          "it, or --overwrite to delete them and start afresh")


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, info: DistInfo, *, resume: str | None = None, overwrite: bool = False):
    """Hold the run folder's lock (main rank) for the whole run, after checking what it holds: one writer per run
    folder (design.md). On several ranks the main rank's verdict is broadcast, so every rank stops with one error."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the run, or delete it and start afresh)")
    run = Path(run_dir)
    existed = run.exists()
    lock = FolderLock(run, "training run") if info.is_main else None
    failure: VattError | None = None
    if lock is not None:
        try:
            lock.acquire()
            _check_run_dir(run, resume, overwrite)
        except VattError as e:
            lock.release()  # a no-op when the lock was not taken
            failure = e
    if info.distributed:
        import torch.distributed as dist

        box = [failure]
        dist.broadcast_object_list(box, src=0)
        failure = box[0]
    if failure is not None:
        raise failure
    try:
        yield run
    finally:
        if lock is not None:
            lock.release()
            if not existed and run.is_dir() and not any(run.iterdir()):
                run.rmdir()  # a run that wrote nothing leaves no empty folder behind


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
