"""Typed configs of training runs: data, optimiser, loop, losses; one top-level class per command.

Defaults are the paper's pre-training settings [P §4.1, A.2; reference §6]; recipes under ``recipes/pretrain`` and
``recipes/finetune`` set each run the paper reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vattcli.core.model import ModelConfig


@dataclass
class DataConfig:
    """What the loader reads and how a sample becomes model input."""

    train: dict = field(default_factory=dict)  # name -> shard folder or pattern, e.g. {howto100m: shards/howto100m}
    weights: dict = field(default_factory=dict)  # name -> mixing weight per example; default equal [C data/loading.py]
    val: str | None = None  # shard folder for evaluation during/after training
    tokenizer: str | None = None  # SentencePiece .model or word vocabulary .txt; default: <first train folder>/tokenizer.model
    batch_size: int = 2048  # global batch, split evenly over ranks [P §4.1]
    num_workers: int = 8
    shuffle_buffer: int = 1000
    frames: int = 32  # 32 frames at 10 fps = 3.2 s [P §4.1]
    fps: float = 10.0
    size: int = 224
    crop: Literal["inception", "vgg"] = "inception"  # paper: Inception-style; code default: VGG scale jitter
    flip: bool = True
    color_jitter: bool = True
    # Where training clips get their colour jitter and [-1, 1] scaling: "workers" (DataLoader processes), "device"
    # (the batch on the training device; workers ship uint8), "auto" = device on a GPU, workers on the CPU.
    augment_on: Literal["auto", "workers", "device"] = "auto"
    audio_rate: int = 48_000
    audio_noise: float = 0.01  # std = 0.01 * max|x| [C data/processing.py]
    num_captions: int = 5  # K, the MIL-NCE positive set [P §3.4]
    text_len: int = 16
    eval_windows: int = 4  # test views: 4 windows x 3 crops [P A.2.5]
    eval_crops: int = 3
    # Train on a shard folder whose manifest says ``complete: false`` (an interrupted `vatt preprocess`): its
    # finished shards are valid, but the set is partial; by default training refuses it (resume the preprocessing).
    allow_incomplete: bool = False


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule: linear warmup, then half-cosine from ``lr`` to ``end_lr``."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4  # [P §4.1]
    end_lr: float = 5e-5
    warmup_steps: int = 10_000  # paper; the code uses 5k
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7  # Keras Adam default [C utils/train/optimizers.py]
    weight_decay: float = 0.0
    clip_norm: float | None = None  # global-norm clipping; fine-tuning uses 0.75 on the backbone [C finetune.py]
    clip_scope: Literal["all", "backbone"] = "all"


@dataclass
class TrainConfig:
    """The loop: length, checkpoints, logging, device and precision."""

    run_dir: str = "runs/pretrain"
    steps: int = 500_000  # [P §4.1]
    grad_accum: int = 1
    log_every: int = 50
    ckpt_every: int = 10_000  # [C experiments/base.py]
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    # Throughput switches (bench/bench_pretrain_step.py measures each against today's path; defaults are today's
    # behaviour until a GPU run shows a faster one that keeps the losses). compile_mode applies when compile is on:
    # reduce-overhead adds CUDA graphs, max-autotune also tunes the matmul kernels (minutes of compiling).
    compile_mode: Literal["default", "max-autotune", "reduce-overhead"] = "default"
    # The scaled-dot-product attention kernel (CUDA; math also on CPU). flash/cudnn fall back to efficient for the
    # text tower, whose relative-position bias they cannot take.
    attention_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    # blocks: recompute each Transformer block in backward instead of keeping its activations (a larger batch fits)
    activation_checkpointing: Literal["none", "blocks"] = "none"
    fp8: bool = False  # torchao float8 matmuls in the backbones' Linear layers (Hopper+); heads and losses stay bf16
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    peak_tflops: float | None = None  # for MFU; default 989 (dense bf16 H100/H200) on CUDA, none on CPU


@dataclass
class LossConfig:
    """NCE (video-audio) + MIL-NCE (video-text) [P §3.4; C configs/loss.py]."""

    va_weight: float = 1.0
    vt_weight: float = 1.0
    combine: Literal["mean", "sum"] = "mean"  # code: mean of the two; paper eq.6: their sum
    temperature: float = 0.07
    symmetric: bool = False  # the code's AsymmetricNCE is the default


@dataclass
class PretrainConfig:
    """``vatt pretrain``: HowTo100M + AudioSet, NCE + MIL-NCE, DropToken [P §3-4]."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    paper: dict = field(default_factory=dict)  # the paper's numbers this recipe aims at (reported beside ours)


@dataclass
class HeadConfig:
    """Classifier on the AGG feature and its loss."""

    dropout: float = 0.5  # [C video/factory.py cls_dropout_rate]
    label_smoothing: float = 0.1
    loss: Literal["softmax", "sigmoid"] = "softmax"  # sigmoid + inverse-label-occurrence weights for AudioSet
    mixup: bool = False
    mixup_alpha: float = 5.0  # Beta(5, 5) [P A.3]
    linear_probe: bool = False  # frozen backbone + the low-rank classifier [P A.3.2]
    probe_rank: int = 128
    probe_keep: float = 0.1  # fraction of low-rank components kept per step (the code's Dropout(0.9))


@dataclass
class FinetuneConfig:
    """``vatt finetune TASK``: one backbone plus a classifier [P §4.2, A.2.5, A.3]."""

    task: str = "kinetics400"
    modality: Literal["video", "audio", "image"] = "video"
    ckpt: str | None = None  # pre-training checkpoint (folder, or 'latest' of a run dir)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    paper: dict = field(default_factory=dict)
