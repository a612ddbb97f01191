"""An IVF family FAISS index over unit vectors, built from a plan (``choose_plan``), with ``nprobe`` tuned to a recall.

faiss is an optional extra (``pip install 'vattcli[faiss]'``) imported only when an index is built, loaded or its
threads are set; without it those raise ``FaissMissing`` with one line. Inner product on unit rows is cosine
similarity, the score the exact index reports [P §3.3].

Tuning: ``nprobe`` (lists scanned per query) trades latency for recall. ``build`` measures recall@k against exact
top-k on held-out queries -- rows of the collection searched with themselves left out (leave-one-out), so the queries
follow the collection's own distribution -- and keeps the smallest power of two whose recall reaches the target with
95% confidence (mean minus 1.645 standard errors over the tuning queries: a mean that only just touches the target on
200 queries falls below it on fresh ones about half the time). A plan with a fast-scan pre-filter also tunes
``k_factor`` (candidates per result re-scored with the stored code): at each ``nprobe`` it tries the plan's value, then
4x and 16x it while that still gains recall, since re-scoring a few hundred more codes costs far less than scanning
twice the lists, and a coarse 4-bit pre-filter can otherwise cap recall below the target. If even so the pre-filter
cannot reach the target, the same lists (same centroids) are rebuilt without it and the better index kept, its plan
noting ``prefilter_recall_at_10``. When no setting reaches
the target (a product-quantised code under a tight budget loses neighbours no probing brings back), it keeps the
cheapest one within 0.005 of the best recall seen and records ``target_met: false``; the measured recall is always
stored in the plan.

Integrity: ``save`` records the file's sha256 in the plan; ``load`` recomputes it while reading (one pass) and
refuses a file that differs -- FAISS itself cannot tell a flipped byte in the stored vectors from real data.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vattcli.errors import VattError

FAISS_MISSING = "approximate search needs faiss: pip install 'vattcli[faiss]'"
_PLATEAU = 0.005
_Z95 = 1.645
_K_FACTOR_STEPS = 3  # a pre-filtered plan tries k_factor, 4x and 16x it at each nprobe
_READ_BLOCK = 1 << 20
_CHECK_ROWS = 1 << 16  # rows per finiteness check, so a (N, d) boolean temporary is never made


class FaissMissing(VattError):
    """faiss cannot be imported; the message says which extra to install."""

    def __init__(self, message: str = FAISS_MISSING) -> None:
        super().__init__(message)


def import_faiss() -> Any:
    """The faiss module, or ``FaissMissing`` (one line) when it is not installed."""
    try:
        import faiss
    except ImportError as exc:
        raise FaissMissing() from exc
    return faiss


def set_threads(n: int) -> None:
    """Threads FAISS uses for training, adding and searching (``faiss.omp_set_num_threads``)."""
    if not isinstance(n, int) or n < 1:
        raise VattError(f"threads: expected a positive integer, got {n!r}")
    import_faiss().omp_set_num_threads(n)


def _faiss_reason(exc: Exception) -> str:
    """The useful tail of a FAISS C++ error ("Error in <signature> at <file>:<line>: Error: <reason>")."""
    text = " ".join(str(exc).split())
    match = re.search(r" at \S+:\d+: (?:Error: )?(.*)$", text)
    return match.group(1) if match else text


def _as_matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise VattError(f"{what}: expected shape (N, {dim}), got {tuple(np.shape(x))}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not all(np.isfinite(x[i:i + _CHECK_ROWS]).all() for i in range(0, len(x), _CHECK_ROWS)):
        raise VattError(f"{what}: holds NaN or infinite values")
    return x


def _recalls(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per query, the fraction of its exact top-k that ``found`` holds in its first k."""
    return np.array([len(np.intersect1d(f[:k], t[:k])) / k for f, t in zip(found, truth)])


def _lower_bound(recalls: np.ndarray) -> float:
    """One-sided 95% lower confidence bound of the mean recall."""
    if len(recalls) < 2:
        return float(recalls.mean())
    return float(recalls.mean() - _Z95 * recalls.std(ddof=1) / np.sqrt(len(recalls)))


