"""Pipeline runs stages in order, records them in the store, and resumes after a failure."""

import json

import pytest
from click.testing import CliRunner

from compressor import Component, StageResult, StrictConfig, hookimpl
from compressor.cli import main
from compressor.errors import CompressorError
from compressor.pipeline import Pipeline
from compressor.plugins import Registry, create_plugin_manager
from compressor.recipe import load_recipe_text
from compressor.store import Store


class FlakyConfig(StrictConfig):
    marker: str


class Flaky:
    """Fails while its marker file exists, and counts its runs in that file's sibling."""

    def __init__(self, config):
        self.config = config

    def run(self, handle, ctx):
        from pathlib import Path

        marker = Path(self.config.marker)
        counter = marker.with_suffix(".runs")
        counter.write_text(str(int(counter.read_text() or 0) + 1 if counter.exists() else 1))
        if marker.exists():
            raise CompressorError("flaky stage failed on purpose")
        return StageResult(handle, metrics={"layers": float(handle.num_layers)})


class FlakyPlugin:
    @hookimpl
    def register_evaluators(self, register):
        register(Component("flaky", "evaluator", FlakyConfig, Flaky))


@pytest.fixture()
def registry():
    pm = create_plugin_manager()
    pm.register(FlakyPlugin(), name="flaky-test")
    return Registry(pm)


def _recipe_text(model_dir, text_file, marker, ratio=0.5):
    return f"""
name: tiny-resume
model: {{source: "{model_dir}"}}
data:
  calibration: {{source: "file:{text_file}", n_samples: 2, seq_len: 16}}
stages:
  - {{kind: estimator, plugin: reverse_order, config: {{ratio: {ratio}}}}}
  - {{kind: pruner, plugin: layerdrop}}
  - {{kind: evaluator, plugin: flaky, config: {{marker: "{marker}"}}}}
  - {{kind: evaluator, plugin: param_count}}
"""


def test_rerun_resumes_from_failed_stage(tmp_path, tiny_llama_dir, tiny_text_file, registry):
    marker = tmp_path / "fail-now"
    marker.write_text("")
    recipe = load_recipe_text(_recipe_text(tiny_llama_dir, tiny_text_file, marker), registry=registry)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "out"

    with pytest.raises(CompressorError, match="on purpose"):
        Pipeline(recipe, db_url=db, output_dir=out, registry=registry).run()

    store = Store(db)
    run = store.get_run("tiny-resume")
    assert run.status == "failed"
    assert [(r.index, r.status) for r in store.stage_records(run.id)] == [(0, "finished"), (1, "finished"), (2, "failed")]

    marker.unlink()
    outcome = Pipeline(recipe, db_url=db, output_dir=out, registry=registry).run()

    assert [s.status for s in outcome.stages] == ["resumed", "resumed", "finished", "finished"]
    assert outcome.stages[2].metrics == {"layers": 2.0}  # the pruner's effect was restored
    assert marker.with_suffix(".runs").read_text() == "2"
    assert store.get_run("tiny-resume").status == "finished"
    assert [r.status for r in store.stage_records(run.id)] == ["finished"] * 4


def test_changed_config_reruns_from_that_stage(tmp_path, tiny_llama_dir, tiny_text_file, registry):
    marker = tmp_path / "never"
    db = f"sqlite:///{tmp_path / 'store.db'}"
    first = load_recipe_text(_recipe_text(tiny_llama_dir, tiny_text_file, marker, ratio=0.5), registry=registry)
    Pipeline(first, db_url=db, output_dir=tmp_path / "o", registry=registry).run()

    second = load_recipe_text(_recipe_text(tiny_llama_dir, tiny_text_file, marker, ratio=0.25), registry=registry)
    outcome = Pipeline(second, db_url=db, output_dir=tmp_path / "o", registry=registry).run()

    assert [s.status for s in outcome.stages] == ["finished"] * 4
    assert outcome.stages[2].metrics == {"layers": 3.0}


def test_run_writes_report_resolved_recipe_and_model(tmp_path, tiny_llama_dir, tiny_text_file, registry):
    recipe = load_recipe_text(_recipe_text(tiny_llama_dir, tiny_text_file, tmp_path / "never"), registry=registry)
    outcome = Pipeline(recipe, db_url=f"sqlite:///{tmp_path / 's.db'}", output_dir=tmp_path / "o", registry=registry).run()

    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["num_layers"] == {"before": 4, "after": 2}
    assert report["removed_layers"] == [1, 2]  # reverse-order keeps the final layer
    assert [s["name"] for s in report["stages"]] == ["reverse_order", "layerdrop", "flaky", "param_count"]
    assert "## Stages" in (tmp_path / "o" / "report.md").read_text()
    assert (tmp_path / "o" / "recipe.resolved.yaml").exists()
    assert outcome.model_dir == tmp_path / "o" / "model"

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(outcome.model_dir)
    assert reloaded.config.num_hidden_layers == 2


def test_cli_run_and_runs_show(tmp_path, tiny_llama_dir, tiny_text_file, monkeypatch):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"""
name: cli-run
model: {{source: "{tiny_llama_dir}"}}
data:
  calibration: {{source: "file:{tiny_text_file}", n_samples: 2, seq_len: 16}}
stages:
  - {{kind: evaluator, plugin: param_count}}
"""
    )
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()

    result = runner.invoke(main, ["run", str(recipe_file), "--db", db, "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output

    shown = runner.invoke(main, ["runs", "show", "cli-run", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    stages = json.loads(shown.output)["stages"]
    assert stages[0]["plugin"] == "param_count"
    assert stages[0]["metrics"]["params_counted"] > 0

    missing = runner.invoke(main, ["runs", "show", "nope", "--db", db])
    assert missing.exit_code == 2
    assert "run 'nope' not found" in missing.output


def test_cli_reports_recipe_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {source: y}\n")
    result = CliRunner().invoke(main, ["run", str(bad)])
    assert result.exit_code == 2
    assert "data" in result.output
    assert "Field required" in result.output
    assert "Traceback" not in result.output
