"""Registration of the baseline layer-importance estimators."""

from compressor.components import Component
from compressor.hookspecs import hookimpl
from compressor_baselines.heuristics import RandomConfig, RandomLayers, ReverseOrder, ReverseOrderConfig
from compressor_baselines.loss_based import (
    Oracle,
    OracleConfig,
    PerplexityCriterion,
    PerplexityCriterionConfig,
    Sleb,
    SlebConfig,
)
from compressor_baselines.similarity import (
    AngularDistance,
    AngularDistanceConfig,
    BlockInfluence,
    BlockInfluenceConfig,
)

ESTIMATORS = (
    Component(
        name="block_influence", kind="estimator", config=BlockInfluenceConfig, factory=BlockInfluence,
        description="ShortGPT block influence: 1 - cos(layer input, layer output); one forward pass",
    ),
    Component(
        name="angular_distance", kind="estimator", config=AngularDistanceConfig, factory=AngularDistance,
        description="Gromov et al.: removes the contiguous block with the smallest last-token angular distance",
    ),
    Component(
        name="sleb", kind="estimator", config=SlebConfig, factory=Sleb,
        description="SLEB: removes one layer per round, the one whose removal gives the lowest calibration NLL",
    ),
    Component(
        name="perplexity_criterion", kind="estimator", config=PerplexityCriterionConfig, factory=PerplexityCriterion,
        description="Shortened LLaMA: calibration perplexity with each layer removed alone",
    ),
    Component(
        name="reverse_order", kind="estimator", config=ReverseOrderConfig, factory=ReverseOrder,
        description="removes the layers just before the final one; reads no data",
    ),
    Component(
        name="random", kind="estimator", config=RandomConfig, factory=RandomLayers,
        description="removes layers drawn at random with a seed; reads no data",
    ),
    Component(
        name="oracle", kind="estimator", config=OracleConfig, factory=Oracle,
        description="exhaustive search over every k-subset of layers (small k only)",
    ),
)


@hookimpl
def register_estimators(register):
    for component in ESTIMATORS:
        register(component)
