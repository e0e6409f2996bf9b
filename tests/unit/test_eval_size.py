"""size evaluator: exact parameter counts, tied weights counted once, disk size and generation timing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from compressor.errors import CompressorError
from compressor_eval.size import SizeConfig, SizeEvaluator, count_parameters, measure_generation, memory_bytes
from conftest import make_tiny_llama

HIDDEN = 32
INTERMEDIATE = 64
KV_DIM = 16  # 2 key-value heads of head size 8


def expected_llama_params(vocab: int, num_layers: int, tied: bool) -> int:
    attention = HIDDEN * HIDDEN * 2 + HIDDEN * KV_DIM * 2  # q, o and k, v projections
    mlp = 3 * HIDDEN * INTERMEDIATE
    norms = 2 * HIDDEN
    embeddings = vocab * HIDDEN * (1 if tied else 2)
    return num_layers * (attention + mlp + norms) + HIDDEN + embeddings


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return make_tiny_llama(len(tiny_tokenizer), num_layers=3, seed=0)


def test_parameter_count_is_exact(model, tiny_tokenizer):
    params, aux = count_parameters(model)
    assert params == expected_llama_params(len(tiny_tokenizer), 3, tied=False)
    assert aux == 0


def test_tied_weights_counted_once(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), num_layers=2)
    model.lm_head.weight = model.model.embed_tokens.weight
    params, _ = count_parameters(model)
    assert params == expected_llama_params(len(tiny_tokenizer), 2, tied=True)

    buffer_bytes = sum(b.untyped_storage().nbytes() for b in model.buffers())
    assert memory_bytes(model) == params * 4 + buffer_bytes


def test_memory_follows_dtype(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), num_layers=2)
    fp32 = memory_bytes(model)
    half = memory_bytes(model.to(torch.bfloat16))
    params, _ = count_parameters(model)
    assert fp32 - half == pytest.approx(params * 2, abs=1024)  # buffers such as inv_freq may stay float32


def test_run_reports_all_metrics(model, tiny_tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    config = SizeConfig(model_dir=str(tmp_path), prompt_len=8, new_tokens=4, warmup=1, repeats=2, threads=1)
    handle = SimpleNamespace(model=model, tokenizer=tiny_tokenizer, device="cpu", num_layers=3,
                             quantization=None, info={})
    result = SizeEvaluator(config).run(handle, ctx=None)

    metrics = result.metrics
    assert set(metrics) == {"params", "size_disk_mb", "size_memory_mb", "bits_per_param", "latency_ms", "tokens_per_s"}
    assert metrics["params"] == expected_llama_params(len(tiny_tokenizer), 3, tied=False)
    # float32 safetensors: 32 bits per parameter plus a small header.
    assert 32.0 <= metrics["bits_per_param"] < 33.0
    assert metrics["tokens_per_s"] == pytest.approx(4 / (metrics["latency_ms"] / 1000))
    assert result.data["threads"] == 1
    assert result.data["dtype"] == "float32"
    assert len(result.data["latency_runs_ms"]) == 2
    assert "model.safetensors" in result.data["disk_files"]


def test_disk_size_saves_handle_when_no_folder(tiny_llama_dir):
    from compressor.models import load_model
    from compressor.recipe import ModelSpec

    handle = load_model(ModelSpec(source=str(tiny_llama_dir)))
    result = SizeEvaluator(SizeConfig(latency=False)).run(handle, ctx=None)
    weights = (tiny_llama_dir / "model.safetensors").stat().st_size
    assert result.metrics["size_disk_mb"] == pytest.approx(weights / 1e6, rel=0.01)
    assert result.data["disk_folder"] is None
    assert "latency_ms" not in result.metrics


def test_generation_makes_requested_tokens(model, tiny_tokenizer):
    config = SizeConfig(prompt_len=5, new_tokens=6, warmup=0, repeats=1)
    before = torch.get_num_threads()
    speed = measure_generation(model, tiny_tokenizer, config)
    assert speed["new_tokens"] == 6
    assert speed["latency_ms"] > 0
    assert torch.get_num_threads() == before


def test_model_dir_must_exist(model, tiny_tokenizer, tmp_path):
    handle = SimpleNamespace(model=model, tokenizer=tiny_tokenizer, device="cpu", num_layers=3, quantization=None, info={})
    config = SizeConfig(model_dir=str(tmp_path / "missing"), latency=False)
    with pytest.raises(CompressorError, match="missing"):
        SizeEvaluator(config).run(handle, ctx=None)
