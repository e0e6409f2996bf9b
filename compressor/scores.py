"""LayerScores, the result every estimator returns, and the shared removal target."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field, model_validator

from compressor.components import StrictConfig
from compressor.errors import CompressorError


class TargetConfig(StrictConfig):
    """How many layers to remove: a fraction of the layers, or a count. Give one of them."""

    ratio: float | None = Field(
        None, gt=0, lt=1, description="Fraction of the decoder layers to remove, rounded to the nearest count."
    )
    num_layers: int | None = Field(None, ge=1, description="Number of decoder layers to remove.")

    @model_validator(mode="after")
    def _one_target(self):
        if self.ratio is not None and self.num_layers is not None:
            raise ValueError(f"give either ratio ({self.ratio}) or num_layers ({self.num_layers}), not both")
        return self

    def layers_to_remove(self, total: int) -> int:
        """Return the number of layers to remove from a model with ``total`` layers."""
        if self.num_layers is not None:
            count = self.num_layers
        elif self.ratio is not None:
            count = int(math.floor(self.ratio * total + 0.5))
        else:
            raise CompressorError("no removal target: set `ratio` (for example 0.2) or `num_layers` in the estimator config")
        if count < 1:
            raise CompressorError(f"ratio {self.ratio} removes no layer of {total}; raise it to at least {1 / total:.3f}")
        if count >= total:
            raise CompressorError(f"cannot remove {count} of {total} layers: at least one layer must stay")
        return count


@dataclass
class LayerScores:
    """Per-layer importance and the layers chosen for removal.

    ``values[i]`` is the importance of layer ``i`` of the model the estimator saw; a
    higher value means the layer matters more. ``lower``/``upper`` bound it when the
    method gives intervals. ``selected`` lists the layers to remove, in that model's
    numbering. ``cost`` contains ``evaluations`` (real-model mask evaluations),
    ``token_layers`` (tokens × decoder layers executed) and ``seconds``.
    """

    method: str
    values: list[float]
    selected: list[int]
    lower: list[float] | None = None
    upper: list[float] | None = None
    cost: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerScores":
        return cls(**{k: data[k] for k in ("method", "values", "selected") }, lower=data.get("lower"),
                   upper=data.get("upper"), cost=data.get("cost", {}), extra=data.get("extra", {}))
