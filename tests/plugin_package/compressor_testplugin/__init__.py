"""A third-party plugin as a user would write one: an evaluator that counts decoder parameters."""

from pydantic import Field

from compressor import Component, StageResult, StrictConfig, hookimpl


class ParamCountConfig(StrictConfig):
    include_embeddings: bool = Field(True, description="Count the embedding and lm_head parameters too.")


class ParamCount:
    def __init__(self, config: ParamCountConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        layers = handle.adapter.get_layers(handle.model)
        decoder = sum(p.numel() for p in layers.parameters())
        total = sum(p.numel() for p in handle.model.parameters()) if self.config.include_embeddings else decoder
        return StageResult(handle, metrics={"params_counted": float(total), "decoder_params": float(decoder)})


@hookimpl
def register_evaluators(register):
    register(
        Component(
            name="param_count",
            kind="evaluator",
            config=ParamCountConfig,
            factory=ParamCount,
            description="Count parameters (test plugin).",
        )
    )
