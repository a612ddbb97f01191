"""NCE / MIL-NCE against a brute-force float64 computation, and global negatives over 2 gloo processes."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vattcli.core.losses import PretrainLoss, gather_with_grad, mil_nce, nce


def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _lse(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def brute_force(video, partners, valid, tau, symmetric=False, rows=None) -> float:
    """Mean over valid rows in `rows` (default all) of the VATT loss, by loops over i, j, l (reference §5)."""
    v = [_unit(r) for r in video.tolist()]
    p = [[_unit(r) for r in group] for group in partners.tolist()]
    ok = [True] * len(v) if valid is None else [bool(x) for x in valid.tolist()]
    rows = range(len(v)) if rows is None else rows
    losses = []
    for i in rows:
        if not ok[i]:
            continue
        pos = _lse([_dot(v[i], p[i][l]) / tau for l in range(len(p[i]))])
        to_partners = [_dot(v[i], p[j][l]) / tau for j in range(len(v)) if ok[j] for l in range(len(p[j]))]
        to_videos = [_dot(v[j], p[i][l]) / tau for j in range(len(v)) for l in range(len(p[i]))]
        if symmetric:
            losses.append(_lse(to_partners) - pos + _lse(to_videos) - pos)
        else:
            losses.append(_lse(to_partners + to_videos) - pos)
    return sum(losses) / len(losses) if losses else 0.0


def _inputs(batch: int, k: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, dim, generator=g, dtype=torch.float64) * 3.0
    partners = torch.randn(batch, k, dim, generator=g, dtype=torch.float64) * 0.5
    return video, partners


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("mask", [None, [1, 0, 1, 1, 0, 1]])
def test_matches_brute_force(k, symmetric, mask):
    video, partners = _inputs(6, k, seed=k)
    valid = None if mask is None else torch.tensor(mask, dtype=torch.bool)
    got = mil_nce(video, partners, valid=valid, symmetric=symmetric)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(brute_force(video, partners, valid, 0.07, symmetric), rel=1e-10)


def test_sum_reduction_is_mean_times_valid_count():
    video, partners = _inputs(6, 5, seed=3)
    valid = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    got = mil_nce(video, partners, valid=valid, reduction="sum")
    assert got.item() == pytest.approx(3 * brute_force(video, partners, valid, 0.07), rel=1e-10)


def test_nce_is_the_one_partner_case():
    video, audio = _inputs(5, 1, seed=4)
    audio = audio[:, 0]
    got = nce(video, audio, temperature=0.1)
    assert got.item() == pytest.approx(brute_force(video, audio[:, None], None, 0.1), rel=1e-10)


def test_temperature_changes_the_value_as_brute_force_says():
    video, partners = _inputs(6, 5, seed=5)
    low, high = mil_nce(video, partners, temperature=0.07), mil_nce(video, partners, temperature=0.5)
    assert low.item() == pytest.approx(brute_force(video, partners, None, 0.07), rel=1e-10)
    assert high.item() == pytest.approx(brute_force(video, partners, None, 0.5), rel=1e-10)
    assert abs(low.item() - high.item()) > 1e-3


@pytest.mark.parametrize("symmetric", [False, True])
def test_all_invalid_batch_gives_zero_and_zero_gradient(symmetric):
    video, partners = _inputs(4, 5, seed=6)
    video.requires_grad_(True)
    partners.requires_grad_(True)
    loss = mil_nce(video, partners, valid=torch.zeros(4, dtype=torch.bool), symmetric=symmetric)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(video.grad, torch.zeros_like(video))
    assert torch.equal(partners.grad, torch.zeros_like(partners))


def test_gradients_finite_and_masking_as_reference():
    """Invalid samples' captions get no gradient (never negatives); their videos do (second-half negatives)."""
    video, partners = _inputs(5, 5, seed=7)
    video.requires_grad_(True)
    partners.requires_grad_(True)
    valid = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    mil_nce(video, partners, valid=valid).backward()
    assert torch.isfinite(video.grad).all() and torch.isfinite(partners.grad).all()
    assert torch.equal(partners.grad[~valid], torch.zeros_like(partners.grad[~valid]))
    assert (partners.grad[valid].abs().sum(dim=(1, 2)) > 0).all()
    assert (video.grad.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradient_matches_finite_differences(symmetric):
    video, partners = _inputs(4, 3, dim=5, seed=8)
    valid = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    video.requires_grad_(True)
    partners.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, p: mil_nce(v, p, valid=valid, temperature=0.2, symmetric=symmetric), (video, partners)
    )


