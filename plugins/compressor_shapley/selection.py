"""Choosing the layers to remove from per-layer values or from the surrogate itself."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def one_shot(values: Sequence[float], count: int) -> list[int]:
    """Return the ``count`` layers with the lowest value (ties go to the lower index)."""
    values = np.asarray(values, dtype=float)
    order = sorted(range(len(values)), key=lambda i: (math.inf if np.isnan(values[i]) else values[i], i))
    return sorted(order[:count])


def iterative(estimate: Callable[[list[int]], np.ndarray], count: int) -> tuple[list[int], list[np.ndarray]]:
    """Remove one layer at a time, re-estimating the values with the removed layers fixed off.

    ``estimate(removed)`` returns per-layer values with NaN for the layers in ``removed``.
    Returns the removal order and the values of each round.
    """
    removed: list[int] = []
    rounds = []
    for _ in range(count):
        values = estimate(list(removed))
        rounds.append(values)
        candidates = [i for i in range(len(values)) if i not in removed and not np.isnan(values[i])]
        removed.append(min(candidates, key=lambda i: (values[i], i)))
    return removed, rounds


def removal_mask(num_layers: int, removed: Sequence[int]) -> np.ndarray:
    mask = np.ones(num_layers, dtype=bool)
    mask[list(removed)] = False
    return mask


@dataclass
class SubsetSearchResult:
    """The chosen removal set and every candidate re-scored on the real model."""

    selected: list[int]
    strategy: str
    candidates: list[dict] = field(default_factory=list)


def surrogate_candidates(
    value_fn: Callable[[np.ndarray], np.ndarray], num_layers: int, count: int, top: int,
    exhaustive_limit: int = 200_000, beam_width: int = 64,
) -> tuple[list[tuple[int, ...]], np.ndarray, str]:
    """Return the ``top`` removal sets of size ``count`` with the highest surrogate utility.

    All C(L, k) sets are scored when there are at most ``exhaustive_limit`` of them.
    Otherwise a beam search grows sets one layer at a time, keeping the ``beam_width``
    best sets of each size.
    """
    if math.comb(num_layers, count) <= exhaustive_limit:
        sets = list(combinations(range(num_layers), count))
        scores = np.concatenate([
            value_fn(np.stack([removal_mask(num_layers, s) for s in sets[start:start + 8192]]))
            for start in range(0, len(sets), 8192)
        ])
        order = np.argsort(-scores, kind="stable")[:top]
        return [sets[i] for i in order], scores[order], "exhaustive"

    beam: list[tuple[int, ...]] = [()]
    scores = np.zeros(1)
    for _ in range(count):
        grown = sorted({tuple(sorted(s + (j,))) for s in beam for j in range(num_layers) if j not in s})
        scores = value_fn(np.stack([removal_mask(num_layers, s) for s in grown]))
        order = np.argsort(-scores, kind="stable")[:max(beam_width, top)]
        beam = [grown[i] for i in order]
        scores = scores[order]
    return beam[:top], scores[:top], "beam"


def subset_search(
    value_fn: Callable[[np.ndarray], np.ndarray],
    real_nll: Callable[[list[str]], np.ndarray],
    num_layers: int,
    count: int,
    rescore: int = 8,
    extra_candidates: Sequence[Sequence[int]] = (),
    exhaustive_limit: int = 200_000,
    beam_width: int = 64,
) -> SubsetSearchResult:
    """Pick the k-subset to remove: best by surrogate, then confirmed on the real model.

    The ``rescore`` best sets by surrogate, plus ``extra_candidates`` (for example the
    one-shot semivalue choice), are evaluated with ``real_nll``. The set with the lowest
    real calibration NLL wins. Sets whose loss is non-finite are never chosen.
    """
    sets, scores, strategy = surrogate_candidates(value_fn, num_layers, count, rescore, exhaustive_limit, beam_width)
    candidates: list[tuple[int, ...]] = list(sets)
    for extra in extra_candidates:
        key = tuple(sorted(int(i) for i in extra))
        if len(key) == count and key not in candidates:
            candidates.append(key)
    masks = ["".join("0" if i in c else "1" for i in range(num_layers)) for c in candidates]
    nll = np.asarray(real_nll(masks), dtype=float)
    predicted = value_fn(np.stack([removal_mask(num_layers, c) for c in candidates]))

    rows = [
        {"removed": list(c), "surrogate": float(p), "nll": float(n)}
        for c, p, n in zip(candidates, predicted, nll)
    ]
    finite = [i for i in range(len(candidates)) if np.isfinite(nll[i])]
    if not finite:
        log.warning("every re-scored candidate gave a non-finite loss; keeping the surrogate's best set")
        best = 0
    else:
        best = min(finite, key=lambda i: (nll[i], i))
    return SubsetSearchResult(selected=list(candidates[best]), strategy=strategy, candidates=rows)


def mask_of(num_layers: int, removed: Sequence[int]) -> str:
    removed = set(int(i) for i in removed)
    return "".join("0" if i in removed else "1" for i in range(num_layers))


def swap_neighbours(removed: Sequence[int], num_layers: int) -> list[tuple[int, ...]]:
    """List every set made from ``removed`` by putting one removed layer back and removing one kept layer."""
    removed = sorted(int(i) for i in removed)
    kept = [i for i in range(num_layers) if i not in removed]
    out = []
    for back in removed:
        rest = [i for i in removed if i != back]
        for new in kept:
            out.append(tuple(sorted(rest + [new])))
    return out


@dataclass
class ActiveSearchResult:
    """Outcome of :func:`active_search`: the chosen set and the masks it evaluated."""

    selected: list[int]
    rounds: list[dict] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)


def active_search(
    fit: Callable[[list[str], np.ndarray, int], Callable[[np.ndarray], np.ndarray]],
    real_nll: Callable[[list[str]], np.ndarray],
    masks: Sequence[str],
    nll: Sequence[float],
    num_layers: int,
    count: int,
    rounds: int,
    per_round: int,
    beam_width: int = 64,
    exhaustive_limit: int = 200_000,
    local_share: float = 0.5,
) -> ActiveSearchResult:
    """Look for the best ``count``-layer removal set by alternating surrogate fits and real evaluations.

    ``masks`` and ``nll`` are the masks already evaluated on the real model. Each round
    refits the surrogate on every evaluated mask (``fit(masks, nll, round)`` returns a
    function of bool masks [n, L] giving predicted utilities, higher is better), then
    evaluates ``per_round`` new removal sets of size ``count`` on the real model. A share
    ``local_share`` of them are the surrogate's best one-swap neighbours of the best set
    found so far on the real model, so the later rounds are a local search guided by the
    surrogate. The rest are the surrogate's best sets overall (beam search or enumeration).
    The set with the lowest real NLL among every evaluated set of size ``count`` wins. ``selected``
    is empty when none of them gave a finite loss.
    """
    masks = list(masks)
    nll_list = [float(v) for v in nll]
    seen = set(masks)
    report: list[dict] = []
    new_masks: list[str] = []

    def best_real() -> tuple[list[int], float] | None:
        pool = [(v, m) for m, v in zip(masks, nll_list)
                if m.count("0") == count and np.isfinite(v)]
        if not pool:
            return None
        value, mask = min(pool)
        return [i for i, c in enumerate(mask) if c == "0"], value

    for round_index in range(rounds):
        value_fn = fit(masks, np.asarray(nll_list, dtype=float), round_index)
        wanted = per_round
        global_sets, _, _ = surrogate_candidates(
            value_fn, num_layers, count, top=max(4 * wanted, beam_width), exhaustive_limit=exhaustive_limit,
            beam_width=beam_width,
        )
        local_sets: list[tuple[int, ...]] = []
        current = best_real()
        if current is not None:
            neighbours = swap_neighbours(current[0], num_layers)
            scores = value_fn(np.stack([removal_mask(num_layers, s) for s in neighbours]))
            local_sets = [neighbours[i] for i in np.argsort(-scores, kind="stable")]

        chosen: list[str] = []

        def take(pool: list[tuple[int, ...]], limit: int) -> None:
            for s in pool:
                if len(chosen) >= limit:
                    return
                mask = mask_of(num_layers, s)
                if mask not in seen:
                    seen.add(mask)
                    chosen.append(mask)

        take(local_sets, int(round(local_share * wanted)))
        take(global_sets, wanted)
        take(local_sets, wanted)
        if not chosen:
            break
        values = np.asarray(real_nll(chosen), dtype=float)
        masks.extend(chosen)
        nll_list.extend(values.tolist())
        new_masks.extend(chosen)
        found = best_real()
        report.append({
            "round": round_index + 1, "evaluated": len(chosen),
            "best_nll": None if found is None else float(found[1]),
            "best_removed": None if found is None else found[0],
        })
        log.info("active round %d: %d sets evaluated, best calibration NLL %s", round_index + 1, len(chosen),
                 "n/a" if found is None else f"{found[1]:.4f}")

    found = best_real()
    if found is None:
        log.warning("no evaluated set of %d removed layers gave a finite calibration loss", count)
        return ActiveSearchResult(selected=[], rounds=report, evaluated=new_masks)
    return ActiveSearchResult(selected=sorted(found[0]), rounds=report, evaluated=new_masks)


@dataclass
class ExchangeResult:
    """Outcome of :func:`exchange_search`: the chosen set, its loss and the accepted swaps."""

    selected: list[int]
    nll: float
    swaps: list[dict] = field(default_factory=list)
    evaluations: int = 0


def exchange_search(
    real_nll: Callable[[list[str]], np.ndarray],
    known: Callable[[str], bool],
    start: Sequence[int],
    start_nll: float,
    num_layers: int,
    budget: int,
    single_nll: dict[int, float] | None = None,
    full_nll: float | None = None,
    pairs_per_pass: int | None = None,
) -> ExchangeResult:
    """Improve a removal set by one-for-one swaps ranked with real marginal losses.

    Around the current set S, the real model is evaluated with each removed layer j put back
    alone (S without j) and with each kept layer i removed in addition (S with i). The loss of
    the swap "put j back, remove i" is predicted to first order as
    ``NLL(S) − (NLL(S) − NLL(S∖j)) + (NLL(S∪i) − NLL(S))``, and the swaps are then evaluated
    on the real model in order of that prediction. Every swap that lowers the real loss is
    accepted, and the walk goes on down the same ranking, skipping swaps that no longer apply
    to the new set. It stops when ``pairs_per_pass`` swaps in a row (default: the set size, at
    least 4) bring no gain. The marginals are then measured again around the new set. After a
    pass with no gain, or when the rest of ``budget`` cannot pay for the next pass's marginals,
    the rest of the budget goes further down the last ranking. When the budget cannot pay for
    even the first pass, that pass measures only the kept layers with the lowest single-layer
    loss, as many as half of the budget allows, so the budget is not left unused. Masks
    already known (``known``) cost nothing.

    ``single_nll`` maps a layer to the loss with that layer alone removed. A kept layer whose
    single removal already costs more than the whole current set (over ``full_nll``) is not
    tried, which saves evaluations on layers such as the first one.
    """
    current = sorted(int(i) for i in start)
    best = float(start_nll)
    count = len(current)
    per_pass = pairs_per_pass or max(4, count)
    spent = 0
    swaps: list[dict] = []
    tried: set[str] = {mask_of(num_layers, current)}

    # Masks this search has evaluated, which cost nothing when they are requested again.
    evaluated: set[str] = set()

    def cost(masks: list[str]) -> int:
        """Count the distinct masks neither known nor evaluated here, the only ones that spend budget."""
        return len({m for m in masks if not known(m) and m not in evaluated})

    def run(masks: list[str]) -> np.ndarray:
        nonlocal spent
        spent += cost(masks)
        evaluated.update(masks)
        return np.asarray(real_nll(masks), dtype=float)

    def walk(predictions: list[tuple[float, int, int]], max_misses: float) -> bool:
        """Evaluate the ranked swaps until ``max_misses`` in a row fail, and return whether one was accepted.

        After an accepted swap the same marginals still rank the rest (a first-order guess for
        the new set), and swaps that no longer apply are skipped.
        """
        nonlocal current, best
        moved = False
        misses = 0
        for predicted, j, i in predictions:
            if misses >= max_misses or spent >= budget:
                break
            if j not in current or i in current:
                continue
            candidate = sorted([r for r in current if r != j] + [i])
            mask = mask_of(num_layers, candidate)
            if mask in tried:
                continue
            tried.add(mask)
            value = float(run([mask])[0])
            if np.isfinite(value) and value < best:
                swaps.append({"put_back": j, "removed": i, "predicted_nll": predicted, "nll": value,
                              "previous_nll": best})
                log.info("exchange: put back layer %d, remove layer %d, calibration NLL %.4f -> %.4f",
                         j, i, best, value)
                current, best, moved = candidate, value, True
                misses = 0
            else:
                misses += 1
        return moved

    predictions: list[tuple[float, int, int]] = []
    while spent < budget and count > 0:
        removed = set(current)
        removable = [i for i in range(num_layers) if i not in removed]
        if single_nll and full_nll is not None:
            allowance = best - full_nll
            removable = [i for i in removable if single_nll.get(i, -math.inf) - full_nll <= allowance]
        if not removable:
            break
        back_masks = [mask_of(num_layers, [r for r in current if r != j]) for j in current]
        add_masks = [mask_of(num_layers, current + [i]) for i in removable]
        if cost(back_masks + add_masks) > budget - spent:
            if predictions or not single_nll:
                break
            # Not even one full pass fits the budget. Rather than leave it unused, measure the
            # added-layer marginals only for the removable layers that cost least alone, and keep
            # half of the budget for trying swaps.
            room = (budget - spent) // 2 - cost(back_masks)
            if room < 1:
                break
            removable = sorted(sorted(removable, key=lambda i: (single_nll.get(i, math.inf), i))[:room])
            add_masks = [mask_of(num_layers, current + [i]) for i in removable]
            log.info("exchange: the budget is too small for one full pass, so only %d removable layers "
                     "are measured", len(removable))
        back = run(back_masks)
        add = run(add_masks)
        predictions = []
        for a, j in enumerate(current):
            for b, i in enumerate(removable):
                # NLL(S) minus the gain of putting j back plus the penalty of removing i.
                predicted = back[a] + add[b] - best
                if np.isfinite(predicted):
                    predictions.append((float(predicted), j, i))
        predictions.sort()
        if not walk(predictions, per_pass):
            break
    # What is left of the budget, too little for another pass or unused after a pass without
    # a gain, goes further down the last ranking.
    if predictions and spent < budget:
        walk(predictions, math.inf)
    return ExchangeResult(selected=current, nll=best, swaps=swaps, evaluations=spent)
