"""Evaluation metrics of the VATT downstream protocols, in plain torch (float64).

What each metric reproduces [P §4.2, A.2.5, A.3.3, Tab 1, 2, 4; C utils/eval/measures.py]:

- classification (Kinetics, MiT, linear probes): top-1 / top-5 accuracy in percent;
- AudioSet: per-class average precision (sklearn ``average_precision_score``), per-class ROC-AUC
  (sklearn ``roc_auc_score``) and d' = sqrt(2) * Phi^-1(AUC), each averaged over classes;
- zero-shot retrieval: R@1, R@5, R@10 in percent and the median rank MedR (1-based).

Ties. The official code ranks with ``np.argsort``, whose order among equal scores is arbitrary. Here every
tie counts against the correct answer, so a constant score gets no credit and the result is a lower bound
of what any tie order would give:

- top-k: the true class is in the top k iff fewer than k OTHER classes score >= the true class;
- retrieval rank: 1 + the number of wrong candidates scoring >= the best-scoring correct one.

Average precision and ROC-AUC need no such rule: they group tied scores exactly as sklearn does (AP takes
one precision/recall point per distinct score; AUC counts a tied positive/negative pair as 1/2).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from vattcli.errors import DataError

GroundTruth = torch.Tensor | Sequence[int] | Sequence[Sequence[int]] | None


class MetricError(DataError):
    """Scores and labels that cannot be evaluated together (shape, range or missing classes)."""


def _as_float64(x: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != ndim:
        raise MetricError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise MetricError(f"{name}: expected finite values, found NaN or inf")
    return x


def _as_binary(targets: torch.Tensor, name: str, shape: torch.Size) -> torch.Tensor:
    t = torch.as_tensor(targets).detach().to("cpu", torch.float64)
    if t.shape != shape:
        raise MetricError(f"{name}: expected shape {tuple(shape)} to match the scores, got {tuple(t.shape)}")
    if not bool(((t == 0) | (t == 1)).all()):
        raise MetricError(f"{name}: expected binary labels (0 or 1)")
    return t


def _class_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _as_float64(logits, "logits", 2)
    labels = torch.as_tensor(labels).detach().to("cpu")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0] or labels.is_floating_point():
        raise MetricError(
            f"labels: expected {logits.shape[0]} integer class indices, got shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise MetricError("logits: expected at least one sample, got none")
    if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        raise MetricError(f"labels: expected class indices in [0, {logits.shape[1]})")
    return logits, labels.long()


def _class_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1-based pessimistic rank of the true class: 1 + the number of other classes scoring >= it."""
    true = logits.gather(1, labels[:, None])
    return (logits >= true).sum(dim=1)


# --------------------------------------------------------------------------------------------- classification


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of samples whose true class is among the top k, as ``{"top1": ..., "top5": ...}``.

    A tie with the true class counts against it (see the module docstring), so a k larger than the number
    of classes is always a hit and a constant row is a hit only when k >= C.
    """
    logits, labels = _class_labels(logits, labels)
    ranks = _class_ranks(logits, labels)
    return {f"top{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}


def mean_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """Mean over the classes present in ``labels`` of the per-class top-1 accuracy, in percent.

    ``num_classes`` defaults to the width of ``logits``; when given it must match it.
    """
    logits, labels = _class_labels(logits, labels)
    if num_classes is not None and num_classes != logits.shape[1]:
        raise MetricError(f"num_classes: expected {logits.shape[1]} (the width of logits), got {num_classes}")
    hits = (_class_ranks(logits, labels) == 1).double()
    count = torch.bincount(labels, minlength=logits.shape[1]).double()
    correct = torch.bincount(labels, weights=hits, minlength=logits.shape[1])
    present = count > 0
    return 100.0 * (correct[present] / count[present]).mean().item()


# --------------------------------------------------------------------------------------------- AudioSet


def _binary_inputs(scores: torch.Tensor, targets: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = _as_float64(scores, "scores", ndim)
    return s, _as_binary(targets, "targets", s.shape)


def _average_precision(s: torch.Tensor, t: torch.Tensor) -> float:
    # One operating point per distinct score, from the highest down: AP = sum_n (R_n - R_{n-1}) * P_n.
    # R_n - R_{n-1} is the share of positives whose score is the n-th distinct value [sklearn semantics].
    values, inverse = torch.unique(s, return_inverse=True)
    pos = torch.zeros_like(values).index_add_(0, inverse, t)
    seen = torch.zeros_like(values).index_add_(0, inverse, torch.ones_like(t))
    tp = pos.flip(0).cumsum(0).flip(0)
    predicted = seen.flip(0).cumsum(0).flip(0)
    return (pos * tp / predicted).sum().item() / t.sum().item()


def _roc_auc(s: torch.Tensor, t: torch.Tensor) -> float:
    # Mann-Whitney U with mid-ranks: ties between a positive and a negative count 1/2.
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    counts = counts.double()
    mid_rank = counts.cumsum(0) - (counts - 1) / 2
    n_pos = t.sum().item()
    n_neg = t.numel() - n_pos
    u = (mid_rank[inverse] * t).sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Average precision of one binary task, equal to sklearn's ``average_precision_score`` (a fraction).

    Step-wise, no interpolation; samples with equal scores form one threshold.
    """
    s, t = _binary_inputs(scores, targets, 1)
    if t.sum() == 0:
        raise MetricError("targets: average precision needs at least one positive sample")
    return _average_precision(s, t)


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the ROC curve of one binary task, equal to sklearn's ``roc_auc_score`` (a fraction)."""
    s, t = _binary_inputs(scores, targets, 1)
    if t.sum() == 0 or t.sum() == t.numel():
        raise MetricError("targets: ROC-AUC needs both positive and negative samples")
    return _roc_auc(s, t)


