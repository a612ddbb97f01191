"""Streaming reader for tar shards (WebDataset layout) whose position can be saved and restored exactly.

Stream design. Shards are split first across ranks, then across DataLoader workers: in epoch ``e`` the shard list is
permuted with a generator seeded by ``(seed, e)`` (the same on every rank, so the split is a partition), rank ``r``
takes ``order[r::world_size]`` and worker ``w`` of ``W`` takes every ``W``-th of those. The samples of those shards go
through a shuffle buffer whose generator is seeded by ``(seed, e, r, w)``. So the sample stream of one (rank, worker)
is a pure function of the seed and the epoch: every sample gets an ordinal, its position in that worker's epoch stream.
In ``resampled`` mode each (rank, worker) instead draws ``ceil(shards / (world_size * W))`` shards with replacement
per (pseudo-)epoch, from all shards, seeded by ``(seed, e, r, w)``, for an endless stream that needs no split.

Resume. Decoding and batching run in worker processes, so consumption is counted where it is observed, in the main
process: ``ResumableLoader`` makes the workers tag every batch with (worker, epoch, ordinal) and records, per worker,
the epoch and number of samples consumed. A DataLoader takes batches from its workers in round-robin order (skipping
exhausted ones), which is deterministic, so the state also records which worker comes next. Restoring regenerates each
worker's stream from the start of its saved epoch, drops the samples already consumed (before decoding them), and
rotates the worker numbering so the DataLoader's first worker serves the stream that was next. The continuation then
equals the uninterrupted sequence, for any ``num_workers`` (the same one as when saved), with or without batching.

Samples are dicts ``{"__key__", "__shard__", "__index__" (position in its shard), ext: bytes}``; ``json`` members are
parsed. Tar members are read in memory in streaming mode, never extracted. A corrupt shard or member is skipped with
a logged warning and counted in ``skipped`` (reason -> count), never fatal.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
import re
import tarfile
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torch.utils.data._utils.collate import default_convert

from vattcli.data.media import set_decoder_threads
from vattcli.data.shards import MANIFEST, read_manifest
from vattcli.errors import DataError, VattError

log = logging.getLogger(__name__)
STATE_VERSION = 1
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")
_UNDECODED = object()

Tag = tuple[int, int, int, dict[str, int]]  # (worker, epoch, ordinal, skipped so far in that worker)


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000009}`` (zero padding kept) and ``{a,b}`` groups, left to right."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = _RANGE.fullmatch(body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        options = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [head + option + rest for option in options for rest in expand_braces(tail)]


def expand_urls(urls: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Shard paths from a folder (its manifest, else its ``*.tar``), a brace/glob pattern, or a list of those."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    paths: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            paths.extend(_folder_shards(Path(item)))
            continue
        for path in expand_braces(item):
            found = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
            if not found or not all(os.path.isfile(p) for p in found):
                raise DataError(f"{path}: no such shard file")
            paths.extend(found)
    if not paths:
        raise DataError(f"{urls}: no shards found")
    return paths


def _folder_shards(folder: Path) -> list[str]:
    if (folder / MANIFEST).exists():
        return [str(folder / s["name"]) for s in read_manifest(folder)["shards"]]
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    if not shards:
        raise DataError(f"{folder}: no {MANIFEST} and no .tar shards")
    return shards


def _split_name(name: str) -> tuple[str, str] | None:
    """WebDataset naming: the key runs to the first dot of the member's base name, the extension is the rest."""
    folder, _, base = name.rpartition("/")
    if "." not in base.strip("."):
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext


def _finish_sample(sample: dict[str, Any], skipped: Counter) -> dict[str, Any] | None:
    for ext in [e for e in sample if not e.startswith("__") and (e == "json" or e.endswith(".json"))]:
        try:
            sample[ext] = json.loads(sample[ext])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("%s: sample %s has an unreadable %s member (%s); skipped", sample["__shard__"],
                        sample["__key__"], ext, e)
            skipped["bad_member"] += 1
            return None
    return sample


def _ends_cleanly(path: str) -> bool:
    """Whether an uncompressed tar ends with its end-of-archive zero blocks: tarfile reads a file cut at a header
    boundary as a shorter archive without complaint, which would pass a half-copied sample on as complete."""
    if not path.endswith(".tar"):
        return True
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE:
                return False
            f.seek(size - 2 * tarfile.BLOCKSIZE)
            return f.read() == bytes(2 * tarfile.BLOCKSIZE)
    except OSError:
        return True  # tarfile.open reports it below


