"""``vatt convert``: an official VATT TensorFlow checkpoint -> an ordinary vatt checkpoint folder.

The folder holds ``model.safetensors``, ``config.yaml`` (the inferred model; for a classifier, a fine-tuning config
of its task), ``meta.json`` (the usual checkpoint meta, plus ``converted_from``: source files, their sha256, the
converter version), the DMVR word vocabulary as ``tokenizer.txt`` (``--vocab``) and the class names as
``labels.txt`` (``--labels``). It is written into a temporary folder beside ``--out`` and renamed when complete,
so a failure never leaves a partial folder.

Every model tensor must be set and every official variable (optimizer slots and counters aside) must be used;
otherwise the command stops naming the first few offenders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from vattcli.checkpoints.folder import CONFIG, LABELS, write_meta
from vattcli.checkpoints.weights import ALIASES_KEY, WEIGHTS, file_sha256, listed
from vattcli.config import RECIPES_DIR, to_dict
from vattcli.convert.bundle import TensorBundle, resolve_prefix
from vattcli.convert.layout import Layout, detect_kind, infer_model, split_keys
from vattcli.convert.mapping import Rule, rules_for
from vattcli.convert.stream import write_streamed
from vattcli.core.model import VATT, Classifier, ModelConfig, build_backbone
from vattcli.data.text import TextTokenizer
from vattcli.errors import ConvertError

CONVERTER_VERSION = 1
# fine-tuned classifiers name their task by the class count [P §4.2; datasets.md]
TASK_BY_CLASSES = {("video", 400): "kinetics400", ("video", 600): "kinetics600", ("video", 700): "kinetics700",
                   ("video", 339): "mit", ("audio", 527): "audioset"}
# the official pre-training clip [P §4.1]: 32 frames at 10 fps, 224 px, 48 kHz audio
PRETRAIN_DATA = {"frames": 32, "fps": 10.0, "size": 224, "audio_rate": 48_000, "text_len": 16, "eval_windows": 4}


@dataclass
class Summary:
    kind: str
    model: ModelConfig
    num_classes: int | None
    task: str | None
    mapped: int  # official variables used
    skipped: int  # optimizer slots and counters
    parameters: int
    seconds: float
    out: Path


def build_target(layout: Layout) -> torch.nn.Module:
    """The vatt module the checkpoint converts into, on the meta device (shapes and sharing only)."""
    with torch.device("meta"):
        if layout.kind.startswith("pretrain"):
            return VATT(layout.model)
        return Classifier(build_backbone(layout.model, layout.modality), layout.num_classes)


def _targets(module: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Stored names with shapes, and ``alias -> stored`` for names that are the same tensor (the MA encoder)."""
    stored: dict[str, tuple[int, ...]] = {}
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
            stored[name] = tuple(tensor.shape)
    return stored, aliases


def _check_rules(rules: list[Rule], stored: dict[str, tuple[int, ...]], layout: Layout, shape, source: str) -> None:
    by_target = {r.target: r for r in rules}
    unset = [n for n in stored if n not in by_target]
    extra = [t for t in by_target if t not in stored]
    used = {s for r in rules for s in r.sources}
    unmapped = [layout.names[n] for n in layout.names if n not in used]
    absent = sorted({s for r in rules for s in r.sources if s not in layout.names})
    problems = []
    if absent:
        problems.append(f"tensors the {layout.kind} model needs are missing: {listed(absent)}")
    if unmapped:
        problems.append(f"tensors with no place in the model: {listed(unmapped)}")
    if unset or extra:
        problems.append(f"model tensors not set: {listed(unset + extra)}")
    if not problems:
        bad = [f"{r.target} {r.transform.shape([shape(s) for s in r.sources])} vs {stored[r.target]}"
               for r in rules if tuple(r.transform.shape([shape(s) for s in r.sources])) != stored[r.target]]
        if bad:
            problems.append(f"shapes do not fit: {listed(bad)}")
    if problems:
        raise ConvertError(f"{source}: cannot convert: " + "; ".join(problems))


def _config(layout: Layout, task: str | None) -> dict:
    model = to_dict(layout.model)
    if layout.kind.startswith("pretrain"):
        return {"model": model, "data": dict(PRETRAIN_DATA)}
    base: dict = {}
    shipped = RECIPES_DIR / "finetune" / f"{task}.yaml"
    if task and shipped.is_file():  # a task without a shipped recipe keeps the generic fine-tuning settings
        base = yaml.safe_load(shipped.read_text(encoding="utf-8")) or {}
    base.update({"task": task or f"converted-{layout.modality}", "modality": layout.modality, "model": model,
                 "ckpt": None})
    base.setdefault("head", {})
    if layout.modality == "audio":
        base["head"]["loss"] = "sigmoid"
    return base


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: cannot read {what} ({exc})") from exc
    return [line.strip() for line in lines if line.strip()]


