"""Exporting single towers of a pre-trained VATT (video, audio or text) with the heads that reach the common spaces.

Each tower goes into ``OUT/<tower>/``: ``model.safetensors`` (or ``model.onnx``), ``config.yaml`` (the model config
and the input clip shape), ``meta.json`` (tower, inputs, outputs, source checkpoint and its weights hash) and, for the
text tower, the tokenizer. The heads follow the FAC hierarchy [P §3.3 eq.3; C modeling/heads/bridge.py]:

- video: backbone -> g_v->va -> ``video_va``, then g_v->vt on ``video_va`` -> ``video_vt``;
- audio: backbone -> g_a->va -> ``audio_va``;
- text: backbone -> g_t->vt -> ``text_vt``.

Tensor names are VATT's own (``video.*``, ``head.video_to_va.*``, ...), so a tower file is a subset of the full
checkpoint. VATT-MA shares one encoder among the three backbones [P §4.1; C uvatt.py]: each exported tower carries its
own copy of it (under ``video.encoder.*``, ``audio.encoder.*`` or ``text.encoder.*``) and works alone.

``load_tower`` rebuilds a tower from its folder with ``vattcli.core``, safetensors and yaml only: no training, data or
CLI code, so an exported tower runs wherever the core package does. An ONNX tower takes any batch size, clip size and
caption length (``ONNX_AXES``; text as (B, L) rows), checked against PyTorch in ONNX Runtime when that is installed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import vattcli
from vattcli.core.heads import FineCoarseHead
from vattcli.core.model import VATT, BackboneSpec, ModelConfig
from vattcli.errors import VattError
from vattcli.export_onnx import ONNX_AXES, export_onnx

TOWERS = ("video", "audio", "text")
FORMATS = ("safetensors", "onnx")
OUTPUTS = {"video": ("video_features", "video_va", "video_vt"), "audio": ("audio_features", "audio_va"),
           "text": ("text_features", "text_vt", "text_valid")}
KIND = "vatt-tower"
FORMAT_VERSION = 1
WEIGHTS, ONNX_FILE, CONFIG, META = "model.safetensors", "model.onnx", "config.yaml", "meta.json"


# ---------------------------------------------------------------------------------------------- tower modules

class VideoTower(nn.Module):
    """Video backbone + g_v->va + g_v->vt. ``forward(video (B, 3, T, H, W) in [-1, 1])`` -> video_features,
    video_va, video_vt, as ``VATT.forward`` gives them."""

    def __init__(self, video: nn.Module, head: FineCoarseHead) -> None:
        super().__init__()
        self.video = video
        self.head = nn.ModuleDict({"video_to_va": head.video_to_va, "va_to_vt": head.va_to_vt})

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.video(video).pooled
        va = self.head["video_to_va"](features)
        return {"video_features": features, "video_va": va, "video_vt": self.head["va_to_vt"](va)}


class AudioTower(nn.Module):
    """Audio backbone + g_a->va. ``forward(audio (B, S) in [-1, 1])`` -> audio_features, audio_va."""

    def __init__(self, audio: nn.Module, head: FineCoarseHead) -> None:
        super().__init__()
        self.audio = audio
        self.head = nn.ModuleDict({"audio_to_va": head.audio_to_va})

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.audio(audio).pooled
        return {"audio_features": features, "audio_va": self.head["audio_to_va"](features)}


class TextTower(nn.Module):
    """Text backbone + g_t->vt. ``forward(text (B, L) or (B, K, L) int ids, 0 = padding)`` -> text_features,
    text_vt, text_valid."""

    def __init__(self, text: nn.Module, head: FineCoarseHead) -> None:
        super().__init__()
        self.text = text
        self.head = nn.ModuleDict({"text_to_vt": head.text_to_vt})

    def forward(self, text: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.text(text).pooled
        return {"text_features": pooled.view(*text.shape[:-1], -1),
                "text_vt": self.head["text_to_vt"](pooled).view(*text.shape[:-1], -1),
                "text_valid": (text != 0).reshape(text.shape[0], -1).any(dim=1)}


_TOWER_CLASSES = {"video": VideoTower, "audio": AudioTower, "text": TextTower}


def tower_from_model(model: VATT, tower: str) -> nn.Module:
    """The ``tower`` of ``model`` as a module sharing its parameters."""
    return _TOWER_CLASSES[check_tower(tower)](getattr(model, tower), model.head)


def check_tower(tower: str) -> str:
    if tower not in TOWERS:
        raise VattError(f"tower {tower!r}: expected one of {', '.join(TOWERS)} or all")
    return tower


def parse_towers(tower: str) -> tuple[str, ...]:
    """``all`` -> every tower; otherwise one name (or a comma-separated list) checked against ``TOWERS``."""
    if tower == "all":
        return TOWERS
    return tuple(dict.fromkeys(check_tower(t.strip()) for t in tower.split(",")))


# ---------------------------------------------------------------------------------------------- config

def model_config_from_dict(data: Any, source: str) -> ModelConfig:
    """A ``ModelConfig`` from the plain mapping ``config_to_dict`` writes (size names also accepted)."""
    if not isinstance(data, dict):
        raise VattError(f"{source}: expected a 'model:' mapping of ModelConfig fields")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VattError(f"{source}: unknown model field(s) {', '.join(map(str, unknown))}")
    kwargs = {}
    try:
        for key, value in data.items():
            if key in ("video", "audio", "text"):
                value = BackboneSpec.parse(value) if isinstance(value, str) else BackboneSpec(**value)
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return ModelConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise VattError(f"{source}: model config does not fit ModelConfig ({e})") from None


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """``ModelConfig`` as YAML-ready data (tuples become lists)."""
    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else (
            {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value)
    return plain(dataclasses.asdict(cfg))


def input_shapes(cfg: ModelConfig, data: dict | None) -> dict[str, list[int]]:
    """Batch-1 input shapes: the checkpoint's clip (``data`` section of its config) or, without one, the shape the
    positional tables were made for (grid x patch, audio buckets x patch, text buckets)."""
    data = data or {}
    frames = int(data.get("frames") or cfg.video_grid[0] * cfg.video_patch[0])
    size = int(data.get("size") or cfg.video_grid[1] * cfg.video_patch[1])
    if data.get("fps") and data.get("audio_rate"):
        samples = round(frames / float(data["fps"]) * int(data["audio_rate"]))
    else:
        samples = cfg.audio_buckets * cfg.audio_patch
    return {"video": [1, 3, frames, size, size], "audio": [1, samples],
            "text": [1, int(data.get("text_len") or cfg.text_buckets)]}


# ---------------------------------------------------------------------------------------------- loading

def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VattError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise VattError(f"{path}: not an exported VATT tower (expected \"kind\": \"{KIND}\")")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise VattError(f"{path}: format_version {meta.get('format_version')!r} is not supported (this vatt reads up "
                        f"to {FORMAT_VERSION})")
    return meta


def load_tower(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported tower (safetensors format) in eval mode; its ``forward`` gives the tower's entries of
    ``VATT.forward`` (see ``VideoTower``, ``AudioTower``, ``TextTower``)."""
    folder = Path(folder)
    meta = _read_json(folder / META)
    if meta.get("file_format") != "safetensors":
        raise VattError(f"{folder}: a {meta.get('file_format')} export; load {ONNX_FILE} with onnxruntime instead")
    try:
        config = yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise VattError(f"{folder / CONFIG}: cannot read the model config ({e})") from e
    cfg = model_config_from_dict((config or {}).get("model"), str(folder / CONFIG))
    with torch.device("meta"):  # shapes only: the weights come from the file, so nothing is initialised twice
        tower = tower_from_model(VATT(cfg), check_tower(meta.get("tower")))
    try:
        weights = load_file(str(folder / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as e:
        raise VattError(f"{folder / WEIGHTS}: not a readable safetensors file ({e})") from e
    own = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    misfits = sorted(set(own) ^ set(weights)) + sorted(k for k in own if k in weights
                                                       and tuple(weights[k].shape) != own[k])
    if misfits:
        shown = ", ".join(misfits[:5]) + (f" and {len(misfits) - 5} more" if len(misfits) > 5 else "")
        raise VattError(f"{folder / WEIGHTS}: does not fit the {meta['tower']} tower of {cfg.name} in "
                        f"{CONFIG} (missing, extra or misshapen: {shown})")
    tower.load_state_dict(weights, strict=True, assign=True)
    return tower.eval()


# ---------------------------------------------------------------------------------------------- exporting

def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise VattError("--format onnx needs the onnx package: install the onnx extra (pip install 'vattcli[onnx]')"
                        ) from None


def export_checkpoint(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], *, fmt: str = "safetensors",
                      tower: str = "all", overwrite: bool = False, verify: bool = True) -> list[Path]:
    """Export ``tower`` (video, audio, text, a comma list, or all) of checkpoint ``ckpt`` into ``out/<tower>/``.

    ``verify`` checks the weights' sha256 against the checkpoint's ``meta.json`` first (``--no-verify`` skips it)."""
    towers = parse_towers(tower)
    if fmt not in FORMATS:
        raise VattError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    from vattcli.api import load_model
    from vattcli.checkpoints import find_checkpoint, read_config, tokenizer_path, weights_hash

    out = Path(out)
    for name in towers:
        if (out / name).exists() and not overwrite:
            raise VattError(f"{out / name}: already exists; pass --overwrite to replace it")
    folder = find_checkpoint(ckpt, verify=verify)
    model = load_model(folder, verify=verify)
    data = read_config(folder).get("data")
    source = {"checkpoint": str(folder.resolve()), "weights_hash": weights_hash(folder),
              "shapes": input_shapes(model.config, data if isinstance(data, dict) else None),
              "tokenizer": tokenizer_path(folder)}
    staged: list[Path] = []
    try:  # all or nothing: a tower that fails leaves none of the others behind
        for name in towers:
            staged.append(_stage_tower(out / name, tower_from_model(model, name).eval(), name, fmt, model.config,
                                       source))
        for tmp, name in zip(staged, towers):
            if (out / name).exists():
                shutil.rmtree(out / name)
            os.replace(tmp, out / name)
    except BaseException:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in towers]


