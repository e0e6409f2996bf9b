"""Stratified sampling of layer masks.

A *stratum* is a number of kept layers. Sampling a fixed share of masks from each of a
few strata spreads the evaluations over the coalition sizes that matter for pruning,
instead of over the sizes near L/2 that uniform sampling of all 2^L masks favours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from compressor.errors import CompressorError

# Kept-layer fractions of the published recipe for a 32-layer model: 30, 27, 24, 21 and
# 18 of 32 layers kept. Other depths use the same fractions, rounded.
PAPER_KEPT_FRACTIONS = (30 / 32, 27 / 32, 24 / 32, 21 / 32, 18 / 32)


def paper_strata(num_layers: int) -> list[int]:
    """Return the published strata (kept-layer counts) scaled to ``num_layers`` layers."""
    kept = [int(round(f * num_layers)) for f in PAPER_KEPT_FRACTIONS]
    return _clean_strata(kept, num_layers)


def default_strata(num_layers: int, num_remove: int, count: int = 5) -> list[int]:
    """Return ``count`` kept-layer counts from L−1 down to about L−2k, evenly spaced.

    ``num_remove`` is the removal target k. Sampling up to twice the target depth lets a
    surrogate see masks on both sides of the size it is asked about.
    """
    if num_layers < 2:
        raise CompressorError(f"a model with {num_layers} decoder layer has no layer to score")
    high = num_layers - 1
    low = max(1, num_layers - 2 * max(1, num_remove))
    kept = np.linspace(high, low, num=max(1, count))
    return _clean_strata([int(round(k)) for k in kept], num_layers)


def focused_strata(num_layers: int, num_remove: int) -> list[int]:
    """Return kept-layer counts around the target: L−1, L−k+2, L−k and L−k−2.

    ``num_remove`` is the removal target k. Single-layer removals (L−1 kept) show each
    layer's own cost. The other three strata surround the size the selection is about,
    so the surrogate is trained where it is used.
    """
    if num_layers < 2:
        raise CompressorError(f"a model with {num_layers} decoder layer has no layer to score")
    k = max(1, num_remove)
    kept = [num_layers - 1, num_layers - k + 2, num_layers - k, num_layers - k - 2]
    return _clean_strata([min(num_layers - 1, max(1, c)) for c in kept], num_layers)


def _clean_strata(kept: Sequence[int], num_layers: int) -> list[int]:
    out = sorted({int(k) for k in kept}, reverse=True)
    bad = [k for k in out if not 0 <= k <= num_layers]
    if bad:
        raise CompressorError(
            f"strata {bad} are invalid for a model with {num_layers} layers; each stratum is a number "
            f"of kept layers between 0 and {num_layers}"
        )
    return out


def validate_strata(strata: Sequence[int], num_layers: int) -> list[int]:
    """Check user-given strata (kept-layer counts) against the model depth."""
    if not strata:
        raise CompressorError("`strata` is empty; list kept-layer counts such as [29, 26, 23], or omit it")
    return _clean_strata(strata, num_layers)


def stratum_size(num_layers: int, kept: int) -> int:
    """Number of distinct masks that keep exactly ``kept`` of ``num_layers`` layers."""
    return math.comb(num_layers, kept)


@dataclass
class StratifiedSampler:
    """Yield distinct masks, round-robin over the strata, reproducibly from ``seed``.

    With ``antithetic=True`` masks come in pairs drawn from one random permutation of the
    layers: the first mask removes the permutation's first r layers and the second its
    last r layers. Both lie in the same stratum, and together they remove each layer
    about equally often, which lowers the variance of per-layer averages.

    A stratum with at most ``enumerate_below`` distinct masks is enumerated in random
    order and then exhausted, instead of being sampled with repeats.
    """

    num_layers: int
    strata: Sequence[int]
    seed: int = 0
    antithetic: bool = True
    enumerate_below: int = 512

    def __post_init__(self) -> None:
        self.strata = validate_strata(self.strata, self.num_layers)
        self._rng = np.random.default_rng(self.seed)
        self._seen: set[str] = set()
        self._streams = [self._stream(kept) for kept in self.strata]

    def _mask_from_removed(self, removed: Sequence[int]) -> str:
        chars = ["1"] * self.num_layers
        for index in removed:
            chars[int(index)] = "0"
        return "".join(chars)

    def _stream(self, kept: int) -> Iterator[str]:
        removed_count = self.num_layers - kept
        total = stratum_size(self.num_layers, kept)
        if total <= self.enumerate_below:
            from itertools import combinations

            every = [self._mask_from_removed(c) for c in combinations(range(self.num_layers), removed_count)]
            for position in self._rng.permutation(len(every)):
                yield every[position]
            return

        produced = 0
        misses = 0
        while produced < total and misses < 1000:
            order = self._rng.permutation(self.num_layers)
            candidates = [self._mask_from_removed(order[:removed_count])]
            if self.antithetic:
                candidates.append(self._mask_from_removed(order[self.num_layers - removed_count:]))
            for mask in candidates:
                if mask in self._seen:
                    misses += 1
                    continue
                misses = 0
                produced += 1
                yield mask

    def __iter__(self) -> Iterator[str]:
        """Yield masks one stratum at a time in turn until every stratum is exhausted."""
        streams = list(self._streams)
        while streams:
            alive = []
            for stream in streams:
                for mask in stream:
                    if mask not in self._seen:
                        self._seen.add(mask)
                        yield mask
                        alive.append(stream)
                        break
            streams = alive

    def take(self, count: int) -> list[str]:
        """Return the next ``count`` distinct masks (fewer when every stratum is exhausted)."""
        out = []
        for mask in self:
            out.append(mask)
            if len(out) >= count:
                break
        return out


def stratum_of(masks: Sequence[str]) -> np.ndarray:
    """Return the kept-layer count of each mask."""
    return np.array([m.count("1") for m in masks], dtype=int)
