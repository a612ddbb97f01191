"""``CheckpointManager``: one run folder's checkpoints, keeping the last few plus the best by a metric."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from vattcli.checkpoints.folder import (BEST, META, TMP_PREFIX, _best_record, _checked, _fsync, _latest, _steps,
                                        save_checkpoint)
from vattcli.errors import CheckpointError


def _remove(ckpt: Path) -> None:
    """Rename out of the ``ckpt-*`` namespace first, so a crash mid-delete never leaves a partial checkpoint."""
    trash = ckpt.with_name(f"{TMP_PREFIX}{ckpt.name[len('ckpt-'):]}-{os.getpid()}.old")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(ckpt, trash)
    shutil.rmtree(trash)


class CheckpointManager:
    """Saves checkpoints into one run folder, keeping the last ``keep_last`` plus the best by a metric.

    ``mode`` is ``"max"`` (higher metric is better) or ``"min"``. The best is recorded in ``best.json`` and never
    deleted; ``keep_last=None`` keeps everything. Incomplete folders are left alone.
    """

    def __init__(self, run_dir: str | os.PathLike[str], keep_last: int | None = 3, mode: str = "max") -> None:
        if keep_last is not None and keep_last < 1:
            raise CheckpointError(f"keep_last: expected at least 1 or None (keep all), got {keep_last}")
        if mode not in ("max", "min"):
            raise CheckpointError(f"checkpoint metric mode: expected 'max' or 'min', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.mode = mode

    def _is_better(self, metric: float) -> bool:
        if not math.isfinite(metric):
            return False
        record = _best_record(self.run_dir) if self.run_dir.is_dir() else None
        if record is None or record.get("metric") is None or not (self.run_dir / record["checkpoint"]).is_dir():
            return True
        return metric > record["metric"] if self.mode == "max" else metric < record["metric"]

    def _mark_best(self, ckpt: Path, step: int, metric: float) -> None:
        tmp = self.run_dir / f".{BEST}.{os.getpid()}"
        record = {"checkpoint": ckpt.name, "step": step, "metric": metric, "mode": self.mode}
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, self.run_dir / BEST)

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        record = _best_record(self.run_dir)
        best = record["checkpoint"] if record else None
        complete = [p for _, p in _steps(self.run_dir) if (p / META).is_file()]
        for ckpt in complete[self.keep_last:]:
            if ckpt.name != best:
                _remove(ckpt)

    def save(self, step: int, model: nn.Module, *, config: str | Mapping | None = None,
             tokenizer: str | os.PathLike[str] | None = None, train_state: Mapping[str, Any] | None = None,
             metrics: Mapping[str, Any] | None = None, metric: float | None = None) -> Path:
        """``save_checkpoint``, then update ``best.json`` when ``metric`` beats the best so far, then prune."""
        ckpt = save_checkpoint(self.run_dir, step, model, config=config, tokenizer=tokenizer,
                               train_state=train_state, metrics=metrics)
        if metric is not None and self._is_better(float(metric)):
            self._mark_best(ckpt, step, float(metric))
        self._prune()
        return ckpt

    def latest(self, *, verify: bool = False) -> Path | None:
        """Newest complete checkpoint, or None when the run has none yet (a fresh start)."""
        return _latest(self.run_dir, verify)

    def best(self) -> Path | None:
        """The checkpoint ``best.json`` names, or None when no metric was given yet."""
        record = _best_record(self.run_dir) if self.run_dir.is_dir() else None
        return None if record is None else _checked(self.run_dir / record["checkpoint"], False)
