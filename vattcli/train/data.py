"""Training data: shard folders -> resumable loaders, per-example dataset mixing, and a synthetic source.

Pre-training draws HowTo100M and AudioSet clips per example [P §4.1; C data/loading.py sample_from_datasets]:
``MixedShardDataset`` interleaves one endless stream per dataset, choosing each example's source with a generator
seeded by (seed, epoch, rank, worker), so the mixed stream is as reproducible (and resumable) as a single one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from vattcli.data.reader import ShardDataset
from vattcli.errors import DataError


class MixedShardDataset(ShardDataset):
    """Several shard sets mixed per example with ``weights``; each set cycles through its own epochs, so the mixed
    stream is endless (``epochs`` must be None). Samples carry ``__source__`` (the set's name) and ``__epoch__``."""

    def __init__(self, sources: dict[str, Sequence[str]], weights: dict[str, float] | None = None,
                 **kwargs: Any) -> None:
        if kwargs.get("epochs") is not None:
            raise DataError("a mixture of datasets streams endlessly: epochs must be None")
        urls = [u for us in sources.values() for u in us]
        super().__init__(urls, **kwargs)
        self.sources = {name: list(us) for name, us in sources.items()}
        weights = weights or {}
        unknown = set(weights) - set(sources)
        if unknown:
            raise DataError(f"data.weights names {', '.join(sorted(unknown))}, not in data.train "
                            f"({', '.join(sources)})")
        self.weights = [float(weights.get(name, 1.0)) for name in self.sources]
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise DataError(f"data.weights must be >= 0 with a positive sum, got {self.weights}")

    def _source_stream(self, name: str, urls: list[str], worker: int, num_workers: int,
                       bad: set[str]) -> Iterator[dict[str, Any]]:
        single = ShardDataset(urls, shuffle_buffer=self.shuffle_buffer, seed=self.seed, resampled=self.resampled,
                              shuffle_shards=self.shuffle_shards, rank=self.rank, world_size=self.world_size)
        single.skipped = self.skipped
        if not single.resampled and not single.shards_for(0, worker, num_workers):
            single.resampled = True  # fewer shards than readers: draw with replacement rather than starve
        epoch = self.first_epoch
        while True:
            produced = False
            for sample in single._epoch_stream(epoch, worker, num_workers, bad):
                produced = True
                sample["__source__"], sample["__epoch__"] = name, epoch
                yield sample
            if not produced:
                raise DataError(f"dataset {name!r}: no shard yields samples ({urls[0]} ...)")
            epoch += 1

    def _epoch_stream(self, epoch: int, worker: int, num_workers: int, bad: set[str]) -> Iterator[dict[str, Any]]:
        streams = [self._source_stream(n, us, worker, num_workers, bad) for n, us in self.sources.items()]
        rng = random.Random(f"mix-{self.seed}-{epoch}-{self.rank}-{worker}")
        while True:
            yield next(streams[rng.choices(range(len(streams)), weights=self.weights)[0]])

    def shards_for(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        return self.urls  # every reader reads every set (each set splits its own shards)


class SyntheticPretrainLoader:
    """Deterministic random batches for tests and benchmarks: sample ``i`` of the global batch at step ``s`` is a
    function of (seed, s, i) only, and rank r of W takes rows [r B/W, (r+1) B/W) of the global batch. So W processes
    see exactly the batch one process would, which is what a distributed-equivalence test needs. ``pool`` limits
    the stream to that many distinct samples (``data.train={name: synthetic:16}``), so a model can fit them."""

    def __init__(self, *, global_batch: int, rank: int, world_size: int, frames: int, size: int, audio_samples: int,
                 num_captions: int, text_len: int, vocab_size: int, seed: int = 0, pool: int | None = None) -> None:
        if global_batch % world_size:
            raise DataError(f"data.batch_size={global_batch} is not divisible by {world_size} processes")
        self.local = global_batch // world_size
        self.rank, self.seed, self.step = rank, seed, 0
        self.shapes = (frames, size, audio_samples, num_captions, text_len, vocab_size)
        self.global_batch, self.pool = global_batch, pool

    def _sample(self, index: int) -> dict[str, torch.Tensor]:
        frames, size, audio, k, length, vocab = self.shapes
        index = index % self.pool if self.pool else index
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        text = torch.randint(1, vocab, (k, length), generator=gen)
        text[:, length // 2:] = 0
        return {"video": torch.rand(3, frames, size, size, generator=gen) * 2 - 1,
                "audio": torch.rand(audio, generator=gen) * 2 - 1, "text": text,
                "has_text": torch.tensor(True), "has_audio": torch.tensor(True)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            first = self.step * self.global_batch + self.rank * self.local
            samples = [self._sample(first + j) for j in range(self.local)]
            self.step += 1
            yield {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