def _stage_tower(target: Path, module: nn.Module, tower: str, fmt: str, cfg: ModelConfig,
                 source: dict[str, Any]) -> Path:
    """Write one tower folder into a temporary sibling of ``target`` (the caller renames it) and return that."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shape = source["shapes"][tower]
        parity, entry = None, {"shape": shape, "dtype": "int64" if tower == "text" else "float32"}
        if fmt == "safetensors":
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp / WEIGHTS))
        else:
            parity = export_onnx(module, tower, OUTPUTS[tower], shape, cfg.vocab_size, tmp / ONNX_FILE)
            entry["dynamic_axes"] = {name: axis for axis, name in ONNX_AXES[tower].items()}
        config = {"model": config_to_dict(cfg), "inputs": {tower: shape}}
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        tokenizer = source["tokenizer"] if tower == "text" else None
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / tokenizer.name)
        meta = {"kind": KIND, "format_version": FORMAT_VERSION, "tower": tower, "file_format": fmt,
                "model_name": cfg.name, "checkpoint": source["checkpoint"], "weights_hash": source["weights_hash"],
                "inputs": {tower: entry},
                "outputs": list(OUTPUTS[tower]), "tokenizer": None if tokenizer is None else tokenizer.name,
                "onnx_max_abs_diff": parity, "vattcli_version": vattcli.__version__,
                "torch_version": torch.__version__,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp
