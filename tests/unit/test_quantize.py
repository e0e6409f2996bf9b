"""Quantizer stages gptq, rtn and gptqmodel on a tiny random Llama.

The model has hidden size 64 and intermediate size 128, so group size 32 divides the
in-features of every Linear layer. Each GPTQ run takes a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from compressor.context import StageContext
from compressor.errors import CompressorError
from compressor.models.adapters import BUILTIN_ADAPTERS
from compressor.models.handle import ModelHandle
from compressor.recipe import Recipe
from compressor_gptq import gptqmodel_backend, llmcompressor_backend
from compressor_gptq.config import GPTQConfig, RTNConfig
from compressor_gptq.plugin import GPTQModelStage, GPTQStage, RTNStage

LLAMA_ADAPTER = next(adapter for adapter in BUILTIN_ADAPTERS if adapter.name == "llama")


def make_quantizable_llama(vocab_size: int, num_layers: int = 2, tied: bool = True):
    """A random Llama whose Linear in-features (64 and 128) are divisible by 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


def make_handle(model, tokenizer) -> ModelHandle:
    num_layers = len(LLAMA_ADAPTER.get_layers(model))
    return ModelHandle(
        model=model, tokenizer=tokenizer, adapter=LLAMA_ADAPTER, source="tiny-llama",
        base_fingerprint="tiny", num_original_layers=num_layers, dtype=torch.float32,
    )