def _leave_one_out(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's ids without the query row itself, first k kept (-1 pads where fewer remain)."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, (found, row) in enumerate(zip(ids, rows)):
        kept = found[(found != row) & (found >= 0)][:k]
        out[i, :len(kept)] = kept
    return out


class AnnIndex:
    """An IVF FAISS index over the rows of a float32 matrix; ids are row numbers."""

    def __init__(self, index: Any, plan: dict[str, Any]) -> None:
        self._index = index
        self.plan = plan

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, plan: dict[str, Any], *, target_recall: float = 0.95, k: int = 10,
              seed: int = 0, tune_queries: int = 200) -> AnnIndex:
        """Train on a sample of ``vectors`` (N, d) unit rows, add them all, tune ``nprobe`` (module docstring)."""
        import_faiss()  # FaissMissing before any work
        if plan.get("kind") != "ivf":
            raise VattError(f"index plan kind {plan.get('kind')!r}: only an 'ivf' plan builds a FAISS index")
        x = _as_matrix(vectors, int(plan["dim"]), "vectors")
        n = len(x)
        if n < int(plan["nlist"]):
            raise VattError(f"vectors: {n} rows cannot train {plan['nlist']} lists (choose_plan for this size)")
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, int(plan["train_size"])), replace=False))
        built = cls._trained(x, sample, {**plan, "n": n}, seed)
        built._tune(x, np.random.default_rng(seed + 1), target_recall, k, tune_queries)
        if built.plan.get("scan") and not built.plan["target_met"]:
            built = built._without_prefilter(x, sample, seed, target_recall, k, tune_queries)
        built.plan["bytes_per_item"] = round(built._serialized_bytes() / n, 2)
        return built

    @classmethod
    def _trained(cls, x: np.ndarray, sample: np.ndarray, plan: dict[str, Any], seed: int,
                 centroids: np.ndarray | None = None) -> AnnIndex:
        """The plan's index trained on ``x[sample]`` (no k-means when ``centroids`` are given), all of ``x`` added."""
        faiss = import_faiss()
        index = faiss.index_factory(x.shape[1], plan["factory"], faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        if isinstance(index, faiss.IndexIVFPQ):  # a plain PQ plan: the factory returns the IVF index itself
            index.do_polysemous_training = False  # Hamming-ordered codes only serve polysemous search: ~40 s wasted
        if centroids is not None:
            ivf.quantizer.add(centroids)  # a quantizer already holding nlist centroids is not trained again
        index.train(x[sample])
        index.add(x)
        return cls(index, plan)

    def _without_prefilter(self, x: np.ndarray, sample: np.ndarray, seed: int, target: float, k: int,
                           count: int) -> AnnIndex:
        """The same lists scanned with the stored code itself, when the 4-bit pre-filter cannot reach ``target``
        (data without structure, such as uniform random vectors, defeats it); the better of the two is kept."""
        quantizer = import_faiss().extract_index_ivf(self._index).quantizer
        centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
        plan = {key: v for key, v in self.plan.items() if key not in ("k_factor", "nprobe", "recall_at_10")}
        plan.update(scan=None, factory=f"{self.plan['factory'].split(',')[0]},{self.plan['code']}",
                    prefilter_recall_at_10=self.plan["recall_at_10"])
        plain = self._trained(x, sample, plan, seed, centroids)
        plain._tune(x, np.random.default_rng(seed + 1), target, k, count)
        return plain if plain.plan["recall_at_10"] > self.plan["recall_at_10"] else self

    def _tune(self, x: np.ndarray, rng: np.random.Generator, target: float, k: int, count: int) -> None:
        faiss = import_faiss()
        n = len(x)
        k = max(1, min(k, n - 1))
        rows = np.sort(rng.choice(n, size=min(count, n), replace=False))
        queries = x[rows]
        _, exact = faiss.knn(queries, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        truth = _leave_one_out(exact, rows, k)
        factors = [self.plan["k_factor"] * 4**i for i in range(_K_FACTOR_STEPS)] if self.plan.get("scan") else [None]
        seen: list[tuple[int, int | None, np.ndarray]] = []
        nprobe = 1
        while nprobe <= self.plan["nlist"] and not (seen and _lower_bound(seen[-1][2]) >= target):
            for factor in factors:  # re-scoring more candidates costs far less than scanning twice the lists
                _, ids = self._index.search(queries, k + 1, params=self._params(nprobe, factor))
                seen.append((nprobe, factor, _recalls(_leave_one_out(ids, rows, k), truth, k)))
                gain = seen[-1][2].mean() - seen[-2][2].mean() if factor != factors[0] else 1.0
                if _lower_bound(seen[-1][2]) >= target or gain < _PLATEAU:
                    break
            nprobe *= 2
        met = _lower_bound(seen[-1][2]) >= target
        best = max(float(r.mean()) for *_, r in seen)
        chosen = seen[-1] if met else next(s for s in seen if s[2].mean() >= best - _PLATEAU)
        self.plan.update(nprobe=chosen[0], recall_at_10=round(float(chosen[2].mean()), 4), recall_k=k,
                         tuned_on=len(rows), target_recall=target, target_met=met)
        if chosen[1] is not None:
            self.plan["k_factor"] = chosen[1]

    def _params(self, nprobe: int, k_factor: int | None = None) -> Any:
        """Search parameters for ``nprobe`` lists, passed per call (the index itself is never changed: thread-safe).
        An HNSW coarse quantizer explores at least ``2 * nprobe`` nodes; a pre-filtered plan re-scores ``k_factor``
        candidates per result with the stored code."""
        faiss = import_faiss()
        if self.plan.get("quantizer") == "hnsw32":
            hnsw = faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
            ivf = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=hnsw)
        else:
            ivf = faiss.SearchParametersIVF(nprobe=nprobe)
        if self.plan.get("scan"):
            factor = float(k_factor or self.plan["k_factor"])
            return faiss.IndexRefineSearchParameters(k_factor=factor, base_index_params=ivf)
        return ivf

    def _serialized_bytes(self) -> int:
        faiss = import_faiss()
        total = [0]

        def count(chunk: bytes) -> None:
            total[0] += len(chunk)

        faiss.write_index(self._index, faiss.PyCallbackIOWriter(count))
        return total[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) inner-product scores (float32) and row ids (int64), best first; ``k`` is clipped to the size.

        A query whose probed lists hold fewer than ``k`` items is searched again with more lists (up to all of
        them), so no -1 id is ever returned. Uses the threads ``set_threads`` / ``faiss.omp_set_num_threads`` set.
        """
        q = _as_matrix(queries, int(self.plan["dim"]), "queries")
        k = min(int(k), len(self))
        if k < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        nprobe = int(self.plan["nprobe"])
        scores, ids = self._index.search(q, k, params=self._params(nprobe))
        short = np.flatnonzero((ids < 0).any(axis=1))
        while short.size and nprobe < self.plan["nlist"]:
            nprobe = min(4 * nprobe, int(self.plan["nlist"]))
            scores[short], ids[short] = self._index.search(q[short], k, params=self._params(nprobe))
            short = short[(ids[short] < 0).any(axis=1)]
        return scores, ids.astype(np.int64, copy=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically (temporary file + rename); records its sha256 in ``plan``."""
        faiss = import_faiss()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    f.write(chunk)

                faiss.write_index(self._index, faiss.PyCallbackIOWriter(write))
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _faiss_reason(exc)
            raise VattError(f"cannot write ANN index {path}: {reason}") from exc
        self.plan["sha256"] = digest.hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike[str], plan: dict[str, Any]) -> AnnIndex:
        """Read an index ``save`` wrote; one-line ``VattError`` if it is unreadable, corrupt or not the plan's."""
        faiss = import_faiss()
        path = Path(path)
        missing = [key for key in ("kind", "dim", "n", "nlist", "nprobe") if key not in plan]
        if plan.get("kind") != "ivf" or missing:
            raise VattError(f"ANN index plan for {path}: expected an 'ivf' plan with dim, n, nlist and nprobe")
        index, digest = _read(faiss, path)
        if "sha256" in plan and digest != plan["sha256"]:
            raise VattError(f"ANN index {path} is corrupt: its sha256 differs from the one recorded when it was saved")
        _check_matches(faiss, index, plan, path)
        return cls(index, dict(plan))


