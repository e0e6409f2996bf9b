"""UtilityEngine: exact NLL with removed layers skipped, prefix reuse, deduplication and resume."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from compressor.engine import UtilityEngine, ZeroedLayerEngine, mask_to_str
from compressor.errors import CompressorError
from compressor.models.adapters import BUILTIN_ADAPTERS
from compressor.models.handle import ModelHandle
from compressor.store import MaskEvaluation, Store
from tests.conftest import make_tiny_llama

NUM_LAYERS = 6


@dataclass
class Windows:
    input_ids: torch.Tensor
    fingerprint: str


def _scaled_llama(vocab_size: int, seed: int = 0):
    """A tiny Llama with larger weights, so that removing a layer changes the loss visibly."""
    model = make_tiny_llama(vocab_size, num_layers=NUM_LAYERS, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers" in name and param.dim() == 2:
                param.mul_(8.0)
    return model


@pytest.fixture()
def handle(tiny_tokenizer):
    model = _scaled_llama(len(tiny_tokenizer))
    adapter = next(a for a in BUILTIN_ADAPTERS if a.name == "llama")
    return ModelHandle(
        model=model, tokenizer=tiny_tokenizer, adapter=adapter, source="tiny", base_fingerprint="tiny-engine",
        num_original_layers=NUM_LAYERS, dtype=torch.float32,
    )


@pytest.fixture()
def windows(tiny_tokenizer, tiny_corpus):
    ids = tiny_tokenizer(tiny_corpus, return_tensors="pt").input_ids[0]
    return Windows(input_ids=ids[: 5 * 24].reshape(5, 24).clone(), fingerprint="tiny-windows")


def _deleted_layers_nll(model, input_ids, mask: str) -> float:
    """Mean token NLL of a deep copy of ``model`` with the removed layers physically deleted."""
    pruned = copy.deepcopy(model)
    keep = [i for i, c in enumerate(mask) if c == "1"]
    pruned.model.layers = nn.ModuleList([pruned.model.layers[i] for i in keep])
    pruned.config.num_hidden_layers = len(keep)
    with torch.no_grad():
        return float(pruned(input_ids=input_ids, labels=input_ids, use_cache=False).loss)


MASKS = ["111111", "011111", "101111", "110011", "111110", "100001", "000000", "010101"]


@pytest.mark.parametrize("mask", MASKS)
def test_nll_matches_deleted_layers(handle, windows, mask):
    engine = UtilityEngine(handle, windows, progress=False, batch_size=2)
    expected = _deleted_layers_nll(handle.model, windows.input_ids, mask)
    assert engine.nll(mask) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_masks_change_the_loss(handle, windows):
    engine = UtilityEngine(handle, windows, progress=False)
    values = engine.evaluate(MASKS)
    assert len(set(np.round(values, 4))) == len(MASKS)


def test_prefix_reuse_and_skipping_agree_with_zeroed(handle, windows):
    fast = UtilityEngine(handle, windows, progress=False, batch_size=3)
    slow = ZeroedLayerEngine(handle, windows, progress=False, batch_size=3)
    np.testing.assert_allclose(fast.evaluate(MASKS), slow.evaluate(MASKS), rtol=1e-5, atol=1e-6)


def test_prefix_reuse_executes_fewer_layers(handle, windows):
    fast = UtilityEngine(handle, windows, progress=False)
    slow = ZeroedLayerEngine(handle, windows, progress=False)
    fast.evaluate(["111110", "111101"])
    slow.evaluate(["111110", "111101"])
    tokens = windows.input_ids.numel()
    # The first call caches the full model's states (6 layers), then each mask runs only
    # the kept layers after its first removed layer: 0 and 1.
    assert fast.stats["token_layers"] == tokens * (6 + 0 + 1)
    assert slow.stats["token_layers"] == tokens * 6 * 2


def test_zeroed_engine_reevaluates_duplicates(handle, windows):
    slow = ZeroedLayerEngine(handle, windows, progress=False)
    values = slow.evaluate(["110111", "110111"])
    assert slow.stats["evaluations"] == 2
    assert values[0] == pytest.approx(values[1])


def test_duplicates_evaluated_once(handle, windows):
    engine = UtilityEngine(handle, windows, progress=False)
    values = engine.evaluate(["101111", "101111", [1, 0, 1, 1, 1, 1], "101111"])
    assert engine.stats["evaluations"] == 1 + 1  # the mask, plus the full model for the prefix cache
    assert engine.stats["cache_hits"] == 3
    assert len(set(values.tolist())) == 1


def test_resume_from_store_costs_nothing(handle, windows, sqlite_url):
    masks = ["011111", "101111", "110011", "000111", "111000"]
    first = UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False, flush_every=2)
    expected = first.evaluate(masks)

    second = UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False)
    again = second.evaluate(masks)

    assert second.stats["evaluations"] == 0
    assert second.stats["cache_hits"] == len(masks)
    np.testing.assert_allclose(again, expected)
    with Store(sqlite_url).session() as session:
        stored = [row.mask for row in session.query(MaskEvaluation).all()]
    assert sorted(stored) == sorted(set(masks) | {"111111"})


def test_interrupted_run_keeps_finished_evaluations(handle, windows, sqlite_url, monkeypatch):
    engine = UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False, flush_every=100)
    calls = {"n": 0}
    original = engine._forward_nll

    def failing(key):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(key)

    monkeypatch.setattr(engine, "_forward_nll", failing)
    with pytest.raises(KeyboardInterrupt):
        engine.evaluate(["011111", "101111", "110111", "111011"])

    resumed = UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False)
    resumed.evaluate(["011111", "101111", "110111", "111011"])
    assert resumed.stats["evaluations"] == 2


def test_nonfinite_loss_recorded_and_aligned(handle, windows, sqlite_url, monkeypatch):
    engine = UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False)
    original = engine._forward_nll
    monkeypatch.setattr(engine, "_forward_nll", lambda key: float("nan") if key == "101111" else original(key))

    masks = ["011111", "101111", "110111"]
    values = engine.evaluate(masks)

    assert values.shape == (3,)
    assert np.isnan(values[1])
    assert np.isfinite(values[[0, 2]]).all()
    assert engine.failures == ["101111"]
    stored = Store(sqlite_url).load_mask_evaluations(handle.fingerprint, windows.fingerprint)
    assert stored["101111"].status == "nonfinite"
    assert stored["101111"].nll is None

    resumed = UtilityEngine(handle, windows, store=Store(sqlite_url), progress=False)
    assert resumed.failures == ["101111"]
    assert np.isnan(resumed.nll("101111"))


def test_bf16_model_scored_in_fp32(tiny_tokenizer, windows):
    model = _scaled_llama(len(tiny_tokenizer)).to(torch.bfloat16)
    adapter = next(a for a in BUILTIN_ADAPTERS if a.name == "llama")
    handle = ModelHandle(model=model, tokenizer=tiny_tokenizer, adapter=adapter, source="tiny",
                         base_fingerprint="tiny-bf16", num_original_layers=NUM_LAYERS, dtype=torch.bfloat16)
    engine = UtilityEngine(handle, windows, progress=False)
    with torch.no_grad():
        logits = model(input_ids=windows.input_ids, use_cache=False).logits.float()
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows.input_ids[:, 1:].reshape(-1)
    )
    assert engine.full_nll == pytest.approx(float(expected), rel=1e-5)


def test_invalid_mask_rejected():
    with pytest.raises(CompressorError, match="6 characters"):
        mask_to_str("1101", 6)
    with pytest.raises(CompressorError, match="contains 2"):
        mask_to_str([1, 2, 0, 1, 1, 1], 6)
    assert mask_to_str([True, False, 1, 0, 1, 1], 6) == "101011"


def test_game_wraps_real_model(handle, windows):
    engine = UtilityEngine(handle, windows, progress=False)
    game = engine.as_game("neg_nll")
    coalitions = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=bool)
    values = game(coalitions)
    assert values[0] == pytest.approx(-engine.full_nll)
    assert values[1] == pytest.approx(-engine.nll("011111"))
