"""Evaluation metrics against hand-computed values and brute-force Python loops (vattcli/eval/metrics.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from vattcli.eval.metrics import (
    MetricError,
    audioset_metrics,
    average_precision,
    bidirectional_retrieval,
    d_prime,
    mean_average_precision,
    mean_class_accuracy,
    mean_d_prime,
    mean_roc_auc,
    median_rank,
    ranks,
    retrieval_metrics,
    roc_auc,
    topk_accuracy,
)

T = torch.tensor


def _phi_inverse(p: float) -> float:
    """Phi^-1 by bisection on math.erf, independent of torch.special.ndtri."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ------------------------------------------------------------------------------------ brute-force references


def _bf_rank_of_class(row: list[float], label: int) -> int:
    return 1 + sum(1 for c, v in enumerate(row) if c != label and v >= row[label])


def _bf_ap(scores: list[float], targets: list[int]) -> float:
    n_pos = sum(targets)
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores), reverse=True):
        tp = sum(1 for s, t in zip(scores, targets) if s >= thr and t == 1)
        fp = sum(1 for s, t in zip(scores, targets) if s >= thr and t == 0)
        recall = tp / n_pos
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def _bf_auc(scores: list[float], targets: list[int]) -> float:
    pos = [s for s, t in zip(scores, targets) if t == 1]
    neg = [s for s, t in zip(scores, targets) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _bf_retrieval_rank(row: list[float], correct: set[int]) -> int:
    return min(1 + sum(1 for k, v in enumerate(row) if k not in correct and v >= row[j]) for j in correct)


# ------------------------------------------------------------------------------------ classification


LOGITS = T([
    [0.1, 0.5, 0.3, 0.2],  # label 1: highest -> rank 1
    [0.4, 0.4, 0.1, 0.0],  # label 0: tied with class 1 -> pessimistic rank 2
    [1.0, 1.0, 1.0, 1.0],  # label 3: tied with all three others -> rank 4
    [0.9, 0.1, 0.2, 0.3],  # label 1: lowest -> rank 4
])
LABELS = T([1, 0, 3, 1])


def test_topk_hand_computed_with_ties():
    # ranks [1, 2, 4, 4]: top1 1/4, top2 2/4, top3 2/4, top4 4/4, top5 4/4
    got = topk_accuracy(LOGITS, LABELS, ks=(1, 2, 3, 4, 5))
    assert got == pytest.approx({"top1": 25.0, "top2": 50.0, "top3": 50.0, "top4": 100.0, "top5": 100.0})
    assert set(topk_accuracy(LOGITS, LABELS)) == {"top1", "top5"}


def test_topk_matches_brute_force_on_random_ties():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (200, 10), generator=gen).float()  # many ties
    labels = torch.randint(0, 10, (200,), generator=gen)
    rank = [_bf_rank_of_class(r, lab) for r, lab in zip(logits.tolist(), labels.tolist())]
    got = topk_accuracy(logits, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert got[f"top{k}"] == pytest.approx(100.0 * sum(r <= k for r in rank) / len(rank))


def test_mean_class_accuracy_hand_computed():
    # top-1 hits per sample: [1, 0, 1, 1, 0, 1] with labels [0, 0, 0, 1, 2, 2]
    # class 0: 2/3, class 1: 1/1, class 2: 1/2 -> mean 13/18 (overall accuracy would be 4/6)
    logits = T([
        [0.9, 0.0, 0.1, 0.0],
        [0.0, 0.9, 0.1, 0.0],
        [0.5, 0.2, 0.1, 0.0],
        [0.1, 0.8, 0.1, 0.0],
        [0.3, 0.3, 0.3, 0.0],  # label 2 tied with classes 0 and 1 -> miss
        [0.0, 0.0, 0.7, 0.1],
    ])
    labels = T([0, 0, 0, 1, 2, 2])
    assert mean_class_accuracy(logits, labels) == pytest.approx(100 * 13 / 18)
    assert mean_class_accuracy(logits, labels, num_classes=4) == pytest.approx(100 * 13 / 18)  # class 3 absent
    with pytest.raises(MetricError, match="num_classes"):
        mean_class_accuracy(logits, labels, num_classes=5)


def test_classification_rejects_bad_labels():
    with pytest.raises(MetricError, match="labels"):
        topk_accuracy(LOGITS, T([0, 1, 2, 4]))
    with pytest.raises(MetricError, match="labels"):
        topk_accuracy(LOGITS, T([0, 1, 2]))
    with pytest.raises(MetricError, match="finite"):
        topk_accuracy(LOGITS * float("nan"), LABELS)


# ------------------------------------------------------------------------------------ AP / AUC / d'

# Class A: no ties. Descending: + - + - - +
#   AP: thresholds at each positive: P = 1/1, 2/3, 3/6, each recall step 1/3 -> (1 + 2/3 + 1/2)/3 = 13/18
#   AUC: pos 0.9 beats 3 negatives, pos 0.7 beats 2, pos 0.4 beats 0 -> 5/9
A_S, A_T = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 0, 0, 1]
# Class B: ties. Distinct thresholds 0.9 (0 tp, 1 fp), 0.7 (1 tp of 3 predicted), 0.5 (3 tp of 5), 0.1 (3 of 6)
#   AP = 1/3 * 1/3 + 2/3 * 3/5 + 0 = 1/9 + 2/5 = 23/45
#   AUC pairs: pos 0.7 vs (0.9, 0.7, 0.1) -> 0 + 1/2 + 1; each pos 0.5 -> 0 + 0 + 1 -> 3.5/9 = 7/18
B_S, B_T = [0.9, 0.7, 0.7, 0.5, 0.5, 0.1], [0, 1, 0, 1, 1, 0]


