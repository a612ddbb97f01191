"""``vatt evaluate``: zero-shot retrieval, zero-shot classification by prompts, and fine-tuned classifiers.

Retrieval follows the paper's protocol [P A.3.3; datasets.md]: text-to-video and video-to-text in the video-text
space, each video the mean of 4 uniformly spaced centre-cropped clips, cosine similarity; R@1/5/10 in percent, median
and mean rank (1-based), the pool size and the number of clips that could not be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from vattcli.data.pipeline import ClipSpec
from vattcli.data.shards import read_manifest
from vattcli.errors import DataError
from vattcli.eval.embed import Embeddings, embed_clips
from vattcli.eval.metrics import bidirectional_retrieval, topk_accuracy
from vattcli.checkpoints import find_checkpoint, read_config, weights_hash
from vattcli.data.folders import manifest_classes, shard_folder

# The paper's zero-shot numbers (R@10 and MedR) [P Tab 4].
PAPER_RETRIEVAL = {
    "youcook2": {"vatt-mbs": {"R@10": 45.5, "MedR": 13}, "vatt-ma-medium": {"R@10": 40.6, "MedR": 17}},
    "msrvtt": {"vatt-mbs": {"R@10": 29.7, "MedR": 49}, "vatt-ma-medium": {"R@10": 23.6, "MedR": 67}},
}
RETRIEVAL_SPLITS = {"youcook2": "val", "msrvtt": "test"}


def eval_spec(ckpt: Path, **changes: Any) -> ClipSpec:
    """The clip geometry the checkpoint was trained with (frames, fps, crop size, audio rate), for evaluation."""
    data = read_config(ckpt).get("data", {})
    spec = ClipSpec(frames=data.get("frames", 32), fps=data.get("fps", 10.0), size=data.get("size", 224),
                    audio_rate=data.get("audio_rate", 48_000), num_captions=1, text_len=data.get("text_len", 16),
                    eval_windows=data.get("eval_windows", 4))
    return replace(spec, **{k: v for k, v in changes.items() if v is not None})


def retrieval_report(task: str, emb: Embeddings, *, model_name: str, pool_total: int) -> dict[str, Any]:
    """Metrics of one caption per clip against every clip of the pool."""
    has = emb.has_text
    if not bool(has.any()):
        raise DataError(f"{task}: no clip in the pool has a caption to query with")
    sim = emb.text_vt[has] @ emb.video_vt[has].T
    result = bidirectional_retrieval(sim.double())
    return {"task": task, "pool": int(has.sum()), "missing": pool_total - len(emb.meta),
            "chance_R@1": 100.0 / int(has.sum()), **result,
            "paper": PAPER_RETRIEVAL.get(task, {}).get(model_name, {})}


def zero_shot_classification(model, tokenizer, emb: Embeddings, classes: list[str],
                             template: str = "a video of {}") -> dict[str, Any]:
    """Classify each clip by the nearest class prompt in the video-text space (beyond the paper)."""
    prompts = [template.format(c.replace("_", " ")) for c in classes]
    ids = torch.from_numpy(tokenizer.encode(prompts)).long()
    with torch.no_grad():
        text = F.normalize(model(text=ids.to(next(model.parameters()).device))["text_vt"].float().cpu(), dim=-1)
    labels = torch.tensor([int(m.get("label", -1)) for m in emb.meta])
    keep = labels >= 0
    scores = emb.video_vt[keep] @ text.T
    return {"prompts": template, "count": int(keep.sum()),
            "chance_top1": 100.0 / len(classes), **topk_accuracy(scores, labels[keep], ks=(1, min(5, len(classes))))}


def report_table(title: str, result: dict[str, Any]) -> Table:
    table = Table("metric", "ours", "paper", title=title)
    paper = result.get("paper") or {}
    for direction in ("t2v", "v2t"):
        for k, v in result.get(direction, {}).items():
            ref = paper.get(k) if direction == "t2v" else None
            table.add_row(f"{direction} {k}", f"{v:.2f}", "" if ref is None else str(ref))
    for k, v in result.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            table.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v), str(paper.get(k, "")))
    return table


@dataclass
class EmbeddedSet:
    """A checkpoint, its model and tokenizer, and every clip of one shard folder embedded with them."""

    checkpoint: Path
    model: Any
    tokenizer: Any
    shards: Path
    embeddings: Embeddings
    total: int  # clips the manifest lists; those that could not be read are total - len(embeddings.meta)

    @property
    def missing(self) -> int:
        return self.total - len(self.embeddings.meta)


def embed_set(ckpt: str, shards: Path, *, device: str = "cpu", num_workers: int = 0,
              console: Console | None = None, verify: bool = True) -> EmbeddedSet:
    """Embed every clip of ``shards`` with checkpoint ``ckpt``, its weights first checked against their sha256
    unless ``verify`` is False. An incomplete shard folder is used with a warning (``shard_urls``): the report's
    pool size and missing count show it."""
    from vattcli.api import load_model, load_tokenizer

    folder = find_checkpoint(ckpt, verify=verify)
    model = load_model(folder, device=device, verify=verify)
    tokenizer = load_tokenizer(folder, verify=verify)
    emb = embed_clips(model, shards, eval_spec(folder), tokenizer, device=device, num_workers=num_workers,
                      console=console or Console(stderr=True))
    return EmbeddedSet(folder, model, tokenizer, shards, emb, read_manifest(shards)["counts"]["written"])


def run_retrieval(task: str, ckpt: str, data: str | None, *, out: Path | None, device: str = "cpu",
                  num_workers: int = 0, console: Console | None = None, verify: bool = True) -> dict[str, Any]:
    shards = shard_folder(data or f"shards/{task}", RETRIEVAL_SPLITS.get(task))
    run = embed_set(ckpt, shards, device=device, num_workers=num_workers, console=console, verify=verify)
    result = retrieval_report(task, run.embeddings, model_name=run.model.config.name, pool_total=run.total)
    result.update({"checkpoint": str(run.checkpoint), "weights_hash": weights_hash(run.checkpoint),
                   "data": str(shards)})
    _write(result, out)
    return {"result": result, "embeddings": run.embeddings, "model": run.model, "tokenizer": run.tokenizer,
            "checkpoint": run.checkpoint}


def run_zero_shot(task: str, ckpt: str, data: str | None, *, out: Path | None, device: str = "cpu",
                  num_workers: int = 0, template: str = "a video of {}",
                  console: Console | None = None, verify: bool = True) -> dict[str, Any]:
    shards = shard_folder(data or f"shards/{task}", "val")
    classes = manifest_classes(shards)
    if not classes:
        raise DataError(f"{shards}: the manifest lists no classes")
    run = embed_set(ckpt, shards, device=device, num_workers=num_workers, console=console, verify=verify)
    scores = zero_shot_classification(run.model, run.tokenizer, run.embeddings, classes, template)
    result = {"task": task, "zero_shot": True, **scores, "missing": run.missing, "checkpoint": str(run.checkpoint),
              "weights_hash": weights_hash(run.checkpoint)}
    _write(result, out)
    return {"result": result}


def _write(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
