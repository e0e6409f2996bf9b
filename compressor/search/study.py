"""`compressor search`: an Optuna study over a recipe's search space, in the store's database.

One trial is one concrete recipe, run by :class:`compressor.pipeline.Pipeline` as the run
`{study}-t{number}` in the same database. Runs, stages and mask evaluations therefore sit
next to the study, and trials whose estimator runs on the same model and calibration data
reuse stored mask evaluations.

`search.trials` (or `--trials`) is the number of trials the study should hold. Each
worker keeps starting trials until the study has that many finished or running, so
several workers share the budget and rerunning the command runs only what is missing.
A trial whose worker died (no heartbeat for `grace_period` seconds) is failed and queued
again with the same parameters and run name, and the next trial any worker starts is
that retry. A trial that raises :class:`CompressorError` is marked FAIL with its message
and counts as finished. It is not retried.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from compressor.errors import CompressorError, RecipeError
from compressor.recipe import Recipe, SearchSpec
from compressor.search.results import SearchOutcome, summarize_study
from compressor.search.space import SearchSpace
from compressor.search.storage import fail_stale_trials, open_storage, open_store, printable_url
from compressor.store import Store, resolve_db_url

log = logging.getLogger(__name__)

RUN_ATTR = "run"
ERROR_ATTR = "error"
OUTPUT_ATTR = "output_dir"


def run_search(
    recipe: Recipe,
    trials: int | None = None,
    timeout: float | None = None,
    study_name: str | None = None,
    db_url: str | None = None,
    console: Console | None = None,
) -> SearchOutcome:
    """Run (or continue) the Optuna study of ``recipe``'s `search:` section.

    ``trials`` overrides `search.trials`, the number of trials the study should hold.
    ``timeout`` (seconds) stops this worker from starting new trials after that long.
    Writes `pareto.json` and `pareto.png` into the study folder (the recipe's
    `output_dir` with `{run}` set to the study name) and prints the Pareto front.
    """
    console = console or Console()
    space = SearchSpace(recipe)
    spec: SearchSpec = recipe.search
    name = study_name or spec.study or recipe.name
    target = trials if trials is not None else spec.trials
    if target < 1:
        raise CompressorError(f"--trials must be at least 1, got {target}")
    metric_names = [objective.metric for objective in spec.objectives]
    directions = [objective.direction for objective in spec.objectives]

    url = resolve_db_url(db_url, recipe.db)
    store = open_store(url)  # first, so a SQLite file is in WAL mode before Optuna connects
    storage = open_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period)
    study = _load_study(storage, name, directions, metric_names)
    sampler = _make_sampler(spec, space, study)
    study.sampler = sampler
    study.set_user_attr("recipe", recipe.name)
    study.set_user_attr("objectives", metric_names)

    study_dir = Path(recipe.output_dir.replace("{run}", name))
    study_dir.mkdir(parents=True, exist_ok=True)
    log.info("study %s in %s: %d trials wanted, output in %s", name, printable_url(url), target, study_dir)

    fail_stale_trials(study)
    if _covered(study) < target:
        objective = _Objective(space, store, study_dir, name, spec)
        _optimize(study, objective, target, timeout, console)
    else:
        log.info("study %s already contains %d trials, so this worker runs none", name, _covered(study))

    return summarize_study(study, spec.objectives, study_dir, console=console, storage_url=printable_url(url))


def _load_study(storage, name: str, directions: list[str], metric_names: list[str]) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise CompressorError(
            f"study {name!r} already exists with directions {existing}, but the recipe asks for {directions}; "
            "pass --study NEW_NAME to start a new study"
        )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names)
    elif study.metric_names != metric_names:
        raise CompressorError(
            f"study {name!r} already exists with objectives {study.metric_names}, but the recipe asks for "
            f"{metric_names}; pass --study NEW_NAME to start a new study"
        )
    return study


def _make_sampler(spec: SearchSpec, space: SearchSpace, study: optuna.Study) -> optuna.samplers.BaseSampler:
    # NOTE: workers that join a study at the same moment get the same seed and draw the same
    # random start-up trials. A worker that joins later is offset by the trials already there.
    seed = spec.seed + len(study.get_trials(deepcopy=False))
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(space.grid(), seed=seed)


def _covered(study: optuna.Study) -> int:
    """Count the trials that use up the budget: complete, running, or failed with an error.

    A trial failed by a stale heartbeat does not count, because its retry (first WAITING,
    then RUNNING) takes its place.
    """
    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.RUNNING):
            count += 1
        elif trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs:
            count += 1
    return count


def _finished(study: optuna.Study) -> int:
    return sum(
        1 for trial in study.get_trials(deepcopy=False)
        if trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs)
    )


def _optimize(study: optuna.Study, objective: "_Objective", target: int, timeout: float | None, console: Console) -> None:
    columns = (TextColumn("[bold]study {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(study.study_name, total=target, completed=min(_finished(study), target))

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # Another worker may have died meanwhile: fail its trial before counting, so it is retried.
            fail_stale_trials(study)
            progress.update(task, completed=min(_finished(study), target))
            if _covered(study) >= target:
                study.stop()

        study.optimize(
            objective, n_trials=None, timeout=timeout, catch=(CompressorError,),
            callbacks=[after_trial], gc_after_trial=True,
        )


class _Objective:
    """Runs one trial: draw values, build the concrete recipe, run it, read the objectives."""

    def __init__(self, space: SearchSpace, store: Store, study_dir: Path, study_name: str, spec: SearchSpec):
        self.space = space
        self.store = store
        self.study_dir = study_dir
        self.study_name = study_name
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> list[float]:
        from compressor.pipeline import Pipeline

        # A retried trial keeps the run name of the trial it replaces, so the pipeline resumes its finished stages.
        retried = RUN_ATTR in trial.user_attrs
        run_name = trial.user_attrs.get(RUN_ATTR) or f"{self.study_name}-t{trial.number}"
        trial.set_user_attr(RUN_ATTR, run_name)
        output_dir = self.study_dir / run_name
        trial.set_user_attr(OUTPUT_ATTR, str(output_dir))
        values = self.space.suggest(trial)
        log.info(
            "trial %d (run %s%s): %s", trial.number, run_name,
            ", a retry that resumes the run's finished stages" if retried else "",
            ", ".join(f"{path}={value!r}" for path, value in values.items()),
        )

        started = time.perf_counter()
        try:
            recipe = self.space.trial_recipe(values)
            outcome = Pipeline(recipe, run_name=run_name, store=self.store, output_dir=output_dir).run()
            result = self._objective_values(outcome.metrics(), run_name)
        except CompressorError as exc:
            message = str(exc) if not isinstance(exc, RecipeError) else f"invalid trial recipe: {exc}"
            trial.set_user_attr(ERROR_ATTR, message[:2000])
            log.error("trial %d (run %s) failed: %s", trial.number, run_name, message)
            raise
        except KeyboardInterrupt:
            # Queue the same values again, so rerunning the command picks this trial up first.
            trial.study.enqueue_trial(trial.params, user_attrs={RUN_ATTR: run_name})
            log.warning("trial %d (run %s) interrupted; its values are queued for the next run", trial.number, run_name)
            raise

        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        return result

    def _objective_values(self, metrics: dict[str, Any], run_name: str) -> list[float]:
        values = []
        for objective in self.spec.objectives:
            if objective.metric not in metrics:
                available = ", ".join(sorted(metrics)) or "none"
                raise CompressorError(
                    f"objective metric {objective.metric!r} not found in run {run_name!r}; the run produced: "
                    f"{available}. Fix `search.objectives` in the recipe"
                )
            value = metrics[objective.metric]
            if value is None or not math.isfinite(float(value)):
                raise CompressorError(f"objective metric {objective.metric!r} of run {run_name!r} is not finite ({value})")
            values.append(float(value))
        return values
