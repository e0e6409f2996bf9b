"""Shapley estimator parts: sampling, surrogate, semivalues, selection and the plugin on a tiny model."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
import torch

from compressor.errors import CompressorError
from compressor_shapley import sampling, selection
from compressor_shapley.semivalues import exact_semivalue, kept_count_distribution, semivalues, shapiq_exact
from compressor_shapley.surrogate import SurrogateConfig, fit_surrogate

# --------------------------------------------------------------------------- synthetic games

N = 8
WEIGHTS = np.array([0.5, 1.0, 1.5, 2.0, 0.2, 0.8, 1.2, 3.0])
PAIRS = {(0, 1): 1.0, (2, 5): -0.6, (3, 7): 0.4}


def additive_pairwise(masks: np.ndarray) -> np.ndarray:
    """v(S) = Σ w_i + Σ over pairs in S of their interaction."""
    masks = np.asarray(masks, dtype=float)
    value = masks @ WEIGHTS
    for (i, j), strength in PAIRS.items():
        value = value + strength * masks[:, i] * masks[:, j]
    return value


def additive_pairwise_shapley() -> np.ndarray:
    """Shapley value: own weight plus half of each interaction the player takes part in."""
    phi = WEIGHTS.copy()
    for (i, j), strength in PAIRS.items():
        phi[i] += strength / 2
        phi[j] += strength / 2
    return phi


def additive_pairwise_banzhaf() -> np.ndarray:
    """Banzhaf value: the partner is present with probability 1/2, the same as Shapley here."""
    return additive_pairwise_shapley()


VOTES = np.array([4, 2, 1, 1])
QUOTA = 5


def weighted_majority(masks: np.ndarray) -> np.ndarray:
    return (np.asarray(masks, dtype=float) @ VOTES >= QUOTA).astype(float)


def brute_force_shapley(value_fn, n: int) -> np.ndarray:
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for subset in combinations(others, size):
                base = np.zeros((1, n), dtype=bool)
                base[0, list(subset)] = True
                with_i = base.copy()
                with_i[0, i] = True
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                phi[i] += weight * float(value_fn(with_i)[0] - value_fn(base)[0])
    return phi


def test_exact_shapley_additive_pairwise():
    result = semivalues(additive_pairwise, N, kind="shapley", exact_max_players=N)
    assert result.method == "exact"
    np.testing.assert_allclose(result.values, additive_pairwise_shapley(), atol=1e-9)


def test_exact_banzhaf_additive_pairwise():
    result = semivalues(additive_pairwise, N, kind="banzhaf", exact_max_players=N)
    np.testing.assert_allclose(result.values, additive_pairwise_banzhaf(), atol=1e-9)


def test_exact_shapley_weighted_majority():
    result = semivalues(weighted_majority, 4, kind="shapley", exact_max_players=4)
    expected = brute_force_shapley(weighted_majority, 4)
    np.testing.assert_allclose(result.values, expected, atol=1e-9)
    assert result.values.sum() == pytest.approx(1.0)  # efficiency: v(N) − v(∅) = 1


def test_base_mask_semivalue_matches_shapiq():
    q = kept_count_distribution("shapley", 4)
    ours = exact_semivalue(weighted_majority, 4, q)
    np.testing.assert_allclose(ours, shapiq_exact(weighted_majority, 4, "SV"), atol=1e-9)
    q = kept_count_distribution("banzhaf", 4)
    np.testing.assert_allclose(exact_semivalue(weighted_majority, 4, q), shapiq_exact(weighted_majority, 4, "BV"), atol=1e-9)


def test_monte_carlo_within_interval():
    result = semivalues(additive_pairwise, N, kind="shapley", exact_max_players=2, n_base=4000, bootstrap=100, seed=3)
    assert result.method == "monte_carlo"
    np.testing.assert_allclose(result.values, additive_pairwise_shapley(), atol=0.15)
    assert (result.lower <= result.values).all()
    assert (result.upper >= result.values).all()


def test_paper_semivalue_of_additive_game_is_weights():
    # Without interactions every semivalue equals the player's own weight.
    result = semivalues(lambda m: np.asarray(m, dtype=float) @ WEIGHTS, N, kind="paper", strata=[7, 5],
                        exact_max_players=N)
    np.testing.assert_allclose(result.values, WEIGHTS, atol=1e-9)


def test_fixed_off_players_get_nan():
    result = semivalues(additive_pairwise, N, kind="shapley", fixed_off=[1], exact_max_players=N)
    assert np.isnan(result.values[1])
    # With player 1 always absent, player 0 loses its interaction with it.
    assert result.values[0] == pytest.approx(WEIGHTS[0])


# --------------------------------------------------------------------------- sampling


def test_default_strata_follow_target():
    assert sampling.default_strata(30, 6) == [29, 26, 24, 21, 18]
    assert sampling.default_strata(4, 1) == [3, 2]
    assert sampling.paper_strata(32) == [30, 27, 24, 21, 18]


def test_sampler_distinct_and_in_strata():
    sampler = sampling.StratifiedSampler(30, [29, 24, 18], seed=1)
    masks = sampler.take(90)
    assert len(masks) == len(set(masks)) == 90
    assert set(sampling.stratum_of(masks).tolist()) == {29, 24, 18}


def test_small_stratum_enumerated_then_exhausted():
    sampler = sampling.StratifiedSampler(6, [5], seed=0)
    masks = sampler.take(100)
    assert sorted(masks) == sorted("".join("0" if i == j else "1" for i in range(6)) for j in range(6))


def test_sampler_reproducible():
    first = sampling.StratifiedSampler(20, [18, 14], seed=7).take(40)
    second = sampling.StratifiedSampler(20, [18, 14], seed=7).take(40)
    assert first == second


def test_invalid_strata_rejected():
    with pytest.raises(CompressorError, match="strata"):
        sampling.validate_strata([31], 30)


# --------------------------------------------------------------------------- surrogate


def _training_set(seed: int = 0):
    sampler = sampling.StratifiedSampler(N, [7, 6, 5, 4], seed=seed)
    from compressor.engine import masks_to_array

    masks = masks_to_array(sampler.take(200))
    return masks, additive_pairwise(masks)


def test_surrogate_deterministic_given_seed():
    masks, values = _training_set()
    config = SurrogateConfig(min_steps=200, max_steps=400, patience=100)
    first = fit_surrogate(masks, values, config, seed=5)
    second = fit_surrogate(masks, values, config, seed=5)
    np.testing.assert_array_equal(first(masks), second(masks))
    assert json.dumps(first.quality, sort_keys=True) == json.dumps(second.quality, sort_keys=True)


def test_surrogate_fits_pairwise_game():
    masks, values = _training_set()
    surrogate = fit_surrogate(masks, values, SurrogateConfig(min_steps=1000, max_steps=2000), seed=0)
    assert surrogate.quality["r2"] > 0.95
    assert surrogate.quality["spearman"] > 0.95
    assert set(surrogate.quality["per_stratum"]) == {"7", "6", "5", "4"}


def test_paper_surrogate_sigmoid_in_unit_range():
    masks, values = _training_set()
    config = SurrogateConfig(head="sigmoid", standardize=False, optimizer="sgd", lr=0.008, batch_size=300,
                             epochs=20, lr_step_epochs=10)
    surrogate = fit_surrogate(masks, values / values.max(), config, seed=0)
    predictions = surrogate(masks)
    assert ((predictions > 0) & (predictions < 1)).all()


# --------------------------------------------------------------------------- selection


def test_one_shot_lowest_values():
    assert selection.one_shot([0.5, 0.1, np.nan, 0.3, 0.2], 2) == [1, 4]


def test_iterative_reestimates():
    # Player 0 is weak alone; once 3 is gone, 1 becomes the weakest.
    def estimate(removed):
        values = np.array([0.1, 0.5, 0.4, 0.05])
        if 3 in removed:
            values[1] = 0.01
        values[removed] = np.nan
        return values

    order, rounds = selection.iterative(estimate, 2)
    assert order == [3, 1]
    assert len(rounds) == 2


def test_subset_search_prefers_real_model():
    value_fn = additive_pairwise

    def real_nll(masks):
        # The real model disagrees with the surrogate on one set: removing {4, 0} is bad.
        out = []
        for mask in masks:
            removed = {i for i, c in enumerate(mask) if c == "0"}
            out.append(100.0 if removed == {0, 4} else -float(value_fn(np.array([[c == "1" for c in mask]]))[0]))
        return np.array(out)

    result = selection.subset_search(value_fn, real_nll, N, 2, rescore=3)
    assert result.strategy == "exhaustive"
    assert result.selected == [4, 5]
    assert len(result.candidates) == 3


def test_subset_search_beam_matches_exhaustive():
    exhaustive, _, _ = selection.surrogate_candidates(additive_pairwise, N, 3, 1)
    beam, _, strategy = selection.surrogate_candidates(additive_pairwise, N, 3, 1, exhaustive_limit=1, beam_width=8)
    assert strategy == "beam"
    assert beam[0] == exhaustive[0]


def test_swap_neighbours_change_one_layer():
    neighbours = selection.swap_neighbours([1, 4], 6)
    assert len(neighbours) == 2 * 4
    assert len(set(neighbours)) == len(neighbours)
    for s in neighbours:
        assert len(s) == 2
        assert len(set(s) & {1, 4}) == 1


def _linear_fit(masks, nll, _round):
    x = np.array([[c == "1" for c in m] for m in masks], dtype=float)
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, -np.asarray(nll), rcond=None)
    return lambda batch: np.hstack([np.asarray(batch, dtype=float), np.ones((len(batch), 1))]) @ coef


def test_active_search_finds_optimum_despite_interaction():
    # Removing layer i costs w[i]; removing 1 and 2 together costs 5 more, which the
    # linear surrogate cannot represent. The best 3-set is {0, 1, 3}.
    w = np.array([0.1, 0.2, 0.3, 0.35, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0])
    calls = []

    def real_nll(masks):
        calls.extend(masks)
        out = []
        for mask in masks:
            removed = {i for i, c in enumerate(mask) if c == "0"}
            out.append(float(w[list(removed)].sum()) + (5.0 if {1, 2} <= removed else 0.0))
        return np.array(out)

    rng = np.random.default_rng(0)
    start = ["".join("0" if i in rng.choice(10, 2, replace=False) else "1" for i in range(10)) for _ in range(12)]
    start = list(dict.fromkeys(start))
    result = selection.active_search(_linear_fit, real_nll, start, real_nll(start), 10, 3, rounds=3, per_round=6)

    assert result.selected == [0, 1, 3]
    assert len(calls) - len(start) == len(result.evaluated) <= 18
    assert len(set(result.evaluated)) == len(result.evaluated)
    assert not set(result.evaluated) & set(start)
    assert all(m.count("0") == 3 for m in result.evaluated)
    assert [r["round"] for r in result.rounds] == [1, 2, 3]


def test_active_search_empty_when_every_set_fails():
    result = selection.active_search(
        _linear_fit, lambda masks: np.full(len(masks), np.nan), ["011111", "101111", "110111"],
        [1.0, 2.0, 3.0], 6, 2, rounds=2, per_round=3,
    )
    assert result.selected == []
    assert len(result.evaluated) == 6


def _additive_with_interaction():
    """Return a loss function over removal masks, a `known` check and the list of masks it saw."""
    calls: list[str] = []
    # Removing layer i costs w[i]; removing 3 and 4 together costs 1.0 less than the sum.
    w = np.array([5.0, 0.5, 0.9, 0.8, 0.3, 0.4, 1.5, 2.0, 2.5, 6.0])

    def real_nll(masks):
        calls.extend(masks)
        out = []
        for mask in masks:
            removed = {i for i, c in enumerate(mask) if c == "0"}
            out.append(float(w[list(removed)].sum()) - (1.0 if {3, 4} <= removed else 0.0))
        return np.array(out)

    return real_nll, (lambda mask: mask in calls), calls


def test_exchange_search_reaches_the_best_set():
    real_nll, known, calls = _additive_with_interaction()
    start = [0, 1, 5]
    start_nll = float(real_nll([selection.mask_of(10, start)])[0])
    result = selection.exchange_search(real_nll, known, start, start_nll, 10, budget=200)

    # Two improving swaps: 0 for 4 ({1, 4, 5}, 1.2), then 1 for 3 ({3, 4, 5}, 0.5), the best 3-set.
    assert result.selected == [3, 4, 5]
    assert result.nll == pytest.approx(0.5)
    assert [(s["put_back"], s["removed"]) for s in result.swaps] == [(0, 4), (1, 3)]
    assert all(s["nll"] < s["previous_nll"] for s in result.swaps)
    assert result.evaluations == len(set(calls)) - 1


def test_exchange_search_respects_budget_and_filter():
    real_nll, known, calls = _additive_with_interaction()
    start = [1, 4, 5]
    start_nll = float(real_nll([selection.mask_of(10, start)])[0])
    singles = {i: float(real_nll([selection.mask_of(10, [i])])[0]) for i in range(10)}
    before = len(set(calls))
    result = selection.exchange_search(real_nll, known, start, start_nll, 10, budget=6,
                                       single_nll=singles, full_nll=0.0)
    # Layers 0, 6, 7, 8 and 9 cost more alone than the whole start set (1.2), so one pass needs
    # 3 put-back and 2 added masks. The sixth evaluation is the best predicted swap, 1 for 3.
    assert result.evaluations == 6
    assert len(set(calls)) - before == 6
    assert not any(selection.mask_of(10, [1, 4, 5, j]) in calls for j in (0, 6, 7, 8, 9))
    assert result.selected == [3, 4, 5]


def test_exchange_search_spends_leftover_budget():
    base_nll, _, calls = _additive_with_interaction()

    def real_nll(masks):
        # The best predicted swap, {3, 4, 5}, is made 2.0 worse than its marginals suggest.
        values = base_nll(masks)
        return values + np.array([2.0 if m == selection.mask_of(10, [3, 4, 5]) else 0.0 for m in masks])

    start = [1, 4, 5]
    result = selection.exchange_search(real_nll, lambda mask: mask in calls, start, 1.2, 10, budget=50,
                                       pairs_per_pass=1)
    # The first pass fails on its only try, and the leftover walk finds the next swap, 5 for 3.
    assert result.selected == [1, 3, 4]
    assert result.nll == pytest.approx(0.6)
    assert result.evaluations <= 50


def test_exchange_search_partial_first_pass():
    real_nll, known, calls = _additive_with_interaction()
    start = [1, 2, 5]
    singles = {i: float(real_nll([selection.mask_of(10, [i])])[0]) for i in range(10)}
    before = set(calls)
    result = selection.exchange_search(real_nll, known, start, 1.8, 10, budget=9, single_nll=singles)
    # A full pass needs 3 put-back and 7 added masks, more than the budget of 9. Half of it
    # pays for the 3 put-back masks and one added layer, 4, the one that costs least alone.
    added = [m for m in set(calls) - before if m.count("0") == 4]
    assert added == [selection.mask_of(10, [1, 2, 4, 5])]
    # The best predicted swap, 2 for 4, gives {1, 4, 5} with loss 1.2.
    assert result.selected == [1, 4, 5]
    assert result.nll == pytest.approx(1.2)
    assert 0 < result.evaluations <= 9


def test_focused_strata_surround_target():
    assert sampling.focused_strata(30, 6) == [29, 26, 24, 22]
    assert sampling.focused_strata(30, 11) == [29, 21, 19, 17]
    assert sampling.focused_strata(4, 1) == [3, 1]


def test_sleb_cost_counts_protected_rounds_and_full_model():
    from compressor_shapley.plugin import sleb_cost

    assert sleb_cost(30, 6) == 28 + 27 + 26 + 25 + 24 + 23 + 1
    assert sleb_cost(30, 11) == 254
    assert sleb_cost(30, 6, protected=0) == 30 + 29 + 28 + 27 + 26 + 25 + 1


def test_cpu_default_budget_matches_sleb():
    from compressor_shapley.plugin import ShapleyConfig, ShapleyEstimator, sleb_cost

    settings = ShapleyEstimator(ShapleyConfig(ratio=0.2))._settings(30, 6)
    assert settings["selection"] == "active"
    assert settings["strata"] == [29, 26, 24, 22]
    assert 1 + settings["budget"] + settings["active_budget"] + settings["exchange_budget"] == sleb_cost(30, 6)
    assert settings["exchange_budget"] > 0
    paper = ShapleyEstimator(ShapleyConfig(ratio=0.2, preset="paper"))._settings(30, 6)
    assert paper["selection"] == "one_shot"
    assert paper["active_budget"] == 0


# --------------------------------------------------------------------------- estimator on a tiny model


@pytest.fixture()
def tiny_engine(tiny_tokenizer, tiny_corpus, sqlite_url):
    from dataclasses import dataclass

    from compressor.engine import UtilityEngine
    from compressor.models.adapters import BUILTIN_ADAPTERS
    from compressor.models.handle import ModelHandle
    from compressor.store import Store
    from tests.conftest import make_tiny_llama

    @dataclass
    class Windows:
        input_ids: torch.Tensor
        fingerprint: str

    model = make_tiny_llama(len(tiny_tokenizer), num_layers=6)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers" in name and param.dim() == 2:
                param.mul_(8.0)
    adapter = next(a for a in BUILTIN_ADAPTERS if a.name == "llama")
    handle = ModelHandle(model=model, tokenizer=tiny_tokenizer, adapter=adapter, source="tiny",
                         base_fingerprint="tiny-shapley", num_original_layers=6, dtype=torch.float32)
    ids = tiny_tokenizer(tiny_corpus, return_tensors="pt").input_ids[0][: 4 * 16].reshape(4, 16).clone()
    windows = Windows(input_ids=ids, fingerprint="tiny-shapley-windows")
    return lambda: UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False)


def _tiny_config(**overrides):
    from compressor_shapley.plugin import ShapleyConfig

    surrogate = SurrogateConfig(min_steps=200, max_steps=400, patience=100)
    settings = dict(num_layers=2, budget_evaluations=30, allow_low_quality=True, surrogate=surrogate, rescore=3)
    settings.update(overrides)
    return ShapleyConfig(**settings)


def test_estimator_scores_and_rerun_is_free(tiny_engine):
    from compressor_shapley.plugin import ShapleyEstimator, estimate

    config = _tiny_config()
    settings = ShapleyEstimator(config)._settings(6, 2)
    scores = estimate(tiny_engine(), 2, config, settings, seed=0)

    assert len(scores.values) == 6
    assert len(scores.selected) == 2
    assert all(lo <= v <= hi for lo, v, hi in zip(scores.lower, scores.values, scores.upper))
    assert scores.cost["evaluations"] == scores.extra["masks_requested"] <= 30
    assert scores.extra["semivalue_method"] == "exact"
    assert scores.extra["selection"] == "active"
    assert scores.extra["exchange_search"]["evaluated"] <= scores.extra["exchange_search"]["budget"]
    # The active search picks the best removal set it evaluated on the real model.
    engine = tiny_engine()
    evaluated = [m for m in engine._results if m.count("0") == 2]
    best = min(evaluated, key=lambda m: engine.nll(m))
    assert scores.selected == [i for i, c in enumerate(best) if c == "0"]

    again = estimate(tiny_engine(), 2, config, settings, seed=0)
    assert again.cost["evaluations"] == 0
    assert again.selected == scores.selected


def test_estimator_rejects_low_quality(tiny_engine):
    from compressor_shapley.plugin import ShapleyEstimator, estimate

    config = _tiny_config(allow_low_quality=False, min_r2=1.01, selection="one_shot")
    settings = ShapleyEstimator(config)._settings(6, 2)
    with pytest.raises(CompressorError, match="surrogate quality is below"):
        estimate(tiny_engine(), 2, config, settings, seed=0)


def test_active_selection_reports_low_quality_but_selects(tiny_engine, caplog):
    from compressor_shapley.plugin import ShapleyEstimator, estimate

    config = _tiny_config(allow_low_quality=False, min_r2=1.01)
    settings = ShapleyEstimator(config)._settings(6, 2)
    with caplog.at_level("ERROR"):
        scores = estimate(tiny_engine(), 2, config, settings, seed=0)
    assert scores.extra["surrogate_low_quality"] is True
    assert len(scores.selected) == 2
    assert "surrogate quality is below" in caplog.text


def test_estimator_drops_nonfinite_masks_together(tiny_engine, monkeypatch):
    from compressor_shapley import plugin

    engine = tiny_engine()
    original = engine._forward_nll
    monkeypatch.setattr(engine, "_forward_nll", lambda key: float("nan") if key.count("1") == 4 else original(key))
    fitted = {}
    real_fit = plugin.fit_surrogate

    def spy(masks, utilities, config, seed=0):
        fitted["masks"], fitted["utilities"] = masks, utilities
        return real_fit(masks, utilities, config, seed)

    monkeypatch.setattr(plugin, "fit_surrogate", spy)
    config = _tiny_config(strata=[5, 4, 3], budget_evaluations=60)
    scores = plugin.estimate(engine, 2, config, plugin.ShapleyEstimator(config)._settings(6, 2), seed=0)

    assert scores.extra["nonfinite_masks"] > 0
    assert len(fitted["masks"]) == len(fitted["utilities"])
    assert (fitted["masks"].sum(1) != 4).all()
    for mask, utility in zip(fitted["masks"], fitted["utilities"]):
        key = "".join("1" if b else "0" for b in mask)
        assert utility == pytest.approx(-engine.nll(key))


def test_plot_written(tmp_path):
    from compressor.scores import LayerScores
    from compressor_shapley.plugin import plot_values

    scores = LayerScores(method="shapley", values=[0.1, 0.5, 0.2], selected=[0], lower=[0.0, 0.4, 0.1],
                         upper=[0.2, 0.6, 0.3])
    path = plot_values(scores, tmp_path / "values.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plugin_registers_estimators():
    from compressor.plugins import get_registry

    registry = get_registry()
    assert {"shapley", "kernelshap"} <= set(registry.names("estimator"))


def test_kernelshap_comparator_on_real_model(tiny_engine):
    from compressor_shapley.plugin import estimate_direct

    engine = tiny_engine()
    scores = estimate_direct(engine, 2, "kernelshap", budget=24, utility="neg_nll", seed=0)
    assert len(scores.values) == 6
    assert len(scores.selected) == 2
    # The budget, plus at most the full model that the engine runs once to cache its prefix states.
    assert 0 < scores.cost["evaluations"] <= 24 + 1
    assert scores.selected == sorted(np.argsort(scores.values)[:2].tolist())
