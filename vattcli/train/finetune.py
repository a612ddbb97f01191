"""``vatt finetune TASK``: one backbone of a pre-trained VATT plus a classifier [P §4.2, A.2.5, A.3].

- video (Kinetics-400/600/700, Moments in Time): the vision Transformer at 32 frames x 320 px with its positional
  tables spline-resampled (8x14x14 -> 8x20x20), no DropToken, dropout 0.5 + Dense, label smoothing 0.1, SGD lr 0.005,
  global-norm clipping 0.75 on the backbone only, evaluation on 4 x 3 views;
- audio (AudioSet; ESC-50): the audio Transformer on 6.4 s at 24 kHz (1200 tokens), mixup Beta(5, 5), the
  inverse-label-occurrence sigmoid loss with head bias -log(C - 1);
- image (ImageNet): the vision Transformer on images repeated to fill one temporal patch;
- ``--linear-probe``: frozen backbone, AGG features, the low-rank classifier, accuracy over the official splits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from vattcli.checkpoints import find_checkpoint, load_weights
from vattcli.config import dump_yaml, write_config
from vattcli.core.model import build_backbone
from vattcli.data.folders import manifest_classes, shard_folder, shard_urls
from vattcli.data.pipeline import AudioDecoder, ClassifyDecoder, EvalViewsDecoder, ImageDecoder
from vattcli.data.reader import ResumableLoader, ShardDataset
from vattcli.data.shards import read_manifest
from vattcli.data.transforms import mixup
from vattcli.errors import ConfigError
from vattcli.eval.classify import Classifier, evaluate_views, inverse_occurrence_sigmoid_loss, softmax_loss
from vattcli.train.config import FinetuneConfig
from vattcli.train.distributed import DistInfo, init_distributed, shutdown, wrap_model
from vattcli.train.loop import Trainer
from vattcli.train.pretrain import check_batch, clip_spec, loader_generator
from vattcli.train.run_folder import claim_run_dir, clear_run
from vattcli.train.transfer import adopt_checkpoint_model, resample_positions


def build_classifier(cfg: FinetuneConfig, num_classes: int, *, ckpt: str | None, verify: bool = True) -> Classifier:
    """The task's backbone (the tower of a pre-training checkpoint when given, its weights hash checked unless
    ``verify`` is off) plus a fresh head."""
    modality = "audio" if cfg.modality == "audio" else "video"
    backbone = build_backbone(cfg.model, modality)
    if ckpt:
        folder = find_checkpoint(ckpt, verify=verify)
        load_weights(backbone, folder, prefix=f"{modality}.", reshape=resample_positions)
    bias = 0.0
    if cfg.head.loss == "sigmoid":
        bias = -torch.log(torch.tensor(float(num_classes - 1))).item()  # -log(C - 1) [C audio/factory.py]
    return Classifier(backbone, num_classes, dropout=cfg.head.dropout, bias_init=bias)


def task_classes(cfg: FinetuneConfig) -> list[str]:
    if not cfg.data.train:
        raise ConfigError(f"data.train is empty: give the {cfg.task} shards, e.g. data.train={{{cfg.task}: DIR}}")
    root = next(iter(cfg.data.train.values()))
    classes = manifest_classes(root, "train")
    if not classes:
        raise ConfigError(f"{root}: its manifest lists no classes (was it written by a classification adapter?)")
    return classes


def decoders(cfg: FinetuneConfig, num_classes: int, *, train: bool, device: torch.device | None = None):
    """Sample decoders; ``device`` (training) decides where clips are finished (``data.augment_on``)."""
    data, spec = cfg.data, clip_spec(cfg.data, device if train else None)
    seconds = data.frames / data.fps
    if cfg.modality == "audio":
        return AudioDecoder(seconds, data.audio_rate, train=train, num_classes=num_classes, seed=cfg.train.seed,
                            windows=data.eval_windows)
    if cfg.modality == "image":
        return ImageDecoder(data.size, frames=cfg.model.video_patch[0], train=train, seed=cfg.train.seed,
                            crop=data.crop, raw_video=spec.raw_video)
    if train:
        return ClassifyDecoder(spec, num_classes=num_classes, seed=cfg.train.seed)
    return EvalViewsDecoder(spec, crops=data.eval_crops, num_classes=num_classes)


def finetune_step(cfg: FinetuneConfig, num_classes: int):
    sigmoid = cfg.head.loss == "sigmoid"
    gen = torch.Generator().manual_seed(cfg.train.seed)

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["audio" if cfg.modality == "audio" else "video"]
        y = batch["label"]
        if cfg.head.mixup:
            soft = y.float() if sigmoid else torch.nn.functional.one_hot(y, num_classes).float()
            x, y, _ = mixup(x, soft.to(x.device), cfg.head.mixup_alpha, cfg.head.mixup_alpha, generator=gen)
        logits = model(x)
        if sigmoid:
            return {"loss": inverse_occurrence_sigmoid_loss(logits, y)}
        return {"loss": softmax_loss(logits, y, cfg.head.label_smoothing)}

    return step


def evaluate_classifier(model: Classifier, cfg: FinetuneConfig, num_classes: int, device: torch.device,
                        console: Console | None = None) -> dict[str, Any]:
    if not cfg.data.val:
        return {}
    folder = shard_folder(cfg.data.val, "val")
    dataset = ShardDataset(shard_urls(folder, allow_incomplete=cfg.data.allow_incomplete),
                           decode=decoders(cfg, num_classes, train=False), epochs=1, rank=0, world_size=1)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers)
    total = read_manifest(folder)["counts"]["written"]
    result = evaluate_views(model, loader, multilabel=cfg.head.loss == "sigmoid", device=device,
                            modality="audio" if cfg.modality == "audio" else "video", total=total, console=console)
    return {**result, "missing": total - result["count"], "paper": cfg.paper}


def run_finetune(cfg: FinetuneConfig, *, resume: str | None = None, overwrite: bool = False, verify: bool = True,
                 console: Console | None = None) -> dict:
    """Fine-tune, then evaluate on ``data.val`` (4 x 3 views for video); writes ``eval.json`` in the run folder.

    The run folder is held for the whole run (one writer); one that already holds checkpoints needs ``resume`` or
    ``overwrite``. ``verify`` checks the weights hash of the checkpoints loaded (``ckpt``, ``resume``). The summary
    names the model trained (``model``), so results are compared with the paper's figure for that model only."""
    if cfg.head.linear_probe:
        raise ConfigError("head.linear_probe=true: run it with vattcli.train.probe_task.run_linear_probe "
                          "(`vatt finetune TASK --linear-probe`)")
    info = init_distributed(cfg.train.device)
    console = console or Console(stderr=True)
    try:
        cfg = adopt_checkpoint_model(cfg, console)
        with claim_run_dir(cfg.train.run_dir, info, resume=resume, overwrite=overwrite):
            summary = _finetune(cfg, info, resume=resume, overwrite=overwrite, verify=verify, console=console)
            return {**summary, "model": cfg.model.name}
    finally:
        shutdown()


