"""Classifiers on one backbone, their losses, and multi-view evaluation [P §4.2, A.2.5, A.3].

Video classification averages the logits of 4 windows x 3 crops [P A.2.5; C video/factory.py PredictionAggregator];
AudioSet averages over uniformly spaced windows and reports mAP, mean ROC-AUC and d' [P Tab 2; C measures.py].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.utils.data import DataLoader

from vattcli.core.model import Classifier
from vattcli.data.reader import iter_loader
from vattcli.eval.embed import progress_bar
from vattcli.eval.metrics import audioset_metrics, mean_class_accuracy, topk_accuracy


def softmax_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing; ``target`` is class indices or (mixed) soft labels [P A.2.5]."""
    if target.dtype.is_floating_point:
        classes = logits.shape[-1]
        smooth = target * (1 - label_smoothing) + label_smoothing / classes
        return -(smooth * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def inverse_occurrence_sigmoid_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AudioSet's long-tail loss [C audio/factory.py ``inverse_label_occurrence``]: per-class sigmoid cross-entropy
    summed over classes; each sample weighted by sum_c y_c / (samples in the batch carrying class c), divided by its
    number of labels; averaged over the batch."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(-1)  # (B,)
    occurrence = target.sum(0).clamp_min(1e-6)  # (C,)
    weight = (target / occurrence).sum(-1) / target.sum(-1).clamp_min(1e-6)
    return (weight * bce).mean()


@torch.no_grad()
def evaluate_views(model: Classifier, loader: DataLoader, *, multilabel: bool, device: torch.device,
                   modality: str = "video", total: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run every evaluation sample (one item: its views stacked along dim 0, or a single view) and compute the
    task's metrics: top-1/top-5 and mean class accuracy, or mAP/AUC/d' for multi-label sets."""
    console = console or Console(stderr=True)
    model.eval()
    scores, labels = [], []
    key, view_dims = ("audio", 1) if modality == "audio" else ("video", 4)
    with progress_bar(console, "evaluating") as progress:
        task = progress.add_task("eval", total=total)
        for sample in iter_loader(loader):
            x = sample[key].to(device)
            while x.dim() < view_dims + 2:  # -> (1, V, ...): one item with V views
                x = x.unsqueeze(0)
            logits = model(x, views=True)
            scores.append((torch.sigmoid(logits) if multilabel else logits).float().cpu())
            labels.append(sample["label"].reshape(1, -1) if multilabel else sample["label"].reshape(1))
            progress.advance(task)
    s, y = torch.cat(scores), torch.cat(labels)
    if multilabel:
        metrics = audioset_metrics(s.double(), y.double())
        return {"mAP": 100 * metrics["mAP"], "AUC": 100 * metrics["AUC"], "d_prime": metrics["d_prime"],
                "count": len(y)}
    valid = y >= 0
    s, y = s[valid], y[valid]
    return {**topk_accuracy(s, y, ks=(1, 5)), "mean_class_accuracy": mean_class_accuracy(s, y, s.shape[1]),
            "count": len(y)}
