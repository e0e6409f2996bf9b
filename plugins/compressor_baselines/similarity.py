"""Estimators that score layers by how little they change the hidden state.

Both run the full model once over the calibration windows and compare the hidden
state entering a layer (or a block of layers) with the state leaving it. A layer whose
output points almost where its input pointed does little, so it is removed first.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from pydantic import Field

from compressor.scores import LayerScores, TargetConfig
from compressor_baselines._common import (
    calibration_ids,
    estimator_result,
    layer_boundary_states,
    lowest,
    scored_positions,
)

log = logging.getLogger(__name__)


class BlockInfluenceConfig(TargetConfig):
    batch_size: int = Field(4, ge=1, description="Calibration windows per forward pass.")


class BlockInfluence:
    """Block influence (BI) of each layer, removing the lowest in one shot.

    For layer ``i`` with input ``x_i`` and output ``x_{i+1}`` at token ``t``::

        BI_i = 1 - mean over windows and tokens of cos(x_{i,t}, x_{i+1,t})

    Source: Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
    Redundant Than You Expect". ``values`` are the BI scores (higher = the layer changes
    its input more, so it matters more). The mean covers every token of every window
    except a prepended BOS token. The last layer's output is taken before the final norm.
    """

    def __init__(self, config: BlockInfluenceConfig):
        self.config = config

    def run(self, handle, ctx):
        started = time.perf_counter()
        num_layers = handle.num_layers
        count = self.config.layers_to_remove(num_layers)
        input_ids, bos_prepended = calibration_ids(handle, ctx)
        positions = scored_positions(input_ids.shape[1], bos_prepended)

        cosine_sums = torch.zeros(num_layers, dtype=torch.float64)
        n_tokens = 0
        for states in layer_boundary_states(handle, input_ids, self.config.batch_size):
            for layer in range(num_layers):
                cosine = torch.nn.functional.cosine_similarity(
                    states[layer][:, positions], states[layer + 1][:, positions], dim=-1
                )  # [batch, tokens]
                cosine_sums[layer] += cosine.double().sum()
            n_tokens += states[0][:, positions].shape[0] * states[0][:, positions].shape[1]

        influence = (1.0 - cosine_sums / n_tokens).tolist()
        selected = lowest(influence, count)
        log.info("block influence: removing layers %s of %d", selected, num_layers)

        scores = LayerScores(
            method="block_influence",
            values=influence,
            selected=selected,
            cost={
                "evaluations": 1.0,  # one forward pass of the full model over the calibration set
                "token_layers": float(input_ids.numel() * num_layers),
                "seconds": time.perf_counter() - started,
            },
            extra={"tokens_averaged": n_tokens},
        )
        return estimator_result(handle, scores)


class AngularDistanceConfig(TargetConfig):
    batch_size: int = Field(4, ge=1, description="Calibration windows per forward pass.")


class AngularDistance:
    """Angular distance between the states around a block, removing the closest block.

    For a block of ``n`` layers starting at layer ``l``, with ``h_l`` the state entering
    layer ``l`` at the last token of a window::

        d(l, n) = arccos(cos(h_l, h_{l+n})) / pi,   averaged over windows

    The contiguous block ``l*, ..., l* + n - 1`` with the smallest ``d(l, n)`` is
    removed, where ``n`` is the removal target. Source: Gromov et al. 2024, "The
    Unreasonable Ineffectiveness of the Deeper Layers". ``values[i]`` is ``d(i, 1)``, the
    distance across layer ``i`` alone, and ``extra["block_distances"][l]`` is ``d(l, n)``.
    """

    def __init__(self, config: AngularDistanceConfig):
        self.config = config

    def run(self, handle, ctx):
        started = time.perf_counter()
        num_layers = handle.num_layers
        block = self.config.layers_to_remove(num_layers)
        input_ids, _ = calibration_ids(handle, ctx)

        # Last-token states at every layer boundary: [L + 1, n_windows, hidden].
        chunks = [torch.stack([state[:, -1] for state in states]) for states in
                  layer_boundary_states(handle, input_ids, self.config.batch_size)]
        last_token = torch.cat(chunks, dim=1)

        single = [angular_distance(last_token[i], last_token[i + 1]) for i in range(num_layers)]
        block_distances = [angular_distance(last_token[start], last_token[start + block])
                           for start in range(num_layers - block + 1)]
        best = min(range(len(block_distances)), key=lambda start: (block_distances[start], start))
        selected = list(range(best, best + block))
        log.info("angular distance: removing block %s (d = %.4f) of %d layers", selected, block_distances[best], num_layers)

        scores = LayerScores(
            method="angular_distance",
            values=single,
            selected=selected,
            cost={
                "evaluations": 1.0,  # one forward pass of the full model over the calibration set
                "token_layers": float(input_ids.numel() * num_layers),
                "seconds": time.perf_counter() - started,
            },
            extra={"block_size": block, "block_start": best, "block_distances": block_distances},
        )
        return estimator_result(handle, scores)


def angular_distance(first: torch.Tensor, second: torch.Tensor) -> float:
    """Return the mean of arccos(cos(a, b)) / pi over rows of two [n, hidden] tensors, in [0, 1]."""
    cosine = torch.nn.functional.cosine_similarity(first.double(), second.double(), dim=-1)
    return float((torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi).mean())
