"""The outcome of a study: the Pareto front (or best trial) as a rich table, `pareto.json` and `pareto.png`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from compressor.recipe import Objective

log = logging.getLogger(__name__)

PARETO_JSON = "pareto.json"
PARETO_PNG = "pareto.png"


@dataclass
class SearchOutcome:
    """Summary of a study returned by `run_search`. ``front`` and ``trials`` are the JSON records of `pareto.json`."""

    study_name: str
    study_dir: Path
    states: dict[str, int]
    front: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _record(trial: FrozenTrial, objectives: list[Objective]) -> dict[str, Any]:
    return {
        "number": trial.number,
        "run": trial.user_attrs.get("run"),
        "output_dir": trial.user_attrs.get("output_dir"),
        "params": trial.params,
        "values": {objective.metric: value for objective, value in zip(objectives, trial.values)},
    }


def summarize_study(
    study: optuna.Study, objectives: list[Objective], study_dir: Path, console: Console | None = None,
    storage_url: str = "",
) -> SearchOutcome:
    """Print the Pareto front of the complete trials and write `pareto.json` and `pareto.png` into ``study_dir``."""
    console = console or Console()
    trials = study.get_trials(deepcopy=False)
    states = dict(Counter(trial.state.name for trial in trials))
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    # For one objective, best_trials contains the best trial (several if tied).
    front = sorted(study.best_trials, key=lambda t: t.values[0]) if complete else []

    outcome = SearchOutcome(
        study_name=study.study_name, study_dir=study_dir, states=states,
        front=[_record(trial, objectives) for trial in front],
        trials=[_record(trial, objectives) for trial in complete],
    )
    payload = {
        "study": study.study_name,
        "storage": storage_url,
        "objectives": [objective.model_dump() for objective in objectives],
        "states": states,
        "pareto_front": outcome.front,
        "trials": outcome.trials,
    }
    json_path = study_dir / PARETO_JSON
    json_path.write_text(json.dumps(payload, indent=2))
    outcome.files["json"] = str(json_path)
    if complete:
        outcome.files["png"] = str(plot_front(complete, front, objectives, study_dir / PARETO_PNG, study.study_name))

    _print_front(console, study.study_name, front, objectives, states)
    for kind, path in outcome.files.items():
        console.print(f"{kind}: {path}")
    return outcome


def _print_front(console: Console, name: str, front: list[FrozenTrial], objectives: list[Objective], states: dict[str, int]) -> None:
    counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(states.items())) or "no trials"
    if not front:
        console.print(f"study {name}: {counts}; no trial has completed yet")
        return
    title = "Pareto front" if len(objectives) > 1 else "best trial"
    table = Table(title=f"study {name}: {title} ({counts})")
    table.add_column("trial", justify="right")
    table.add_column("run")
    param_names = sorted({key for trial in front for key in trial.params})
    for key in param_names:
        table.add_column(key)
    for objective in objectives:
        arrow = "↓" if objective.direction == "minimize" else "↑"
        table.add_column(f"{objective.metric} {arrow}", justify="right")
    for trial in front:
        params = [_format(trial.params.get(key)) for key in param_names]
        values = [_format(value) for value in trial.values]
        table.add_row(str(trial.number), str(trial.user_attrs.get("run", "")), *params, *values)
    console.print(table)


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_front(complete: list[FrozenTrial], front: list[FrozenTrial], objectives: list[Objective], path: Path, title: str) -> Path:
    """Plot the complete trials and highlight the front.

    Two or more objectives give a scatter of the first two. One objective gives its value by trial number.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front_numbers = {trial.number for trial in front}
    others = [trial for trial in complete if trial.number not in front_numbers]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    if len(objectives) >= 2:
        axes.scatter([t.values[0] for t in others], [t.values[1] for t in others], c="0.6", label="trials")
        ordered = sorted(front, key=lambda t: t.values[0])
        axes.plot([t.values[0] for t in ordered], [t.values[1] for t in ordered], "o-", c="tab:red", label="Pareto front")
        for trial in ordered:
            axes.annotate(f"t{trial.number}", (trial.values[0], trial.values[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_xlabel(f"{objectives[0].metric} ({objectives[0].direction})")
        axes.set_ylabel(f"{objectives[1].metric} ({objectives[1].direction})")
        if len(objectives) > 2:
            title += f" (first 2 of {len(objectives)} objectives)"
    else:
        axes.scatter([t.number for t in others], [t.values[0] for t in others], c="0.6", label="trials")
        axes.scatter([t.number for t in front], [t.values[0] for t in front], c="tab:red", label="best")
        axes.set_xlabel("trial")
        axes.set_ylabel(f"{objectives[0].metric} ({objectives[0].direction})")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