def iter_tar_samples(path: str, skipped: Counter) -> Iterator[dict[str, Any]]:
    """Group consecutive tar members by key into sample dicts, read in memory; problems are counted in ``skipped``.

    In a corrupt or truncated shard the samples before the damage are kept; the one it cuts is dropped.
    """
    error = None if _ends_cleanly(path) else "no end-of-archive marker, truncated"
    current: dict[str, Any] | None = None
    index = 0
    try:
        with tarfile.open(path, mode="r|*", bufsize=1 << 20) as tar:
            for member in tar:
                if member.isdir():
                    continue
                parts = _split_name(member.name) if member.isfile() else None
                if parts is None:
                    log.warning("%s: member %r is not a <key>.<ext> file; skipped", path, member.name)
                    skipped["bad_member"] += 1
                    continue
                key, ext = parts
                if current is None or current["__key__"] != key:
                    if current is not None and (done := _finish_sample(current, skipped)) is not None:
                        yield done
                    current = {"__key__": key, "__shard__": path, "__index__": index}
                    index += 1
                if ext in current:
                    log.warning("%s: sample %s repeats member %r; the repeat is skipped", path, key, ext)
                    skipped["bad_member"] += 1
                    continue
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        error = str(e)
    if error is not None:
        log.warning("%s: corrupt or unreadable shard (%s); its remaining samples are skipped", path, error)
        skipped["corrupt_shard"] += 1
        return
    if current is not None and (done := _finish_sample(current, skipped)) is not None:
        yield done