def _step(prefix: Path) -> int:
    match = re.search(r"-(\d+)$", prefix.name)
    return int(match.group(1)) if match else 0


def convert_checkpoint(ckpt: Path, out: Path, *, vocab: Path | None = None, labels: Path | None = None,
                       heads: dict[str, int] | None = None, task: str | None = None,
                       overwrite: bool = False) -> Summary:
    """Convert ``ckpt`` (a prefix, an ``.index`` or a folder with a ``checkpoint`` file) into the folder ``out``."""
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConvertError(f"{out}: already exists; pass --overwrite to replace it")
    prefix = resolve_prefix(Path(ckpt))
    with TensorBundle(prefix) as bundle:
        source = str(prefix)
        names, skipped = split_keys(bundle.keys(), source)
        kind = detect_kind(names, source)

        def shape(rel: str) -> tuple[int, ...]:
            if rel not in names:
                raise ConvertError(f"{source}: a {kind} checkpoint needs {rel!r}, which it does not hold")
            return tuple(bundle.shape(names[rel]))

        model, num_classes = infer_model(kind, names, shape, dict(heads or {}))
        layout = Layout(kind, names, skipped, model, num_classes)
        task = task or (TASK_BY_CLASSES.get((layout.modality, num_classes)) if num_classes else None)
        stored, aliases = _targets(build_target(layout))
        rules = rules_for(layout)
        _check_rules(rules, stored, layout, shape, source)
        label_names = _read_lines(labels, "labels") if labels else None
        if label_names is not None and num_classes is None:
            raise ConvertError(f"{labels}: --labels is for fine-tuned classifiers; {source} is a {kind} checkpoint")
        if label_names is not None and len(label_names) != num_classes:
            raise ConvertError(f"{labels}: {len(label_names)} names, but the classifier has {num_classes} classes")
        tokenizer = TextTokenizer.load(vocab) if vocab else None
        if tokenizer is not None and tokenizer.vocab_size > model.vocab_size:
            raise ConvertError(f"{vocab}: ids up to {tokenizer.vocab_size - 1}, but the word table has "
                               f"{model.vocab_size} rows")
        by_target = {r.target: r for r in rules}

        def produce(name: str) -> np.ndarray:
            rule = by_target[name]
            arrays = [_float(bundle, names[s]) for s in rule.sources]
            return rule.transform.apply(arrays)

        tmp = out.with_name(f".tmp-convert-{out.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            specs = [(n, s, np.dtype(np.int64) if n.endswith("num_batches_tracked") else np.dtype(np.float32))
                     for n, s in stored.items()]
            weights_hash = write_streamed(tmp / WEIGHTS, specs, produce,
                                          {"format": "pt", ALIASES_KEY: json.dumps(aliases)},
                                          done=lambda name: [bundle.release(names[s]) for s in by_target[name].sources])
            _write_folder(tmp, layout, task, tokenizer, label_names, bundle, weights_hash, prefix)
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    parameters = sum(int(np.prod(s)) for n, s in stored.items() if not n.endswith("num_batches_tracked")
                     and "running_" not in n)
    return Summary(kind, model, num_classes, task, sum(len(r.sources) for r in rules), len(skipped), parameters,
                   time.perf_counter() - start, out)


def _float(bundle: TensorBundle, key: str) -> np.ndarray:
    array = bundle.read(key)
    if bundle.dtype(key) == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise ConvertError(f"{key}: expected a floating-point tensor, found {bundle.dtype(key)}")
    return array


def _write_folder(tmp: Path, layout: Layout, task: str | None, tokenizer: TextTokenizer | None,
                  labels: list[str] | None, bundle: TensorBundle, weights_hash: str, prefix: Path) -> None:
    (tmp / CONFIG).write_text(yaml.safe_dump(_config(layout, task), sort_keys=False), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(tmp)
    if labels is not None:
        (tmp / LABELS).write_text("\n".join(labels) + "\n", encoding="utf-8")
    sources = [{"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in bundle.files]
    write_meta(tmp, _step(prefix), weights_hash,
               converted_from={"kind": layout.kind, "prefix": str(prefix), "converter_version": CONVERTER_VERSION,
                               "skipped": len(layout.skipped), "files": sources})


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an existing ``out`` (``--overwrite``) is removed only then."""
    try:
        if out.exists():
            trash = out.with_name(f".old-convert-{out.name}-{os.getpid()}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:  # another process created ``out`` meanwhile, or the folder is not writable
        raise ConvertError(f"{out}: cannot move the converted checkpoint into place ({exc.strerror}); "
                           "was another conversion writing there?") from exc
