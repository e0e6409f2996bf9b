"""Write a run's report files and print its summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from compressor.pipeline import RunOutcome
    from compressor.recipe import Recipe

# Estimator data keys too large for the report's stage table; they stay in report.json.
_BULKY_KEYS = {"masks", "utilities", "samples"}


def before_after(outcome: "RunOutcome") -> list[tuple[str, str, float | None, float | None]]:
    """Pair each metric of an evaluator that ran at least twice: (plugin, metric, first value, last value)."""
    by_plugin: dict[str, list] = {}
    for stage in outcome.stages:
        if stage.kind == "evaluator":
            by_plugin.setdefault(stage.plugin, []).append(stage)
    rows = []
    for plugin, stages in by_plugin.items():
        if len(stages) < 2:
            continue
        first, last = stages[0], stages[-1]
        for name in first.metrics:
            if name in last.metrics:
                rows.append((plugin, name, first.metrics[name], last.metrics[name]))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _stage_json(stage) -> dict[str, Any]:
    return {
        "index": stage.index,
        "name": stage.label,
        "kind": stage.kind,
        "plugin": stage.plugin,
        "status": stage.status,
        "seconds": round(stage.seconds, 3),
        "metrics": stage.metrics,
        "artifacts": stage.artifacts,
        "result": stage.data,
    }


def write_run_report(recipe: "Recipe", outcome: "RunOutcome", handle=None) -> dict[str, str]:
    """Write ``report.json`` and ``report.md`` to the run's output folder and return their paths."""
    out = Path(outcome.output_dir)
    report = {
        "run": outcome.run_name,
        "recipe": recipe.to_dict(),
        "seconds": round(outcome.seconds, 3),
        "model_dir": str(outcome.model_dir) if outcome.model_dir else None,
        "removed_layers": list(handle.removed_layers) if handle is not None else [],
        "num_layers": {"before": handle.num_original_layers, "after": handle.num_layers} if handle is not None else {},
        "stages": [_stage_json(s) for s in outcome.stages],
        "before_after": [
            {"plugin": p, "metric": m, "before": b, "after": a} for p, m, b, a in before_after(outcome)
        ],
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))

    lines = [f"# Run `{outcome.run_name}`", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += [
        f"- model: `{recipe.model.source}` ({recipe.model.dtype}, {recipe.model.device})",
        f"- total time: {outcome.seconds:.1f} s",
    ]
    if handle is not None:
        lines.append(f"- decoder layers: {handle.num_original_layers} → {handle.num_layers}")
        if handle.removed_layers:
            lines.append(f"- removed layers (original numbering): {sorted(handle.removed_layers)}")
    if outcome.model_dir:
        lines.append(f"- compressed model: `{os.path.relpath(outcome.model_dir, out)}` (loads with `AutoModelForCausalLM.from_pretrained`)")
    lines += ["", "## Stages", "", "| # | stage | kind | plugin | status | seconds |", "|---|---|---|---|---|---|"]
    for s in outcome.stages:
        lines.append(f"| {s.index} | {s.label} | {s.kind} | {s.plugin} | {s.status} | {s.seconds:.1f} |")

    pairs = before_after(outcome)
    if pairs:
        lines += ["", "## Before and after", "", "| evaluator | metric | before | after |", "|---|---|---|---|"]
        lines += [f"| {p} | {m} | {_fmt(b)} | {_fmt(a)} |" for p, m, b, a in pairs]

    for s in outcome.stages:
        lines += ["", f"## Stage {s.index}: {s.label} ({s.kind} `{s.plugin}`)", ""]
        if s.metrics:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in s.metrics.items()]
            lines.append("")
        if s.kind == "estimator" and "selected" in s.data:
            lines.append(f"- selected for removal: {s.data['selected']}")
            cost = s.data.get("cost") or {}
            if cost:
                lines.append("- cost: " + ", ".join(f"{k} {_fmt(v)}" for k, v in cost.items()))
        for label, path in s.artifacts.items():
            rel = os.path.relpath(path, out) if os.path.isabs(path) or Path(path).exists() else path
            if str(path).endswith(".png"):
                lines.append(f"![{label}]({rel})")
            else:
                lines.append(f"- {label}: `{rel}`")
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    return {"json": str(json_path), "markdown": str(md_path)}


def print_summary(outcome: "RunOutcome", console: Console | None = None) -> None:
    """Print the final rich summary of a run."""
    console = console or Console()
    table = Table(title=f"run {outcome.run_name}: stages")
    for column in ("#", "stage", "plugin", "status", "seconds", "key results"):
        table.add_column(column)
    for s in outcome.stages:
        results = ", ".join(f"{k}={_fmt(v)}" for k, v in list(s.metrics.items())[:6])
        if s.kind == "estimator" and "selected" in s.data:
            results = f"remove {s.data['selected']}; " + results
        table.add_row(str(s.index), s.label, s.plugin, s.status, f"{s.seconds:.1f}", results)
    console.print(table)

    pairs = before_after(outcome)
    if pairs:
        ba = Table(title="before → after")
        for column in ("evaluator", "metric", "before", "after"):
            ba.add_column(column)
        for plugin, metric, before, after in pairs:
            ba.add_row(plugin, metric, _fmt(before), _fmt(after))
        console.print(ba)
    console.print(f"total time {outcome.seconds:.1f} s · report: {outcome.report_files.get('markdown', '–')}")
    if outcome.model_dir:
        console.print(f"compressed model: {outcome.model_dir}")
