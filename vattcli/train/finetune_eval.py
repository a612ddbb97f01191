"""Evaluating a fine-tuned classifier checkpoint (``vatt evaluate TASK --ckpt RUN``) with the protocol of its task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vattcli.config import from_dict
from vattcli.errors import ConfigError
from vattcli.checkpoints import LABELS, load_weights, read_config, weights_hash
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
    check_label_order(folder, classes, cfg.data.val or cfg.task)
    model = build_classifier(cfg, len(classes), ckpt=None)
    load_weights(model, folder)
    model.to(torch.device(device))
    result = evaluate_classifier(model, cfg, len(classes), torch.device(device), console)
    return {"task": cfg.task, **result, "checkpoint": str(folder), "weights_hash": weights_hash(folder)}


def _plain(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def check_label_order(folder: Path, classes: list[str], data: str) -> None:
    """A checkpoint that stores its class names (``labels.txt``, ``vatt convert --labels``) is evaluated only on shards
    that number the classes the same way: class i of the head must be class i of the data. Names are compared
    ignoring case, underscores and repeated spaces ("air_drumming" = "air drumming")."""
    path = folder / LABELS
    if not path.is_file():
        return
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(classes):
        raise ConfigError(f"{data}: {len(classes)} classes, but {path} names {len(names)}")
    for i, (mine, theirs) in enumerate(zip(names, classes)):
        if _plain(mine) != _plain(theirs):
            raise ConfigError(f"{data}: class {i} is {theirs!r}, but {path} says {mine!r}; the shards number classes "
                              "in another order than the checkpoint")

