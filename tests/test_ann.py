"""Approximate search (``vattcli.ann``): the plan rules, and a built FAISS index checked against a float64 brute force
written here, its file round trip, corrupt files, and a missing faiss."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from vattcli.ann import EXACT_BELOW, AnnIndex, FaissMissing, choose_plan, set_threads
from vattcli.errors import VattError

FAISS_LINE = "approximate search needs faiss: pip install 'vattcli[faiss]'"
DIM = 128


def clustered(n: int, rng: np.random.Generator, dim: int = DIM, clusters: int = 100, rank: int = 16) -> np.ndarray:
    """Unit rows from Gaussian clusters in a random rank-16 subspace plus isotropic noise (fixed centres: seed 1)."""
    setup = np.random.default_rng(1)
    basis = np.linalg.qr(setup.standard_normal((dim, rank)))[0]
    centres = setup.standard_normal((clusters, rank))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    inside = centres[rng.integers(clusters, size=n)] + 0.8 / math.sqrt(rank) * rng.standard_normal((n, rank))
    x = inside @ basis.T + 0.4 / math.sqrt(dim) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by float64 inner product."""
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ plan rules


def test_exact_below_the_threshold_ivf_from_it():
    assert choose_plan(EXACT_BELOW - 1, 512)["kind"] == "exact"
    assert choose_plan(EXACT_BELOW, 512)["kind"] == "ivf"
    assert choose_plan(5000, 256, exact_below=1000)["kind"] == "ivf"
    assert choose_plan(999, 256, exact_below=1000) == {"kind": "exact", "n": 999, "dim": 256,
                                                        "metric": "inner_product", "bytes_per_item": 1024}


@pytest.mark.parametrize("n, nlist", [
    (1_000_000, 4096),   # 4*sqrt(1e6) = 4000 -> 4096
    (100_000, 1024),     # 4*sqrt(1e5) = 1265 -> 1024 (log2 = 10.3)
    (10_000, 256),       # 4*sqrt(1e4) = 400 -> 512, but 10000 / 39 = 256.4 caps it at 256
    (1_000, 16),         # 126 -> 128, capped by 1000 / 39 = 25.6 -> 16
    (10_000_000, 16384), # 12649 -> 16384 (log2 = 13.6)
])
def test_nlist_follows_n_and_every_list_trains_on_39_points(n, nlist):
    plan = choose_plan(n, 512, exact_below=0)
    assert plan["nlist"] == nlist
    assert plan["n"] >= 39 * plan["nlist"]
    assert plan["train_size"] == min(n, 64 * nlist)
    assert plan["factory"].startswith(f"IVF{nlist}")


def test_default_plan_at_a_million_is_sq8_behind_a_fast_scan_prefilter():
    plan = choose_plan(1_000_000, 512)
    assert (plan["kind"], plan["metric"]) == ("ivf", "inner_product")
    assert (plan["factory"], plan["code"], plan["scan"], plan["k_factor"]) == (
        "IVF4096,PQ64x4fs,Refine(SQ8)", "SQ8", "PQ64x4fs", 16)
    # 512 SQ8 bytes + 64 half-byte fast-scan codes + 8 id bytes + 4096 * 512 * 4 centroid bytes / 1e6 = 560.39
    assert plan["bytes_per_item"] == pytest.approx(560.39, abs=0.01)


def test_many_lists_get_an_hnsw_coarse_quantizer():
    assert choose_plan(10_000_000, 256)["factory"] == "IVF16384_HNSW32,PQ32x4fs,Refine(SQ8)"
    assert choose_plan(1_000_000, 256)["factory"] == "IVF4096,PQ32x4fs,Refine(SQ8)"


@pytest.mark.parametrize("budget, factory", [
    (3_000_000_000, "IVF4096,PQ64x4fs,RFlat"),        # 2048 + 32 + 8 + 8.39 bytes per item = 2.097 GB fits
    (2_080_000_000, "IVF4096,Flat"),                  # the pre-filter's 32 bytes do not fit; 2.064 GB does
    (2_000_000_000, "IVF4096,PQ64x4fs,Refine(SQ8)"),  # no float32 code fits; 512 + 32 + 16.39 = 0.56 GB does
    (540_000_000, "IVF4096,SQ8"),                     # 528 MB without the pre-filter
    (300_000_000, "IVF4096,PQ128"),                   # 128 + 16.39 = 144 MB
    (100_000_000, "IVF4096,PQ64"),                    # PQ128 is 144 MB, PQ64 80 MB
    (30_000_000, "IVF4096,PQ8"),                      # 24.4 MB
])
def test_a_budget_selects_the_most_accurate_code_that_fits(budget, factory):
    plan = choose_plan(1_000_000, 512, memory_budget=budget)
    assert plan["factory"] == factory
    assert plan["bytes_per_item"] * 1_000_000 <= budget