def make_context(tmp_path: Path, text_file: Path, plugin: str, config: dict, n_samples=8, seq_len=32) -> StageContext:
    recipe = Recipe.model_validate({
        "name": "quantize-test",
        "model": {"source": "tiny-llama"},
        "data": {"calibration": {"source": f"file:{text_file}", "n_samples": n_samples, "seq_len": seq_len}},
        "stages": [{"kind": "quantizer", "plugin": plugin, "config": config}],
    })
    return StageContext(
        recipe=recipe, stage=recipe.stages[0], index=0, run_name="quantize-test", run_id=0,
        output_dir=tmp_path, stage_dir=tmp_path / "stage", store=None, registry=None,
    )


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture()
def probe_ids(tiny_tokenizer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(2, len(tiny_tokenizer), (2, 24), generator=generator)


def test_gptq_reload_matches_memory(tmp_path, tiny_tokenizer, probe_ids):
    model = make_quantizable_llama(len(tiny_tokenizer))
    float_logits = logits(model, probe_ids)
    calibration = torch.randint(2, len(tiny_tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
    config = GPTQConfig(bits=4, group_size=32)

    quantized, dampening = llmcompressor_backend.quantize_gptq(model, tiny_tokenizer, calibration, config)
    memory_logits = logits(quantized, probe_ids)
    llmcompressor_backend.save_compressed(quantized, tiny_tokenizer, tmp_path / "model")

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert dampening == 0.01
    assert not torch.allclose(memory_logits, float_logits, atol=1e-4), "quantization left the logits unchanged"
    torch.testing.assert_close(logits(reloaded, probe_ids), memory_logits, atol=1e-4, rtol=1e-4)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()

    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert "lm_head.weight" not in names, "the tied lm_head was saved a second time"
    assert "model.layers.0.mlp.down_proj.weight_packed" in names
    assert "model.layers.0.mlp.down_proj.weight" not in names


def test_gptq_stage_run_then_restore(tmp_path, tiny_tokenizer, tiny_text_file, probe_ids):
    # 8 calibration windows: the run must end quantized or with the Hessian error, not a traceback.
    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    ctx = make_context(tmp_path, tiny_text_file, "gptq", {"group_size": 32})
    stage = GPTQStage(GPTQConfig(group_size=32))

    try:
        result = stage.run(handle, ctx)
    except CompressorError as error:
        assert "not positive definite" in str(error)
        return

    assert result.data["model_dir"] == str(tmp_path / "stage" / "model")
    assert result.handle.quantization["method"] == "gptq"
    assert result.handle.quantization["group_size"] == 32
    assert result.handle.quantization["n_samples"] == 8
    assert result.handle.quantization["seq_len"] == 32
    assert len(result.handle.quantization["calibration"]) == 16
    assert 4.0 < result.metrics["bits_per_param"] < 32.0
    assert result.metrics["size_disk_mb"] > 0
    json.dumps(result.data)

    run_logits = logits(result.handle.model, probe_ids)
    fresh = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    restored = GPTQStage(GPTQConfig(group_size=32)).restore(fresh, result.data, ctx)
    assert restored.quantization == result.handle.quantization
    torch.testing.assert_close(logits(restored.model, probe_ids), run_logits, atol=1e-5, rtol=1e-5)


def test_rtn_stage_same_format_as_gptq(tmp_path, tiny_tokenizer, tiny_text_file, probe_ids):
    model = make_quantizable_llama(len(tiny_tokenizer))
    float_logits = logits(model, probe_ids)
    handle = make_handle(model, tiny_tokenizer)
    ctx = make_context(tmp_path, tiny_text_file, "rtn", {"group_size": 32, "bits": 8})

    result = RTNStage(RTNConfig(group_size=32, bits=8)).run(handle, ctx)

    saved = json.loads((tmp_path / "stage" / "model" / "config.json").read_text())["quantization_config"]
    weights = saved["config_groups"]["group_0"]["weights"]
    assert saved["format"] == "pack-quantized"
    assert weights["num_bits"] == 8
    assert weights["group_size"] == 32
    assert result.handle.quantization["method"] == "rtn"
    quantized_logits = logits(result.handle.model, probe_ids)
    assert not torch.equal(quantized_logits, float_logits)
    torch.testing.assert_close(quantized_logits, float_logits, atol=0.05, rtol=0.0)


BAD_CONFIGS = [
    ({"bits": 5}, "bits=5 is not supported by the gptq quantizer"),
    ({"group_size": 48}, "group_size=48 does not divide"),
    ({"group_size": 48}, "model.layers.0.self_attn.q_proj (64)"),
    ({"group_size": 48}, "Use group_size=32"),
    ({"ignore": ["lm_haed"]}, "ignore entries ['lm_haed'] match no module"),
    ({"ignore": ["re:.*"]}, "no Linear layer is left to quantize"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_gptq_bad_config_rejected_before_work(tmp_path, tiny_tokenizer, tiny_text_file, overrides, message):
    config = {"group_size": 32, **overrides}
    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    ctx = make_context(tmp_path, tiny_text_file, "gptq", config)

    with pytest.raises(CompressorError) as error:
        GPTQStage(GPTQConfig(**config)).run(handle, ctx)

    assert message in str(error.value)
    assert handle.quantization is None
    assert not (tmp_path / "stage" / "model").exists()


@pytest.mark.parametrize(
    "config",
    [
        {"act_order": "dynamic"},
        {"dampening_frac": 0.2, "max_dampening_frac": 0.1},
        {"bits": 16},
        {"group_size": 0},
        {"groupsize": 64},
    ],
)
def test_gptq_config_schema_rejects(config):
    with pytest.raises(ValidationError):
        GPTQConfig(**config)


def test_quantizer_rejects_second_quantization(tmp_path, tiny_tokenizer, tiny_text_file):
    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    handle.quantization = {"method": "rtn", "bits": 4}
    ctx = make_context(tmp_path, tiny_text_file, "gptq", {"group_size": 32})

    with pytest.raises(CompressorError, match="already quantized"):
        GPTQStage(GPTQConfig(group_size=32)).run(handle, ctx)


def test_dampening_schedule_steps():
    assert llmcompressor_backend.dampening_schedule(GPTQConfig()) == [0.01, 0.1]
    assert llmcompressor_backend.dampening_schedule(GPTQConfig(dampening_frac=0.0, max_dampening_frac=0.0)) == [0.0]
    assert llmcompressor_backend.dampening_schedule(
        GPTQConfig(dampening_frac=0.0, max_dampening_frac=0.5)
    ) == pytest.approx([0.0, 0.01, 0.1, 0.5])


def test_singular_hessian_without_retry_names_layers(tmp_path, tiny_tokenizer, tiny_text_file):
    # One window of 4 tokens gives Hessians of rank at most 4 for 64 or 128 input columns, so
    # without dampening the Cholesky factorisation fails.
    config = {"group_size": 32, "dampening_frac": 0.0, "max_dampening_frac": 0.0}
    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    ctx = make_context(tmp_path, tiny_text_file, "gptq", config, n_samples=1, seq_len=4)

    with pytest.raises(CompressorError) as error:
        GPTQStage(GPTQConfig(**config)).run(handle, ctx)

    message = str(error.value)
    assert "not positive definite" in message
    assert "model.layers.0." in message
    assert "n_samples" in message
    assert "max_dampening_frac" in message


def test_singular_hessian_retry_with_dampening(tmp_path, tiny_tokenizer, tiny_text_file):
    config = {"group_size": 32, "dampening_frac": 0.0, "max_dampening_frac": 0.1}
    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    ctx = make_context(tmp_path, tiny_text_file, "gptq", config, n_samples=1, seq_len=4)

    result = GPTQStage(GPTQConfig(**config)).run(handle, ctx)

    assert result.handle.quantization["dampening_frac"] == 0.01


def test_prune_then_quantize_keeps_layer_count(tmp_path, tiny_tokenizer, tiny_text_file, probe_ids):
    from compressor.models import remove_layers

    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer), num_layers=3), tiny_tokenizer)
    remove_layers(handle, [1])
    ctx = make_context(tmp_path, tiny_text_file, "rtn", {"group_size": 32})

    result = RTNStage(RTNConfig(group_size=32)).run(handle, ctx)

    saved = json.loads((tmp_path / "stage" / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    assert len(LLAMA_ADAPTER.get_layers(result.handle.model)) == 2
    assert result.data["num_layers"] == 2


def test_compressed_save_after_layer_removal(tmp_path, tiny_tokenizer, probe_ids):
    from torch import nn
    from transformers import AutoModelForCausalLM

    model = llmcompressor_backend.quantize_rtn(make_quantizable_llama(len(tiny_tokenizer), num_layers=3), RTNConfig(group_size=32))
    llmcompressor_backend.save_compressed(model, tiny_tokenizer, tmp_path / "quantized")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "quantized").eval()

    layers = LLAMA_ADAPTER.get_layers(reloaded)
    LLAMA_ADAPTER.set_layers(reloaded, nn.ModuleList([layers[0], layers[2]]))
    reloaded.config.num_hidden_layers = 2
    LLAMA_ADAPTER.renumber_layers(LLAMA_ADAPTER.get_layers(reloaded))
    pruned_logits = logits(reloaded, probe_ids)
    llmcompressor_backend.save_compressed(reloaded, tiny_tokenizer, tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()

    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["num_hidden_layers"] == 2
    assert len(LLAMA_ADAPTER.get_layers(again)) == 2
    torch.testing.assert_close(logits(again, probe_ids), pruned_logits, atol=1e-5, rtol=1e-5)


def test_gptqmodel_missing_says_how_to_install(tmp_path, tiny_tokenizer, tiny_text_file, monkeypatch):
    monkeypatch.setattr(gptqmodel_backend.importlib.util, "find_spec", lambda name: None)
    handle = make_handle(make_quantizable_llama(len(tiny_tokenizer)), tiny_tokenizer)
    ctx = make_context(tmp_path, tiny_text_file, "gptqmodel", {"group_size": 32})

    with pytest.raises(CompressorError) as error:
        GPTQModelStage(GPTQConfig(group_size=32)).run(handle, ctx)

    assert "pip install 'compressor[gptqmodel]'" in str(error.value)
    assert handle.quantization is None


def test_gptqmodel_ignore_translation():
    rules = gptqmodel_backend.dynamic_excludes(["lm_head", "model.layers.0.mlp.down_proj", "re:.*q_proj"])
    assert rules == {r"-:^model\.layers\.0\.mlp\.down_proj$": {}, "-:.*q_proj": {}}
    with pytest.raises(CompressorError, match="class name"):
        gptqmodel_backend.dynamic_excludes(["Linear"])


def test_quantizers_registered():
    from compressor.plugins import get_registry

    registry = get_registry()
    assert {"gptq", "gptqmodel", "rtn"} <= set(registry.names("quantizer"))
    assert registry.get("quantizer", "gptq").config is GPTQConfig
    assert registry.get("quantizer", "rtn").config is RTNConfig
