"""Merging a benchmark run into the results of an earlier one (`bench/run.py --merge`)."""

from __future__ import annotations

from pathlib import Path

from bench.run import Benchmark, merge_quality_rows, reproduce_command, rows_not_redone
from bench.settings import ModelRun, settings_for


def _row(model: str, method: str, ratio: float) -> dict:
    return {"model": model, "method": method, "ratio": ratio}


def _previous() -> dict:
    rows = [_row("small", "dense", 0.0), _row("small", "sleb", 0.2), _row("big", "dense", 0.0),
            _row("big", "sleb", 0.2)]
    return {
        "date": "2026-01-01", "command": "python bench/run.py --quick",
        "settings": {"models": [{"source": "small", "ratios": [0.2]}, {"source": "big", "ratios": [0.2]}]},
        "sections": {"cost": {"speedup": 1.5}, "quality": rows, "verdict": []},
        "section_seconds": {"cost": 10.0, "quality": 20.0}, "load_average": {"cost": 1.0},
    }


def test_merge_keeps_sections_not_rerun(tmp_path: Path):
    settings = settings_for("quick")
    settings.models = [ModelRun("small", [0.1])]
    bench = Benchmark(settings, tmp_path, tmp_path / "b.md", tmp_path / "b.json", ["--quick", "--merge"])

    bench.merge_previous(_previous(), ["quality"])

    assert bench.results["sections"]["cost"] == {"speedup": 1.5}
    assert bench.results["section_dates"]["cost"] == "2026-01-01"
    assert "quality" not in bench.results["sections"]
    assert bench.results["command"].startswith("python bench/run.py --quick, then ")
    assert {m["source"]: m["ratios"] for m in bench.results["settings"]["models"]} == {
        "small": [0.1, 0.2], "big": [0.2]}


def test_merge_keeps_the_note(tmp_path: Path):
    settings = settings_for("quick")
    bench = Benchmark(settings, tmp_path, tmp_path / "b.md", tmp_path / "b.json", ["--quick", "--merge"])

    bench.merge_previous({**_previous(), "note": "run 1 shared the CPU"}, ["cost"])

    assert bench.results["note"] == "run 1 shared the CPU"


def test_previous_rows_drop_only_what_is_rerun(tmp_path: Path):
    settings = settings_for("quick")
    bench = Benchmark(settings, tmp_path, tmp_path / "b.md", tmp_path / "b.json", [])
    bench.merge_previous(_previous(), ["quality"])

    kept = bench.previous_quality_rows([ModelRun("small", [0.1])])

    # The small model's dense row is measured again; its 0.2 row and the big model's rows stay.
    assert kept == [_row("small", "sleb", 0.2), _row("big", "dense", 0.0), _row("big", "sleb", 0.2)]


def test_merged_rows_group_by_model_then_ratio():
    kept = [_row("small", "sleb", 0.2), _row("big", "sleb", 0.2)]
    new = [_row("small", "dense", 0.0), _row("small", "sleb", 0.1)]

    merged = merge_quality_rows(kept, new)

    assert merged == [_row("small", "dense", 0.0), _row("small", "sleb", 0.1), _row("small", "sleb", 0.2),
                      _row("big", "sleb", 0.2)]


def test_rows_not_redone_keeps_other_models():
    rows = _previous()["sections"]["quality"]

    remaining = rows_not_redone(rows, [ModelRun("big", [0.2])])

    assert remaining == [_row("small", "dense", 0.0), _row("small", "sleb", 0.2)]


