"""Baseline estimators on tiny random Llamas, checked against values computed here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compressor.errors import CompressorError
from compressor.models.adapters import BUILTIN_ADAPTERS
from compressor.models.handle import ModelHandle
from compressor.scores import LayerScores
from compressor.store import Store
from compressor_baselines.heuristics import RandomConfig, RandomLayers, ReverseOrder, ReverseOrderConfig
from compressor_baselines.loss_based import (
    Oracle,
    OracleConfig,
    PerplexityCriterion,
    PerplexityCriterionConfig,
    Sleb,
    SlebConfig,
)
from compressor_baselines.similarity import (
    AngularDistance,
    AngularDistanceConfig,
    BlockInfluence,
    BlockInfluenceConfig,
)
from conftest import make_tiny_llama

VOCAB = 64
LLAMA = next(adapter for adapter in BUILTIN_ADAPTERS if adapter.name == "llama")


@dataclass
class Windows:
    input_ids: torch.Tensor
    fingerprint: str
    bos_prepended: bool = False


def make_handle(num_layers: int, seed: int = 0) -> ModelHandle:
    model = make_tiny_llama(VOCAB, num_layers=num_layers, seed=seed)
    return ModelHandle(
        model=model, tokenizer=None, adapter=LLAMA, source="tiny", base_fingerprint=f"tiny-{num_layers}-{seed}",
        num_original_layers=num_layers, dtype=torch.float32,
    )


def make_ctx(windows: Windows, store=None, seed: int = 0):
    return SimpleNamespace(
        calibration_spec="calibration", store=store, seed=seed,
        batches=lambda spec, tokenizer: windows,
    )


def make_windows(n: int = 3, seq_len: int = 12, seed: int = 1, bos: bool = False) -> Windows:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, seq_len), generator=generator)
    if bos:
        ids[:, 0] = 0
    return Windows(ids, fingerprint=f"windows-{n}-{seq_len}-{seed}-{bos}", bos_prepended=bos)


def make_identity(handle: ModelHandle, layer: int) -> None:
    """Zero the two projections that write into the residual stream, so the layer returns its input."""
    block = handle.layers[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def states_by_hooks(handle: ModelHandle, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Record each layer's input and output with forward hooks, independent of output_hidden_states."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    hooks = []
    for layer in handle.layers:
        hooks.append(layer.register_forward_pre_hook(
            lambda _m, args, kwargs: inputs.append((args[0] if args else kwargs["hidden_states"]).detach()),
            with_kwargs=True,
        ))
        hooks.append(layer.register_forward_hook(
            lambda _m, _args, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach())
        ))
    try:
        with torch.no_grad():
            handle.model(input_ids=ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, outputs


def run_scores(impl, handle, ctx) -> LayerScores:
    result = impl.run(handle, ctx)
    assert result.handle is handle
    return LayerScores.from_dict(result.data)


# ---------------------------------------------------------------- block influence


def test_block_influence_matches_hand_computed():
    handle = make_handle(4)
    windows = make_windows(n=3, seq_len=10)
    inputs, outputs = states_by_hooks(handle, windows.input_ids)

    expected = []
    for x_in, x_out in zip(inputs, outputs):
        x_in, x_out = x_in.double().reshape(-1, x_in.shape[-1]), x_out.double().reshape(-1, x_out.shape[-1])
        cosine = (x_in * x_out).sum(-1) / (x_in.norm(dim=-1) * x_out.norm(dim=-1))
        expected.append(1.0 - float(cosine.mean()))

    scores = run_scores(BlockInfluence(BlockInfluenceConfig(num_layers=1, batch_size=2)), handle, make_ctx(windows))

    assert scores.method == "block_influence"
    assert scores.values == pytest.approx(expected, abs=1e-5)
    assert scores.selected == [int(np.argmin(expected))]
    assert scores.cost["evaluations"] == 1


def test_block_influence_skips_bos_position():
    handle = make_handle(3)
    windows = make_windows(n=2, seq_len=8, bos=True)
    inputs, outputs = states_by_hooks(handle, windows.input_ids)
    expected = []
    for x_in, x_out in zip(inputs, outputs):
        cosine = torch.nn.functional.cosine_similarity(x_in[:, 1:].double(), x_out[:, 1:].double(), dim=-1)
        expected.append(1.0 - float(cosine.mean()))

    scores = run_scores(BlockInfluence(BlockInfluenceConfig(num_layers=1)), handle, make_ctx(windows))

    assert scores.values == pytest.approx(expected, abs=1e-5)
    assert scores.extra["tokens_averaged"] == 2 * 7


def test_block_influence_selects_identity_layer():
    handle = make_handle(5)
    make_identity(handle, 3)

    scores = run_scores(BlockInfluence(BlockInfluenceConfig(num_layers=1)), handle, make_ctx(make_windows()))

    assert scores.values[3] == pytest.approx(0.0, abs=1e-6)
    assert min(v for i, v in enumerate(scores.values) if i != 3) > 1e-4
    assert scores.selected == [3]


def test_block_influence_ratio_selects_lowest():
    handle = make_handle(6)
    scores = run_scores(BlockInfluence(BlockInfluenceConfig(ratio=0.5)), handle, make_ctx(make_windows()))
    assert len(scores.selected) == 3
    threshold = sorted(scores.values)[2]
    assert all(scores.values[i] <= threshold for i in scores.selected)


# ---------------------------------------------------------------- angular distance


def test_angular_distance_matches_hand_computed():
    handle = make_handle(5)
    windows = make_windows(n=4, seq_len=9)
    inputs, outputs = states_by_hooks(handle, windows.input_ids)
    boundaries = [state[:, -1].double() for state in inputs] + [outputs[-1][:, -1].double()]

    def distance(a, b):
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
        return float((torch.arccos(cosine) / math.pi).mean())

    block = 2
    expected_blocks = [distance(boundaries[start], boundaries[start + block]) for start in range(5 - block + 1)]
    expected_single = [distance(boundaries[i], boundaries[i + 1]) for i in range(5)]
    best = int(np.argmin(expected_blocks))

    scores = run_scores(
        AngularDistance(AngularDistanceConfig(num_layers=block, batch_size=3)), handle, make_ctx(windows)
    )

    assert scores.extra["block_distances"] == pytest.approx(expected_blocks, abs=1e-6)
    assert scores.values == pytest.approx(expected_single, abs=1e-6)
    assert scores.selected == [best, best + 1]
    assert scores.extra["block_start"] == best


def test_angular_distance_finds_identity_block():
    handle = make_handle(6)
    make_identity(handle, 2)
    make_identity(handle, 3)

    scores = run_scores(AngularDistance(AngularDistanceConfig(num_layers=2)), handle, make_ctx(make_windows()))

    assert scores.selected == [2, 3]
    assert scores.extra["block_distances"][2] == pytest.approx(0.0, abs=1e-4)


# ---------------------------------------------------------------- SLEB, perplexity criterion, oracle


def test_sleb_one_round_equals_oracle(tmp_path):
    handle = make_handle(6, seed=3)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    ctx = make_ctx(make_windows(n=2, seq_len=10), store=store)

    sleb_result = Sleb(SlebConfig(num_layers=1, protect_first=False, protect_last=False)).run(handle, ctx)
    oracle_result = Oracle(OracleConfig(num_layers=1)).run(handle, ctx)
    sleb = LayerScores.from_dict(sleb_result.data)
    oracle = LayerScores.from_dict(oracle_result.data)

    assert sleb.selected == oracle.selected
    assert sleb.values == pytest.approx(oracle.values)
    assert sleb.cost["evaluations"] == 1 + 6  # the full model, then each layer removed once
    assert oracle.cost["evaluations"] == 0  # every single-layer mask is read back from the store
    assert oracle.cost["cache_hits"] == 6


def test_perplexity_criterion_is_exp_of_single_removal_nll():
    handle = make_handle(5, seed=2)
    ctx = make_ctx(make_windows(n=2, seq_len=8))

    oracle = run_scores(Oracle(OracleConfig(num_layers=1)), handle, ctx)
    criterion = run_scores(PerplexityCriterion(PerplexityCriterionConfig(num_layers=2)), handle, ctx)

    assert criterion.values == pytest.approx([math.exp(v) for v in oracle.values], rel=1e-6)
    assert criterion.selected == sorted(np.argsort(oracle.values, kind="stable")[:2].tolist())
    assert criterion.extra["full_ppl"] > 1


def test_sleb_rounds_protect_ends_and_count_evaluations():
    handle = make_handle(6, seed=4)
    ctx = make_ctx(make_windows(n=2, seq_len=8))

    scores = run_scores(Sleb(SlebConfig(num_layers=2)), handle, ctx)

    assert 0 not in scores.selected
    assert 5 not in scores.selected
    assert len(scores.selected) == 2
    assert sorted(scores.extra["removal_order"]) == scores.selected
    # The full model, four candidates in round one, three in round two.
    assert scores.cost["evaluations"] == 1 + 4 + 3
    assert scores.values[0] == max(scores.values)


def test_sleb_second_round_matches_pairs():
    handle = make_handle(5, seed=5)
    ctx = make_ctx(make_windows(n=2, seq_len=8))

    sleb = run_scores(Sleb(SlebConfig(num_layers=2, protect_first=False, protect_last=False)), handle, ctx)
    first = sleb.extra["removal_order"][0]
    pairs = run_scores(Oracle(OracleConfig(num_layers=2)), handle, ctx)

    from compressor.engine import UtilityEngine

    engine = UtilityEngine(handle, ctx.batches(None, None), progress=False)
    options = [layer for layer in range(5) if layer != first]
    expected_nll = [engine.nll("".join("0" if i in (first, other) else "1" for i in range(5))) for other in options]
    assert sleb.extra["removal_order"][1] == options[int(np.argmin(expected_nll))]
    assert sleb.extra["round_nll"][1] == pytest.approx(min(expected_nll))
    assert pairs.extra["best_nll"] <= min(expected_nll) + 1e-9


def test_sleb_rejects_target_beyond_unprotected():
    handle = make_handle(3)
    with pytest.raises(CompressorError, match="protect_first"):
        Sleb(SlebConfig(num_layers=2)).run(handle, make_ctx(make_windows()))


def test_oracle_rejects_too_many_subsets():
    handle = make_handle(6)
    with pytest.raises(CompressorError, match=r"C\(6, 3\) = 20 .* max_subsets = 10"):
        Oracle(OracleConfig(num_layers=3, max_subsets=10)).run(handle, make_ctx(make_windows()))


# ---------------------------------------------------------------- reverse order and random


def test_reverse_order_removes_layers_before_final():
    handle = make_handle(6)
    scores = run_scores(ReverseOrder(ReverseOrderConfig(num_layers=2)), handle, make_ctx(make_windows()))
    assert scores.selected == [3, 4]
    assert scores.values.index(max(scores.values)) == 5
    assert scores.cost["evaluations"] == 0


def test_random_is_deterministic_given_seed():
    handle = make_handle(8)
    ctx = make_ctx(make_windows(), seed=99)

    first = run_scores(RandomLayers(RandomConfig(num_layers=3, seed=7)), handle, ctx)
    second = run_scores(RandomLayers(RandomConfig(num_layers=3, seed=7)), handle, ctx)
    draws = {tuple(run_scores(RandomLayers(RandomConfig(num_layers=3, seed=s)), handle, ctx).selected)
             for s in range(10)}

    assert first.selected == second.selected
    assert first.values == second.values
    assert len(first.selected) == 3
    assert len(set(first.selected)) == 3
    assert len(draws) > 1


def test_random_defaults_to_recipe_seed():
    handle = make_handle(8)
    from_recipe = run_scores(RandomLayers(RandomConfig(num_layers=2)), handle, make_ctx(make_windows(), seed=4))
    explicit = run_scores(RandomLayers(RandomConfig(num_layers=2, seed=4)), handle, make_ctx(make_windows(), seed=0))
    assert from_recipe.selected == explicit.selected
    assert from_recipe.extra["seed"] == 4


def test_estimators_registered():
    from compressor.plugins import get_registry

    names = get_registry().names("estimator")
    for name in ("block_influence", "angular_distance", "sleb", "perplexity_criterion", "reverse_order", "random", "oracle"):
        assert name in names