def test_low_precision_inputs_computed_in_float32():
    video, partners = _inputs(6, 5, seed=9)
    got = mil_nce(video.to(torch.bfloat16), partners.to(torch.bfloat16))
    expected = brute_force(video.to(torch.bfloat16).double(), partners.to(torch.bfloat16).double(), None, 0.07)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("combine", ["mean", "sum"])
def test_pretrain_loss_weighting(combine):
    g = torch.Generator().manual_seed(10)
    out = {
        "video_va": torch.randn(4, 512, generator=g, dtype=torch.float64),
        "audio_va": torch.randn(4, 512, generator=g, dtype=torch.float64),
        "video_vt": torch.randn(4, 256, generator=g, dtype=torch.float64, requires_grad=True),
        "text_vt": torch.randn(4, 5, 256, generator=g, dtype=torch.float64, requires_grad=True),
    }
    for key in ("video_va", "audio_va"):
        out[key].requires_grad_(True)
    text_valid = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    got = PretrainLoss(va_weight=2.0, vt_weight=0.5, combine=combine)(out, text_valid)
    l_va = brute_force(out["video_va"].detach(), out["audio_va"].detach()[:, None], None, 0.07)
    l_vt = brute_force(out["video_vt"].detach(), out["text_vt"].detach(), text_valid, 0.07)
    weighted = 2.0 * l_va + 0.5 * l_vt
    expected = weighted / 2.5 if combine == "mean" else weighted
    assert got["loss_va"].item() == pytest.approx(l_va, rel=1e-10)
    assert got["loss_vt"].item() == pytest.approx(l_vt, rel=1e-10)
    assert got["loss"].item() == pytest.approx(expected, rel=1e-10)
    got["loss"].backward()
    for key, tensor in out.items():
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0, key


def test_pretrain_loss_reads_text_valid_from_outputs_and_skips_zero_weight():
    video, partners = _inputs(4, 5, seed=11)
    text_valid = torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    got = PretrainLoss(va_weight=0.0)({"video_vt": video, "text_vt": partners, "text_valid": text_valid})
    l_vt = brute_force(video, partners, text_valid, 0.07)
    assert got["loss_va"].item() == 0.0
    assert got["loss"].item() == pytest.approx(l_vt, rel=1e-10)


@pytest.mark.parametrize(
    "video_shape, partner_shape, kwargs",
    [
        ((4, 8), (4, 5, 7), {}),
        ((4, 8), (3, 5, 8), {}),
        ((4, 8), (4, 5, 8), {"reduction": "max"}),
        ((4, 8), (4, 5, 8), {"temperature": 0.0}),
        ((4, 8), (4, 5, 8), {"valid": torch.ones(3, dtype=torch.bool)}),
    ],
)
def test_bad_arguments_raise(video_shape, partner_shape, kwargs):
    with pytest.raises(ValueError):
        mil_nce(torch.randn(*video_shape), torch.randn(*partner_shape), **kwargs)