def _read(faiss: Any, path: Path) -> tuple[Any, str]:
    """The index in ``path`` and the sha256 of the whole file, read in one pass."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            def read(size: int) -> bytes:
                chunk = f.read(size)
                digest.update(chunk)
                return chunk

            index = faiss.read_index(faiss.PyCallbackIOReader(read, _READ_BLOCK))
            for chunk in iter(lambda: f.read(_READ_BLOCK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise VattError(f"cannot read ANN index {path}: {exc.strerror or exc}") from exc
    except (RuntimeError, MemoryError) as exc:
        raise VattError(f"ANN index {path} is unreadable or corrupt: {_faiss_reason(exc)}") from exc
    return index, digest.hexdigest()


def _check_matches(faiss: Any, index: Any, plan: dict[str, Any], path: Path) -> None:
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        nlist = None
    found = (int(index.d), int(index.ntotal), nlist, int(index.metric_type))
    expected = (int(plan["dim"]), int(plan["n"]), int(plan["nlist"]), int(faiss.METRIC_INNER_PRODUCT))
    if found != expected:
        raise VattError(f"ANN index {path} does not match index.json: it holds dim {found[0]}, {found[1]} items, "
                        f"{found[2]} lists; expected dim {expected[0]}, {expected[1]} items, {expected[2]} lists "
                        f"(inner product)")