def d_prime(auc: float) -> float:
    """Sensitivity index d' = sqrt(2) * Phi^-1(AUC) [C utils/eval/measures.py]; +-inf at AUC 1 or 0."""
    if not 0.0 <= auc <= 1.0:
        raise MetricError(f"auc: expected a value in [0, 1], got {auc}")
    return math.sqrt(2.0) * torch.special.ndtri(torch.tensor(auc, dtype=torch.float64)).item()


def _per_class(scores: torch.Tensor, targets: torch.Tensor, need_negatives: bool) -> list[tuple[torch.Tensor, ...]]:
    s, t = _binary_inputs(scores, targets, 2)
    pos = t.sum(dim=0)
    keep = pos > 0
    if need_negatives:
        keep &= pos < t.shape[0]
    if not bool(keep.any()):
        what = "both positive and negative samples" if need_negatives else "a positive sample"
        raise MetricError(f"targets: no class has {what}")
    return [(s[:, c], t[:, c]) for c in torch.nonzero(keep).flatten().tolist()]


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean AP over the classes that have at least one positive sample (a fraction).

    The official code averages sklearn AP over every class [C utils/eval/measures.py]; sklearn gives such a
    class 0 (older versions nan) with a warning. On AudioSet's eval set every class has positives, so the two
    agree there; here a class without positives is skipped rather than pulling the mean down.
    """
    aps = [_average_precision(s, t) for s, t in _per_class(scores, targets, False)]
    return sum(aps) / len(aps)


def _class_aucs(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return [_roc_auc(s, t) for s, t in _per_class(scores, targets, True)]


def mean_roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean ROC-AUC over the classes that have both positives and negatives (a fraction).

    sklearn raises for the other classes, so the official code could not score them either.
    """
    aucs = _class_aucs(scores, targets)
    return sum(aucs) / len(aucs)