def test_a_small_collection_whose_vectors_exceed_the_budget_gets_a_compressed_index():
    # exact needs 20000 * 2048 = 41 MB; SQ8 with the pre-filter 604.4 B/item = 12.09 MB; plain SQ8 572.4 B = 11.4 MB
    plan = choose_plan(20_000, 512, memory_budget=12_000_000)
    assert (plan["kind"], plan["factory"]) == ("ivf", "IVF512,SQ8")


@pytest.mark.parametrize("n, factory", [
    (623, "IVF8,SQ8"),                       # trains on 8 * 64 = 512 points: too few for 32 x 16 4-bit centroids
    (624, "IVF16,PQ32x4fs,Refine(SQ8)"),     # 624 = 39 points for each of the 16 centroids
    (3, "IVF1,SQ8"),
])
def test_codes_are_only_planned_where_the_items_can_train_their_codebooks(n, factory):
    assert choose_plan(n, 256, exact_below=0)["factory"] == factory


def test_product_quantisation_needs_39_points_per_256_centroids():
    with pytest.raises(VattError) as exc:  # 5000 items cannot train PQ: the smallest code left is SQ8
        choose_plan(5000, 256, memory_budget=500_000)
    assert "the smallest index (IVF128,SQ8)" in one_line(exc)
    # 9984 items: 256 lists of 256 * 4 bytes = 26.3 B/item; PQ64 = 98.3 B/item (981 kB), PQ32 = 66.3 B/item (662 kB)
    assert choose_plan(9984, 256, memory_budget=700_000)["factory"] == "IVF256,PQ32"


def test_an_impossible_budget_is_one_line():
    with pytest.raises(VattError) as exc:
        choose_plan(1_000_000, 512, memory_budget=1_000_000)
    assert one_line(exc).startswith("memory budget 1,000,000 bytes cannot hold 1,000,000 vectors of dim 512")


@pytest.mark.parametrize("args, field", [((0, 512), "index size"), ((10, 0), "index dimension"),
                                         ((10, 512, -1), "memory budget")])
def test_bad_plan_arguments_are_one_line(args, field):
    n, dim, *budget = args
    with pytest.raises(VattError) as exc:
        choose_plan(n, dim, memory_budget=budget[0] if budget else None)
    assert one_line(exc).startswith(field)


# ------------------------------------------------------------------------------------------------ built index


@pytest.fixture(scope="module")
def faiss():
    """faiss on one thread: these indexes are small, and OpenMP threads spinning on a shared machine cost more than
    they save (measured: PQ training 3.7 s on one thread, 12 s on two under load)."""
    module = pytest.importorskip("faiss")
    before = module.omp_get_max_threads()
    module.omp_set_num_threads(1)
    yield module
    module.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return clustered(30_000, rng), clustered(200, rng)


@pytest.fixture(scope="module")
def built(faiss, data) -> dict[str, AnnIndex]:
    x, _ = data
    # 30000 items, d=128: plain SQ8 is 128 + 8 + 512 * 128 * 4 / 30000 = 144.7 B/item (4.34 MB), with the pre-filter
    # 152.7 B/item (4.58 MB); a 4.4 MB budget selects plain SQ8
    plans = {"SQ8+fs": choose_plan(len(x), DIM, exact_below=1000),
             "Flat+fs": choose_plan(len(x), DIM, exact_below=1000, memory_budget=10**9),
             "SQ8": choose_plan(len(x), DIM, exact_below=1000, memory_budget=4_400_000)}
    assert [p["factory"] for p in plans.values()] == ["IVF512,PQ16x4fs,Refine(SQ8)", "IVF512,PQ16x4fs,RFlat",
                                                      "IVF512,SQ8"]
    return {name: AnnIndex.build(x, plan, target_recall=0.95) for name, plan in plans.items()}


@pytest.mark.parametrize("name", ["SQ8+fs", "Flat+fs", "SQ8"])
def test_recall_at_10_against_float64_brute_force(built, data, name):
    x, q = data
    index = built[name]
    assert len(index) == len(x)
    scores, ids = index.search(q, 10)
    assert scores.shape == ids.shape == (len(q), 10) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert recall_at(ids, brute_force(x, q, 10)) >= 0.95
    assert index.plan["target_met"] and index.plan["recall_at_10"] >= 0.95
    assert index.plan["nprobe"] in [2**i for i in range(14)] and index.plan["nprobe"] <= index.plan["nlist"]
    assert index.plan["tuned_on"] == 200
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


