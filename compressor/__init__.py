"""compressor: plugin-based AutoML compression for causal language models."""

from compressor.components import Component, StageResult, StrictConfig
from compressor.errors import CompressorError, RecipeError
from compressor.hookspecs import hookimpl
from compressor.scores import LayerScores, TargetConfig

__version__ = "0.1.0"

__all__ = [
    "Component",
    "CompressorError",
    "LayerScores",
    "RecipeError",
    "StageResult",
    "StrictConfig",
    "TargetConfig",
    "__version__",
    "hookimpl",
]
