"""Samplers whose order is a function of (seed, epoch) alone, so a run resumed mid-epoch replays the interrupted
epoch's order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import RandomSampler
from transformers.trainer_pt_utils import LengthGroupedSampler


class _EpochSeeded:
    """Shuffles from a generator seeded with `seed + epoch` at each pass (accelerate's `SeedableRandomSampler`
    convention), so any epoch's order can be replayed on resume. Mixed into a sampler that draws from
    `self.generator`."""

    generator: torch.Generator
    seed: int
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate's data loader) before each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(self.seed + self.epoch)
        yield from super().__iter__()  # type: ignore[misc]
        self.epoch += 1  # as accelerate's: a loader iterated without set_epoch still reshuffles each pass


class SeededLengthGroupedSampler(_EpochSeeded, LengthGroupedSampler):
    """transformers' `LengthGroupedSampler`, shuffling from `seed + epoch` at each pass."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0


class SeededRandomSampler(_EpochSeeded, RandomSampler):
    """A `RandomSampler` shuffling from `seed + epoch` at each pass, for when accelerate's seedable sampler is off."""

    def __init__(self, data_source: Any, seed: int):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0


__all__ = ["SeededLengthGroupedSampler", "SeededRandomSampler"]
