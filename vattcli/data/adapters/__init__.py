"""Dataset adapters: one module per dataset, each reading the official annotation files [datasets.md].

The registry maps a dataset name to ``module:Class`` (with constructor options) and imports lazily, so listing the
datasets costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from vattcli.data.adapters.base import Adapter
from vattcli.errors import VattError

REGISTRY: dict[str, tuple[str, dict[str, Any], str]] = {
    "howto100m": ("howto100m:HowTo100M", {}, "HowTo100M: caption-aligned 3.2 s windows at 10 fps, each with its "
                  "K = 5 temporally nearest captions (pre-training)."),
    "audioset": ("audioset:AudioSet", {}, "AudioSet: 10 s clips with 527-way labels (pre-training without text; "
                 "audio classification)."),
    "kinetics400": ("kinetics:Kinetics", {"variant": 400}, "Kinetics-400 action recognition (fine-tuning)."),
    "kinetics600": ("kinetics:Kinetics", {"variant": 600}, "Kinetics-600 action recognition (fine-tuning)."),
    "kinetics700": ("kinetics:Kinetics", {"variant": 700}, "Kinetics-700 action recognition (fine-tuning)."),
    "mit": ("mit:MomentsInTime", {}, "Moments in Time, 339 classes (fine-tuning)."),
    "youcook2": ("youcook2:YouCook2", {}, "YouCook2: one clip per annotated segment (zero-shot retrieval)."),
    "msrvtt": ("msrvtt:MSRVTT", {}, "MSR-VTT: the 1k-A test split (zero-shot retrieval)."),
    "ucf101": ("ucf101:UCF101", {}, "UCF101, three official splits (linear probe)."),
    "hmdb51": ("hmdb51:HMDB51", {}, "HMDB51, three official splits (linear probe)."),
    "esc50": ("esc50:ESC50", {}, "ESC-50 environmental sounds, five folds (audio linear probe)."),
    "imagenet": ("imagenet:ImageNet", {}, "ImageNet in the ImageFolder layout (image classification transfer)."),
    "custom": ("custom:Custom", {}, "Your own data from a JSONL manifest (captions or labels)."),
}


def adapter_class(name: str) -> tuple[type[Adapter], dict[str, Any]]:
    if name not in REGISTRY:
        raise VattError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    target, options, _ = REGISTRY[name]
    module, cls = target.split(":")
    return getattr(importlib.import_module(f"vattcli.data.adapters.{module}"), cls), options


def get_adapter(name: str, **options: Any) -> Adapter:
    """An adapter instance for dataset ``name`` (registry options first, then the caller's)."""
    cls, defaults = adapter_class(name)
    return cls(**{**defaults, **options})