def mean_d_prime(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes of sqrt(2) * Phi^-1(AUC_c), over the classes ``mean_roc_auc`` uses [P Tab 2; C measures.py].

    As in the official code, d' is averaged per class (not taken of the mean AUC), so one class ranked
    perfectly (AUC 1) makes the mean +inf.
    """
    primes = [d_prime(a) for a in _class_aucs(scores, targets)]
    return sum(primes) / len(primes)


def audioset_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``{"mAP", "AUC", "d_prime"}`` of a multi-label (N, C) score matrix, as fractions like the official code."""
    aucs = _class_aucs(scores, targets)
    return {
        "mAP": mean_average_precision(scores, targets),
        "AUC": sum(aucs) / len(aucs),
        "d_prime": sum(d_prime(a) for a in aucs) / len(aucs),
    }


# --------------------------------------------------------------------------------------------- retrieval


def _gt_mask(gt: GroundTruth, n_query: int, n_cand: int) -> torch.Tensor:
    """(Nq, Nc) bool mask of the correct candidates from None, indices, a mask, or lists of indices."""
    if gt is None:
        if n_query > n_cand:
            raise MetricError(f"gt: the diagonal needs no more queries than candidates, got {n_query} > {n_cand}")
        return torch.eye(n_query, n_cand, dtype=torch.bool)
    if isinstance(gt, torch.Tensor):
        gt = gt.detach().to("cpu")
        if gt.dtype == torch.bool:
            if gt.shape != (n_query, n_cand):
                raise MetricError(f"gt: expected a mask of shape {(n_query, n_cand)}, got {tuple(gt.shape)}")
            return gt.clone()
        if gt.dim() != 1 or gt.is_floating_point():
            raise MetricError(f"gt: expected an (Nq,) integer index tensor, got {gt.dtype} of shape {tuple(gt.shape)}")
        gt = gt.tolist()
    gt = [[int(g)] if isinstance(g, numbers.Integral) else [int(j) for j in g] for g in gt]
    if len(gt) != n_query:
        raise MetricError(f"gt: expected one entry per query ({n_query}), got {len(gt)}")
    mask = torch.zeros(n_query, n_cand, dtype=torch.bool)
    for i, correct in enumerate(gt):
        idx = torch.as_tensor(list(correct), dtype=torch.long)
        if bool(((idx < 0) | (idx >= n_cand)).any()):
            raise MetricError(f"gt: query {i} names a candidate outside [0, {n_cand})")
        mask[i, idx] = True
    return mask


def _mask_ranks(sim: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    missing = ~mask.any(dim=1)
    if bool(missing.any()):
        raise MetricError(f"gt: query {int(torch.nonzero(missing)[0])} has no correct candidate")
    best = sim.masked_fill(~mask, -math.inf).amax(dim=1, keepdim=True)
    return 1 + ((sim >= best) & ~mask).sum(dim=1)


def ranks(sim: torch.Tensor, gt: GroundTruth = None) -> torch.Tensor:
    """1-based rank of the first correct candidate for each query; ties count against it.

    ``sim[i, j]`` is the similarity of query i and candidate j. ``gt`` is None (candidate i is correct for
    query i), an (Nq,) index tensor, an (Nq, Nc) bool mask, or one list of correct indices per query. With
    several correct candidates the rank is that of the best-scoring one: 1 + the number of wrong candidates
    scoring >= it.
    """
    sim = _as_float64(sim, "sim", 2)
    return _mask_ranks(sim, _gt_mask(gt, sim.shape[0], sim.shape[1]))


def median_rank(rank: torch.Tensor) -> float:
    """MedR: the median of 1-based ranks, averaging the two middle ones for an even count (numpy's median).

    The official code's ``np.median(ind) + 1`` over 0-based ranks is the same number [C measures.py].
    """
    r = torch.sort(torch.as_tensor(rank, dtype=torch.float64).flatten()).values
    if r.numel() == 0:
        raise MetricError("ranks: expected at least one query, got none")
    mid = r.numel() // 2
    return r[mid].item() if r.numel() % 2 else (r[mid - 1] + r[mid]).item() / 2


def _summarize(rank: torch.Tensor) -> dict[str, float]:
    out = {f"R@{k}": 100.0 * (rank <= k).double().mean().item() for k in (1, 5, 10)}
    out["MedR"] = median_rank(rank)
    out["MeanR"] = rank.double().mean().item()
    return out


def retrieval_metrics(sim: torch.Tensor, gt: GroundTruth = None) -> dict[str, float]:
    """``{"R@1", "R@5", "R@10"}`` in percent plus ``MedR`` and ``MeanR`` (1-based) of ``ranks(sim, gt)``."""
    return _summarize(ranks(sim, gt))


def bidirectional_retrieval(sim_text_video: torch.Tensor, gt: GroundTruth = None) -> dict[str, dict[str, float]]:
    """Text-to-video and video-to-text metrics of one (Nt, Nv) text-video similarity matrix.

    ``gt`` gives the correct videos of each text as in ``ranks`` (None: text i belongs to video i, as in
    MSR-VTT 1k-A and YouCook2). Video-to-text uses the transposed matrix and mask, so a video with several
    captions is ranked by its best-scoring caption; every video needs at least one caption.
    """
    sim = _as_float64(sim_text_video, "sim_text_video", 2)
    mask = _gt_mask(gt, sim.shape[0], sim.shape[1])
    return {"t2v": _summarize(_mask_ranks(sim, mask)), "v2t": _summarize(_mask_ranks(sim.T, mask.T))}
