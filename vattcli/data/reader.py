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

Samples come from ``vattcli.data.shardfiles.iter_tar_samples``: a corrupt shard or member is skipped with a logged
warning and counted in ``skipped`` (reason -> count), never fatal.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import random
import signal
import threading
from collections import Counter
from itertools import chain
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torch.utils.data._utils.collate import default_convert

from vattcli.data.media import set_decoder_threads
from vattcli.data.shardfiles import expand_urls, iter_tar_samples
from vattcli.errors import DataError, VattError

log = logging.getLogger(__name__)
STATE_VERSION = 1
_UNDECODED = object()
# an endless stream in which nothing decodes (wrong data settings, every file bad) stops instead of spinning
MAX_UNDECODED_IN_A_ROW = 256

Tag = tuple[int, int, int, dict[str, int]]  # (worker, epoch, ordinal, skipped so far in that worker)


def iter_loader(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate a DataLoader, giving a ``VattError`` raised in a worker its one-line message back: the DataLoader
    re-raises it as ``type(e)("Caught DataError in DataLoader worker process 0." + the worker's traceback)``
    [torch/_utils.py ExceptionWrapper.reraise]; the message follows the traceback's last ``module.Class: ``."""
    try:
        yield from loader
    except VattError as e:
        text = str(e)
        marker = f"{type(e).__module__}.{type(e).__qualname__}: "
        if text.startswith("Caught ") and marker in text:
            e.args = (text.rsplit(marker, 1)[1].strip().split("\n", 1)[0],)
        raise


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
        self._last_error = ""
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
        epoch, failed = start_epoch, 0
        while self.epochs is None or epoch < self.first_epoch + self.epochs:
            for ordinal, sample in enumerate(self._epoch_stream(epoch, worker, num_workers, bad)):
                if epoch == start_epoch and ordinal < consumed:
                    continue
                item = self._decoded(sample)
                if item is _UNDECODED:
                    failed += 1
                    if failed >= MAX_UNDECODED_IN_A_ROW:
                        raise DataError(f"{failed} samples in a row could not be decoded (the last: {self._last_error})"
                                        "; check the shards and the data settings")
                    continue
                failed = 0
                yield (worker, epoch, ordinal, dict(self.skipped)), item
            # Stop a reader whose shards all yield nothing (it would spin through empty epochs forever otherwise)
            mine = self.urls if self.resampled else self.shards_for(epoch, worker, num_workers)
            if bad.issuperset(mine):
                log.warning("none of the %d shards (%s, ...) yields samples; this reader's stream ends", len(mine),
                            mine[0])
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
            self._last_error = f"{sample['__shard__']}: {sample['__key__']}: {e}"
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


def workers_ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave a SIGTERM from outside to the training process, which checkpoints and then stops them.

    Slurm (``--signal``, preemption) and torchrun's agent signal every process of the job: a worker killed by it makes
    torch's SIGCHLD handler fail the training process ("DataLoader worker ... is killed by signal") at any point of
    its step, instead of letting it save the step. But the parent's own ``terminate()`` (its shutdown of the workers,
    multiprocessing's at exit) must still end the worker, or the parent waits for it forever. So SIGTERM is blocked
    and a thread takes each one with ``sigwaitinfo``, which says who sent it: from the parent the worker exits, from
    anyone else it is ignored. Where ``sigwaitinfo`` does not exist (macOS), SIGTERM is left alone. A worker whose
    parent is gone still exits (torch's watchdog)."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    creator = multiprocessing.parent_process()
    parent = creator.pid if creator is not None else os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def take_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=take_sigterm, name="sigterm-from-parent", daemon=True).start()


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
        loader_kwargs.setdefault("worker_init_fn", workers_ignore_sigterm)
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
        for tags, batch in iter_loader(self.loader):
            for worker, epoch, ordinal, skipped in tags:
                self._workers[worker] = (epoch, ordinal + 1)
                self._skipped[worker] = skipped
                self._epoch = epoch
            self._next_worker = (tags[-1][0] + 1) % self.num_workers
            yield batch
        if not self._workers and self.dataset.epochs is None:  # an endless stream that gave nothing at all
            urls = self.dataset.urls
            raise DataError(f"{urls[0]}: none of the {len(urls)} shards from here on gives this process a sample "
                            "(corrupt or empty, or fewer shards than processes; see the warnings above)")
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

