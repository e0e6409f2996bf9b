"""Config schemas of the quantizers gptq, gptqmodel and rtn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.components import StrictConfig


class WeightQuantConfig(StrictConfig):
    """Settings shared by every weight-only quantizer: the integer grid and what it covers."""

    bits: int = Field(
        4, ge=2, le=8,
        description="Bits per weight. Each backend supports a subset (gptq and rtn: 2, 3, 4, 8; "
        "gptqmodel: 2, 3, 4, 8); other values are rejected before any work starts.",
    )
    group_size: int | None = Field(
        64, ge=1,
        description="Input columns that share one scale. Must divide the in-features of every "
        "quantized Linear layer (SmolLM2's 576 takes 32, 64 or 192, not 128). null means one scale "
        "per output channel.",
    )
    symmetric: bool = Field(
        True, description="Symmetric grid without a zero point; false adds a zero point per group."
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Linear modules left in full precision: module names, class names or `re:REGEX` "
        "patterns matched against module names.",
    )


class GPTQConfig(WeightQuantConfig):
    """GPTQ: error-compensating quantization driven by calibration activations."""

    act_order: Literal["static", "weight"] | None = Field(
        "static",
        description="Quantize columns in order of decreasing activation magnitude. `static` keeps each "
        "group's columns contiguous, so no g_idx is stored. `weight` groups columns in activation order "
        "and stores a g_idx tensor. null quantizes columns left to right.",
    )
    dampening_frac: float = Field(
        0.01, ge=0.0, le=1.0,
        description="Fraction of the mean Hessian diagonal added to the diagonal before the Cholesky "
        "factorisation.",
    )
    max_dampening_frac: float = Field(
        0.1, ge=0.0, le=1.0,
        description="When a Hessian is not positive definite, quantization is retried with the "
        "dampening multiplied by 10 (at least 0.01) up to this value, then fails naming the layers.",
    )
    n_samples: int | None = Field(
        None, ge=1,
        description="Calibration windows; null takes `n_samples` of the recipe's `data.calibration`.",
    )
    seq_len: int | None = Field(
        None, ge=2,
        description="Tokens per calibration window; null takes `seq_len` of `data.calibration`.",
    )

    @model_validator(mode="after")
    def _dampening_range(self) -> "GPTQConfig":
        if self.max_dampening_frac < self.dampening_frac:
            raise ValueError(
                f"max_dampening_frac ({self.max_dampening_frac}) is below dampening_frac "
                f"({self.dampening_frac}); set it to at least dampening_frac, or equal to it to "
                "disable the retries"
            )
        return self


class RTNConfig(WeightQuantConfig):
    """Round-to-nearest: each weight goes to the nearest grid point, without calibration data."""
