"""Embedding whole evaluation sets: every clip of a shard folder through a model, views averaged.

Zero-shot retrieval embeds each video as the mean of ``eval_windows`` (4) uniformly spaced centre-cropped clips, then
L2-normalises it [P A.3.3; C experiments/pretrain.py]; captions are embedded once each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.utils.data import DataLoader
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vattcli.core.model import VATT
from vattcli.data.pipeline import ClipSpec, EvalViewsDecoder
from vattcli.data.reader import ShardDataset, iter_loader
from vattcli.data.folders import shard_folder, shard_urls


@dataclass
class Embeddings:
    """Per clip: L2-normalised ``video_vt`` (N, d_vt) and ``video_va`` (N, d_va), ``text_vt`` (N, d_vt) of the first
    caption (zeros and ``has_text`` False where a clip has none), and the clip's metadata."""

    video_vt: torch.Tensor
    video_va: torch.Tensor
    text_vt: torch.Tensor
    has_text: torch.Tensor
    meta: list[dict[str, Any]] = field(default_factory=list)


def progress_bar(console: Console, label: str) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, disable=not console.is_terminal)


@torch.no_grad()
def embed_clips(model: VATT, data: str | Path, spec: ClipSpec, tokenizer: Any, *, split: str | None = None,
                device: torch.device | str = "cpu", limit: int | None = None, num_workers: int = 0,
                console: Console | None = None) -> Embeddings:
    """Embed every clip of the shard folder ``data`` (evaluation order, no shuffling)."""
    from vattcli.data.shards import read_manifest

    console = console or Console(stderr=True)
    device = torch.device(device)
    model.eval()
    folder = shard_folder(data, split)
    total = read_manifest(folder)["counts"]["written"]
    urls = shard_urls(folder, allow_incomplete=True)  # a partial set shows as the pool size in every report
    dataset = ShardDataset(urls, decode=EvalViewsDecoder(spec, tokenizer, crops=1), epochs=1, rank=0, world_size=1)
    vt, va, text, has_text, meta = [], [], [], [], []
    with progress_bar(console, f"embedding {folder.name}") as progress:
        task = progress.add_task("embed", total=min(total, limit or total))
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        for i, sample in enumerate(iter_loader(loader)):
            if limit is not None and i >= limit:
                break
            out = model(video=sample["video"].to(device), text=sample["text"][:1].to(device))
            vt.append(F.normalize(out["video_vt"].float().mean(0), dim=-1))
            va.append(F.normalize(out["video_va"].float().mean(0), dim=-1))
            text.append(F.normalize(out["text_vt"].float()[0], dim=-1))
            has_text.append(bool(sample["has_text"]))
            meta.append(_meta_line(sample))
            progress.advance(task)
    if not meta:
        from vattcli.errors import DataError

        raise DataError(f"{folder}: no clip could be decoded for evaluation")
    return Embeddings(torch.stack(vt).cpu(), torch.stack(va).cpu(), torch.stack(text).cpu(),
                      torch.tensor(has_text), meta)


def _meta_line(sample: dict[str, Any]) -> dict[str, Any]:
    return {"key": sample["key"], **sample.get("meta", {})}
