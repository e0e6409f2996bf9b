"""Per-layer semivalues of a cheap utility (the surrogate), exact or by Monte Carlo.

A semivalue of layer i is a weighted mean of marginal contributions
v(S ∪ {i}) − v(S) over coalitions S of kept layers that exclude i. Each kind here is an
average over *base masks* m. Draw a kept count c from a distribution q and draw m
uniformly among masks that keep c layers. Then average v(m with i kept) − v(m with i
removed).

* ``shapley``: q uniform on 0..L. Then |S| is uniform on 0..L−1, the Shapley weights.
* ``banzhaf``: q binomial(L, 1/2), that is, m uniform over all 2^L masks.
* ``paper``: q uniform over the sampling strata. This is the estimator of the published
  method. It is a semivalue restricted to the strata's coalition sizes, not the Shapley
  value.

Up to ``exact_max_players`` layers the average is taken over every mask. Shapley and
Banzhaf values then come from :class:`shapiq.ExactComputer`. Beyond that limit, base
masks are sampled, and bootstrap percentiles over them give the intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from compressor.errors import CompressorError

ValueFunction = Callable[[np.ndarray], np.ndarray]
Kind = Literal["paper", "shapley", "banzhaf"]


@dataclass
class SemivalueResult:
    """Values, interval bounds (NaN for players fixed off) and how they were computed."""

    values: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: str
    surrogate_calls: int


def kept_count_distribution(kind: str, num_players: int, strata: Sequence[int] | None = None) -> np.ndarray:
    """Return q, the probability of each kept count 0..num_players for the base masks."""
    q = np.zeros(num_players + 1)
    if kind == "shapley":
        q[:] = 1.0
    elif kind == "banzhaf":
        q[:] = [math.comb(num_players, c) for c in range(num_players + 1)]
    elif kind == "paper":
        if not strata:
            raise CompressorError("the `paper` semivalue needs the strata (kept-layer counts) it was sampled on")
        for c in strata:
            q[min(max(int(c), 0), num_players)] += 1.0
    else:
        raise CompressorError(f"semivalue {kind!r} is unknown; use 'paper', 'shapley' or 'banzhaf'")
    return q / q.sum()


def _expand(reduced: np.ndarray, players: np.ndarray, num_layers: int) -> np.ndarray:
    """Place masks over the free players into full masks whose other layers are 0 (removed)."""
    full = np.zeros((reduced.shape[0], num_layers), dtype=bool)
    full[:, players] = reduced
    return full


def _marginals(value_fn: ValueFunction, base: np.ndarray, players: np.ndarray, num_layers: int) -> np.ndarray:
    """Return D[n, j] = v(base_n with player j kept) − v(base_n with j removed)."""
    n, p = base.shape
    on = np.repeat(base[:, None, :], p, axis=1)
    off = on.copy()
    idx = np.arange(p)
    on[:, idx, idx] = True
    off[:, idx, idx] = False
    both = np.concatenate([on.reshape(-1, p), off.reshape(-1, p)])
    values = value_fn(_expand(both, players, num_layers))
    return (values[: n * p] - values[n * p:]).reshape(n, p)


def _all_masks(p: int) -> np.ndarray:
    codes = np.arange(2**p, dtype=np.int64)
    return ((codes[:, None] >> np.arange(p)) & 1).astype(bool)


def exact_semivalue(value_fn: ValueFunction, num_players: int, q: np.ndarray) -> np.ndarray:
    """Exact base-mask average: every mask, weighted q(c) / C(p, c) by its kept count c."""
    masks = _all_masks(num_players)
    values = value_fn(masks)
    counts = masks.sum(1)
    weights = q[counts] / np.array([math.comb(num_players, c) for c in counts])
    out = np.zeros(num_players)
    for j in range(num_players):
        bit = 1 << j
        codes = np.arange(2**num_players)
        # Every mask and its neighbour that differs in player j: a base mask with j removed
        # uses the pair (code | bit, code), and one with j kept uses the same pair.
        with_j = values[codes | bit]
        without_j = values[codes & ~bit]
        out[j] = float((weights * (with_j - without_j)).sum())
    return out


def shapiq_exact(value_fn: ValueFunction, num_players: int, index: str) -> np.ndarray:
    """Shapley (``SV``) or Banzhaf (``BV``) values by :class:`shapiq.ExactComputer`."""
    from shapiq import ExactComputer

    computer = ExactComputer(lambda coalitions: value_fn(np.asarray(coalitions, dtype=bool)), n_players=num_players)
    result = computer(index, order=1)
    return np.array([result[(j,)] for j in range(num_players)], dtype=float)


def semivalues(
    value_fn: ValueFunction,
    num_layers: int,
    kind: Kind = "paper",
    strata: Sequence[int] | None = None,
    fixed_off: Sequence[int] = (),
    exact_max_players: int = 20,
    n_base: int = 80_000,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> SemivalueResult:
    """Return the per-layer semivalue of ``value_fn`` (a function of bool masks [n, L]).

    Layers in ``fixed_off`` stay removed in every coalition. They get NaN, and the game
    is played by the remaining layers (this is how iterative selection re-scores).
    ``strata`` are kept counts of the full model. For a restricted game they are
    clipped to the number of remaining layers.
    """
    fixed = sorted(set(int(i) for i in fixed_off))
    players = np.array([i for i in range(num_layers) if i not in fixed], dtype=int)
    p = len(players)
    if p == 0:
        raise CompressorError("every layer is fixed off; there is no layer left to score")
    q = kept_count_distribution(kind, p, [min(c, p) for c in strata] if strata else None)

    def reduced_fn(masks: np.ndarray) -> np.ndarray:
        return value_fn(_expand(np.asarray(masks, dtype=bool), players, num_layers))

    values = np.full(num_layers, np.nan)
    lower = np.full(num_layers, np.nan)
    upper = np.full(num_layers, np.nan)

    if p <= exact_max_players:
        if kind in ("shapley", "banzhaf"):
            reduced = shapiq_exact(reduced_fn, p, "SV" if kind == "shapley" else "BV")
        else:
            reduced = exact_semivalue(reduced_fn, p, q)
        values[players] = reduced
        lower[players] = reduced
        upper[players] = reduced
        return SemivalueResult(values, lower, upper, "exact", 2**p)

    rng = np.random.default_rng(seed)
    counts = rng.choice(p + 1, size=n_base, p=q)
    keys = rng.random((n_base, p))
    # A mask with c kept players, uniform among them: keep the c smallest random keys.
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    base = ranks < counts[:, None]
    marginals = np.concatenate(
        [_marginals(value_fn, base[s:s + 2048], players, num_layers) for s in range(0, n_base, 2048)]
    )
    estimate = marginals.mean(0)

    boot = np.empty((bootstrap, p))
    for b in range(bootstrap):
        boot[b] = marginals[rng.integers(0, n_base, n_base)].mean(0)
    alpha = (1 - confidence) / 2
    values[players] = estimate
    lower[players] = np.quantile(boot, alpha, axis=0)
    upper[players] = np.quantile(boot, 1 - alpha, axis=0)
    return SemivalueResult(values, lower, upper, "monte_carlo", 2 * n_base * p)
