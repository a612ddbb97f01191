"""Approximate search (``vattcli.ann``, the FAISS index ``choose_plan`` picks) side by side with exact search, one run.

SYNTHETIC DATA, stated as such in the output. For each dimension (512 = S_va, 256 = S_vt [P §3.3]) and each data kind,
``--n`` unit vectors are generated, the planned index is built (with every thread) and tuned to recall@10 >= 0.95, and
both searches answer the same fresh queries:

- ``clustered`` (the main case): real embeddings are clustered with a low intrinsic dimension, so items are drawn from
  a mixture of ``--clusters`` Gaussian clusters whose centres and spreads live in a random ``--rank``-dimensional
  subspace, plus isotropic noise in all dimensions, then L2-normalised; queries are fresh draws from the same mixture.
  The defaults (rank 64, offset norm 0.8, noise norm 0.4, 3000 clusters) make the main case. Printed per case: the
  local intrinsic dimension (LID, the maximum-likelihood estimate over 20 neighbours, Levina & Bickel 2004): about 18
  at 100k items and 35 at 1M here, 120-180 for uniform vectors. At 1M a cluster holds ~330 items, so a query's
  neighbours sit in one or two inverted lists and this case is easy; more, smaller clusters (--clusters 30000, ~33
  items each, LID ~19) put them across many lists: 512 of 4096 probed for recall@10 0.95. The figure depends on the
  data: only real embeddings settle it.
- ``uniform``: random unit vectors, the worst case (no structure at all for the index to exploit); queries likewise.

Reported per case: recall@10 of the approximate index against exact top-10 (``--queries`` queries), p50/p95 latency of
one query on ONE thread (``faiss.omp_set_num_threads(1)`` and ``torch.set_num_threads(1)``) for both -- exact is the
float32 matmul + top-k ``vatt retrieve`` runs -- their ratio, the build time (train + add + tune), and memory per item
(serialized index bytes / N; exact: the float32 row). Targets from issue 11: recall@10 >= 0.95, p50 <= 5 ms at 1M.

    python bench/bench_ann.py                                  # 1M items, d=512 and 256, clustered and uniform
    python bench/bench_ann.py --n 200000 --dims 256 --data clustered --json ann.json
    python bench/bench_ann.py --data clustered --clusters 30000   # smaller clusters: the harder case
    python bench/bench_ann.py --memory-budget 1000000000000    # a budget that fits float32 codes (IVF...,Flat)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import faiss
import numpy as np
import torch
from timing import emit

from vattcli.ann import AnnIndex, choose_plan

TARGET_RECALL = 0.95
TARGET_P50_MS = 5.0
K = 10


class Mixture:
    """Gaussian clusters in a random ``rank``-dimensional subspace of R^d plus isotropic noise, normalised."""

    def __init__(self, dim: int, clusters: int, rank: int, rng: np.random.Generator, spread: float,
                 noise: float) -> None:
        self.basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].astype(np.float32)  # (d, r) orthonormal
        centres = rng.standard_normal((clusters, rank)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)  # (C, r)
        self.spread, self.noise = spread, noise  # expected norm of the in-subspace offset and of the noise

    def sample(self, n: int, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
        dim, rank = self.basis.shape
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            member = self.centres[rng.integers(len(self.centres), size=m)]
            inside = member + self.spread / np.sqrt(rank) * rng.standard_normal((m, rank), dtype=np.float32)
            x = inside @ self.basis.T + self.noise / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def uniform(n: int, dim: int, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(x: torch.Tensor, q: torch.Tensor, k: int, chunk: int = 100) -> np.ndarray:
    """Exact top-k row ids (float32 matmul + top-k), queries in chunks to bound the (chunk, N) score matrix."""
    return torch.cat([torch.mm(q[i:i + chunk], x.t()).topk(k, dim=1).indices
                      for i in range(0, len(q), chunk)]).numpy()


def local_intrinsic_dim(x: np.ndarray, rng: np.random.Generator, k: int = 20, count: int = 500) -> float:
    """Median maximum-likelihood LID (Levina & Bickel 2004) over ``count`` items, from their k nearest neighbours."""
    rows = rng.choice(len(x), size=min(count, len(x)), replace=False)
    sims = faiss.knn(x[rows], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)[0][:, 1:]  # the item itself left out
    dist = np.sqrt(np.maximum(2 - 2 * sims, 1e-12))  # unit vectors: |a - b|^2 = 2 - 2 a.b
    return round(float(np.median(-1 / np.mean(np.log(dist / dist[:, -1:]), axis=1))), 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth)) / truth.size


def latencies_ms(fn, count: int, warmup: int) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50": round(statistics.median(times), 3), "p95": round(times[int(0.95 * (count - 1))], 3)}


def one_thread(threads: int | None) -> int:
    """Set both libraries to ``threads`` (None: back to all cores); returns the count set."""
    count = threads or os.cpu_count()
    faiss.omp_set_num_threads(count)
    torch.set_num_threads(count)
    return count


def run_case(kind: str, dim: int, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    if kind == "clustered":
        mixture = Mixture(dim, args.clusters, args.rank, rng, spread=args.spread, noise=args.noise)
        x, q = mixture.sample(args.n, rng), mixture.sample(args.queries, rng)
    else:
        x, q = uniform(args.n, dim, rng), uniform(args.queries, dim, rng)
    build_threads = one_thread(None)
    lid = local_intrinsic_dim(x, rng)
    plan = choose_plan(args.n, dim, memory_budget=args.memory_budget, exact_below=0)
    start = time.perf_counter()
    ann = AnnIndex.build(x, plan, target_recall=TARGET_RECALL, k=K, seed=args.seed)
    build_s = time.perf_counter() - start
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    truth = exact_top(xt, qt, K)
    found = ann.search(q, K)[1]
    one_thread(1)
    ann_ms = latencies_ms(lambda i: ann.search(q[i % len(q)][None], K), args.ann_queries, warmup=20)
    exact_ms = latencies_ms(lambda i: torch.mv(xt, qt[i % len(q)]).topk(K), args.exact_queries, warmup=3)
    one_thread(None)
    result = {"data": kind, "dim": dim, "n": args.n, "lid": lid, "factory": ann.plan["factory"],
              "nprobe": ann.plan["nprobe"], "k_factor": ann.plan.get("k_factor"),
              "recall_at_10": round(recall(found, truth), 4), "tuned_recall_at_10": ann.plan["recall_at_10"],
              "ann_ms": ann_ms, "exact_ms": exact_ms,
              "p50_ratio_exact_over_ann": round(exact_ms["p50"] / ann_ms["p50"], 1),
              "build_s": round(build_s, 1), "build_threads": build_threads,
              "bytes_per_item": {"ann": ann.plan["bytes_per_item"], "exact": 4 * dim}}
    result["targets_met"] = result["recall_at_10"] >= TARGET_RECALL and ann_ms["p50"] <= TARGET_P50_MS
    return result


def table(cases: list[dict]) -> str:
    head = (f"{'data':<10}{'dim':>5}{'LID':>6} {'index':<30}{'nprobe':>7}{'kf':>5}{'recall@10':>10}{'p50 ms':>9}"
            f"{'p95 ms':>9}{'exact p50':>10}{'exact p95':>10}{'ratio':>7}{'build s':>9}{'B/item':>8}  targets")
    rows = [f"{c['data']:<10}{c['dim']:>5}{c['lid']:>6.1f} {c['factory']:<30}{c['nprobe']:>7}"
            f"{c['k_factor'] or '-':>5}{c['recall_at_10']:>10.4f}"
            f"{c['ann_ms']['p50']:>9.3f}{c['ann_ms']['p95']:>9.3f}"
            f"{c['exact_ms']['p50']:>10.2f}{c['exact_ms']['p95']:>10.2f}"
            f"{c['p50_ratio_exact_over_ann']:>7.1f}{c['build_s']:>9.1f}"
            f"{c['bytes_per_item']['ann']:>8.1f}  {'met' if c['targets_met'] else 'MISSED'}" for c in cases]
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="items per index")
    parser.add_argument("--dims", default="512,256", help="comma-separated dimensions")
    parser.add_argument("--data", default="clustered,uniform", help="comma-separated: clustered, uniform")
    parser.add_argument("--queries", type=int, default=1000, help="fresh queries for recall@10")
    parser.add_argument("--ann-queries", type=int, default=500, help="single queries timed on the approximate index")
    parser.add_argument("--exact-queries", type=int, default=100, help="single queries timed on exact search")
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--rank", type=int, default=64, help="dimension of the clusters' subspace")
    parser.add_argument("--spread", type=float, default=0.8, help="norm of a point's offset from its unit centre")
    parser.add_argument("--noise", type=float, default=0.4, help="norm of the isotropic noise in all dimensions")
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes for vectors + ids (choose_plan)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()

    cases, load_before = [], os.getloadavg()[0]
    for dim in (int(d) for d in args.dims.split(",")):
        for kind in args.data.split(","):
            cases.append(run_case(kind, dim, args))
            print(table(cases[-1:]).splitlines()[-1], flush=True)
    print("SYNTHETIC data (see --help): clustered = Gaussian mixture in a random subspace + noise; uniform = random "
          "unit vectors. Latencies: one query, one thread; ratio = exact p50 / approximate p50. Load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machines: compare ratios).")
    print(table(cases))
    emit({"synthetic": True, "k": K, "target_recall": TARGET_RECALL, "target_p50_ms": TARGET_P50_MS,
          "clusters": args.clusters, "rank": args.rank,
          "spread": args.spread, "noise": args.noise, "memory_budget": args.memory_budget, "cases": cases,
          "faiss": faiss.__version__, "torch": torch.__version__, "numpy": np.__version__,
          "machine": platform.machine(), "cores": os.cpu_count(),
          "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}, args.json)


if __name__ == "__main__":
    main()