# SQ8 stores each dimension as one of 256 steps of its trained range (about 8/sqrt(d) wide for unit rows), so a
# coordinate is off by up to half a step, ~0.0014 at d=128; the inner product with a unit query sums those errors:
# typically ~1e-3, at most a few times that over 2000 scores. Flat stores the float32 rows: float32 rounding only.
# The pre-filter only picks candidates: the scores come from the stored code.
@pytest.mark.parametrize("name, tolerance", [("Flat+fs", 1e-4), ("SQ8+fs", 5e-3), ("SQ8", 5e-3)])
def test_scores_are_the_inner_products_of_the_returned_ids(built, data, name, tolerance):
    x, q = data
    scores, ids = built[name].search(q, 10)
    expected = np.einsum("qd,qkd->qk", q.astype(np.float64), x[ids].astype(np.float64))
    assert np.abs(scores - expected).max() <= tolerance


def test_k_is_clipped_to_the_size_and_no_id_is_ever_minus_one(faiss):
    rng = np.random.default_rng(3)
    x, q = clustered(700, rng, dim=32), clustered(5, rng, dim=32)
    index = AnnIndex.build(x, choose_plan(700, 32, exact_below=0), tune_queries=50)
    assert index.plan["nlist"] == 16
    _, ids = index.search(q, 700)  # far more than the probed lists hold: searched again with more lists
    assert ids.shape == (5, 700) and all(sorted(row) == list(range(700)) for row in ids)
    _, ids = index.search(q[0], 5000)
    assert ids.shape == (1, 700) and ids.min() >= 0


def test_structureless_data_drops_the_prefilter_that_cannot_reach_the_target(faiss):
    """Uniform random vectors: 4-bit codes of 8 dimensions rank neighbours no better than chance at these gaps, so
    even 256 candidates per result miss; the same lists scanned with SQ8 itself reach the target."""
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((20_000, DIM)), rng.standard_normal((200, DIM))
    x, q = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, q))
    plan = choose_plan(20_000, DIM, exact_below=0)
    assert plan["factory"] == "IVF512,PQ16x4fs,Refine(SQ8)"
    index = AnnIndex.build(x.astype(np.float32), plan)
    assert (index.plan["factory"], index.plan["scan"]) == ("IVF512,SQ8", None)
    assert index.plan["prefilter_recall_at_10"] < 0.95 <= index.plan["recall_at_10"]
    assert recall_at(index.search(q, 10)[1], brute_force(x, q, 10)) >= 0.95


def test_a_code_below_the_target_records_its_measured_recall(faiss):
    """8 bytes per 64-d vector lose neighbours that no probing brings back: the plan says so, with a recall that
    matches what fresh queries see."""
    rng = np.random.default_rng(8)
    x, q = clustered(10_000, rng, dim=64), clustered(200, rng, dim=64)
    index = AnnIndex.build(x, choose_plan(10_000, 64, memory_budget=250_000))  # PQ8: 8 + 8 + 6.6 B/item
    assert index.plan["factory"] == "IVF256,PQ8" and index.plan["target_met"] is False
    measured = recall_at(index.search(q, 10)[1], brute_force(x, q, 10))
    assert measured < 0.95 and abs(index.plan["recall_at_10"] - measured) < 0.05


@pytest.mark.parametrize("n", [1, 3, 7])
def test_a_handful_of_items_builds_and_returns_them_all(faiss, n):
    x = clustered(n, np.random.default_rng(7), dim=32)
    index = AnnIndex.build(x, choose_plan(n, 32, exact_below=0))
    _, ids = index.search(x, 10)
    assert ids.shape == (n, n) and all(sorted(row) == list(range(n)) for row in ids)
    assert list(ids[:, 0]) == list(range(n))  # each item's best match is itself


def test_hnsw_coarse_quantizer_searches_as_well(faiss):
    rng = np.random.default_rng(4)
    x, q = clustered(5000, rng, dim=32), clustered(100, rng, dim=32)
    plan = {"kind": "ivf", "n": 5000, "dim": 32, "metric": "inner_product", "nlist": 64, "quantizer": "hnsw32",
            "code": "Flat", "scan": "PQ4x4fs", "factory": "IVF64_HNSW32,PQ4x4fs,RFlat", "k_factor": 16,
            "train_size": 4096, "bytes_per_item": 138.4}
    index = AnnIndex.build(x, plan)
    scores, ids = index.search(q, 10)
    assert recall_at(ids, brute_force(x, q, 10)) >= 0.95
    assert np.allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), atol=1e-4)