def _shuffled(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Buffered shuffle: once ``size`` samples are held, each new one replaces a randomly chosen one that is yielded."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def _default_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Samples of tar shards, split across ranks and DataLoader workers, deterministic given (seed, epoch).

    ``epochs`` epochs are streamed starting at ``set_epoch``'s value (None: endlessly). ``shuffle_shards`` defaults to
    ``shuffle_buffer > 0``, so ``shuffle_buffer=0`` reads shards and samples in order (evaluation). ``decode`` runs
    in the workers on each sample; a ``VattError`` it raises (e.g. ``MediaError``) skips the sample and is counted.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        decode: Callable[[dict[str, Any]], Any] | None = None,
        resampled: bool = False,
        epochs: int | None = None,
        shuffle_shards: bool | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        default_rank, default_world = _default_rank()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is outside world_size {self.world_size}")
        if shuffle_buffer < 0 or (epochs is not None and epochs < 1):
            raise DataError(f"shuffle_buffer must be >= 0 and epochs None or >= 1 (got {shuffle_buffer}, {epochs})")
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_buffer > 0 if shuffle_shards is None else shuffle_shards
        self.seed = seed
        self.decode = decode
        self.resampled = resampled
        self.epochs = epochs
        self.first_epoch = 0
        self.skipped: Counter = Counter()
        self._start: dict[int, tuple[int, int]] = {}
        self._rotation = 0

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (from its first sample)."""
        self.first_epoch = epoch
        self._start, self._rotation = {}, 0

    def resume_from(self, workers: dict[int, tuple[int, int]], next_worker: int) -> None:
        """Start worker ``w`` at ``(epoch, consumed)`` and let DataLoader worker 0 serve stream ``next_worker``."""
        self._start, self._rotation = dict(workers), next_worker

    def shards_for(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        """The shards the stream of (this rank, ``worker``) reads in ``epoch``, in order."""
        if self.resampled:
            rng = random.Random(f"resample-{self.seed}-{epoch}-{self.rank}-{worker}")
            count = math.ceil(len(self.urls) / (self.world_size * num_workers))
            return [rng.choice(self.urls) for _ in range(count)]
        order = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        return order[self.rank :: self.world_size][worker::num_workers]

    def _epoch_stream(self, epoch: int, worker: int, num_workers: int, bad: set[str]) -> Iterator[dict[str, Any]]:
        def read(path: str) -> Iterator[dict[str, Any]]:
            empty = True
            for sample in iter_tar_samples(path, self.skipped):
                empty = False
                sample["__epoch__"] = epoch  # decoders seed their augmentation with it
                yield sample
            if empty:
                bad.add(path)

        samples = chain.from_iterable(read(p) for p in self.shards_for(epoch, worker, num_workers))
        if self.shuffle_buffer > 0:
            rng = random.Random(f"buffer-{self.seed}-{epoch}-{self.rank}-{worker}")
            samples = _shuffled(samples, self.shuffle_buffer, rng)
        return samples

    def iter_tagged(self) -> Iterator[tuple[Tag, Any]]:
        """Yield ``((worker, epoch, ordinal, skipped), sample)`` for the calling DataLoader worker."""
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            set_decoder_threads(1)  # workers already use every core; a threaded decoder per worker oversubscribes
        worker = (physical + self._rotation) % num_workers
        self.skipped = Counter()
        start_epoch, consumed = self._start.get(worker, (self.first_epoch, 0))
        if not self.resampled and not self.shards_for(start_epoch, worker, num_workers):
            return
        bad: set[str] = set()
        epoch = start_epoch
        while self.epochs is None or epoch < self.first_epoch + self.epochs:
            for ordinal, sample in enumerate(self._epoch_stream(epoch, worker, num_workers, bad)):
                if epoch == start_epoch and ordinal < consumed:
                    continue
                item = self._decoded(sample)
                if item is not _UNDECODED:
                    yield (worker, epoch, ordinal, dict(self.skipped)), item
            if len(bad) == len(set(self.urls)):
                log.warning("none of the %d shards (%s, ...) yields samples; the stream ends", len(self.urls),
                            self.urls[0])
                return
            epoch += 1

    def _decoded(self, sample: dict[str, Any]) -> Any:
        if self.decode is None:
            return sample
        try:
            return self.decode(sample)
        except VattError as e:
            log.warning("%s: sample %s not decoded (%s); skipped", sample["__shard__"], sample["__key__"], e)
            self.skipped["decode_error"] += 1
            return _UNDECODED

    def __iter__(self) -> Iterator[Any]:
        return (item for _, item in self.iter_tagged())


class _Tagged(IterableDataset):
    """The dataset as seen by the DataLoader inside ``ResumableLoader``: samples with their position tags."""

    def __init__(self, dataset: ShardDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def __iter__(self) -> Iterator[tuple[Tag, Any]]:
        return self.dataset.iter_tagged()


class _TaggedCollate:
    """Collate the samples as the user asked, and pass their tags alongside: ``(tags, batch)``."""

    def __init__(self, collate: Callable[[Any], Any] | None, batched: bool) -> None:
        self.collate = collate or (default_collate if batched else default_convert)
        self.batched = batched

    def __call__(self, items: Any) -> tuple[list[Tag], Any]:
        if not self.batched:
            tag, item = items
            return [tag], self.collate(item)
        return [tag for tag, _ in items], self.collate([item for _, item in items])


class ResumableLoader:
    """A DataLoader over a ``ShardDataset`` that counts what was consumed, so ``state_dict`` resumes mid-epoch.

    A batch counts as consumed once it has been yielded. When a pass ends, the next iteration starts at the next
    epoch. ``state_dict`` holds this rank's entry under ``ranks``: to save every rank, gather their states (e.g.
    ``all_gather_object``) and merge the ``ranks`` dicts; each rank's ``load_state_dict`` picks its own entry.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        *,
        batch_size: int | None = 1,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        **loader_kwargs: Any,
    ) -> None:
        if loader_kwargs.get("persistent_workers") or loader_kwargs.get("in_order") is False:
            raise DataError("ResumableLoader needs fresh, in-order workers (persistent_workers=False, in_order=True)")
        self.dataset = dataset
        self.num_workers = max(1, num_workers)
        self.loader = DataLoader(_Tagged(dataset), batch_size=batch_size, num_workers=num_workers,
                                 collate_fn=_TaggedCollate(collate_fn, batch_size is not None), **loader_kwargs)
        self._workers: dict[int, tuple[int, int]] = {}
        self._skipped: dict[int, dict[str, int]] = {}
        self._next_worker = 0
        self._epoch = dataset.first_epoch

    @property
    def skipped(self) -> dict[str, int]:
        """Samples/shards skipped in this pass (reason -> count), as last reported by each worker."""
        total: Counter = Counter()
        for counts in self._skipped.values():
            total.update(counts)
        return dict(total)

    def __iter__(self) -> Iterator[Any]:
        self.dataset.resume_from(self._workers, self._next_worker)
        self._skipped = {}
        for tags, batch in self.loader:
            for worker, epoch, ordinal, skipped in tags:
                self._workers[worker] = (epoch, ordinal + 1)
                self._skipped[worker] = skipped
                self._epoch = epoch
            self._next_worker = (tags[-1][0] + 1) % self.num_workers
            yield batch
        if self.dataset.epochs is not None:
            self.dataset.set_epoch(self.dataset.first_epoch + self.dataset.epochs)
        self._workers, self._next_worker, self._epoch = {}, 0, self.dataset.first_epoch

    def state_dict(self) -> dict[str, Any]:
        """The position after the last yielded batch; plain ints/strs/lists (fits ``torch.load(weights_only=True)``)."""
        ds = self.dataset
        return {
            "version": STATE_VERSION,
            "seed": ds.seed,
            "first_epoch": ds.first_epoch,
            "world_size": ds.world_size,
            "num_workers": self.num_workers,
            "num_shards": len(ds.urls),
            "ranks": {str(ds.rank): {
                "epoch": self._epoch,
                "next_worker": self._next_worker,
                "workers": {str(w): [e, n] for w, (e, n) in sorted(self._workers.items())},
            }},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the position ``state`` was taken at (this rank's entry)."""
        ds = self.dataset
        if not isinstance(state, dict):
            raise DataError(f"data loader state: expected a dict, got {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state: expected version {STATE_VERSION}, got {state.get('version')!r}")
        expected = {"world_size": ds.world_size, "num_workers": self.num_workers, "num_shards": len(ds.urls)}
        for field, value in expected.items():
            if state.get(field) != value:
                raise DataError(f"data loader state: {field} was {state.get(field)!r}, this run has {value}")
        entry = state.get("ranks", {}).get(str(ds.rank))
        if entry is None:
            raise DataError(f"data loader state: no entry for rank {ds.rank}")
        ds.seed = state["seed"]
        ds.set_epoch(state["first_epoch"])
        self._workers = {int(w): (int(e), int(n)) for w, (e, n) in entry["workers"].items()}
        self._next_worker = int(entry["next_worker"])
        self._epoch = int(entry["epoch"])

