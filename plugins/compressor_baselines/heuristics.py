"""Estimators that look at no data: reverse order and random choice.

They cost nothing and set the floor every data-driven method has to beat.
"""

from __future__ import annotations

import logging
import random

from pydantic import Field

from compressor.scores import LayerScores, TargetConfig
from compressor_baselines._common import estimator_result, lowest

log = logging.getLogger(__name__)

_NO_COST = {"evaluations": 0.0, "token_layers": 0.0, "seconds": 0.0}


class ReverseOrderConfig(TargetConfig):
    pass


class ReverseOrder:
    """Remove the ``n`` layers just before the final layer: ``L-1-n, ..., L-2``.

    The heuristic assumes that deep layers matter least. The final layer feeds the output
    head, so it is kept. ``values`` rank layers by depth: layer ``i < L-1`` gets ``L-1-i`` (so layer
    ``L-2`` is the least important) and the final layer gets ``L``.
    """

    def __init__(self, config: ReverseOrderConfig):
        self.config = config

    def run(self, handle, ctx):
        num_layers = handle.num_layers
        count = self.config.layers_to_remove(num_layers)
        values = [float(num_layers - 1 - layer) for layer in range(num_layers - 1)] + [float(num_layers)]
        selected = list(range(num_layers - 1 - count, num_layers - 1))
        log.info("reverse order: removing layers %s of %d", selected, num_layers)
        scores = LayerScores(method="reverse_order", values=values, selected=selected, cost=dict(_NO_COST))
        return estimator_result(handle, scores)


class RandomConfig(TargetConfig):
    seed: int | None = Field(None, description="Seed of the draw; defaults to the recipe's `seed`.")


class RandomLayers:
    """Remove ``n`` layers drawn uniformly at random without replacement.

    Each layer gets a value drawn uniformly from [0, 1) by ``random.Random(seed)``, and
    the ``n`` lowest are removed. The same seed and layer count give the same layers.
    """

    def __init__(self, config: RandomConfig):
        self.config = config

    def run(self, handle, ctx):
        num_layers = handle.num_layers
        count = self.config.layers_to_remove(num_layers)
        seed = self.config.seed if self.config.seed is not None else ctx.seed
        rng = random.Random(seed)
        values = [rng.random() for _ in range(num_layers)]
        selected = lowest(values, count)
        log.info("random (seed %d): removing layers %s of %d", seed, selected, num_layers)
        scores = LayerScores(method="random", values=values, selected=selected, cost=dict(_NO_COST),
                             extra={"seed": seed})
        return estimator_result(handle, scores)
