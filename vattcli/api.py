"""The Python API: build a VATT model by name, count its parameters and FLOPs.

>>> from vattcli.api import build_model
>>> model = build_model("vatt-tiny", droptoken_rate=0.0)
>>> out = model(video=video, audio=audio, text=ids)   # out["video_vt"], out["text_vt"], ...
"""

from __future__ import annotations

from pathlib import Path

import torch

from vattcli.config import ModelRecipe, list_recipes, load_config, to_dict
from vattcli.core.flops import FlopCount, estimate_flops
from vattcli.core.model import VATT, Classifier, ModelConfig, build_backbone

__all__ = ["build_model", "load_model", "load_tokenizer", "open_index", "model_config", "list_models", "estimate_flops", "FlopCount",
           "VATT", "ModelConfig"]


def list_models() -> list[str]:
    """Names accepted by ``build_model`` (the files under ``recipes/models``)."""
    return list_recipes("models")


def model_config(name: str | Path, **overrides) -> ModelConfig:
    """The ``ModelConfig`` of a model recipe (a name under ``recipes/models`` or a YAML path), with field
    overrides type-checked like the CLI's ``model.key=value`` (e.g. ``droptoken_rate=0.0``, ``video="medium"``)."""
    items = [f"model.{key}={_yaml_scalar(value)}" for key, value in overrides.items()]
    return load_config(ModelRecipe, str(name), items, kind="models").model


def _yaml_scalar(value) -> str:
    import yaml

    return yaml.safe_dump(to_dict(value), default_flow_style=True).strip().removesuffix("...").strip()


def build_model(name: str | Path | ModelConfig, *, device: str | torch.device | None = None, **overrides) -> VATT:
    """A freshly initialised VATT for ``name`` (vatt-bbs, vatt-mbs, vatt-lbs, vatt-ma-medium, vatt-tiny, or a
    model recipe path, or a ``ModelConfig``)."""
    cfg = name if isinstance(name, ModelConfig) else model_config(name, **overrides)
    if isinstance(name, ModelConfig) and overrides:
        cfg = cfg.replace(**overrides)
    with torch.device(device or "cpu"):
        return VATT(cfg)


def load_model(ckpt: str | Path, *, device: str | torch.device = "cpu", verify: bool = True) -> VATT | Classifier:
    """The model of a checkpoint folder (``ckpt-*``, a run folder's latest, ``RUN/ckpt-best``, or a ``vatt convert``
    output), in eval mode: a VATT for a pre-training checkpoint, the ``Classifier`` for a fine-tuned one. The model's
    config is the one stored with the checkpoint; a tensor that does not fit is an error. ``verify`` first checks the
    weights' sha256 against ``meta.json`` (design.md, Checkpoints); a process hashes an unchanged file only once."""
    from vattcli.checkpoints import find_checkpoint, load_weights, read_config
    from vattcli.config import from_dict

    folder = find_checkpoint(str(ckpt), verify=verify)
    stored = read_config(folder)
    cfg = from_dict(ModelRecipe, {"model": stored.get("model", {})}, source=str(folder / "config.yaml")).model
    with torch.device(device):
        model = _classifier(folder, cfg, stored) if "task" in stored else VATT(cfg)
    load_weights(model, folder)
    return model.eval()


def _classifier(folder: Path, cfg: ModelConfig, stored: dict) -> Classifier:
    """The fine-tuned classifier a fine-tuning checkpoint holds; its class count is the stored head's."""
    from safetensors import safe_open

    from vattcli.checkpoints import WEIGHTS

    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        num_classes = f.get_slice("head.fc.weight").get_shape()[0] if "head.fc.weight" in f.keys() else 0
    modality = "audio" if stored.get("modality") == "audio" else "video"
    return Classifier(build_backbone(cfg, modality), max(num_classes, 1))


def load_tokenizer(ckpt: str | Path, *, verify: bool = True):
    """The caption tokenizer stored with a checkpoint (``tokenizer.model`` or ``tokenizer.txt``); ``verify`` as in
    ``load_model`` (free after ``load_model`` of the same checkpoint)."""
    from vattcli.data.text import TextTokenizer
    from vattcli.checkpoints import find_checkpoint, tokenizer_path
    from vattcli.errors import CheckpointError

    folder = find_checkpoint(str(ckpt), verify=verify)
    path = tokenizer_path(folder)
    if path is None:
        raise CheckpointError(f"{folder}: no tokenizer stored with this checkpoint")
    return TextTokenizer.load(path)


def open_index(name_or_path: str | Path, *, home: Path | None = None, ckpt: str | Path | None = None,
               device: str | torch.device = "cpu", verify: bool = True):
    """A retrieval index with the model that encodes its queries: the checkpoint that built it, or ``ckpt`` (a copy
    with the same weights; any other is refused by weights hash). Returns (index, checkpoint folder, model)."""
    from vattcli.checkpoints import find_checkpoint
    from vattcli.errors import VattError
    from vattcli.retrieval.index import RetrievalIndex

    index = RetrievalIndex.load(name_or_path, home=home)
    if ckpt is None and not index.checkpoint.is_dir():
        raise VattError(f"{index.checkpoint}: the checkpoint that built index {index.name!r} is gone; pass --ckpt "
                        "with a copy of it")
    folder = find_checkpoint(ckpt or index.checkpoint, verify=verify)
    index.check_checkpoint(folder, verify=verify)
    return index, folder, load_model(folder, device=device, verify=verify)

