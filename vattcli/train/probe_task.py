"""``vatt finetune TASK --linear-probe``: frozen backbone, low-rank classifier, accuracy over the official splits
[P §4.1, A.3.2; C evaluators.py]: UCF101 and HMDB51 have 3 train/test splits, ESC-50 5 folds (train on four, test on
the fifth); the reported figure is the mean over the splits found."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from vattcli.config import write_config
from vattcli.core.model import build_backbone
from vattcli.data.pipeline import AudioDecoder, EvalViewsDecoder
from vattcli.data.shards import MANIFEST
from vattcli.errors import ConfigError
from vattcli.locking import FolderLock
from vattcli.eval.probe import Features, extract_features, probe_accuracy, train_probe
from vattcli.checkpoints import find_checkpoint, load_weights
from vattcli.data.folders import manifest_classes, shard_urls
from vattcli.train.config import FinetuneConfig
from vattcli.train.distributed import pick_device
from vattcli.train.pretrain import clip_spec
from vattcli.train.transfer import adopt_checkpoint_model, resample_positions


def probe_splits(root: Path) -> list[tuple[list[str], str]]:
    """(train split folders, test split folder) pairs present under ``root``."""
    present = {p.parent.name for p in root.glob(f"*/{MANIFEST}")}
    pairs = [([f"train{i}"], f"test{i}") for i in (1, 2, 3) if {f"train{i}", f"test{i}"} <= present]
    folds = sorted(f for f in present if f.startswith("fold"))
    if len(folds) > 1:
        pairs += [([f for f in folds if f != test], test) for test in folds]
    if not pairs and {"train", "val"} <= present:
        pairs = [(["train"], "val")]
    if not pairs:
        raise ConfigError(f"{root}: no train/test splits for a linear probe (expected train1/test1 ..., fold1..5, "
                          f"or train/val shard folders; found {', '.join(sorted(present)) or 'none'})")
    return pairs


def run_linear_probe(cfg: FinetuneConfig, *, verify: bool = True, console: Console | None = None) -> dict:
    """Probe every split pair; ``verify`` checks the checkpoint's weights hash. The run folder's lock is held while
    its config and ``eval.json`` are written (one writer per folder)."""
    console = console or Console(stderr=True)
    cfg = adopt_checkpoint_model(cfg, console)
    device = pick_device(cfg.train.device)
    if not cfg.data.train:
        raise ConfigError("data.train is empty: give the shard folder, e.g. data.train={ucf101: DIR}")
    root = Path(next(iter(cfg.data.train.values())))
    pairs = probe_splits(root)
    modality = "audio" if cfg.modality == "audio" else "video"
    backbone = build_backbone(replace(cfg.model, droptoken_rate=0.0), modality).to(device)
    if cfg.ckpt:
        load_weights(backbone, find_checkpoint(cfg.ckpt, verify=verify), prefix=f"{modality}.",
                     reshape=resample_positions)
    spec = clip_spec(cfg.data)
    seconds = cfg.data.frames / cfg.data.fps

    def decode(train: bool):
        windows = 1 if train else cfg.data.eval_windows
        if modality == "audio":
            return AudioDecoder(seconds, cfg.data.audio_rate, train=False, windows=windows)
        return EvalViewsDecoder(replace(spec, eval_windows=windows), crops=1)

    cache: dict[tuple[str, bool], Features] = {}

    def features(split: str, train: bool) -> Features:
        if (split, train) not in cache:
            urls = shard_urls(root / split, allow_incomplete=cfg.data.allow_incomplete)
            cache[(split, train)] = extract_features(backbone, urls, decode(train), device=device,
                                                     num_workers=cfg.data.num_workers, label=f"features {split}",
                                                     console=console)
        return cache[(split, train)]

    classes = manifest_classes(root / pairs[0][1]) or []
    results = {}
    for train_splits, test_split in pairs:
        parts = [features(s, True) for s in train_splits]
        train = Features(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
        num_classes = max(len(classes), int(train.y.max()) + 1)
        probe = train_probe(train, num_classes, steps=cfg.train.steps, batch_size=cfg.data.batch_size,
                            lr=cfg.optim.lr, rank=cfg.head.probe_rank, keep=cfg.head.probe_keep, seed=cfg.train.seed)
        results[test_split] = probe_accuracy(probe, features(test_split, False))
        console.print(f"{test_split}: top-1 {results[test_split]['top1']:.2f}")
    mean = sum(r["top1"] for r in results.values()) / len(results)
    summary = {"task": cfg.task, "linear_probe": True, "splits": results, "top1_mean": mean, "paper": cfg.paper}
    run = Path(cfg.train.run_dir)
    with FolderLock(run, "linear probe"):
        write_config(cfg, run / "config.yaml")
        (run / "eval.json").write_text(json.dumps(summary, indent=2))
    return {"step": cfg.train.steps, "stopped": "finished", "eval": summary, "checkpoint": None,
            "model": cfg.model.name}
