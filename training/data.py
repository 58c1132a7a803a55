"""The training data order, and the loader that follows it.

Every epoch is a seeded permutation of all samples (the same for every worker, different every epoch, identical
for the same seed). The permutation is cut into global batches of `world_size x batch_size` samples (a tail too
short for one is left out of that epoch, as drop_last would, so every worker takes the same number of steps);
worker r takes the r-th `batch_size` slice of each. So micro-batch m of worker r is a pure function of (seed,
world size, batch size, m): a run resumed at micro-batch m continues the same sequence exactly, and gradient
accumulation simply counts micro-batches across epoch boundaries.

Why not Ray Data's streaming_split: it hands out blocks to whichever worker asks first, so which worker sees which
sample, and in which order, is not reproducible, and a split cannot start in the middle of an epoch. Here each
worker fetches its own samples from the store (one slice per array, see featurestore) in a few threads, a few
batches ahead of the step that needs them.
"""
import functools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from featurestore import Version
from pipelines.annotations import Sample
from pipelines.training_data import FetchFeatures, sample_row


class DataOrderError(ValueError):
    """The samples cannot fill one batch on every worker."""


@dataclass(frozen=True)
class DataOrder:
    num_samples: int
    world_size: int
    batch_size: int  # per worker
    seed: int
    shuffle: bool = True

    def __post_init__(self):
        if self.batches_per_epoch < 1:
            raise DataOrderError(
                f"{self.num_samples} samples cannot fill one batch of {self.batch_size} on each of {self.world_size} "
                f"worker(s) ({self.batch_size * self.world_size} needed): lower --data.batch-size or --scale.workers")

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each worker takes per epoch."""
        return self.num_samples // (self.world_size * self.batch_size)

    @functools.lru_cache(maxsize=2)
    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def locate(self, micro: int) -> tuple[int, int]:
        """(epoch, position in that epoch) of a worker's micro-batch number `micro` (0-based, counted from the
        start of the run)."""
        return divmod(micro, self.batches_per_epoch)

    def batch(self, micro: int, rank: int) -> np.ndarray:
        """Indices of the samples in worker `rank`'s micro-batch number `micro`."""
        epoch, position = self.locate(micro)
        start = (position * self.world_size + rank) * self.batch_size
        return self.permutation(epoch)[start: start + self.batch_size]


class FeatureLoader:
    """Worker `rank`'s collated micro-batches in DataOrder from micro-batch `start` on, as (micro, batch) pairs;
    `prefetch` batches are fetched and collated ahead, each in a thread."""

    def __init__(self, samples: list[Sample], versions: dict[str, Version], order: DataOrder, rank: int,
                 collate: Callable[[dict], dict], prefetch: int = 2):
        self.samples, self.order, self.rank, self.collate = samples, order, rank, collate
        self.fetch = FetchFeatures(versions)
        self.prefetch = max(1, prefetch)

    def load(self, micro: int) -> dict:
        rows = [self.fetch(sample_row(self.samples[i])) for i in self.order.batch(micro, self.rank)]
        return self.collate({key: [row[key] for row in rows] for key in rows[0]})

    def iterate(self, start: int) -> Iterator[tuple[int, dict]]:
        with ThreadPoolExecutor(self.prefetch, thread_name_prefix="feature-loader") as pool:
            ahead = deque()
            micro = start
            try:
                while True:
                    while len(ahead) < self.prefetch:
                        ahead.append((micro, pool.submit(self.load, micro)))
                        micro += 1
                    number, future = ahead.popleft()
                    yield number, future.result()
            finally:  # the consumer stopped early: drop what was fetched ahead
                for _, future in ahead:
                    future.cancel()