def test_an_exact_plan_builds_no_faiss_index(faiss, data):
    with pytest.raises(VattError) as exc:
        AnnIndex.build(data[0][:100], choose_plan(100, DIM))
    assert "only an 'ivf' plan" in one_line(exc)


def test_vectors_of_the_wrong_width_are_one_line(built, data):
    with pytest.raises(VattError) as exc:
        built["SQ8+fs"].search(data[1][:, :64], 10)
    assert one_line(exc) == f"queries: expected shape (N, {DIM}), got (200, 64)"


def test_non_finite_vectors_are_one_line(faiss):
    x = clustered(2000, np.random.default_rng(6), dim=16)
    x[1500, 3] = np.nan
    with pytest.raises(VattError) as exc:
        AnnIndex.build(x, choose_plan(2000, 16, exact_below=0))
    assert one_line(exc) == "vectors: holds NaN or infinite values"


def test_set_threads_reaches_faiss(faiss):
    before = faiss.omp_get_max_threads()
    try:
        set_threads(before + 1)
        assert faiss.omp_get_max_threads() == before + 1
    finally:
        faiss.omp_set_num_threads(before)
    with pytest.raises(VattError):
        set_threads(0)


# ------------------------------------------------------------------------------------------------ files


def test_save_load_round_trip_gives_identical_results(built, data, tmp_path):
    x, q = data
    index = built["SQ8+fs"]
    index.save(tmp_path / "ann-vt.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["ann-vt.faiss"]  # no temporary file left
    assert len(index.plan["sha256"]) == 64
    loaded = AnnIndex.load(tmp_path / "ann-vt.faiss", index.plan)
    assert len(loaded) == len(x) and loaded.plan == index.plan
    for got, want in zip(loaded.search(q, 10), index.search(q, 10)):
        np.testing.assert_array_equal(got, want)


def test_saving_into_a_missing_folder_is_one_line_and_leaves_nothing(built, tmp_path):
    with pytest.raises(VattError) as exc:
        built["SQ8+fs"].save(tmp_path / "absent" / "ann.faiss")
    assert one_line(exc).startswith(f"cannot write ANN index {tmp_path / 'absent' / 'ann.faiss'}")
    assert list(tmp_path.iterdir()) == []


def _truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _flip_middle(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1:]


@pytest.mark.parametrize("damage, expected", [
    (_truncate, "is unreadable or corrupt"),
    (lambda raw: b"not an index" * 100, "is unreadable or corrupt"),
    (lambda raw: b"", "is unreadable or corrupt"),
    (_flip_middle, "its sha256 differs"),  # FAISS reads it without complaint: only the recorded hash catches it
])
def test_a_corrupt_file_is_one_line(built, tmp_path, damage, expected):
    index = built["SQ8+fs"]
    path = tmp_path / "ann.faiss"
    index.save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(VattError) as exc:
        AnnIndex.load(path, index.plan)
    assert one_line(exc).startswith(f"ANN index {path} ") and expected in str(exc.value)


@pytest.mark.parametrize("change", [{"dim": DIM + 1}, {"n": 29_999}, {"nlist": 1024}])
def test_a_file_that_does_not_match_its_plan_is_one_line(built, tmp_path, change):
    index = built["SQ8+fs"]
    path = tmp_path / "ann.faiss"
    index.save(path)
    plan = {k: v for k, v in index.plan.items() if k != "sha256"} | change
    with pytest.raises(VattError) as exc:
        AnnIndex.load(path, plan)
    assert "does not match index.json" in one_line(exc)


def test_a_missing_file_or_plan_field_is_one_line(built, tmp_path):
    with pytest.raises(VattError) as exc:
        AnnIndex.load(tmp_path / "none.faiss", built["SQ8+fs"].plan)
    assert one_line(exc).startswith(f"cannot read ANN index {tmp_path / 'none.faiss'}")
    with pytest.raises(VattError) as exc:
        AnnIndex.load(tmp_path / "none.faiss", {"kind": "ivf", "dim": DIM})
    assert "expected an 'ivf' plan with dim, n, nlist and nprobe" in one_line(exc)


# ------------------------------------------------------------------------------------------------ no faiss


def test_without_faiss_every_entry_point_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    x = clustered(2000, np.random.default_rng(5), dim=16)
    plan = choose_plan(2000, 16, exact_below=0)  # planning needs no faiss
    calls = [lambda: AnnIndex.build(x, plan), lambda: AnnIndex.load(tmp_path / "a.faiss", plan),
             lambda: set_threads(2)]
    for call in calls:
        with pytest.raises(FaissMissing) as exc:
            call()
        assert one_line(exc) == FAISS_LINE
        assert isinstance(exc.value, VattError)