def test_average_precision_hand_computed():
    assert average_precision(T(A_S), T(A_T)) == pytest.approx(13 / 18, abs=1e-12)
    assert average_precision(T(B_S), T(B_T)) == pytest.approx(23 / 45, abs=1e-12)
    # sklearn's documented example: y=[0,0,1,1], s=[0.1,0.4,0.35,0.8] -> (1/2)*1 + (1/2)*(2/3) = 5/6
    assert average_precision(T([0.1, 0.4, 0.35, 0.8]), T([0, 0, 1, 1])) == pytest.approx(5 / 6, abs=1e-12)
    # all scores tied: one threshold, P = 2/5, recall 0 -> 1
    assert average_precision(torch.zeros(5), T([1, 0, 0, 1, 0])) == pytest.approx(2 / 5, abs=1e-12)


def test_average_precision_perfect_and_reversed():
    assert average_precision(T([5.0, 4, 3, 2, 1]), T([1, 1, 0, 0, 0])) == pytest.approx(1.0)
    # positives last: P = 1/4 at the 4th, 2/5 at the 5th -> (1/4 + 2/5)/2 = 13/40
    assert average_precision(T([5.0, 4, 3, 2, 1]), T([0, 0, 0, 1, 1])) == pytest.approx(13 / 40, abs=1e-12)


def test_roc_auc_hand_computed():
    assert roc_auc(T(A_S), T(A_T)) == pytest.approx(5 / 9, abs=1e-12)
    assert roc_auc(T(B_S), T(B_T)) == pytest.approx(7 / 18, abs=1e-12)
    assert roc_auc(T([0.1, 0.4, 0.35, 0.8]), T([0, 0, 1, 1])) == pytest.approx(0.75, abs=1e-12)  # sklearn doc
    assert roc_auc(torch.ones(6), T([1, 0, 1, 0, 0, 1])) == pytest.approx(0.5, abs=1e-12)  # all tied
    assert roc_auc(T([5.0, 4, 3, 2, 1]), T([1, 1, 0, 0, 0])) == pytest.approx(1.0)
    assert roc_auc(T([5.0, 4, 3, 2, 1]), T([0, 0, 0, 1, 1])) == pytest.approx(0.0)


@pytest.mark.parametrize("levels", [3, 1000])
def test_ap_and_auc_match_brute_force(levels):
    rng = random.Random(levels)
    for _ in range(30):
        n = rng.randint(2, 40)
        scores = [rng.randrange(levels) / levels for _ in range(n)]
        targets = [rng.randint(0, 1) for _ in range(n)]
        targets[0], targets[1] = 1, 0
        assert average_precision(T(scores), T(targets)) == pytest.approx(_bf_ap(scores, targets), abs=1e-12)
        assert roc_auc(T(scores), T(targets)) == pytest.approx(_bf_auc(scores, targets), abs=1e-12)


def test_binary_metrics_reject_degenerate_targets():
    with pytest.raises(MetricError, match="positive"):
        average_precision(T([0.1, 0.2]), T([0, 0]))
    with pytest.raises(MetricError, match="both"):
        roc_auc(T([0.1, 0.2]), T([1, 1]))
    with pytest.raises(MetricError, match="binary"):
        average_precision(T([0.1, 0.2]), T([0.5, 1.0]))


