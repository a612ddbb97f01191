"""The throughput switches of ``TrainConfig`` (issue: pre-training cost): the SDPA kernels, ``torch.compile`` of the
whole step or the model, activation checkpointing over Transformer blocks and torchao float8 training of the backbones'
Linear layers. Each defaults to today's path until a GPU measurement (``bench/gpu_check.sh``) says otherwise."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from typing import Any, get_args, get_type_hints

import torch
from torch import nn

from vattcli.core.layers import set_activation_checkpointing
from vattcli.errors import ConfigError
from vattcli.train.config import TrainConfig
from vattcli.train.distributed import DistInfo

FP8_NEEDS = "train.fp8 needs torchao (pip install torchao) and a CUDA device with compute capability >= 8.9"
# train.attention_backend -> SDPA kernels in priority order; efficient serves the T5 text tower's biased attention,
# which neither flash nor (in every torch build) cuDNN takes
SDPA_KERNELS = {"flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION"),
                "cudnn": ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"), "efficient": ("EFFICIENT_ATTENTION",),
                "math": ("MATH",)}


def check_switches(train: TrainConfig, device: torch.device) -> None:
    """Refuse a throughput switch this process cannot honour, in one line naming the key, before anything is
    written. The YAML loader already checks the choices; this also covers configs built in Python."""
    hints = get_type_hints(TrainConfig)
    for key in ("compile_mode", "attention_backend", "activation_checkpointing"):
        value, choices = getattr(train, key), get_args(hints[key])
        if value not in choices:
            raise ConfigError(f"train.{key}={value!r}: expected one of {', '.join(choices)}")
    if train.attention_backend not in ("auto", "math") and device.type != "cuda":
        raise ConfigError(f"train.attention_backend={train.attention_backend} needs a CUDA device; use auto or math "
                          f"on {device.type}")
    if train.fp8 and (device.type != "cuda" or importlib.util.find_spec("torchao") is None
                      or torch.cuda.get_device_capability(device) < (8, 9)):
        raise ConfigError(FP8_NEEDS)


def attention_context(backend: str) -> contextlib.AbstractContextManager:
    """The SDPA kernels of ``train.attention_backend`` for the step; auto leaves torch's own choice."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name) for name in SDPA_KERNELS[backend]], set_priority=True)


def apply_model_switches(model: nn.Module, train: TrainConfig) -> None:
    """Activation checkpointing over the Transformer blocks, and torchao float8 training of the backbones' Linear
    layers (those whose sizes are multiples of 16, as its kernels need); the heads, the word embedding and the
    losses keep bf16 autocast / float32. Parameters stay the same objects, so a DDP wrapper built before still
    reduces them."""
    set_activation_checkpointing(model, train.activation_checkpointing == "blocks")
    if not train.fp8:
        return
    from torchao.float8 import convert_to_float8_training

    def fits(module: nn.Module, fqn: str) -> bool:
        return type(module) is nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0

    for name in ("video", "audio", "text", "backbone"):  # VATT's towers, a Classifier's backbone
        tower = getattr(model, name, None)
        if isinstance(tower, nn.Module):
            convert_to_float8_training(tower, module_filter_fn=fits)


def compile_step(step_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]], model: nn.Module, train: TrainConfig,
                 info: DistInfo, *, whole: bool = False) -> Callable[[nn.Module, Any], dict[str, torch.Tensor]]:
    """``train.compile``: with ``whole`` (a step tests/test_compile.py keeps free of graph breaks: pre-training) on
    one CUDA process, the whole step (forward and losses; AOTAutograd compiles the backward) as one graph, as CUDA
    graphs (compile_mode) want. Otherwise the model alone: under DDP its optimiser splits the graph at gradient
    buckets anyway and the losses' gathers are not traced; on the CPU, torch 2.13's vectorised C++ code gets the
    losses' backward wrong (gradients off by ~100 %); other tasks' steps draw from their own generators (mixup)."""
    if not train.compile:
        return step_fn
    mode = None if train.compile_mode == "default" else train.compile_mode
    if whole and info.world_size == 1 and info.device.type == "cuda":
        return torch.compile(step_fn, mode=mode)
    compiled = torch.compile(model, mode=mode)
    return lambda _model, batch: step_fn(compiled, batch)
