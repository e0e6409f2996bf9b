"""The quality-bar report: the verdict of each row against SLEB and the --set parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality_bar import parse_overrides, render


def _results(shapley_ppl: float) -> dict:
    rows = [
        {"method": "sleb", "selected": [4, 13], "calibration_nll": 3.9, "heldout_ppl": 40.0,
         "evaluations": 154, "seconds": 60.0},
        {"method": "shapley", "seed": 0, "selected": [4, 14], "calibration_nll": 3.95,
         "heldout_ppl": shapley_ppl, "evaluations": 150, "seconds": 90.0},
    ]
    return {
        "model": "smollm2-135m", "num_layers": 30, "torch_threads": 2, "date": "2026-12-05",
        "calibration": {"n_samples": 4, "seq_len": 128}, "heldout": {"n_samples": 8, "seq_len": 256},
        "full_model_heldout_ppl": 22.0, "command": "python bench/quality_bar.py",
        "targets": [{"ratio": 0.2, "layers_removed": 2, "rows": rows}],
    }


@pytest.mark.parametrize(("ppl", "verdict"), [(44.0, "+10.0 % (loss)"), (36.0, "-10.0 % (win)"), (40.0, "tie")])
def test_render_states_verdict_against_sleb(ppl, verdict):
    text = render(_results(ppl))
    shapley_line = next(line for line in text.splitlines() if "| shapley |" in line)
    sleb_line = next(line for line in text.splitlines() if "| sleb |" in line)
    assert f"| {verdict} |" in shapley_line
    assert "| reference |" in sleb_line
    assert "| 20 % (2 of 30) |" in shapley_line


def test_parse_overrides_reads_yaml_values():
    parsed = parse_overrides(["exchange_share=0.7", "strata=[29, 26]", "antithetic=false"])
    assert parsed == {"exchange_share": 0.7, "strata": [29, 26], "antithetic": False}


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        parse_overrides(["exchange_share"])


def test_render_summarises_each_target():
    text = render(_results(44.0))
    assert "- 20 %: over 1 seeds shapley wins 0, ties 0 and loses 1 against SLEB" in text
    assert "+10.0 % from SLEB's, with at most 150 real evaluations against SLEB's 154." in text


def test_quality_bar_files_include_model_folders(tmp_path: Path):
    from bench.run import quality_bar_files

    folder = tmp_path / "benchmarks"
    (folder / "quality_bar_gemma3").mkdir(parents=True)
    for path in (folder / "quality_bar.md", folder / "quality_bar_gemma3" / "quality_bar.md",
                 folder / "quality_bar_gemma3" / "quality_bar.json"):
        path.write_text("x")

    found = quality_bar_files(tmp_path / "benchmarks.md")

    assert found == [Path("benchmarks/quality_bar.md"), Path("benchmarks/quality_bar_gemma3/quality_bar.md"),
                     Path("benchmarks/quality_bar_gemma3/quality_bar.json")]
