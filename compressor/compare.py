"""`compressor compare`: every estimator of a recipe's `compare:` section at every removal target.

The recipe's ``stages`` are the template. Its one estimator stage is replaced, for each
(method, target, seed), by the method's plugin and config with the target set, and the
other stages (pruner, evaluators) stay as they are. Each combination is one pipeline run
with its own name, ``{recipe}-{label}-r{ratio}`` (``-n{count}`` for layer counts, plus
``-s{seed}`` per seed), so every result lands in the store. A second call resumes: finished
stages are restored from the store, and mask evaluations are read back through the
utility engine's cache, so nothing already computed runs again.

Outputs, in the compare folder: ``comparison.json``, ``comparison.md``, ``quality.png``
(held-out perplexity against the removal target, per method) and ``layers_removed.png``
(which layers each method removed, as a heat map).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from compressor.errors import CompressorError, RecipeError
from compressor.recipe import CompareMethod, Recipe, validate_stage_configs

log = logging.getLogger(__name__)

PPL_METRIC = "ppl_token"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class PlannedRun:
    """One (method, target, seed) combination and the concrete recipe that runs it."""

    label: str
    plugin: str
    target_key: str  # "ratio" or "num_layers"
    target: float | int
    seed: int | None
    run_name: str
    recipe: Recipe


# --------------------------------------------------------------------------- planning


def _estimator_index(recipe: Recipe) -> int:
    indices = [i for i, stage in enumerate(recipe.stages) if stage.kind == "estimator"]
    if len(indices) != 1:
        raise CompressorError(
            f"recipe {recipe.name!r} has {len(indices)} estimator stages; `compressor compare` replaces "
            "exactly one, so give the recipe one estimator stage followed by a pruner and evaluators"
        )
    return indices[0]


def _check_template(recipe: Recipe) -> None:
    if recipe.compare is None:
        raise CompressorError(
            f"recipe {recipe.name!r} has no `compare:` section; add one with `methods` "
            "(for example [{plugin: sleb}, {plugin: block_influence}]) and `ratios` or `num_layers`"
        )
    if recipe.data.evaluation is None:
        raise CompressorError(
            f"recipe {recipe.name!r} has no `data.evaluation`; a comparison scores every method on "
            "held-out text, so add one, for example {source: sotu, split: heldout, n_samples: 8, seq_len: 256}"
        )
    index = _estimator_index(recipe)
    later = recipe.stages[index + 1:]
    if not any(stage.kind == "pruner" for stage in later):
        raise CompressorError(
            f"recipe {recipe.name!r} has no pruner stage after its estimator; add one "
            "(for example {kind: pruner, plugin: layerdrop}) so the selected layers are removed"
        )
    if not any(stage.kind == "evaluator" for stage in later):
        raise CompressorError(
            f"recipe {recipe.name!r} has no evaluator stage after its estimator; add one "
            "(for example {kind: evaluator, plugin: perplexity, name: heldout}) to score each method"
        )
    calibration = recipe.data.calibration.model_dump(mode="json")
    for stage in later:
        if stage.kind == "evaluator" and stage.config.get("text") == calibration:
            log.warning("evaluator %s scores the calibration text, not held-out text; its numbers favour "
                        "methods that fit the calibration set", stage.label)

    labels = [method.label or method.plugin for method in recipe.compare.methods]
    for label in labels:
        if not _SLUG.fullmatch(label):
            raise CompressorError(
                f"compare label {label!r} may contain only letters, digits, '.', '_' and '-', because it "
                "is part of run names and folders; set `label` on that method"
            )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise CompressorError(
            f"compare methods {duplicates} appear more than once; give each a distinct `label`"
        )


def _run_name(recipe: Recipe, label: str, target_key: str, target: float | int, seed: int | None) -> str:
    suffix = f"r{target:g}" if target_key == "ratio" else f"n{target}"
    name = f"{recipe.name}-{label}-{suffix}"
    return name if seed is None else f"{name}-s{seed}"


def _child_recipe(
    recipe: Recipe, index: int, method: CompareMethod, target_key: str, target: float | int,
    seed: int | None, output_dir: Path, registry,
) -> Recipe:
    data = copy.deepcopy(recipe.to_dict())
    data.pop("compare", None)
    data.pop("search", None)
    # NOTE: a comparison keeps metrics, not models: saving one model per run would write
    # (methods × targets) full checkpoints.
    data["save_model"] = False
    data["output_dir"] = str(output_dir / "runs" / "{run}")

    config = dict(method.config)
    config.pop("ratio", None)
    config.pop("num_layers", None)
    config[target_key] = target
    if seed is not None:
        component = registry.get("estimator", method.plugin)
        if "seed" in component.config.model_fields:
            config["seed"] = seed
        else:
            data["seed"] = seed  # the recipe seed reaches every stage through ctx.seed

    template = recipe.stages[index]
    stage = {"kind": "estimator", "plugin": method.plugin, "config": config}
    if template.name:
        stage["name"] = template.name
    data["stages"][index] = stage

    where = f"compare method {method.label or method.plugin!r} at {target_key} {target}"
    try:
        child = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    validate_stage_configs(child, registry=registry, source=where)
    return child


def plan_runs(recipe: Recipe, output_dir: Path, registry=None) -> list[PlannedRun]:
    """Expand the `compare:` section into one concrete recipe per (method, target, seed)."""
    from compressor.plugins import get_registry

    registry = registry or get_registry()
    _check_template(recipe)
    index = _estimator_index(recipe)
    spec = recipe.compare
    target_key = "ratio" if spec.ratios is not None else "num_layers"
    targets = spec.ratios if spec.ratios is not None else spec.num_layers

    planned = []
    for method in spec.methods:
        label = method.label or method.plugin
        for target in targets:
            for seed in method.seeds or [None]:
                child = _child_recipe(recipe, index, method, target_key, target, seed, output_dir, registry)
                name = _run_name(recipe, label, target_key, target, seed)
                planned.append(PlannedRun(label, method.plugin, target_key, target, seed, name, child))
    return planned


# --------------------------------------------------------------------------- running


def _record(run: PlannedRun, outcome) -> dict[str, Any]:
    """Summarise one finished run: evaluator metrics, estimator cost and the layers removed."""
    estimator_index = _estimator_index(run.recipe)
    metrics: dict[str, float] = {}
    reference: dict[str, float] = {}
    cost: dict[str, float] = {}
    removed: list[int] = []
    num_layers = 0
    for stage in outcome.stages:
        if stage.kind == "evaluator":
            target = metrics if stage.index > estimator_index else reference
            target.update({f"{stage.label}.{name}": value for name, value in stage.metrics.items()})
        if stage.index == estimator_index:
            cost = dict(stage.data.get("cost") or {})
            cost["stage_seconds"] = stage.seconds
            layer_ids = stage.data.get("layer_ids") or list(range(len(stage.data.get("values", []))))
            removed = sorted(layer_ids[i] for i in stage.data.get("selected", []))
            num_layers = len(layer_ids)
    return {
        "label": run.label, "plugin": run.plugin, run.target_key: run.target, "seed": run.seed,
        "run": run.run_name, "status": "resumed" if all(s.status == "resumed" for s in outcome.stages) else "finished",
        "metrics": metrics, "reference_metrics": reference, "cost": cost,
        "removed_layers": removed, "estimator_layers": num_layers,
        "output_dir": str(outcome.output_dir),
    }


def _execute(planned: list[PlannedRun], store, output_dir: Path, console: Console) -> list[dict[str, Any]]:
    from compressor.pipeline import Pipeline

    records = []
    for position, run in enumerate(planned, start=1):
        console.rule(f"[{position}/{len(planned)}] {run.run_name}")
        pipeline = Pipeline(run.recipe, run_name=run.run_name, store=store,
                            output_dir=output_dir / "runs" / run.run_name, console=console)
        try:
            outcome = pipeline.run()
        except CompressorError as exc:
            log.error("run %s failed: %s", run.run_name, exc)
            records.append({
                "label": run.label, "plugin": run.plugin, run.target_key: run.target, "seed": run.seed,
                "run": run.run_name, "status": "failed", "error": str(exc), "metrics": {}, "reference_metrics": {},
                "cost": {}, "removed_layers": [], "estimator_layers": 0,
            })
            continue
        records.append(_record(run, outcome))
    return records


# --------------------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)  # sample variance over seeds
    return mean, math.sqrt(variance)


def aggregate(records: list[dict[str, Any]], target_key: str) -> list[dict[str, Any]]:
    """Group run records by (method label, target); average metrics and cost over seeds.

    ``metrics_std`` is the sample standard deviation when a group has several seeds.
    ``removal_frequency`` maps each layer to the fraction of the group's runs that removed it.
    """
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["label"], record[target_key]), []).append(record)

    rows = []
    for (label, target), members in groups.items():
        ok = [m for m in members if m["status"] != "failed"]
        metric_names = list(dict.fromkeys(name for m in ok for name in m["metrics"]))
        cost_names = list(dict.fromkeys(name for m in ok for name in m["cost"]))
        row: dict[str, Any] = {
            "label": label, "plugin": members[0]["plugin"], target_key: target, "runs": len(members),
            "failed": len(members) - len(ok), "errors": [m["error"] for m in members if m["status"] == "failed"],
            "seeds": [m["seed"] for m in members if m["seed"] is not None],
            "metrics": {}, "metrics_std": {}, "cost": {},
            "removed_layers": [m["removed_layers"] for m in ok],
            "resumed": bool(ok) and all(m["status"] == "resumed" for m in ok),
            "estimator_layers": max((m["estimator_layers"] for m in ok), default=0),
        }
        for name in metric_names:
            row["metrics"][name], row["metrics_std"][name] = _mean_std([m["metrics"].get(name) for m in ok])
        for name in cost_names:
            row["cost"][name], _ = _mean_std([m["cost"].get(name) for m in ok])
        frequency: dict[int, float] = {}
        for layers in row["removed_layers"]:
            for layer in layers:
                frequency[layer] = frequency.get(layer, 0.0) + 1.0 / len(ok)
        row["removal_frequency"] = {str(k): v for k, v in sorted(frequency.items())}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- outputs


def _fmt(value: Any, std: float | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:.4g}"
        return f"{text} ± {std:.2g}" if std is not None else text
    return str(value)


def _layers_text(row: dict[str, Any]) -> str:
    if not row["removed_layers"]:
        return "–"
    if len(row["removed_layers"]) == 1:
        return str(row["removed_layers"][0])
    return "; ".join(str(layers) for layers in row["removed_layers"])


def _table_columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row["metrics"]))


def _table_rows(rows: list[dict[str, Any]], target_key: str) -> tuple[list[str], list[list[str]]]:
    metric_names = _table_columns(rows)
    header = ["method", target_key, *metric_names, "evaluations", "estimator s", "layers removed", "status"]
    body = []
    for row in rows:
        if row["failed"]:
            status = f"{row['failed']}/{row['runs']} failed: {row['errors'][0]}"
        else:
            status = "resumed" if row["resumed"] else "ran"
        label = row["label"] + (f" ({len(row['seeds'])} seeds)" if len(row["seeds"]) > 1 else "")
        body.append([
            label, _fmt(row[target_key]),
            *[_fmt(row["metrics"].get(name), row["metrics_std"].get(name)) for name in metric_names],
            _fmt(row["cost"].get("evaluations")), _fmt(row["cost"].get("seconds")),
            _layers_text(row), status,
        ])
    return header, body


def print_table(rows: list[dict[str, Any]], target_key: str, console: Console, title: str) -> None:
    header, body = _table_rows(rows, target_key)
    table = Table(title=title)
    for column in header:
        table.add_column(column, overflow="fold")
    for line in body:
        table.add_row(*line)
    console.print(table)


def _quality_metric(rows: list[dict[str, Any]]) -> str | None:
    """Return the last evaluator metric named ``ppl_token`` (the held-out perplexity after pruning)."""
    names = [name for name in _table_columns(rows) if name.endswith("." + PPL_METRIC)]
    return names[-1] if names else None


def plot_quality(rows: list[dict[str, Any]], target_key: str, path: Path, reference: float | None) -> str | None:
    """Plot held-out perplexity against the removal target, one line per method."""
    from matplotlib.figure import Figure

    metric = _quality_metric(rows)
    if metric is None:
        log.warning("no evaluator reports %s, so %s is not drawn", PPL_METRIC, path.name)
        return None
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for label in dict.fromkeys(row["label"] for row in rows):
        points = sorted((row[target_key], row["metrics"].get(metric), row["metrics_std"].get(metric))
                        for row in rows if row["label"] == label and row["metrics"].get(metric) is not None)
        if not points:
            continue
        xs, ys, errors = zip(*points)
        errors = [e or 0.0 for e in errors]
        axes.errorbar(xs, ys, yerr=errors if any(errors) else None, marker="o", capsize=3, label=label)
    if reference is not None:
        axes.axhline(reference, color="grey", linestyle="--", linewidth=1, label="unpruned")
    axes.set_yscale("log")
    axes.set_xlabel("fraction of layers removed" if target_key == "ratio" else "layers removed")
    axes.set_ylabel(f"held-out perplexity ({metric})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return str(path)


def plot_layers_removed(rows: list[dict[str, Any]], target_key: str, path: Path) -> str | None:
    """Draw a heat map: one row per (method, target), one column per original layer index."""
    from matplotlib.figure import Figure

    drawn = [row for row in rows if row["removed_layers"]]
    if not drawn:
        log.warning("no run removed any layer, so %s is not drawn", path.name)
        return None
    width = max(max(row["estimator_layers"] for row in drawn),
                1 + max(int(layer) for row in drawn for layer in row["removal_frequency"]))
    grid = [[row["removal_frequency"].get(str(layer), 0.0) for layer in range(width)] for row in drawn]
    names = [f"{row['label']} {_fmt(row[target_key])}" for row in drawn]

    figure = Figure(figsize=(max(6, 0.28 * width + 3), max(2.5, 0.3 * len(drawn) + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_yticks(range(len(names)), names, fontsize="small")
    axes.set_xticks(range(width), [str(layer) for layer in range(width)], fontsize="x-small")
    axes.set_xlabel("layer (original index)")
    figure.colorbar(image, ax=axes, label="fraction of runs that removed it")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return str(path)


def write_markdown(path: Path, recipe: Recipe, rows: list[dict[str, Any]], target_key: str,
                   new_evaluations: int, plots: dict[str, str]) -> str:
    header, body = _table_rows(rows, target_key)
    lines = [f"# Comparison `{recipe.name}`", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += [
        f"- model: `{recipe.model.source}` ({recipe.model.dtype}, {recipe.model.device})",
        f"- calibration: `{recipe.data.calibration.source}` split {recipe.data.calibration.split}, "
        f"{recipe.data.calibration.n_samples} × {recipe.data.calibration.seq_len} tokens",
        f"- evaluation: `{recipe.data.evaluation.source}` split {recipe.data.evaluation.split}",
        f"- new mask evaluations in this invocation: {new_evaluations}",
        "- evaluations and estimator seconds are the estimator's own cost when it ran; a run restored "
        "from the store shows the cost it had then",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
    for label, plot in plots.items():
        lines += ["", f"![{label}]({Path(plot).name})"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------- entry point


def run_compare(recipe: Recipe, output_dir: str | Path | None = None, db_url: str | None = None,
                console: Console | None = None) -> dict[str, Any]:
    """Run every (method, target, seed) of ``recipe.compare`` and write the comparison files.

    Returns the content of ``comparison.json``: ``runs`` (one record per pipeline run),
    ``rows`` (grouped by method and target, averaged over seeds), ``new_mask_evaluations``
    (mask evaluations this call added to the store) and ``files``.
    A run that fails with a :class:`CompressorError` is recorded as failed and the others go on.
    """
    from compressor.store import Store, resolve_db_url

    console = console or Console()
    compare_dir = Path(output_dir) if output_dir else Path(recipe.output_dir.replace("{run}", recipe.name)) / "compare"
    compare_dir.mkdir(parents=True, exist_ok=True)
    planned = plan_runs(recipe, compare_dir)
    target_key = planned[0].target_key
    log.info("compare %s: %d runs (%d methods) into %s", recipe.name, len(planned),
             len(recipe.compare.methods), compare_dir)

    store = Store(resolve_db_url(db_url, recipe.db))
    before = store.count_mask_evaluations()
    records = _execute(planned, store, compare_dir, console)
    new_evaluations = store.count_mask_evaluations() - before

    rows = aggregate(records, target_key)
    reference = next((r["reference_metrics"] for r in records if r["reference_metrics"]), {})
    quality = _quality_metric(rows)
    reference_ppl = None
    if quality is not None:
        reference_ppl = next((v for k, v in reference.items() if k.endswith("." + PPL_METRIC)), None)

    plots = {}
    quality_png = plot_quality(rows, target_key, compare_dir / "quality.png", reference_ppl)
    if quality_png:
        plots["held-out perplexity"] = quality_png
    heatmap_png = plot_layers_removed(rows, target_key, compare_dir / "layers_removed.png")
    if heatmap_png:
        plots["layers removed"] = heatmap_png

    files = {"json": str(compare_dir / "comparison.json"), "markdown": str(compare_dir / "comparison.md")}
    files.update({Path(p).stem: p for p in plots.values()})
    result = {
        "recipe": recipe.name, "target": target_key, "quality_metric": quality, "reference_metrics": reference,
        "new_mask_evaluations": new_evaluations, "runs": records, "rows": rows, "files": files,
    }
    Path(files["json"]).write_text(json.dumps(result, indent=2, default=str))
    write_markdown(Path(files["markdown"]), recipe, rows, target_key, new_evaluations, plots)

    print_table(rows, target_key, console, title=f"compare {recipe.name}")
    failed = [r for r in records if r["status"] == "failed"]
    for record in failed:
        console.print(f"[red]failed[/] {record['run']}: {record['error']}", highlight=False)
    console.print(f"new mask evaluations: {new_evaluations} · report: {files['markdown']}")
    return result
