"""Which index to build for a collection: exact search or an IVF family FAISS index, chosen from the collection size
and a memory budget the way autofaiss does [autofaiss: index_utils.get_optimal_nb_clusters, get_optimal_index_keys].

The plan is a plain JSON-able dict, stored in ``index.json`` next to the embeddings, so a later query process builds
nothing: it reads the plan and loads the file the plan describes (``AnnIndex.load``).

Rules, and why:

- **Exact below ``EXACT_BELOW`` items.** One matmul and a top-k over every item is exact, needs no training and no
  second copy of the vectors. Its cost grows with ``n``: measured on one thread (AMD EPYC Zen 4, torch 2.13, random
  unit vectors, out of cache) about 0.22 ms per 1,000 items at d=512 and 0.14 ms at d=256 -- 6.5 ms at 30k items
  (d=512), 22 ms at 100k, 220 ms at 1M. The issue's latency target is 5 ms on one thread, which exact search meets up
  to about 25k items at d=512 and 35k at d=256; past that an IVF index answers in about a millisecond
  (bench/bench_ann.py).
- **nlist** (number of inverted lists) follows ``n``: the power of two nearest ``4 * sqrt(n)``, the low end of the
  ``4..16 * sqrt(n)`` range FAISS recommends, so the coarse search (``nlist * dim`` multiply-adds per query) stays
  cheap; capped so that every list trains on at least 39 points (FAISS warns below that). From ``2**14`` lists the
  coarse quantizer is an HNSW graph instead of a flat scan, as autofaiss does, so a query does not pay ``nlist * dim``.
- **Code** (how each vector is stored), most accurate first: ``Flat`` (float32, ``4*dim`` bytes), ``SQ8`` (one byte
  per dimension), then product quantisation ``PQm`` (``m`` bytes; ``m`` from ``dim/4`` down to 8). ``Flat`` and
  ``SQ8`` are scanned through a **fast-scan pre-filter** where the budget allows its ``dim/16`` extra bytes: the lists
  hold 4-bit PQ codes (``PQ{dim/8}x4fs``, scored with SIMD lookups) that pick ``K_FACTOR * k`` candidates, which the
  stored code then re-scores (FAISS ``IndexRefine``). Measured on 200k clustered unit vectors at d=512 (6,000
  clusters, IVF2048, one thread): at ``nprobe`` 64..512 the pre-filter with ``K_FACTOR`` 16 keeps recall@10 within
  0.001 of scanning the stored code itself, and a query takes 0.27-0.70 ms instead of 0.45-3.2 ms (SQ8) or 1.0-7.5 ms
  (Flat); at 1M items (30,000 clusters, IVF4096, nprobe 512) 2.0 ms instead of 13 ms with SQ8 alone. ``build``
  tunes the number of candidates, and drops the pre-filter where it cannot reach the target recall (structureless
  data: uniform random vectors). With a budget the most accurate code that fits is taken (the pre-filtered variant
  first: same accuracy, faster). Without one, pre-filtered ``SQ8`` (``DEFAULT_CODE``): its recall@10 stays within
  0.005 of ``Flat`` at the same ``nprobe`` (0.967 vs 0.972 at 128; 200k items, 3,000 looser clusters), for a quarter
  of the memory -- and the float32 vectors stay in the index folder anyway.
- Training uses a sample of ``TRAIN_PER_LIST * nlist`` points (at most ``n``): k-means cost is linear in the sample,
  and 64 points per list is enough for centroids (FAISS subsamples at 256 per list itself).
"""

from __future__ import annotations

import math
from typing import Any

from vattcli.errors import VattError

EXACT_BELOW = 30_000
DEFAULT_CODE = "SQ8"
K_FACTOR = 16  # candidates per result the fast-scan pre-filter hands to the stored code (build tunes it upwards)
MIN_POINTS_PER_LIST = 39
TRAIN_PER_LIST = 64
HNSW_QUANTIZER_FROM = 2**14
ID_BYTES = 8  # int64 id stored next to every code in an inverted list
_HNSW_BYTES_PER_CENTROID = 32 * 2 * 4  # level-0 links of an HNSW32 graph


