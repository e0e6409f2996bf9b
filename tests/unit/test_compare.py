"""`compressor compare` on the tiny random Llama: files, table, seeds and resume."""

from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from compressor.compare import plan_runs, run_compare
from compressor.errors import CompressorError
from compressor.recipe import load_recipe_text
from compressor.store import Store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def recipe_text(model_dir, text_file, compare: str, evaluation: bool = True) -> str:
    evaluation_line = (
        f"  evaluation: {{source: 'file:{text_file}', n_samples: 3, seq_len: 24, seed: 7}}\n" if evaluation else ""
    )
    return (
        "name: cmp\n"
        f"model: {{source: '{model_dir}'}}\n"
        "data:\n"
        f"  calibration: {{source: 'file:{text_file}', n_samples: 3, seq_len: 24, seed: 0}}\n"
        f"{evaluation_line}"
        "stages:\n"
        "  - {kind: evaluator, plugin: perplexity, name: dense}\n"
        "  - {kind: estimator, plugin: block_influence, name: importance, config: {num_layers: 1}}\n"
        "  - {kind: pruner, plugin: layerdrop}\n"
        "  - {kind: evaluator, plugin: perplexity, name: heldout}\n"
        f"{compare}"
    )


COMPARE = (
    "compare:\n"
    "  methods:\n"
    "    - {plugin: sleb}\n"
    "    - {plugin: block_influence, label: bi}\n"
    "    - {plugin: reverse_order}\n"
    "    - {plugin: random, seeds: [0, 1]}\n"
    "    - {plugin: oracle}\n"
    "  num_layers: [1, 2]\n"
)


