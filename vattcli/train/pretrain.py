"""``vatt pretrain``: multimodal contrastive pre-training [P §3.4, §4.1; C experiments/pretrain.py].

HowTo100M and AudioSet shards mixed per example; video-audio NCE plus video-text MIL-NCE over K = 5 captions at
temperature 0.07; DropToken on video and audio; Adam with warmup and a half-cosine from 1e-4 to 5e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vattcli.config import dump_yaml, write_config
from vattcli.core.flops import estimate_flops
from vattcli.core.losses import PretrainLoss
from vattcli.core.model import VATT
from vattcli.data.pipeline import ClipSpec, PretrainDecoder
from vattcli.data.reader import ResumableLoader
from vattcli.errors import ConfigError
from vattcli.train.config import DataConfig, PretrainConfig
from vattcli.data.folders import shard_folder, shard_urls
from vattcli.train.data import MixedShardDataset, SyntheticPretrainLoader
from vattcli.train.distributed import DistInfo, init_distributed, shutdown, wrap_model
from vattcli.train.loop import Trainer
from vattcli.train.speed import check_switches
from vattcli.train.run_folder import claim_run_dir, clear_run


def raw_video(data: DataConfig, device: torch.device | None) -> bool:
    """Whether training clips are finished on the device (``data.augment_on``; auto: on a GPU)."""
    if data.augment_on == "auto":
        return device is not None and device.type == "cuda"
    return data.augment_on == "device"


def clip_spec(data: DataConfig, device: torch.device | None = None) -> ClipSpec:
    return ClipSpec(frames=data.frames, fps=data.fps, size=data.size, audio_rate=data.audio_rate, crop=data.crop,
                    flip=data.flip, color_jitter=data.color_jitter, audio_noise=data.audio_noise,
                    num_captions=data.num_captions, text_len=data.text_len, eval_windows=data.eval_windows,
                    eval_crops=data.eval_crops, raw_video=raw_video(data, device))


def tokenizer_file(data: DataConfig) -> Path | None:
    """``data.tokenizer``, else a ``tokenizer.model`` next to (or one level above) the first training set; None for
    synthetic data, which needs none."""
    if any(str(root).startswith("synthetic") for root in data.train.values()):
        return None
    if data.tokenizer:
        path = Path(data.tokenizer)
        if not path.is_file():
            raise ConfigError(f"data.tokenizer={data.tokenizer}: no such file")
        return path
    for root in data.train.values():
        folder = shard_folder(root)
        for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model",
                          folder.parent.parent / "tokenizer.model"):
            if candidate.is_file():
                return candidate
    raise ConfigError("no caption tokenizer: set data.tokenizer=PATH (train one with `vatt preprocess tokenizer`)")


def check_batch(data: DataConfig, info: DistInfo, grad_accum: int) -> int:
    if data.batch_size % (info.world_size * grad_accum):
        raise ConfigError(f"data.batch_size={data.batch_size} must be divisible by processes x train.grad_accum "
                          f"({info.world_size} x {grad_accum})")
    return data.batch_size // info.world_size


def build_loader(cfg: PretrainConfig, info: DistInfo, tokenizer: Any) -> Any:
    data = cfg.data
    local = check_batch(data, info, cfg.train.grad_accum)
    if not data.train:
        raise ConfigError("data.train is empty: name at least one shard folder, e.g. data.train.howto100m=DIR")
    sources = list(data.train.values())
    if len(sources) == 1 and str(sources[0]).startswith("synthetic"):
        pool = str(sources[0]).partition(":")[2]
        return SyntheticPretrainLoader(pool=int(pool) if pool else None, global_batch=data.batch_size, rank=info.rank, world_size=info.world_size,
                                       frames=data.frames, size=data.size,
                                       audio_samples=round(data.frames / data.fps * data.audio_rate),
                                       num_captions=data.num_captions, text_len=data.text_len,
                                       vocab_size=cfg.model.vocab_size, seed=cfg.train.seed)
    sources = {name: shard_urls(path, allow_incomplete=data.allow_incomplete) for name, path in data.train.items()}
    decoder = PretrainDecoder(clip_spec(data, info.device), tokenizer, train=True, seed=cfg.train.seed)
    dataset = MixedShardDataset(sources, data.weights, shuffle_buffer=data.shuffle_buffer, seed=cfg.train.seed,
                                decode=decoder, rank=info.rank, world_size=info.world_size)
    return ResumableLoader(dataset, batch_size=local, num_workers=data.num_workers,
                           pin_memory=info.device.type == "cuda", generator=loader_generator(cfg.train.seed))


def loader_generator(seed: int) -> torch.Generator:
    """The DataLoader's own generator: starting its workers then draws nothing from the global RNG, so a resumed
    run's dropout and DropToken draws stay aligned with an uninterrupted run's."""
    return torch.Generator().manual_seed(seed)


def pretrain_step(loss_fn: PretrainLoss):
    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(video=batch["video"], audio=batch["audio"], text=batch["text"])
        valid = batch["has_text"].bool() & out["text_valid"]
        return loss_fn(out, text_valid=valid)

    return step


def run_pretrain(cfg: PretrainConfig, *, resume: str | None = None, overwrite: bool = False, verify: bool = True,
                 console: Console | None = None) -> dict:
    """Build model, data and loss from ``cfg`` and train; returns the trainer's summary.

    The run folder is held for the whole run (one writer); one that already holds checkpoints needs ``resume`` or
    ``overwrite`` (which deletes them once the new run is set up). ``verify`` checks the resumed checkpoint's
    weights hash."""
    info = init_distributed(cfg.train.device)
    try:
        check_switches(cfg.train, info.device)  # before the run folder exists: a refused switch leaves nothing
        with claim_run_dir(cfg.train.run_dir, info, resume=resume, overwrite=overwrite):
            return _pretrain(cfg, info, resume=resume, overwrite=overwrite, verify=verify, console=console)
    finally:
        shutdown()


def _pretrain(cfg: PretrainConfig, info: DistInfo, *, resume: str | None, overwrite: bool, verify: bool,
              console: Console | None) -> dict:
    torch.manual_seed(cfg.train.seed + info.rank)
    tok_path = tokenizer_file(cfg.data)
    tokenizer = None
    if tok_path is not None:
        from vattcli.data.text import TextTokenizer

        tokenizer = TextTokenizer.load(tok_path)
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"tokenizer {tok_path} has {tokenizer.vocab_size} ids but model.vocab_size is "
                              f"{cfg.model.vocab_size}; set model.vocab_size={tokenizer.vocab_size} or more")
    with torch.device(info.device):
        model = VATT(cfg.model)
    loader = build_loader(cfg, info, tokenizer)
    loss_fn = PretrainLoss(va_weight=cfg.loss.va_weight, vt_weight=cfg.loss.vt_weight, combine=cfg.loss.combine,
                           temperature=cfg.loss.temperature, symmetric=cfg.loss.symmetric)
    wrapped = wrap_model(model, info)
    flops = estimate_flops(cfg.model, video_shape=(cfg.data.frames, cfg.data.size, cfg.data.size),
                           audio_samples=round(cfg.data.frames / cfg.data.fps * cfg.data.audio_rate),
                           text_len=cfg.data.text_len, num_captions=cfg.data.num_captions, droptoken=True,
                           training=True).total
    if info.is_main and overwrite:  # before the trainer, which may open its TensorBoard log in the run folder
        clear_run(Path(cfg.train.run_dir))
    trainer = Trainer(model=wrapped, step_fn=pretrain_step(loss_fn), loader=loader, train=cfg.train,
                      optim=cfg.optim, info=info, config_yaml=dump_yaml(cfg), tokenizer=tok_path,
                      flops_per_sample=flops, global_batch=cfg.data.batch_size, console=console,
                      compile_whole_step=True)
    if resume:
        trainer.resume(resume, verify=verify)
    if info.is_main:  # after a resume was found usable: a refused one leaves the run folder as it was
        write_config(cfg, Path(cfg.train.run_dir) / "config.yaml")
    return trainer.fit()
