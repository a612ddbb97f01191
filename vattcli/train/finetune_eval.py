"""Evaluating a fine-tuned classifier checkpoint (``vatt evaluate TASK --ckpt RUN``) with the protocol of its task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vattcli.config import from_dict
from vattcli.checkpoints import load_weights, read_config, weights_hash
from vattcli.train.config import FinetuneConfig
from vattcli.train.finetune import build_classifier, evaluate_classifier, task_classes


def evaluate_finetuned(folder: Path, data: str | None, *, device: str = "cpu", num_workers: int = 0,
                       console: Console | None = None) -> dict[str, Any]:
    cfg = from_dict(FinetuneConfig, read_config(folder), source=str(folder / "config.yaml"))
    if data:
        cfg.data.val = data
        cfg.data.train = {cfg.task: data}
    cfg.data.num_workers = num_workers
    classes = task_classes(cfg)
    model = build_classifier(cfg, len(classes), ckpt=None)
    load_weights(model, folder)
    model.to(torch.device(device))
    result = evaluate_classifier(model, cfg, len(classes), torch.device(device), console)
    return {"task": cfg.task, **result, "checkpoint": str(folder), "weights_hash": weights_hash(folder)}
