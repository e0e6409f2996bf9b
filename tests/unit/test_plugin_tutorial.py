"""The plugin tutorial's package (examples/compressor-magnitude) works as docs/plugins.md describes."""

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from compressor.cli import main
from compressor.pipeline import Pipeline
from compressor.recipe import load_recipe_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "compressor-magnitude"


def test_tutorial_plugin_is_listed():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    infos = {info["name"]: info for info in json.loads(result.output)}
    assert infos["magnitude"]["package"] == "compressor-magnitude"
    assert infos["magnitude"]["components"] == ["estimator:magnitude"]
    assert infos["magnitude"]["hooks"] == ["register_estimators"]


def test_tutorial_recipe_runs_on_tiny_model(tmp_path, tiny_llama_dir, tiny_text_file):
    data = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    data["model"]["source"] = str(tiny_llama_dir)
    text = {"source": f"file:{tiny_text_file}", "n_samples": 2, "seq_len": 32}
    data["data"] = {"calibration": text, "evaluation": dict(text, seed=1)}
    recipe = load_recipe_text(yaml.safe_dump(data))

    outcome = Pipeline(recipe, db_url=f"sqlite:///{tmp_path / 's.db'}", output_dir=tmp_path / "out").run()

    estimator, pruner, evaluator = outcome.stages
    assert estimator.data["method"] == "magnitude"
    assert len(estimator.data["values"]) == 4
    assert len(estimator.data["selected"]) == 1
    assert pruner.metrics["num_layers"] == 3
    assert evaluator.metrics["ppl_token"] > 1
