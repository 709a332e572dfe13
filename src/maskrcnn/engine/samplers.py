"""The training sampler: seeded shuffling, LVIS repeat-factor sampling, DDP sharding, resuming.

Repeat-factor sampling (Gupta et al., LVIS, 2019): with ``f_c`` the fraction of training images
that contain class ``c`` and a threshold ``t``::

    r_c = max(1, sqrt(t / f_c))        r_i = max(r_c for c in image i)   (1 for an image without instances)

Each epoch, image ``i`` appears ``floor(r_i)`` times plus once more with probability
``r_i - floor(r_i)`` (stochastic rounding, seeded by ``(seed, epoch)``), so its expected count
per epoch is ``r_i``. The epoch's indices are shuffled, padded to a multiple of the world size
and split between ranks (like ``DistributedSampler``); every rank computes the same list from the
same seed, so no communication is needed. ``start`` skips indices already consumed when a run
resumes in the middle of an epoch. ``length`` fixes the number of indices each rank gets per
epoch (``Config.steps_per_epoch``): the shuffled training set is cut there, or followed by other
shufflings of it (same generator) until that many are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["repeat_factors", "TrainingSampler"]


def repeat_factors(image_class_ids: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """Per-image repeat factors ``r_i`` for the class ids present in each image.

    Args:
        image_class_ids: for each image, the class ids of its instances (repeats allowed,
            background 0 ignored).
        threshold: LVIS threshold ``t`` (fraction of images), e.g. 0.001.
    """
    n = len(image_class_ids)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    present = [set(int(c) for c in ids if int(c) > 0) for ids in image_class_ids]
    counts: dict[int, int] = {}
    for classes in present:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    r_class = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return np.array([max((r_class[c] for c in classes), default=1.0) for classes in present], dtype=np.float64)


class TrainingSampler(Sampler[int]):
    """Seeded, epoch-aware, optionally repeat-factor and distributed sampler.

    Args:
        num_samples: dataset length.
        seed: base seed; epoch ``e`` uses ``seed + e``-derived generators on every rank.
        shuffle: shuffle each epoch (False keeps order, e.g. for validation).
        factors: per-image repeat factors (:func:`repeat_factors`); None samples each image once.
        rank, world_size: this process's share of each epoch.
        length: indices per rank and epoch (None: the dataset once, or its repeat-factor count).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        factors: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        length: int | None = None,
    ) -> None:
        if factors is not None and len(factors) != num_samples:
            raise ValueError(f"{len(factors)} repeat factors for {num_samples} samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.factors = None if factors is None else np.asarray(factors, dtype=np.float64)
        self.rank = rank
        self.world_size = world_size
        self.length = None if length is None else int(length)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip the first ``start`` indices of this rank's share."""
        self.epoch = int(epoch)
        self.start = int(start)

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return g

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """All ranks' indices of an epoch, before padding and sharding."""
        if epoch is not None and epoch != self.epoch:
            saved, self.epoch = self.epoch, epoch
            try:
                return self.epoch_indices()
            finally:
                self.epoch = saved
        g = self._generator()
        if self.factors is None:
            base = torch.arange(self.num_samples)
        else:
            whole = np.floor(self.factors)
            frac = torch.from_numpy(self.factors - whole)
            extra = (torch.rand(self.num_samples, generator=g, dtype=torch.float64) < frac).numpy()
            reps = torch.from_numpy(whole.astype(np.int64) + extra.astype(np.int64))
            base = torch.repeat_interleave(torch.arange(self.num_samples), reps)
        out = self._shuffled(base, g)
        if self.length is not None and len(base):
            total = self.length * self.world_size
            parts, n = [out], len(out)
            while n < total:
                parts.append(self._shuffled(base, g))
                n += len(base)
            out = torch.cat(parts)[:total]
        return out.tolist()

    def _shuffled(self, base: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return base[torch.randperm(len(base), generator=g)] if self.shuffle and len(base) else base

    def rank_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's indices of an epoch (padded so every rank gets the same count)."""
        indices = self.epoch_indices(epoch)
        if not indices:
            return []
        per_rank = math.ceil(len(indices) / self.world_size)
        total = per_rank * self.world_size
        while len(indices) < total:
            indices = indices + indices[: total - len(indices)]
        return indices[self.rank:total:self.world_size]

    def epoch_length(self, epoch: int) -> int:
        """Number of indices this rank gets in ``epoch`` (without the ``start`` skip)."""
        if self.length is not None:
            return self.length if self.num_samples else 0
        if self.factors is None:
            return math.ceil(self.num_samples / self.world_size)
        return len(self.rank_indices(epoch))

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start:])

    def __len__(self) -> int:
        return max(0, self.epoch_length(self.epoch) - self.start)
