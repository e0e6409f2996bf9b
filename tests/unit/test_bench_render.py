"""The budget-curve summary and the header of the benchmark page."""

from __future__ import annotations

from bench.render import _budget_summary, _quality_models


def _row(budget: int, selection: str, ppl: float) -> dict:
    return {"budget": budget, "semivalue": "paper", "selection": selection, "ppl_token": ppl}


def test_budget_summary_names_first_budget_in_band():
    section = {"reference": {"ppl_token": 50.0}, "rows": [
        _row(64, "active", 52.0), _row(64, "one_shot", 80.0),
        _row(128, "active", 50.5), _row(128, "one_shot", 70.0),
        _row(256, "active", 49.0), _row(256, "one_shot", 90.0),
    ]}

    text = _budget_summary(section)[0]

    # 52.0 is 4 % above the reference, outside the 2 % band, so 128 is the first budget.
    assert "`paper`/`active` at 128" in text
    assert "Not reached up to 256 evaluations: `paper`/`one_shot`." in text


def test_budget_summary_skips_failed_rows():
    section = {"reference": {"ppl_token": 50.0}, "rows": [
        {"budget": 64, "semivalue": "paper", "selection": "active", "error": "too few masks"},
        _row(128, "active", 50.0),
    ]}

    assert "`paper`/`active` at 128" in _budget_summary(section)[0]


def test_quality_models_come_from_rows():
    # A merged page whose settings name a model that never ran in the quality section.
    results = {
        "settings": {"models": [{"source": "smollm2-135m", "ratios": [0.2]},
                                {"source": "gemma3-270m", "ratios": [0.1, 0.2]}]},
        "sections": {"quality": [
            {"model": "smollm2-135m", "method": "dense", "ratio": 0.0},
            {"model": "smollm2-135m", "method": "sleb", "ratio": 0.35},
            {"model": "smollm2-135m", "method": "sleb", "ratio": 0.1},
        ]},
    }

    assert _quality_models(results) == [("smollm2-135m", [0.1, 0.35])]


def test_quality_models_fall_back_to_settings():
    results = {"settings": {"models": [{"source": "smollm2-135m", "ratios": [0.2]}]}, "sections": {}}

    assert _quality_models(results) == [("smollm2-135m", [0.2])]