class PlanError(VattError):
    """A collection size, dimension or memory budget that no index kind fits."""


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` items: power of two nearest ``4*sqrt(n)``, at most ``n / 39`` (and at least 1)."""
    target = 2 ** round(math.log2(4 * math.sqrt(n)))
    cap = max(1, n // MIN_POINTS_PER_LIST)
    return max(1, min(target, 2 ** int(math.log2(cap))))


def fast_scan_m(dim: int) -> int | None:
    """Sub-quantizers of the 4-bit fast-scan pre-filter (8 dimensions each), or None when ``dim`` does not split."""
    return dim // 8 if dim % 8 == 0 and dim >= 16 else None


def train_size_for(n: int) -> int:
    return min(n, TRAIN_PER_LIST * nlist_for(n))


def codes_for(dim: int, n: int) -> list[tuple[str, bool, int]]:
    """(code, pre-filtered, bytes per vector), most accurate first (module docstring), among those whose codebooks
    ``n`` items can train: 39 points per centroid, 16 centroids per 4-bit and 256 per 8-bit sub-quantizer."""
    m = fast_scan_m(dim) if train_size_for(n) >= MIN_POINTS_PER_LIST * 16 else None
    codes: list[tuple[str, bool, int]] = []
    for code, size in (("Flat", 4 * dim), ("SQ8", dim)):
        if m:
            codes.append((code, True, size + m // 2))
        codes.append((code, False, size))
    m = dim // 4
    while m >= 8 and train_size_for(n) >= MIN_POINTS_PER_LIST * 256:
        if dim % m == 0:
            codes.append((f"PQ{m}", False, m))
        m //= 2
    return codes


def _ivf_plan(n: int, dim: int, code: str, prefilter: bool, code_bytes: int) -> dict[str, Any]:
    nlist = nlist_for(n)
    hnsw = nlist >= HNSW_QUANTIZER_FROM
    quantizer_bytes = nlist * (4 * dim + (_HNSW_BYTES_PER_CENTROID if hnsw else 0))
    coarse = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    scan = f"PQ{fast_scan_m(dim)}x4fs" if prefilter else None
    stored = ("RFlat" if code == "Flat" else f"Refine({code})") if prefilter else code
    plan = {"kind": "ivf", "n": n, "dim": dim, "metric": "inner_product", "nlist": nlist,
            "quantizer": "hnsw32" if hnsw else "flat", "code": code, "scan": scan,
            "factory": ",".join(filter(None, (coarse, scan, stored))), "train_size": train_size_for(n),
            "bytes_per_item": round(code_bytes + ID_BYTES + quantizer_bytes / n, 2)}
    if prefilter:
        plan["k_factor"] = K_FACTOR
    return plan


def _check_args(n: int, dim: int, memory_budget: int | None, exact_below: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise PlanError(f"index size: expected a positive number of items, got {n!r}")
    if not isinstance(dim, int) or dim < 1:
        raise PlanError(f"index dimension: expected a positive integer, got {dim!r}")
    if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget < 1):
        raise PlanError(f"memory budget: expected a positive number of bytes, got {memory_budget!r}")
    if not isinstance(exact_below, int) or exact_below < 0:
        raise PlanError(f"exact_below: expected a non-negative item count, got {exact_below!r}")


def _fits(plan: dict[str, Any], memory_budget: int | None) -> bool:
    return memory_budget is None or plan["bytes_per_item"] * plan["n"] <= memory_budget


def choose_plan(n: int, dim: int, *, memory_budget: int | None = None,
                exact_below: int = EXACT_BELOW) -> dict[str, Any]:
    """The index plan for ``n`` unit vectors of ``dim`` dimensions (see the module docstring for the rules).

    ``memory_budget`` bounds the bytes of the stored vectors and ids (None: no bound). Raises ``PlanError`` (a
    ``VattError``, one line) when not even the smallest code fits the budget.
    """
    _check_args(n, dim, memory_budget, exact_below)
    exact = {"kind": "exact", "n": n, "dim": dim, "metric": "inner_product", "bytes_per_item": 4 * dim}
    if n < exact_below and _fits(exact, memory_budget):
        return exact
    codes = codes_for(dim, n)
    if memory_budget is None:
        return _ivf_plan(n, dim, *next(c for c in codes if c[0] == DEFAULT_CODE))
    for candidate in codes:
        plan = _ivf_plan(n, dim, *candidate)
        if _fits(plan, memory_budget):
            return plan
    smallest = _ivf_plan(n, dim, *codes[-1])
    need = smallest["bytes_per_item"] * n
    raise PlanError(f"memory budget {memory_budget:,} bytes cannot hold {n:,} vectors of dim {dim}: the smallest index "
                    f"({smallest['factory']}) needs about {need:,.0f} bytes ({smallest['bytes_per_item']} per item)")
