"""The evaluator stages of the benchmark's quality section and the --bigbench-dir check."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality import evaluator_stages, oracle_skip_row
from bench.render import _quality
from bench.run import checked_bigbench_dir
from bench.settings import settings_for


def _accuracy_config(settings) -> dict:
    (stage,) = [s for s in evaluator_stages(settings) if s["plugin"] == "lm_eval"]
    return stage["config"]


def _task_folder(root: Path, tasks: list[str]) -> Path:
    for task in tasks:
        (root / task).mkdir(parents=True)
        (root / task / "task.json").write_text('{"examples": []}')
    return root


def test_default_stages_run_only_cloze_tasks():
    config = _accuracy_config(settings_for("quick"))

    assert config == {"limit": settings_for("quick").lm_eval_limit}


def test_bigbench_dir_adds_bigbench_tasks(tmp_path: Path):
    settings = settings_for("quick")
    settings.bigbench_dir = str(tmp_path)

    config = _accuracy_config(settings)

    assert config["tasks"] == ["sotu_cloze", "brown_cloze", "social_iqa", "physical_intuition"]
    assert config["bigbench_dir"] == str(tmp_path)


def test_checked_bigbench_dir_accepts_complete_folder(tmp_path: Path):
    folder = _task_folder(tmp_path / "benchmark_tasks", ["social_iqa", "physical_intuition"])

    assert checked_bigbench_dir(str(folder)) == str(folder.resolve())


def test_checked_bigbench_dir_names_missing_task(tmp_path: Path):
    folder = _task_folder(tmp_path / "benchmark_tasks", ["social_iqa"])

    with pytest.raises(SystemExit) as raised:
        checked_bigbench_dir(str(folder))

    assert "physical_intuition" in str(raised.value)
    assert str(folder / "physical_intuition" / "task.json") in str(raised.value)


def test_quality_intro_states_missing_bigbench():
    text = "\n".join(_quality([], None))

    assert "BIG-bench accuracy (social_iqa, physical_intuition) was not measured" in text
    assert "--bigbench-dir" in text


def test_quality_intro_names_bigbench_folder():
    text = "\n".join(_quality([], "/data/bigbench/benchmark_tasks"))

    assert "`/data/bigbench/benchmark_tasks`" in text
    assert "not measured" not in text


def test_oracle_skip_row_above_cap():
    settings = settings_for("quick")

    row = oracle_skip_row(settings, "gemma", "oracle", 0.2, 18, 4)

    assert row["status"] == "skipped"
    assert row["reason"] == f"C(18, 4) = 3060 subsets is above the cap of {settings.oracle_max_subsets}"


def test_oracle_skip_row_below_cap():
    assert oracle_skip_row(settings_for("quick"), "gemma", "oracle", 0.1, 18, 2) is None


def test_oracle_skip_row_ignores_other_methods():
    assert oracle_skip_row(settings_for("quick"), "gemma", "sleb", 0.2, 18, 4) is None
