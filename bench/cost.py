"""Section 1: the cost of evaluating one list of layer masks under three cost models.

* ``zeroed``: the published cost model (:class:`compressor.engine.ZeroedLayerEngine`).
  Every layer runs even when removed, duplicates are evaluated again, nothing is reused.
* ``limit``: one forward pass of the kept layers per distinct mask, the lowest cost of
  a method that runs each distinct mask from the embeddings.
* ``engine``: compressor's :class:`compressor.engine.UtilityEngine`, which skips removed
  layers, starts each mask at its first removed layer from cached states and evaluates a
  mask once.

All three evaluate the same list in the same process, in an order rotated per repeat,
each repeat with a fresh engine and no store, so no cache carries over between repeats.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import numpy as np

from compressor.engine import UtilityEngine, ZeroedLayerEngine

log = logging.getLogger(__name__)

# Masks per stratum in the published recipe; the duplicate share of the timed list follows it.
PAPER_SAMPLES_PER_STRATUM = 1600


class KeptLayersOnlyEngine(UtilityEngine):
    """The physical limit: every distinct mask runs its kept layers once, from the embeddings."""

    reuse_prefix = False
    skip_removed = True
    deduplicate = True


ENGINES = {"zeroed": ZeroedLayerEngine, "limit": KeptLayersOnlyEngine, "engine": UtilityEngine}


def _random_mask(rng: np.random.Generator, num_layers: int, kept: int) -> str:
    removed = set(rng.choice(num_layers, size=num_layers - kept, replace=False).tolist())
    return "".join("0" if i in removed else "1" for i in range(num_layers))


def duplicate_shares(num_layers: int, strata: list[int], seed: int) -> dict[int, float]:
    """Share of repeated masks per stratum when each stratum draws 1600 masks with replacement.

    This is how a sampler that draws each mask uniformly within its stratum behaves at the
    published budget. Small strata, such as 2 removed layers of 30 (435 masks), repeat often.
    """
    rng = np.random.default_rng(seed)
    shares = {}
    for kept in strata:
        draws = [_random_mask(rng, num_layers, kept) for _ in range(PAPER_SAMPLES_PER_STRATUM)]
        shares[kept] = 1.0 - len(set(draws)) / len(draws)
    return shares


def paper_style_masks(num_layers: int, total: int, seed: int) -> tuple[list[str], dict[str, Any]]:
    """Draw ``total`` masks over the published strata scaled to the depth, with paper-like repeats.

    Each stratum gets ``total / len(strata)`` masks, of which the stratum's duplicate share
    (at 1600 draws per stratum) are repeats of masks already in the list. The full mask
    comes first, because the published method evaluates the full model for its utility.
    """
    from compressor_shapley.sampling import paper_strata

    strata = paper_strata(num_layers)
    shares = duplicate_shares(num_layers, strata, seed)
    rng = np.random.default_rng(seed + 1)
    per_stratum = max(1, total // len(strata))
    masks: list[str] = []
    for kept in strata:
        # At least one distinct mask per stratum, so every repeat has a mask to copy.
        repeats = min(int(round(shares[kept] * per_stratum)), per_stratum - 1)
        distinct: list[str] = []
        while len(distinct) < per_stratum - repeats:
            mask = _random_mask(rng, num_layers, kept)
            if mask not in distinct:
                distinct.append(mask)
        copies = [distinct[int(i)] for i in rng.integers(0, len(distinct), size=repeats)]
        masks.extend(distinct + copies)
    order = rng.permutation(len(masks))
    masks = ["1" * num_layers] + [masks[int(i)] for i in order]
    info = {
        "strata": strata,
        "duplicate_share_at_1600_per_stratum": {str(k): round(v, 4) for k, v in shares.items()},
        "masks": len(masks),
        "distinct_masks": len(set(masks)),
    }
    return masks, info


def measure_cost(handle, batches, masks: list[str], repeats: int, batch_size: int = 8) -> dict[str, Any]:
    """Time each engine on ``masks`` ``repeats`` times and return medians, token-layers and ratios."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    names = list(ENGINES)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    token_layers: dict[str, float] = {}
    nll: dict[str, np.ndarray] = {}
    with Progress(TextColumn("estimation cost: {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=repeats * len(names))
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                progress.update(task, description=f"{name}, repeat {repeat + 1}/{repeats}")
                engine = ENGINES[name](handle, batches, store=None, progress=False, batch_size=batch_size)
                start = time.perf_counter()
                values = engine.evaluate(masks)
                seconds[name].append(time.perf_counter() - start)
                token_layers[name] = float(engine.stats["token_layers"])
                nll[name] = values
                progress.advance(task)
                log.info("cost %s repeat %d: %.2f s for %d masks", name, repeat + 1, seconds[name][-1], len(masks))

    n_masks = len(masks)
    tokens = int(batches.input_ids.numel())
    distinct = list(dict.fromkeys(masks))
    limit_token_layers = float(tokens * sum(mask.count("1") for mask in distinct))
    rows = {}
    for name in names:
        median = statistics.median(seconds[name])
        rows[name] = {
            "seconds_runs": seconds[name],
            "seconds_median": median,
            "seconds_per_mask": median / n_masks,
            "token_layers": token_layers[name],
            "token_layers_per_mask": token_layers[name] / n_masks,
        }
    limit_seconds = rows["limit"]["seconds_median"]
    for name in names:
        rows[name]["seconds_vs_limit"] = rows[name]["seconds_median"] / limit_seconds
        rows[name]["token_layers_vs_limit"] = rows[name]["token_layers"] / limit_token_layers
    return {
        "engines": rows,
        "speedup_engine_vs_zeroed": rows["zeroed"]["seconds_median"] / rows["engine"]["seconds_median"],
        "token_layer_ratio_zeroed_vs_engine": rows["zeroed"]["token_layers"] / rows["engine"]["token_layers"],
        "limit_token_layers_per_mask": limit_token_layers / n_masks,
        "tokens_per_mask": tokens,
        "repeats": repeats,
        # The engines compute the same loss, so their NLLs should agree to float rounding.
        "max_nll_difference": float(max(np.nanmax(np.abs(nll[name] - nll["zeroed"])) for name in names)),
    }