def test_collect_merge_keeps_earlier_rows(tmp_path: Path):
    import argparse
    import json
    import shutil

    from bench.quality import compare_folder
    from bench.run import collect

    # A real results document of the quick mode, so that the page renders as it does for users.
    root = Path(__file__).resolve().parents[2]
    json_path = tmp_path / "benchmarks" / "results-quick.json"
    json_path.parent.mkdir()
    shutil.copy(root / "docs" / "benchmarks" / "results-quick.json", json_path)
    before = json.loads(json_path.read_text())["sections"]["quality"]
    saved_sleb = next(r for r in before if (r["model"], r["method"], r["ratio"]) == ("gemma3-270m", "sleb", 0.1))
    # The stopped run finished only SLEB at 0.1, and its comparison file has the same metrics as the saved row.
    work = tmp_path / "work"
    folder = compare_folder(work, "gemma3-270m", "sleb", 0.1)
    folder.mkdir(parents=True)
    folder.joinpath("comparison.json").write_text(json.dumps({"rows": [{
        "failed": 0, "runs": 1, "errors": [], "seeds": [0], "metrics": saved_sleb["metrics"], "metrics_std": {},
        "cost": saved_sleb["cost"], "removed_layers": saved_sleb["removed_layers"]}]}))
    settings = settings_for("quick")
    settings.models = [ModelRun("gemma3-270m", [0.1])]
    args = argparse.Namespace(work_dir=work, merge=True)

    argv = ["--quick", "--collect", "--merge", "--models", "gemma3-270m", "--ratios", "0.1", "--work-dir", str(work)]

    assert collect(args, settings, tmp_path / "benchmarks.md", json_path, argv) == 0

    document = json.loads(json_path.read_text())
    assert document["command"].endswith(f", then python bench/run.py {' '.join(argv)}")
    after = document["sections"]["quality"]
    by_key = {(r["model"], r["method"], r["ratio"]): r for r in after}
    assert [r for r in after if r["model"] == "smollm2-135m"] == [r for r in before if r["model"] == "smollm2-135m"]
    assert by_key[("gemma3-270m", "sleb", 0.2)] == next(
        r for r in before if (r["model"], r["method"], r["ratio"]) == ("gemma3-270m", "sleb", 0.2))
    assert by_key[("gemma3-270m", "sleb", 0.1)]["wall_seconds"] == saved_sleb["wall_seconds"]
    assert by_key[("gemma3-270m", "shapley", 0.1)]["status"] == "skipped"
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks")


def test_reproduce_command_mode_defaults():
    models = [{"source": "smollm2-135m", "ratios": [0.2, 0.1, 0.35]}, {"source": "gemma3-270m", "ratios": [0.1, 0.2, 0.35]}]

    assert reproduce_command("full", models) == "python bench/run.py"


def test_reproduce_command_ratio_groups():
    models = [{"source": "smollm2-135m", "ratios": [0.2]}, {"source": "gemma3-270m", "ratios": [0.2, 0.35]}]

    assert reproduce_command("quick", models) == (
        "python bench/run.py --quick --models smollm2-135m, then "
        "python bench/run.py --quick --models gemma3-270m --ratios 0.2,0.35 --merge")


def test_merge_reproduce_command(tmp_path: Path):
    settings = settings_for("full")
    settings.models = [ModelRun("gemma3-270m", [0.1, 0.35])]
    bench = Benchmark(settings, tmp_path, tmp_path / "b.md", tmp_path / "b.json", ["--merge"])
    previous = {**_previous(), "command": "python bench/run.py",
                "settings": {"models": [{"source": "smollm2-135m", "ratios": [0.1, 0.2, 0.35]},
                                        {"source": "gemma3-270m", "ratios": [0.2]}]}}

    bench.merge_previous(previous, ["quality"])

    assert bench.results["reproduce"] == "python bench/run.py"


def test_merge_keeps_earlier_methods(tmp_path: Path):
    settings = settings_for("full")
    settings.methods = ["random"]
    bench = Benchmark(settings, tmp_path, tmp_path / "b.md", tmp_path / "b.json", ["--merge"])
    previous = _previous()
    previous["settings"]["methods"] = ["shapley", "sleb"]

    bench.merge_previous(previous, ["quality"])

    assert bench.results["settings"]["methods"] == ["shapley", "sleb", "random"]


def test_rows_not_redone_keeps_other_methods():
    rows = [_row("small", "dense", 0.0), _row("small", "sleb", 0.2), _row("small", "random", 0.2)]

    remaining = rows_not_redone(rows, [ModelRun("small", [0.2])], ["random"])

    assert remaining == [_row("small", "sleb", 0.2)]


def test_merged_rows_follow_method_order():
    kept = [_row("small", "shapley", 0.2), _row("small", "oracle", 0.2)]
    new = [_row("small", "random", 0.2)]

    merged = merge_quality_rows(kept, new)

    assert [row["method"] for row in merged] == ["shapley", "random", "oracle"]


def test_unknown_method_is_rejected():
    import pytest

    from bench.run import main

    with pytest.raises(SystemExit, match=r"unknown quality methods \['randon'\] for the quick mode"):
        main(["--quick", "--methods", "randon", "--render"])