def test_d_prime_values():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    phi2 = 0.5 * math.erfc(-2 / math.sqrt(2))  # Phi(2) = 0.97725...
    assert d_prime(phi2) == pytest.approx(2 * math.sqrt(2), abs=1e-9)
    assert d_prime(0.97725) == pytest.approx(2.83, abs=1e-2)
    assert d_prime(0.3) == pytest.approx(math.sqrt(2) * _phi_inverse(0.3), abs=1e-9)
    assert d_prime(1.0) == math.inf and d_prime(0.0) == -math.inf
    with pytest.raises(MetricError, match="auc"):
        d_prime(1.5)


def _multilabel() -> tuple[torch.Tensor, torch.Tensor]:
    # columns: A, a class without positives, B, a class with only positives
    scores = torch.stack([T(A_S), T([0.3, 0.1, 0.4, 0.2, 0.6, 0.5]), T(B_S), T([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])], 1)
    targets = torch.stack([T(A_T), torch.zeros(6), T(B_T), torch.ones(6)], 1)
    return scores, targets


def test_audioset_metrics_skip_classes_hand_computed():
    scores, targets = _multilabel()
    # mAP over classes with a positive (A, B, all-positive AP = 1): (13/18 + 23/45 + 1)/3 = 67/90
    assert mean_average_precision(scores, targets) == pytest.approx(67 / 90, abs=1e-12)
    # AUC over classes with both kinds (A, B): (5/9 + 7/18)/2 = 17/36
    assert mean_roc_auc(scores, targets) == pytest.approx(17 / 36, abs=1e-12)
    dp = math.sqrt(2) * (_phi_inverse(5 / 9) + _phi_inverse(7 / 18)) / 2  # per class, then averaged
    assert mean_d_prime(scores, targets) == pytest.approx(dp, abs=1e-9)
    got = audioset_metrics(scores, targets)
    assert got == pytest.approx({"mAP": 67 / 90, "AUC": 17 / 36, "d_prime": dp}, abs=1e-9)


def test_mean_metrics_match_brute_force_per_class():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (50, 7), generator=gen).double() / 6
    targets = (torch.rand(50, 7, generator=gen) < 0.3).double()
    targets[:, 0] = 0  # no positives: skipped everywhere
    cols = [(scores[:, c].tolist(), targets[:, c].int().tolist()) for c in range(1, 7)]
    aps = [_bf_ap(s, t) for s, t in cols]
    aucs = [_bf_auc(s, t) for s, t in cols]
    assert mean_average_precision(scores, targets) == pytest.approx(sum(aps) / 6, abs=1e-12)
    assert mean_roc_auc(scores, targets) == pytest.approx(sum(aucs) / 6, abs=1e-12)
    dp = sum(math.sqrt(2) * _phi_inverse(a) for a in aucs) / 6
    assert mean_d_prime(scores, targets) == pytest.approx(dp, abs=1e-9)


def test_mean_d_prime_of_a_perfect_class_is_infinite():
    scores = T([[0.9, 0.9], [0.1, 0.8], [0.2, 0.1]])
    targets = T([[1, 1], [0, 0], [0, 1]])  # class 0 ranked perfectly -> AUC 1 -> d' +inf
    assert mean_d_prime(scores, targets) == math.inf
    with pytest.raises(MetricError, match="no class"):
        mean_average_precision(scores, torch.zeros(3, 2))


# ------------------------------------------------------------------------------------ retrieval

SIM = T([
    [0.9, 0.1, 0.2, 0.3],   # q0, correct 0.9: nothing higher -> rank 1
    [0.5, 0.4, 0.6, 0.45],  # q1, correct 0.4: 0.5, 0.6, 0.45 higher -> rank 4
    [0.2, 0.2, 0.2, 0.2],   # q2, correct 0.2: three others tie -> rank 4
    [0.1, 0.7, 0.3, 0.7],   # q3, correct 0.7: one other ties -> rank 2
])


