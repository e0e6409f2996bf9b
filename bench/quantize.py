"""Section 4: layer removal and GPTQ W4 (group size 64), in both orders, on SmolLM2.

Every variant removes the same layers (the Shapley selection of the quality section),
so the orders differ only in whether GPTQ calibrates the full or the pruned model.
Each variant is one pipeline run: the stages that change the model, then held-out
perplexity and size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from compressor.errors import CompressorError
from compressor.recipe import Recipe

from bench.quality import HELDOUT, data_section
from bench.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "smollm2-135m"


def variant_stages(settings: Settings, layers: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Return the model-changing stages of each variant, in the order they run."""
    prune = {"kind": "pruner", "plugin": "layerdrop", "config": {"layers": layers}}
    gptq = {"kind": "quantizer", "plugin": "gptq", "config": {
        "bits": 4, "group_size": 64, "n_samples": settings.gptq_samples, "seq_len": settings.gptq_seq_len}}
    variants = {"dense": [], "pruned": [prune]}
    if "prune_then_quantize" in settings.orders and "quantize_then_prune" in settings.orders:
        variants["quantized"] = [gptq]
    if "prune_then_quantize" in settings.orders:
        variants["prune_then_quantize"] = [prune, gptq]
    if "quantize_then_prune" in settings.orders:
        variants["quantize_then_prune"] = [gptq, prune]
    return variants


def run_quantize(settings: Settings, layers: list[int], work: Path) -> dict[str, Any]:
    """Run each variant and return its held-out perplexity, size and wall time."""
    from compressor.pipeline import Pipeline

    evaluators = [
        {"kind": "evaluator", "plugin": "perplexity", "name": HELDOUT},
        {"kind": "evaluator", "plugin": "size", "name": "size",
         "config": {"latency": settings.size_latency, "repeats": 3}},
    ]
    rows = {}
    for name, stages in variant_stages(settings, layers).items():
        recipe = Recipe.model_validate({
            "name": f"bench-gptq-{name}", "model": {"source": SOURCE}, "data": data_section(settings),
            "output_dir": str(work / "runs" / "{run}"), "save_model": False,
            "stages": [*stages, *evaluators],
        })
        log.info("prune + GPTQ: variant %s", name)
        start = time.perf_counter()
        try:
            outcome = Pipeline(recipe, db_url=f"sqlite:///{work / 'gptq.db'}",
                               output_dir=work / "runs" / recipe.name).run()
        except CompressorError as exc:
            log.error("prune + GPTQ variant %s failed: %s", name, exc)
            rows[name] = {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - start}
            continue
        stage_seconds = {stage.label: stage.seconds for stage in outcome.stages}
        rows[name] = {"status": "ran", "metrics": outcome.metrics(), "stage_seconds": stage_seconds,
                      "seconds": time.perf_counter() - start}
    return {"layers_removed": layers, "ratio": settings.gptq_ratio, "variants": rows,
            "gptq": {"bits": 4, "group_size": 64, "n_samples": settings.gptq_samples,
                     "seq_len": settings.gptq_seq_len}}
