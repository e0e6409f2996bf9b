"""Perplexity evaluator: window plans, agreement with a token-by-token NLL loop, config checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from compressor.data import token_stream
from compressor.errors import CompressorError
from compressor.recipe import TextSpec
from compressor_eval.perplexity import PerplexityConfig, PerplexityEvaluator, evaluate_perplexity, plan_windows
from conftest import make_tiny_llama

SEQ_LEN = 16
MAX_TOKENS = 93  # not a multiple of the window, so the last window is partial


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return make_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=1)


@pytest.fixture(scope="module")
def spec(tiny_text_file) -> TextSpec:
    return TextSpec(source=f"file:{tiny_text_file}", n_samples=4, seq_len=SEQ_LEN, bos="never")


@pytest.fixture(scope="module")
def stream(spec, tiny_tokenizer) -> torch.Tensor:
    return token_stream(spec, tiny_tokenizer)[:MAX_TOKENS]


def scored_positions(windows) -> list[int]:
    return [p for w in windows for p in range(w.score_from, w.end)]


@pytest.mark.parametrize("n_tokens", [2, 15, 16, 17, 50, 93])
@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("stride", [1, 5, 8, 15])
def test_sliding_scores_each_token_once(n_tokens, bos, stride):
    windows = plan_windows(n_tokens, SEQ_LEN, "sliding", bos, stride)
    positions = scored_positions(windows)

    first = 0 if bos else 1
    assert sorted(positions) == list(range(first, n_tokens))
    assert len(positions) == len(set(positions))
    for window in windows:
        assert window.end - window.begin <= (SEQ_LEN - 1 if bos else SEQ_LEN)
        assert window.score_from >= window.begin + (0 if bos else 1)
        assert window.end > window.score_from


@pytest.mark.parametrize("n_tokens", [2, 16, 17, 93])
def test_windows_skip_first_token_without_bos(n_tokens):
    windows = plan_windows(n_tokens, SEQ_LEN, "windows", bos=False)
    expected = [p for p in range(n_tokens) if p % SEQ_LEN != 0]
    assert scored_positions(windows) == expected


@pytest.mark.parametrize("n_tokens", [1, 15, 16, 93])
def test_windows_score_every_token_with_bos(n_tokens):
    windows = plan_windows(n_tokens, SEQ_LEN, "windows", bos=True)
    assert scored_positions(windows) == list(range(n_tokens))
    assert all(w.end - w.begin <= SEQ_LEN - 1 for w in windows)


def test_sliding_rejects_stride_that_skips_tokens():
    with pytest.raises(CompressorError, match="stride 16"):
        plan_windows(50, SEQ_LEN, "sliding", bos=False, stride=SEQ_LEN)


def test_too_short_text_is_an_error():
    with pytest.raises(CompressorError, match="too few"):
        plan_windows(1, SEQ_LEN, "windows", bos=False)


def brute_force_nll(model, stream: torch.Tensor, context_start, bos_id: int | None) -> tuple[float, int]:
    """Score each token with one forward pass over exactly its context.

    ``context_start(p)`` is the first stream position of token p's context, or None when
    p is not scored.
    """
    total = 0.0
    count = 0
    prefix = [] if bos_id is None else [bos_id]
    with torch.no_grad():
        for p in range(len(stream)):
            start = context_start(p)
            if start is None:
                continue
            ids = torch.tensor([prefix + stream[start:p].tolist()])
            logits = model(input_ids=ids).logits[0, -1].float()
            total -= torch.log_softmax(logits, dim=-1)[stream[p]].item()
            count += 1
    return total, count


def run_config(model, tokenizer, spec, **fields):
    config = PerplexityConfig(max_tokens=MAX_TOKENS, seq_len=SEQ_LEN, **fields)
    return evaluate_perplexity(model, tokenizer, spec, config)


def test_windows_match_brute_force(model, tiny_tokenizer, spec, stream):
    metrics, data = run_config(model, tiny_tokenizer, spec, mode="windows", bos="never", batch_size=3)

    def context_start(p):
        return None if p % SEQ_LEN == 0 else (p // SEQ_LEN) * SEQ_LEN

    nll, count = brute_force_nll(model, stream, context_start, None)
    assert metrics["n_tokens"] == count == MAX_TOKENS - math.ceil(MAX_TOKENS / SEQ_LEN)
    assert metrics["nll_token"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["ppl_token"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert data["mode"] == "windows"
    assert data["seq_len"] == SEQ_LEN
    assert data["bos_prepended"] is False


def test_windows_with_bos_match_brute_force(model, tiny_tokenizer, spec, stream):
    metrics, data = run_config(model, tiny_tokenizer, spec, mode="windows", bos="always", batch_size=2)

    body = SEQ_LEN - 1
    nll, count = brute_force_nll(model, stream, lambda p: (p // body) * body, tiny_tokenizer.bos_token_id)
    assert metrics["n_tokens"] == count == MAX_TOKENS
    assert metrics["nll_token"] == pytest.approx(nll / count, rel=1e-5)
    assert data["bos"] == "always"
    assert data["bos_prepended"] is True


@pytest.mark.parametrize("bos", ["never", "always"])
def test_sliding_matches_brute_force(model, tiny_tokenizer, spec, stream, bos):
    stride = 5
    metrics, data = run_config(model, tiny_tokenizer, spec, mode="sliding", stride=stride, bos=bos, batch_size=4)

    capacity = SEQ_LEN - 1 if bos == "always" else SEQ_LEN

    def context_start(p):
        if bos == "never" and p == 0:
            return None
        # The first window whose span reaches p scores it.
        window = max(0, math.ceil((p - capacity + 1) / stride))
        return window * stride

    bos_id = tiny_tokenizer.bos_token_id if bos == "always" else None
    nll, count = brute_force_nll(model, stream, context_start, bos_id)
    assert metrics["n_tokens"] == count == (MAX_TOKENS if bos == "always" else MAX_TOKENS - 1)
    assert metrics["nll_token"] == pytest.approx(nll / count, rel=1e-5)
    assert data["stride"] == stride


def test_batch_size_does_not_change_result(model, tiny_tokenizer, spec):
    unbatched, _ = run_config(model, tiny_tokenizer, spec, mode="sliding", stride=7, bos="never", batch_size=1)
    batched, _ = run_config(model, tiny_tokenizer, spec, mode="sliding", stride=7, bos="never", batch_size=8)
    assert unbatched["n_tokens"] == batched["n_tokens"]
    assert unbatched["nll_token"] == pytest.approx(batched["nll_token"], rel=1e-6)


def test_bfloat16_model_scored_in_float32(tiny_tokenizer, spec, stream):
    model = make_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=1).to(torch.bfloat16)
    metrics, data = run_config(model, tiny_tokenizer, spec, mode="windows", bos="never", batch_size=1)

    nll, count = brute_force_nll(model, stream, lambda p: None if p % SEQ_LEN == 0 else (p // SEQ_LEN) * SEQ_LEN, None)
    assert data["dtype"] == "bfloat16"
    assert math.isfinite(metrics["ppl_token"])
    assert metrics["nll_token"] == pytest.approx(nll / count, rel=1e-2)


def test_evaluator_defaults_to_recipe_evaluation_text(model, tiny_tokenizer, spec):
    ctx = SimpleNamespace(evaluation_spec=spec)
    handle = SimpleNamespace(model=model, tokenizer=tiny_tokenizer)
    result = PerplexityEvaluator(PerplexityConfig()).run(handle, ctx)

    # Default: n_samples × seq_len tokens in non-overlapping windows, first token of each unscored.
    assert result.metrics["n_tokens"] == spec.n_samples * (SEQ_LEN - 1)
    assert set(result.metrics) == {"ppl_token", "nll_token", "n_tokens"}
    assert result.data["source"] == spec.source
    assert result.handle is handle


def test_max_tokens_all_takes_whole_stream(model, tiny_tokenizer, spec):
    full = token_stream(spec, tiny_tokenizer)
    config = PerplexityConfig(max_tokens="all", seq_len=64, bos="always", batch_size=8)
    metrics, data = evaluate_perplexity(model, tiny_tokenizer, spec, config)
    assert data["stream_tokens"] == full.numel()
    assert metrics["n_tokens"] == full.numel()


def test_stride_without_sliding_is_rejected():
    with pytest.raises(ValidationError, match="stride"):
        PerplexityConfig(mode="windows", stride=4)


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="window_len"):
        PerplexityConfig(window_len=4)