@pytest.fixture()
def recipe(tiny_llama_dir, tiny_text_file):
    return load_recipe_text(recipe_text(tiny_llama_dir, tiny_text_file, COMPARE))


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_compare_writes_table_files_and_resumes(recipe, tmp_path, sqlite_url, tiny_llama_dir):
    out = tmp_path / "compare"
    console = quiet_console()

    first = run_compare(recipe, output_dir=out, db_url=sqlite_url, console=console)

    for name in ("comparison.json", "comparison.md", "quality.png", "layers_removed.png"):
        assert (out / name).is_file(), name
    assert (out / "quality.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "layers_removed.png").read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((out / "comparison.json").read_text())["rows"] == json.loads(json.dumps(first["rows"]))

    assert len(first["runs"]) == (4 + 2) * 2
    assert all(run["status"] == "finished" for run in first["runs"])
    assert len(first["rows"]) == 5 * 2
    assert first["quality_metric"] == "heldout.ppl_token"
    for row in first["rows"]:
        assert math.isfinite(row["metrics"]["heldout.ppl_token"])
        assert "heldout.nll_token" in row["metrics"]
        assert all(len(layers) == row["num_layers"] for layers in row["removed_layers"])
    assert "dense.ppl_token" in first["reference_metrics"]

    random_two = next(row for row in first["rows"] if row["label"] == "random" and row["num_layers"] == 2)
    assert random_two["seeds"] == [0, 1]
    assert len(random_two["removed_layers"]) == 2
    assert sum(random_two["removal_frequency"].values()) == pytest.approx(2.0)
    assert "heldout.ppl_token" in random_two["metrics_std"]

    reverse_one = next(row for row in first["rows"] if row["label"] == "reverse_order" and row["num_layers"] == 1)
    assert reverse_one["removed_layers"] == [[2]]
    assert reverse_one["cost"]["evaluations"] == 0
    sleb_two = next(row for row in first["rows"] if row["label"] == "sleb" and row["num_layers"] == 2)
    assert sleb_two["cost"]["evaluations"] > 0

    table = console.file.getvalue()
    for label in ("sleb", "bi", "reverse_order", "random", "oracle"):
        assert label in table
    markdown = (out / "comparison.md").read_text()
    assert "heldout.ppl_token" in markdown
    assert "![held-out perplexity](quality.png)" in markdown

    store = Store(sqlite_url)
    stored = store.count_mask_evaluations()
    assert first["new_mask_evaluations"] == stored
    assert stored > 0

    second = run_compare(recipe, output_dir=out, db_url=sqlite_url, console=quiet_console())

    assert second["new_mask_evaluations"] == 0
    assert store.count_mask_evaluations() == stored
    assert all(run["status"] == "resumed" for run in second["runs"])
    assert [r["metrics"] for r in second["rows"]] == [r["metrics"] for r in first["rows"]]

    # A fresh engine on the same model and calibration windows finds every single-layer mask in the store.
    from compressor.engine import UtilityEngine
    from compressor.models import load_model

    handle = load_model(recipe.model)
    from compressor.data import build_batches

    engine = UtilityEngine(handle, build_batches(recipe.data.calibration, handle.tokenizer), store=store, progress=False)
    engine.evaluate(["".join("0" if i == layer else "1" for i in range(4)) for layer in range(4)])
    assert engine.stats["evaluations"] == 0
    assert engine.stats["cache_hits"] == 4


def test_compare_records_failed_method_and_continues(tiny_llama_dir, tiny_text_file, tmp_path, sqlite_url):
    compare = (
        "compare:\n"
        "  methods:\n"
        "    - {plugin: oracle, config: {max_subsets: 3}}\n"
        "    - {plugin: reverse_order}\n"
        "  num_layers: [1, 2]\n"
    )
    recipe = load_recipe_text(recipe_text(tiny_llama_dir, tiny_text_file, compare))

    result = run_compare(recipe, output_dir=tmp_path / "out", db_url=sqlite_url, console=quiet_console())

    statuses = {(run["label"], run["num_layers"]): run["status"] for run in result["runs"]}
    assert statuses[("oracle", 1)] == "failed"  # C(4, 1) = 4 subsets, more than 3
    assert statuses[("oracle", 2)] == "failed"
    assert statuses[("reverse_order", 1)] == "finished"
    assert statuses[("reverse_order", 2)] == "finished"
    oracle_row = next(row for row in result["rows"] if row["label"] == "oracle" and row["num_layers"] == 1)
    assert oracle_row["failed"] == 1
    assert "max_subsets" in oracle_row["errors"][0]
    assert (tmp_path / "out" / "comparison.md").is_file()


def test_plan_runs_names_and_configs(recipe, tmp_path):
    planned = plan_runs(recipe, tmp_path)
    names = [run.run_name for run in planned]

    assert "cmp-sleb-n1" in names
    assert "cmp-bi-n2" in names
    assert "cmp-random-n2-s1" in names
    assert len(names) == len(set(names))
    random_run = next(run for run in planned if run.run_name == "cmp-random-n2-s1")
    estimator = random_run.recipe.stages[1]
    assert estimator.plugin == "random"
    assert estimator.name == "importance"
    assert estimator.config["seed"] == 1
    assert estimator.config["num_layers"] == 2
    assert random_run.recipe.save_model is False
    assert random_run.recipe.compare is None
    assert [stage.plugin for stage in random_run.recipe.stages] == ["perplexity", "random", "layerdrop", "perplexity"]


def test_plan_runs_ratio_names(tiny_llama_dir, tiny_text_file, tmp_path):
    compare = "compare:\n  methods: [{plugin: sleb, config: {num_layers: 3}}]\n  ratios: [0.25, 0.5]\n"
    recipe = load_recipe_text(recipe_text(tiny_llama_dir, tiny_text_file, compare))

    planned = plan_runs(recipe, tmp_path)

    assert [run.run_name for run in planned] == ["cmp-sleb-r0.25", "cmp-sleb-r0.5"]
    assert planned[0].recipe.stages[1].config["ratio"] == 0.25
    assert planned[0].recipe.stages[1].config["num_layers"] is None


@pytest.mark.parametrize(
    ("compare", "evaluation", "message"),
    [
        ("", True, "no `compare:` section"),
        ("compare:\n  methods: [{plugin: sleb}]\n  num_layers: [1]\n", False, "no `data.evaluation`"),
        ("compare:\n  methods: [{plugin: sleb}, {plugin: sleb}]\n  num_layers: [1]\n", True, "more than once"),
        ("compare:\n  methods: [{plugin: sleb, label: 'a b'}]\n  num_layers: [1]\n", True, "only letters"),
        ("compare:\n  methods: [{plugin: nosuch}]\n  num_layers: [1]\n", True, "unknown estimator 'nosuch'"),
        ("compare:\n  methods: [{plugin: sleb, config: {typo: 1}}]\n  num_layers: [1]\n", True, "unknown key"),
    ],
)
def test_plan_runs_rejects_bad_compare(tiny_llama_dir, tiny_text_file, tmp_path, compare, evaluation, message):
    recipe = load_recipe_text(recipe_text(tiny_llama_dir, tiny_text_file, compare, evaluation=evaluation))
    with pytest.raises(CompressorError, match=message):
        plan_runs(recipe, tmp_path)
