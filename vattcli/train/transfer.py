"""Transfer from a pre-training checkpoint: which network to build, and how its tower's weights fit the new input.

Shared by full fine-tuning (``finetune``) and the linear probe (``probe_task``) [P §4.2, A.2.5].
"""

from __future__ import annotations

from dataclasses import replace

import torch
from rich.console import Console

from vattcli.checkpoints import find_checkpoint, read_config
from vattcli.config import from_dict
from vattcli.core.model import ModelConfig
from vattcli.core.tokenizers import resample_table
from vattcli.train.config import FinetuneConfig


def resample_positions(name: str, saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
    """Checkpoint-restore hook: spline-resample positional tables to the fine-tuning grid [C restore.py]."""
    if "positions.tables." in name and saved.dim() == 2 and saved.shape[1] == own.shape[1]:
        return resample_table(saved, own.shape[0])
    return None


def adopt_checkpoint_model(cfg: FinetuneConfig, console: Console) -> FinetuneConfig:
    """With ``ckpt``, the network is the checkpoint's (its sizes, vocabulary, MA or not); the recipe keeps the
    fine-tuning settings: DropToken rate, positional grid, audio buckets, dropout."""
    if not cfg.ckpt:
        return cfg
    folder = find_checkpoint(cfg.ckpt, verify=False)  # config.yaml only; the weights are verified where loaded
    stored = from_dict(ModelConfig, read_config(folder).get("model", {}), source=str(folder / "config.yaml"))
    model = replace(stored, droptoken_rate=cfg.model.droptoken_rate, video_grid=cfg.model.video_grid,
                    audio_buckets=cfg.model.audio_buckets, dropout=cfg.model.dropout)
    if stored.name != cfg.model.name:
        console.print(f"using the architecture of {folder} ({stored.name}) rather than the recipe's {cfg.model.name}")
    return replace(cfg, model=model)
