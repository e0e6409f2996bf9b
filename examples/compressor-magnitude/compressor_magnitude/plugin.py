"""Register the `magnitude` estimator.

A layer's score is the mean absolute value of its weight matrices (2-D parameters),
optionally scaled by the layer's parameter count. No data is needed, so it costs no
forward pass; it is a cheap heuristic, not a quality-aware method.
"""

from typing import Literal

import torch
from pydantic import Field

from compressor import Component, LayerScores, StageResult, TargetConfig, hookimpl


class MagnitudeConfig(TargetConfig):
    reduce: Literal["mean", "sum"] = Field(
        "mean", description="`mean`: mean |w| over the layer's weights; `sum`: total |w|."
    )


class MagnitudeEstimator:
    def __init__(self, config: MagnitudeConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        values = []
        with torch.no_grad():
            for layer in handle.layers:
                weights = [p.detach().float().abs() for p in layer.parameters() if p.dim() == 2]
                total = sum(w.sum().item() for w in weights)
                count = sum(w.numel() for w in weights)
                values.append(total / count if self.config.reduce == "mean" else total)

        k = self.config.layers_to_remove(len(values))
        selected = sorted(sorted(range(len(values)), key=values.__getitem__)[:k])
        scores = LayerScores(
            method="magnitude",
            values=values,
            selected=selected,
            cost={"evaluations": 0, "token_layers": 0, "seconds": 0.0},
        )
        return StageResult(handle, data=scores.to_dict(), metrics={"layers_selected": float(k)})


@hookimpl
def register_estimators(register):
    register(
        Component(
            name="magnitude",
            kind="estimator",
            config=MagnitudeConfig,
            factory=MagnitudeEstimator,
            description="Layer importance from mean absolute weight (no data needed).",
        )
    )
