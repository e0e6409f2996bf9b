"""Section 3: held-out perplexity of the Shapley selection against the evaluation budget.

Every (budget, semivalue, selection) runs the shapley estimator's ``estimate`` on one
utility engine backed by one store. The sampler is seeded, so a larger budget's masks
start with a smaller budget's masks, and the store evaluates each of them once. The
reference selection comes from ``reference_budget`` evaluations with the estimator's
default semivalue and selection.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from compressor.engine import UtilityEngine
from compressor.errors import CompressorError
from compressor.scores import TargetConfig
from compressor.store import Store

from bench.settings import Settings

log = logging.getLogger(__name__)


def jaccard(a: list[int], b: list[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two sets of removed layers (1.0 for two empty sets)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


class HeldoutPerplexity:
    """Held-out perplexity of the model with a set of layers removed, computed once per set."""

    def __init__(self, handle, spec):
        from compressor_eval.perplexity import PerplexityConfig

        self.handle = handle
        self.spec = spec
        self.config = PerplexityConfig()
        self._cache: dict[tuple[int, ...], float] = {}

    def __call__(self, removed: list[int]) -> float:
        from compressor_eval.perplexity import evaluate_perplexity

        key = tuple(sorted(removed))
        if key not in self._cache:
            keep = [i for i in range(self.handle.num_layers) if i not in key]
            with self.handle.adapter.layer_subset(self.handle.model, keep):
                metrics, _ = evaluate_perplexity(self.handle.model, self.handle.tokenizer, self.spec, self.config)
            self._cache[key] = metrics["ppl_token"]
        return self._cache[key]


def supported_selections() -> set[str]:
    """Return the `selection` values that the installed shapley estimator accepts."""
    import typing

    from compressor_shapley.plugin import ShapleyConfig

    annotation = ShapleyConfig.model_fields["selection"].annotation
    return {value for arg in typing.get_args(annotation) for value in typing.get_args(arg)}


def _run_one(engine: UtilityEngine, count: int, budget: int, semivalue: str | None, selection: str | None,
             base_masks: int, ratio: float) -> dict[str, Any]:
    from compressor_shapley.plugin import ShapleyConfig, ShapleyEstimator, estimate

    fields: dict[str, Any] = dict(ratio=ratio, budget_evaluations=budget, allow_low_quality=True, plot=False,
                                  base_masks=base_masks)
    if semivalue is not None:
        fields["semivalue"] = semivalue
    if selection is not None:
        fields["selection"] = selection
    config = ShapleyConfig(**fields)
    settings = ShapleyEstimator(config)._settings(engine.num_layers, count)
    before = engine.stats["evaluations"]
    start = time.perf_counter()
    scores = estimate(engine, count, config, settings, seed=0)
    quality = scores.extra.get("surrogate_quality", {})
    return {
        "budget": budget, "semivalue": config.semivalue, "selection": settings["selection"],
        "selected": list(scores.selected), "new_evaluations": engine.stats["evaluations"] - before,
        "seconds": time.perf_counter() - start,
        "surrogate_r2": quality.get("r2"), "surrogate_spearman": quality.get("spearman"),
        "surrogate_low_quality": scores.extra.get("surrogate_low_quality"),
    }


def run_budget_curve(settings: Settings, handle, batches, heldout_spec, store_url: str) -> dict[str, Any]:
    """Run the grid and return the reference, one row per (budget, semivalue, selection) and the cost."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    count = TargetConfig(ratio=settings.budget_ratio).layers_to_remove(handle.num_layers)
    engine = UtilityEngine(handle, batches, store=Store(store_url), progress=False)
    perplexity = HeldoutPerplexity(handle, heldout_spec)
    start = time.perf_counter()

    log.info("budget curve: reference selection at %d evaluations", settings.reference_budget)
    reference = _run_one(engine, count, settings.reference_budget, None, None, settings.base_masks,
                         settings.budget_ratio)
    reference["ppl_token"] = perplexity(reference["selected"])

    supported = supported_selections()
    grid = [(b, s, k) for b in settings.budgets for s, k in settings.budget_grid if k in supported]
    skipped = sorted({k for _, k in settings.budget_grid if k not in supported})
    if skipped:
        log.warning("the shapley estimator has no selection %s; those rows are skipped", skipped)
    rows = []
    with Progress(TextColumn("budget curve: {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=len(grid))
        for budget, semivalue, selection in grid:
            progress.update(task, description=f"{budget} evaluations, {semivalue}, {selection}")
            try:
                row = _run_one(engine, count, budget, semivalue, selection, settings.base_masks,
                               settings.budget_ratio)
            except CompressorError as exc:
                log.error("budget curve %d/%s/%s failed: %s", budget, semivalue, selection, exc)
                rows.append({"budget": budget, "semivalue": semivalue, "selection": selection, "error": str(exc)})
                progress.advance(task)
                continue
            row["ppl_token"] = perplexity(row["selected"])
            row["jaccard_vs_reference"] = jaccard(row["selected"], reference["selected"])
            rows.append(row)
            progress.advance(task)
    return {
        "ratio": settings.budget_ratio, "layers_removed": count, "reference": reference, "rows": rows,
        "distinct_masks_evaluated": int(engine.stats["evaluations"]), "seconds": time.perf_counter() - start,
        "skipped_selections": skipped,
    }