def test_pretrain_loss_bad_config_raises():
    with pytest.raises(ValueError):
        PretrainLoss(combine="max")
    with pytest.raises(ValueError):
        PretrainLoss(va_weight=0.0, vt_weight=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Two gloo processes, each holding half of the batch.

_DIST_CASES = {
    # name: (K, valid mask of the global batch, symmetric); equal valid counts per half except "one_rank_empty"
    "milnce": (5, [1, 0, 1, 1, 1, 0, 1, 1], False),
    "milnce_symmetric": (5, [1, 0, 1, 1, 1, 0, 1, 1], True),
    "nce": (1, [1] * 8, False),
    "one_rank_empty": (5, [0, 0, 0, 0, 1, 0, 1, 1], False),
}


def _case_tensors(name: str):
    k, mask, symmetric = _DIST_CASES[name]
    video, partners = _inputs(len(mask), k, seed=20 + k)
    return video, partners, torch.tensor(mask, dtype=torch.bool), symmetric


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name in _DIST_CASES:
            video, partners, valid, symmetric = _case_tensors(name)
            half = video.shape[0] // world
            local = slice(rank * half, (rank + 1) * half)
            v = video[local].clone().requires_grad_(True)
            p = partners[local].clone().requires_grad_(True)
            loss = mil_nce(v, p, valid=valid[local], symmetric=symmetric)
            loss.backward()
            results[name] = {"loss": loss.detach(), "video_grad": v.grad, "partners_grad": p.grad}
        results["gathered"] = gather_with_grad(torch.full((2, 3), float(rank)))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, str(tmp / "rendezvous"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_gather_with_grad_orders_rows_by_rank(two_rank_results):
    expected = torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2)
    for res in two_rank_results:
        assert torch.equal(res["gathered"], expected)
    assert torch.equal(gather_with_grad(torch.ones(2)), torch.ones(2))


@pytest.mark.parametrize("name", ["milnce", "milnce_symmetric", "nce"])
def test_two_ranks_match_one_process_on_the_full_batch(two_rank_results, name):
    """Scaling convention (W = 2 ranks, equal valid counts per rank).

    Loss: the mean of the per-rank losses equals one process's loss on the concatenated batch.
    Gradient: rank r's input gradient is d(L_0 + L_1)/d x_r (the gather's backward sums over ranks), so DDP's 1/W
    averaging makes it d((L_0 + L_1)/W)/d x_r, which is the single-process full-batch gradient: concat(grads)/W == it.
    """
    video, partners, valid, symmetric = _case_tensors(name)
    video.requires_grad_(True)
    partners.requires_grad_(True)
    full = mil_nce(video, partners, valid=valid, symmetric=symmetric)
    full.backward()
    ranks = [res[name] for res in two_rank_results]
    expected = brute_force(video.detach(), partners.detach(), valid, 0.07, symmetric)
    assert full.item() == pytest.approx(expected, rel=1e-10)
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(full.item(), rel=1e-10)
    torch.testing.assert_close(torch.cat([r["video_grad"] for r in ranks]) / 2, video.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.cat([r["partners_grad"] for r in ranks]) / 2, partners.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["milnce", "one_rank_empty"])
def test_each_rank_uses_global_negatives_for_its_own_rows(two_rank_results, name):
    video, partners, valid, symmetric = _case_tensors(name)
    for rank, res in enumerate(two_rank_results):
        expected = brute_force(video, partners, valid, 0.07, symmetric, rows=range(4 * rank, 4 * rank + 4))
        assert res[name]["loss"].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
        assert torch.isfinite(res[name]["video_grad"]).all()


def test_rank_without_valid_rows_gives_zero_loss_but_its_videos_are_negatives(two_rank_results):
    """Rank 0 has no captioned sample: loss 0, captions get no gradient, videos do (negatives of rank 1's captions)."""
    empty = two_rank_results[0]["one_rank_empty"]
    assert empty["loss"].item() == 0.0
    assert torch.equal(empty["partners_grad"], torch.zeros_like(empty["partners_grad"]))
    assert (empty["video_grad"].abs().sum(dim=1) > 0).all()