def test_ranks_hand_computed_4x4():
    # t2v ranks [1, 4, 4, 2]: sorted 1 2 4 4 -> MedR (2+4)/2 = 3, MeanR 11/4
    assert ranks(SIM).tolist() == [1, 4, 4, 2]
    got = retrieval_metrics(SIM)
    assert got == pytest.approx({"R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "MedR": 3.0, "MeanR": 2.75})


def test_bidirectional_hand_computed_4x4():
    # v2t columns: c0 [.9 .5 .2 .1] -> 1; c1 [.1 .4 .2 .7] -> 2; c2 [.2 .6 .2 .3] correct .2 ties t0 -> 4;
    # c3 [.3 .45 .2 .7] -> 1. ranks [1, 2, 4, 1]: R@1 50, MedR (1+2)/2 = 1.5, MeanR 2
    got = bidirectional_retrieval(SIM)
    assert got["t2v"] == pytest.approx(retrieval_metrics(SIM))
    assert got["v2t"] == pytest.approx({"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MedR": 1.5, "MeanR": 2.0})


def test_recall_at_5_and_10_boundaries():
    # one query over 12 candidates, the correct one (index 6) has 6 higher scores -> rank 7
    sim = T([[11.0, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    got = retrieval_metrics(sim, gt=T([6]))
    assert got == pytest.approx({"R@1": 0.0, "R@5": 0.0, "R@10": 100.0, "MedR": 7.0, "MeanR": 7.0})


def test_perfect_and_reversed_retrieval():
    n = 15
    assert ranks(torch.eye(n)).tolist() == [1] * n
    assert retrieval_metrics(-torch.eye(n)) == pytest.approx(
        {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "MedR": 15.0, "MeanR": 15.0})


# 5 texts, 3 videos; text -> video gt [0, 0, 1, 2, 2]
MULTI = T([
    [0.8, 0.1, 0.3],  # t0 -> v0: rank 1
    [0.2, 0.5, 0.2],  # t1 -> v0 (0.2): 0.5 and the tied 0.2 -> rank 3
    [0.3, 0.3, 0.9],  # t2 -> v1 (0.3): tied 0.3 and 0.9 -> rank 3
    [0.1, 0.6, 0.4],  # t3 -> v2 (0.4): 0.6 -> rank 2
    [0.0, 0.2, 0.7],  # t4 -> v2: rank 1
])
MULTI_GT = [0, 0, 1, 2, 2]


@pytest.mark.parametrize("gt", [
    T(MULTI_GT),
    MULTI_GT,
    [[0], [0], [1], [2], [2]],
    torch.nn.functional.one_hot(T(MULTI_GT), 3).bool(),
])
def test_multiple_captions_per_video(gt):
    # v2t: v0 correct {t0, t1}, best 0.8, no wrong text >= 0.8 -> 1; v1 correct {t2} 0.3: 0.5, 0.6 higher -> 3;
    # v2 correct {t3, t4}, best 0.7: wrong t2 0.9 higher -> 2
    got = bidirectional_retrieval(MULTI, gt)
    assert got["t2v"] == pytest.approx({"R@1": 40.0, "R@5": 100.0, "R@10": 100.0, "MedR": 2.0, "MeanR": 2.0})
    assert got["v2t"] == pytest.approx(
        {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MedR": 2.0, "MeanR": 2.0})


def test_ties_between_correct_candidates_do_not_count():
    # video 0 has captions t0 and t1 at the same score: rank 1; the wrong t2 also ties in the second case -> 2
    assert ranks(T([[0.5, 0.5, 0.1]]), [[0, 1]]).tolist() == [1]
    assert ranks(T([[0.5, 0.5, 0.5]]), [[0, 1]]).tolist() == [2]


def test_ranks_match_brute_force_random():
    rng = random.Random(7)
    for _ in range(10):
        nq, nc = rng.randint(1, 25), rng.randint(1, 25)
        sim = [[rng.randrange(4) / 4 for _ in range(nc)] for _ in range(nq)]
        gt = [sorted(rng.sample(range(nc), rng.randint(1, min(3, nc)))) for _ in range(nq)]
        want = [_bf_retrieval_rank(row, set(g)) for row, g in zip(sim, gt)]
        assert ranks(T(sim), gt).tolist() == want
        single = [g[0] for g in gt]
        want_single = [_bf_retrieval_rank(row, {g}) for row, g in zip(sim, single)]
        got = retrieval_metrics(T(sim), T(single))
        for k in (1, 5, 10):
            assert got[f"R@{k}"] == pytest.approx(100.0 * sum(r <= k for r in want_single) / nq)
        assert got["MeanR"] == pytest.approx(sum(want_single) / nq)
        # the official code's MedR: np.median of 0-based ranks, plus one
        assert got["MedR"] == pytest.approx(float(np.median(np.array(want_single) - 1)) + 1)


def test_median_rank_even_and_odd():
    assert median_rank(T([3, 1, 2])) == 2.0
    assert median_rank(T([4, 1, 3, 2])) == 2.5


def test_retrieval_rejects_bad_ground_truth():
    with pytest.raises(MetricError, match="no correct candidate"):
        ranks(SIM, [[0], [], [1], [2]])
    with pytest.raises(MetricError, match="outside"):
        ranks(SIM, T([0, 1, 2, 4]))
    with pytest.raises(MetricError, match="diagonal"):
        ranks(torch.zeros(3, 2))
    with pytest.raises(MetricError, match="one entry per query"):
        ranks(SIM, [0, 1])
    with pytest.raises(MetricError, match="has no correct candidate"):
        bidirectional_retrieval(MULTI, [0, 0, 0, 2, 2])  # video 1 has no caption