def _finetune(cfg: FinetuneConfig, info: DistInfo, *, resume: str | None, overwrite: bool, verify: bool,
              console: Console) -> dict:
    torch.manual_seed(cfg.train.seed + info.rank)
    if cfg.model.droptoken_rate > 0:
        console.print(f"[yellow]note:[/] model.droptoken_rate={cfg.model.droptoken_rate}: the paper fine-tunes "
                      "without DropToken (set model.droptoken_rate=0.0) [P A.2.1]")
    classes = task_classes(cfg)
    with torch.device(info.device):
        model = build_classifier(cfg, len(classes), ckpt=cfg.ckpt, verify=verify)
    local = check_batch(cfg.data, info, cfg.train.grad_accum)
    train_root = next(iter(cfg.data.train.values()))
    dataset = ShardDataset(shard_urls(train_root, "train", allow_incomplete=cfg.data.allow_incomplete),
                           shuffle_buffer=cfg.data.shuffle_buffer,
                           seed=cfg.train.seed, decode=decoders(cfg, len(classes), train=True, device=info.device),
                           rank=info.rank, world_size=info.world_size)
    loader = ResumableLoader(dataset, batch_size=local, num_workers=cfg.data.num_workers,
                             pin_memory=info.device.type == "cuda", generator=loader_generator(cfg.train.seed))
    clip = model.backbone.parameters() if cfg.optim.clip_scope == "backbone" else None
    if info.is_main and overwrite:  # before the trainer, which may open its TensorBoard log in the run folder
        clear_run(Path(cfg.train.run_dir))
    trainer = Trainer(model=wrap_model(model, info), step_fn=finetune_step(cfg, len(classes)),
                      loader=loader, train=cfg.train, optim=cfg.optim, info=info, config_yaml=dump_yaml(cfg),
                      global_batch=cfg.data.batch_size, clip_params=clip, console=console)
    if resume:
        trainer.resume(resume, verify=verify)
    if info.is_main:  # after a resume was found usable: a refused one leaves the run folder as it was
        write_config(cfg, Path(cfg.train.run_dir) / "config.yaml")
    summary = trainer.fit()
    if info.is_main and summary["stopped"] == "finished":
        summary["eval"] = evaluate_classifier(model, cfg, len(classes), info.device, console)
        (Path(cfg.train.run_dir) / "eval.json").write_text(json.dumps(summary["eval"], indent=2))
    return summary
