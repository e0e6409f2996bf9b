"""Optuna search over recipes on a tiny random Llama, on SQLite and PostgreSQL.

Trials run the real built-in components: the `reverse_order` estimator, the `layerdrop`
pruner and the `perplexity` and `size` evaluators.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from compressor.errors import CompressorError, RecipeError
from compressor.recipe import load_recipe, load_recipe_text
from compressor.search import SearchSpace, run_search
from compressor.store import Store


def recipe_dict(model_dir: Path, text_file: Path, output: Path, **search) -> dict:
    text = f"file:{text_file}"
    spec = {
        "sampler": "random",
        "seed": 0,
        "trials": 2,
        "objectives": [
            {"metric": "heldout.ppl_token", "direction": "minimize"},
            {"metric": "size.size_disk_mb", "direction": "minimize"},
        ],
        "space": {
            "stages.0.plugin": {"choices": ["reverse_order", "random"]},
            "stages.0.config.num_layers": {"low": 1, "high": 2, "int": True},
        },
    }
    spec.update(search)
    return {
        "name": "tiny-search",
        "model": {"source": str(model_dir)},
        "data": {
            "calibration": {"source": text, "n_samples": 2, "seq_len": 32},
            "evaluation": {"source": text, "n_samples": 2, "seq_len": 32, "seed": 1},
        },
        "output_dir": str(output / "{run}"),
        "stages": [
            {"kind": "estimator", "plugin": "reverse_order", "name": "scores", "config": {"num_layers": 1}},
            {"kind": "pruner", "plugin": "layerdrop"},
            {"kind": "evaluator", "plugin": "perplexity", "name": "heldout"},
            {"kind": "evaluator", "plugin": "size", "name": "size", "config": {"latency": False}},
        ],
        "search": spec,
    }


def write_recipe(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_study(db_url: str, name: str = "tiny-search") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db_url)


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in study.get_trials(deepcopy=False)]


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "compressor.cli", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture()
def recipe_factory(tiny_llama_dir, tiny_text_file, tmp_path):
    def make(**search):
        return recipe_dict(tiny_llama_dir, tiny_text_file, tmp_path / "runs", **search)

    return make


# ---------------------------------------------------------------------- one worker


def test_search_runs_and_resumes(db_url, recipe_factory, tmp_path):
    recipe = load_recipe_text(yaml.safe_dump(recipe_factory()))

    outcome = run_search(recipe, trials=2, db_url=db_url)

    study = load_study(db_url)
    assert states(study) == ["COMPLETE", "COMPLETE"]
    assert study.metric_names == ["heldout.ppl_token", "size.size_disk_mb"]
    assert study.user_attrs["objectives"] == ["heldout.ppl_token", "size.size_disk_mb"]
    runs = [trial.user_attrs["run"] for trial in study.trials]
    assert runs == ["tiny-search-t0", "tiny-search-t1"]
    store = Store(db_url)
    for run_name in runs:
        row = store.get_run(run_name)
        assert row is not None
        assert row.status == "finished"
    for trial in study.trials:
        assert trial.values[0] > 1.0  # a token perplexity
        assert trial.values[1] > 0.0  # megabytes on disk

    study_dir = tmp_path / "runs" / "tiny-search"
    payload = json.loads((study_dir / "pareto.json").read_text())
    assert payload["study"] == "tiny-search"
    assert len(payload["trials"]) == 2
    assert payload["pareto_front"]
    assert {row["number"] for row in payload["pareto_front"]} <= {0, 1}
    assert (study_dir / "pareto.png").stat().st_size > 0
    assert outcome.states == {"COMPLETE": 2}

    # A rerun with a larger budget runs only the missing trial; the same budget again runs none.
    run_search(recipe, trials=3, db_url=db_url)
    assert states(load_study(db_url)) == ["COMPLETE"] * 3
    run_search(recipe, trials=3, db_url=db_url)
    assert len(load_study(db_url).trials) == 3


def test_failed_trial_is_recorded_and_search_continues(sqlite_url, recipe_factory):
    # Removing 4 of the 4 layers fails inside the estimator. The grid also contains a valid value.
    data = recipe_factory(sampler="grid", space={"stages.0.config.num_layers": {"choices": [1, 4]}})
    recipe = load_recipe_text(yaml.safe_dump(data))

    run_search(recipe, trials=2, db_url=sqlite_url)

    study = load_study(sqlite_url)
    by_value = {trial.params["stages.0.config.num_layers"]: trial for trial in study.trials}
    assert by_value[1].state == TrialState.COMPLETE
    assert by_value[4].state == TrialState.FAIL
    assert "4 of 4 layers" in by_value[4].user_attrs["error"]


def test_missing_objective_metric_lists_available(sqlite_url, recipe_factory):
    data = recipe_factory(objectives=[{"metric": "heldout.accuracy", "direction": "maximize"}])
    recipe = load_recipe_text(yaml.safe_dump(data))

    run_search(recipe, trials=1, db_url=sqlite_url)

    trial = load_study(sqlite_url).trials[0]
    assert trial.state == TrialState.FAIL
    assert "heldout.accuracy" in trial.user_attrs["error"]
    assert "heldout.ppl_token" in trial.user_attrs["error"]


def test_plugin_switch_drops_foreign_config(recipe_factory):
    data = recipe_factory(space={"stages.0.plugin": {"choices": ["reverse_order", "random"]}})
    data["stages"][0]["config"] = {"num_layers": 2}
    space = SearchSpace(load_recipe_text(yaml.safe_dump(data)))

    switched = space.trial_recipe({"stages.0.plugin": "random"})

    assert switched.stages[0].plugin == "random"
    assert switched.stages[0].config["num_layers"] == 2
    assert switched.save_model is False


def test_stage_order_is_searchable(recipe_factory):
    data = recipe_factory(space={
        "stage_order": {"choices": [
            ["scores", "layerdrop", "heldout", "size"],
            ["heldout", "scores", "layerdrop", "size"],
        ]},
        "stages.0.config.num_layers": {"low": 1, "high": 2, "int": True},
    })
    space = SearchSpace(load_recipe_text(yaml.safe_dump(data)))

    reordered = space.trial_recipe({"stage_order": ["heldout", "scores", "layerdrop", "size"], "stages.0.config.num_layers": 2})

    assert [stage.label for stage in reordered.stages] == ["heldout", "scores", "layerdrop", "size"]
    assert reordered.stages[1].config["num_layers"] == 2  # indices in paths refer to the recipe's own order


def test_stage_order_choice_must_list_every_stage(recipe_factory):
    data = recipe_factory(space={"stage_order": {"choices": [["scores", "layerdrop"]]}})
    with pytest.raises(RecipeError, match="must list every stage label exactly once"):
        SearchSpace(load_recipe_text(yaml.safe_dump(data)))


# ---------------------------------------------------------------------- several workers


def test_two_workers_share_study(db_url, recipe_factory, tmp_path):
    path = write_recipe(tmp_path, recipe_factory())

    workers = [cli("search", str(path), "--trials", "4", "--db", db_url, cwd=tmp_path) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]

    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    study = load_study(db_url)
    assert len(study.trials) >= 4
    assert set(states(study)) == {"COMPLETE"}
    runs = [trial.user_attrs["run"] for trial in study.trials]
    assert len(set(runs)) == len(runs)
    store = Store(db_url)
    for run_name in runs:
        assert store.get_run(run_name).status == "finished"


def test_killed_worker_trial_is_retried(db_url, recipe_factory, tmp_path):
    data = recipe_factory(heartbeat_interval=1, grace_period=2)
    # A longer held-out text keeps each trial running long enough to be killed in the middle.
    data["data"]["evaluation"]["n_samples"] = 64
    path = write_recipe(tmp_path, data)

    worker = cli("search", str(path), "--trials", "2", "--db", db_url, cwd=tmp_path)
    running = None
    deadline = time.monotonic() + 300
    while running is None and time.monotonic() < deadline and worker.poll() is None:
        try:
            trials = load_study(db_url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # the worker has not created the study yet
            trials = []
        running = trials[0] if trials else None
        time.sleep(0.05)
    assert running is not None, "the worker never started a trial"
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=60)
    assert states(load_study(db_url)).count("RUNNING") == 1

    time.sleep(3)  # let the heartbeat age past the 2 s grace period
    rerun = cli("search", str(path), "--trials", "2", "--db", db_url, cwd=tmp_path)
    output = rerun.communicate(timeout=600)[0]

    assert rerun.returncode == 0, output
    study = load_study(db_url)
    killed = study.trials[running.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.number != killed.number and t.user_attrs.get("run") == killed.user_attrs["run"]]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert states(study).count("COMPLETE") == 2
    assert "RUNNING" not in states(study)


# ---------------------------------------------------------------------- invalid search spaces


def space_error(recipe_factory, **search) -> str:
    recipe = load_recipe_text(yaml.safe_dump(recipe_factory(**search)))
    with pytest.raises(RecipeError) as info:
        SearchSpace(recipe)
    return str(info.value)


def test_unknown_config_field_lists_valid_fields(recipe_factory):
    message = space_error(recipe_factory, space={"stages.0.config.ratioo": {"choices": [0.25]}})
    assert "'ratioo'" in message
    assert "num_layers" in message
    assert "ratio" in message


def test_stage_index_out_of_range(recipe_factory):
    message = space_error(recipe_factory, space={"stages.9.config.ratio": {"choices": [0.25]}})
    assert "4 stages" in message
    assert "no stage 9" in message


def test_unknown_recipe_key(recipe_factory):
    message = space_error(recipe_factory, space={"data.calibration.samples": {"choices": [2]}})
    assert "'samples'" in message
    assert "n_samples" in message


def test_rejected_choice_value_named(recipe_factory):
    message = space_error(recipe_factory, space={"stages.0.config.num_layers": {"choices": [1, 0]}})
    assert "value 0 is rejected" in message
    assert "num_layers" in message


def test_unknown_plugin_choice(recipe_factory):
    message = space_error(recipe_factory, space={"stages.0.plugin": {"choices": ["reverse_order", "nope"]}})
    assert "'nope'" in message
    assert "reverse_order" in message


def test_grid_range_needs_step(recipe_factory, sqlite_url):
    data = recipe_factory(sampler="grid", space={"stages.0.config.ratio": {"low": 0.25, "high": 0.5}})
    data["stages"][0]["config"] = {"ratio": 0.25}
    with pytest.raises(RecipeError, match="needs a `step`"):
        run_search(load_recipe_text(yaml.safe_dump(data)), db_url=sqlite_url)


def test_objective_on_unknown_stage(recipe_factory):
    message = space_error(recipe_factory, objectives=[{"metric": "nowhere.ppl_token", "direction": "minimize"}])
    assert "'nowhere'" in message
    assert "heldout" in message


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ({"choices": []}, "`choices` is empty"),
        ({"low": 0.5, "high": 0.1}, "greater than high"),
    ],
)
def test_invalid_param_rejected_on_load(recipe_factory, tmp_path, param, expected):
    path = write_recipe(tmp_path, recipe_factory(space={"stages.0.config.ratio": param}))
    with pytest.raises(RecipeError, match=expected) as info:
        load_recipe(path)
    assert "search.space" in str(info.value)


def test_recipe_without_search_section(recipe_factory):
    data = recipe_factory()
    del data["search"]
    with pytest.raises(CompressorError, match="no `search:` section"):
        run_search(load_recipe_text(yaml.safe_dump(data)))
