"""Helpers shared by the baseline estimators: result records, layer choice and hidden states."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from compressor.components import StageResult
from compressor.errors import CompressorError
from compressor.scores import LayerScores

if TYPE_CHECKING:
    from compressor.models.handle import ModelHandle


def estimator_result(handle: "ModelHandle", scores: LayerScores) -> StageResult:
    """Wrap ``scores`` as a stage result whose metrics are the estimator's cost."""
    metrics = {key: float(value) for key, value in scores.cost.items()}
    metrics["layers_selected"] = float(len(scores.selected))
    return StageResult(handle=handle, data=scores.to_dict(), metrics=metrics)


def lowest(values: Sequence[float], count: int, candidates: Sequence[int] | None = None) -> list[int]:
    """Return the ``count`` candidate layers with the lowest values, sorted by layer index.

    Ties go to the lower layer index, so the choice is deterministic.
    """
    pool = list(range(len(values))) if candidates is None else list(candidates)
    if count > len(pool):
        raise CompressorError(
            f"cannot select {count} layers from the {len(pool)} candidates {pool}; "
            "lower the removal target or unprotect some layers"
        )
    ranked = sorted(pool, key=lambda layer: (values[layer], layer))
    return sorted(ranked[:count])


def finite_values(values: Sequence[float]) -> list[float]:
    """Replace NaN and infinite entries by the largest finite entry, so the list stores as JSON.

    A non-finite entry comes from a removal that broke the model, so it marks the most
    important layers. The maximum keeps them at the top of the ranking.
    """
    finite = [float(v) for v in values if math.isfinite(v)]
    ceiling = max(finite) if finite else 0.0
    return [float(v) if math.isfinite(v) else ceiling for v in values]


def engine_cost(engine: Any) -> dict[str, float]:
    """Return the cost keys of a :class:`compressor.engine.UtilityEngine` after a run."""
    stats = engine.stats
    return {
        "evaluations": float(stats["evaluations"]),
        "cache_hits": float(stats["cache_hits"]),
        "token_layers": float(stats["token_layers"]),
        "seconds": float(stats["seconds"]),
    }


def calibration_ids(handle: "ModelHandle", ctx: Any) -> tuple[torch.Tensor, bool]:
    """Return the calibration windows [n_windows, seq_len] and whether each starts with BOS."""
    batches = ctx.batches(ctx.calibration_spec, handle.tokenizer)
    return batches.input_ids, bool(getattr(batches, "bos_prepended", False))


@torch.inference_mode()
def layer_boundary_states(
    handle: "ModelHandle", input_ids: torch.Tensor, batch_size: int
) -> Iterator[list[torch.Tensor]]:
    """Yield, per chunk of windows, the hidden states at the L + 1 layer boundaries.

    Entry ``i`` of each list has shape [batch, seq_len, hidden] and is the input of
    decoder layer ``i``. Entry ``L`` is the output of the last layer *before* the final
    norm. transformers replaces the last entry of ``output_hidden_states`` with the
    normalised state (``capture_outputs`` in transformers 5), so a forward hook on the
    last layer records the raw output instead.
    """
    layers = handle.layers
    num_layers = len(layers)
    device = torch.device(handle.device) if handle.device else next(handle.model.parameters()).device
    last_output: list[torch.Tensor] = []

    def record_last(_module, _args, output):
        state = output[0] if isinstance(output, (tuple, list)) else output
        last_output.append(state.detach())

    hook = layers[num_layers - 1].register_forward_hook(record_last)
    try:
        for ids in torch.split(input_ids, batch_size):
            last_output.clear()
            outputs = handle.model(input_ids=ids.to(device), use_cache=False, output_hidden_states=True)
            states = list(outputs.hidden_states)
            if len(states) != num_layers + 1:
                raise CompressorError(
                    f"{type(handle.model).__name__} returned {len(states)} hidden states for "
                    f"{num_layers} decoder layers, expected {num_layers + 1}; this estimator needs a "
                    "model whose output_hidden_states lists the embeddings and every layer's output"
                )
            if len(last_output) != 1:
                raise CompressorError(
                    f"the last decoder layer of {type(handle.model).__name__} ran {len(last_output)} times "
                    "in one forward pass, expected once; the architecture adapter does not match this model"
                )
            states[-1] = last_output[0]
            yield [state.float() for state in states]
    finally:
        hook.remove()


def scored_positions(seq_len: int, bos_prepended: bool) -> slice:
    """Token positions that enter a hidden-state mean: all but a prepended BOS token.

    The BOS token is context added to every window, not text of the window, so it is
    left out as it is left out of the loss.
    """
    start = 1 if bos_prepended and seq_len > 1 else 0
    return slice(start, seq_len)
