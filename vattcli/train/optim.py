"""Optimisers and learning-rate schedules of the reference [P §4.1, A.2.5; C utils/train/optimizers.py, schedules.py]."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from vattcli.train.config import OptimConfig


def learning_rate(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then a half-cosine from ``lr`` to ``end_lr`` that
    reaches ``end_lr`` at ``total_steps`` [C StepwiseCosineDecayLearningRate: 1e-4 -> 5e-5 for pre-training;
    fine-tuning decays to 0]."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.end_lr + 0.5 * (cfg.lr - cfg.end_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """Adam (pre-training), SGD with momentum 0.9 (fine-tuning) or AdamW; fused kernels on CUDA."""
    params = [p for p in params if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
