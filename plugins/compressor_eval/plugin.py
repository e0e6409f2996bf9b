"""Registration of the evaluators: perplexity, lm_eval and size."""

from compressor.components import Component
from compressor.hookspecs import hookimpl


@hookimpl
def register_evaluators(register):
    from compressor_eval.lmeval import LmEvalConfig, LmEvalEvaluator
    from compressor_eval.perplexity import PerplexityConfig, PerplexityEvaluator
    from compressor_eval.size import SizeConfig, SizeEvaluator

    register(Component(
        name="perplexity", kind="evaluator", config=PerplexityConfig, factory=PerplexityEvaluator,
        description="Token perplexity exp(mean NLL) on held-out text, in non-overlapping or sliding windows.",
    ))
    register(Component(
        name="lm_eval", kind="evaluator", config=LmEvalConfig, factory=LmEvalEvaluator,
        description="lm-eval accuracy on the model in memory; BIG-bench multiple-choice tasks run offline.",
    ))
    register(Component(
        name="size", kind="evaluator", config=SizeConfig, factory=SizeEvaluator,
        description="Parameters, size on disk and in memory, bits per parameter, greedy generation latency.",
    ))
