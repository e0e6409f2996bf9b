"""Estimators that score layers by the calibration loss of the model without them.

All three evaluate layer masks through :class:`compressor.engine.UtilityEngine`, so a
mask evaluated once (by any of them, by a Shapley estimator, or in an earlier run on
the same model and calibration windows) is read back from the store, never recomputed.
A mask string has one character per layer of the current model: ``1`` keeps the layer.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
from pydantic import Field

from compressor.errors import CompressorError
from compressor.scores import LayerScores, TargetConfig
from compressor_baselines._common import engine_cost, estimator_result, finite_values, lowest

log = logging.getLogger(__name__)


def _make_engine(handle, ctx, batch_size: int):
    from compressor.engine import UtilityEngine

    batches = ctx.batches(ctx.calibration_spec, handle.tokenizer)
    return UtilityEngine(handle, batches, store=ctx.store, progress=True, batch_size=batch_size)


def _mask_without(num_layers: int, removed) -> str:
    removed = set(removed)
    return "".join("0" if layer in removed else "1" for layer in range(num_layers))


def _nan_to_inf(values: np.ndarray) -> np.ndarray:
    """Replace NaN losses by infinity, because a removal that broke the model must rank last."""
    return np.where(np.isfinite(values), values, np.inf)


class SlebConfig(TargetConfig):
    protect_first: bool = Field(True, description="Never remove the first decoder layer.")
    protect_last: bool = Field(True, description="Never remove the last decoder layer.")
    batch_size: int = Field(8, ge=1, description="Calibration windows per forward pass of the engine.")


class Sleb:
    """SLEB: remove layers one at a time, each time the one whose removal costs least.

    Each of ``n`` rounds evaluates, for every remaining unprotected layer ``j``, the mean
    calibration NLL of the current model without ``j``, and removes the ``j`` with the
    lowest NLL. A round therefore accounts for the layers removed before it. Source:
    Song et al. 2024, "SLEB: Streamlining LLMs through Redundancy Verification and
    Elimination of Transformer Blocks".

    ``values[i]`` is the NLL (nats per token) measured when layer ``i`` was removed, or,
    for a layer that stays, when its removal was tried in the last round. Protected layers
    are never evaluated and get the largest value. ``extra["removal_order"]`` lists the
    removed layers in the order the rounds chose them.
    """

    def __init__(self, config: SlebConfig):
        self.config = config

    def run(self, handle, ctx):
        num_layers = handle.num_layers
        count = self.config.layers_to_remove(num_layers)
        protected = set()
        if self.config.protect_first:
            protected.add(0)
        if self.config.protect_last:
            protected.add(num_layers - 1)
        candidates = [layer for layer in range(num_layers) if layer not in protected]
        if count > len(candidates):
            raise CompressorError(
                f"SLEB cannot remove {count} of {num_layers} layers when layers {sorted(protected)} are "
                "protected; lower the target or set protect_first / protect_last to false"
            )

        engine = _make_engine(handle, ctx, self.config.batch_size)
        removed: list[int] = []
        values = [math.inf] * num_layers
        round_nll: list[float] = []
        for round_index in range(count):
            remaining = [layer for layer in candidates if layer not in removed]
            masks = [_mask_without(num_layers, removed + [layer]) for layer in remaining]
            nll = _nan_to_inf(engine.evaluate(masks, description=f"SLEB round {round_index + 1}/{count}"))
            for layer, value in zip(remaining, nll):
                values[layer] = float(value)
            best = int(np.argmin(nll))  # the first minimum, so ties go to the lower layer
            removed.append(remaining[best])
            round_nll.append(float(nll[best]))
            log.info("SLEB round %d/%d: removing layer %d (calibration NLL %.4f)",
                     round_index + 1, count, remaining[best], nll[best])
        # Read after the first masked evaluation, which records the full model's NLL on the way.
        full_nll = engine.full_nll

        scores = LayerScores(
            method="sleb",
            values=finite_values(values),
            selected=sorted(removed),
            cost=engine_cost(engine),
            extra={"removal_order": removed, "round_nll": finite_values(round_nll), "full_nll": full_nll if math.isfinite(full_nll) else None,
                   "protected": sorted(protected)},
        )
        return estimator_result(handle, scores)


class PerplexityCriterionConfig(TargetConfig):
    batch_size: int = Field(8, ge=1, description="Calibration windows per forward pass of the engine.")


class PerplexityCriterion:
    """Perplexity criterion: remove the layers whose removal alone hurts perplexity least.

    The score of layer ``i`` is the calibration perplexity ``exp(NLL)`` of the model with
    only layer ``i`` removed, computed once for every layer. The ``n`` layers with the
    lowest scores are removed together. Source: Kim et al. 2024, "Shortened LLaMA: Depth
    Pruning for Large Language Models with Comparison of Retraining Methods".
    """

    def __init__(self, config: PerplexityCriterionConfig):
        self.config = config

    def run(self, handle, ctx):
        num_layers = handle.num_layers
        count = self.config.layers_to_remove(num_layers)

        engine = _make_engine(handle, ctx, self.config.batch_size)
        masks = [_mask_without(num_layers, [layer]) for layer in range(num_layers)]
        nll = _nan_to_inf(engine.evaluate(masks, description="perplexity with one layer removed"))
        full_nll = engine.full_nll  # recorded by the first masked evaluation, so it costs nothing here
        perplexity = finite_values([math.exp(value) if value < 700 else math.inf for value in nll])
        selected = lowest(perplexity, count)
        log.info("perplexity criterion: removing layers %s of %d", selected, num_layers)

        scores = LayerScores(
            method="perplexity_criterion",
            values=perplexity,
            selected=selected,
            cost=engine_cost(engine),
            extra={"full_ppl": math.exp(full_nll) if math.isfinite(full_nll) else None},
        )
        return estimator_result(handle, scores)


class OracleConfig(TargetConfig):
    max_subsets: int = Field(
        500, ge=1, description="Largest number of layer subsets to evaluate; the search stops with an error above it."
    )
    batch_size: int = Field(8, ge=1, description="Calibration windows per forward pass of the engine.")


class Oracle:
    """Exhaustive search: remove the k layers whose joint removal gives the lowest calibration NLL.

    Every k-subset of the layers is evaluated, which is the best any one-shot selection
    can do on the calibration set. The cost grows as C(L, k), so the search is limited
    to ``max_subsets`` subsets (500 covers k = 2 on 30 layers, 435 subsets).
    ``values[i]`` is the lowest NLL among the subsets that contain layer ``i``.
    """

    def __init__(self, config: OracleConfig):
        self.config = config

    def run(self, handle, ctx):
        num_layers = handle.num_layers
        count = self.config.layers_to_remove(num_layers)
        n_subsets = math.comb(num_layers, count)
        if n_subsets > self.config.max_subsets:
            raise CompressorError(
                f"the oracle would evaluate C({num_layers}, {count}) = {n_subsets} layer subsets, more than "
                f"max_subsets = {self.config.max_subsets}; remove fewer layers or raise max_subsets"
            )

        engine = _make_engine(handle, ctx, self.config.batch_size)
        subsets = list(itertools.combinations(range(num_layers), count))
        masks = [_mask_without(num_layers, subset) for subset in subsets]
        nll = _nan_to_inf(engine.evaluate(masks, description=f"oracle over {n_subsets} subsets"))
        best = int(np.argmin(nll))

        values = [math.inf] * num_layers
        for subset, value in zip(subsets, nll):
            for layer in subset:
                values[layer] = min(values[layer], float(value))
        selected = list(subsets[best])
        log.info("oracle: removing layers %s of %d (calibration NLL %.4f)", selected, num_layers, nll[best])

        scores = LayerScores(
            method="oracle",
            values=finite_values(values),
            selected=selected,
            cost=engine_cost(engine),
            extra={"best_nll": float(nll[best]) if math.isfinite(nll[best]) else None, "subsets": n_subsets},
        )
        return estimator_result(handle, scores)
