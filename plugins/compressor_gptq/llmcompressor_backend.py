"""GPTQ and round-to-nearest through llmcompressor, saved in the compressed-tensors format.

Both paths write the same ``pack-quantized`` folder, which
``AutoModelForCausalLM.from_pretrained`` reloads on CPU with the weights dequantized
into ordinary ``nn.Linear`` layers (checked with llmcompressor 0.14 and transformers 5.17).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import PrivateAttr

from compressor.errors import CompressorError

from compressor.models.export import config_snapshot
from .config import GPTQConfig, WeightQuantConfig

log = logging.getLogger(__name__)

SUPPORTED_BITS = (2, 3, 4, 8)
DAMPENING_STEP = 10.0
MIN_RETRY_DAMPENING = 0.01


class HessianFailure(Exception):
    """GPTQ could not factorise the Hessian of some layers, even with the most dampening allowed."""

    def __init__(self, modules: list[str], dampening_frac: float):
        super().__init__(f"{len(modules)} modules at dampening_frac={dampening_frac}")
        self.modules = modules
        self.dampening_frac = dampening_frac


def quantization_scheme(config: WeightQuantConfig, act_order: str | None = None):
    """Build the compressed-tensors weight scheme (integer, weight-only) that ``config`` describes."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=config.bits,
        type="int",
        symmetric=config.symmetric,
        strategy="group" if config.group_size is not None else "channel",
        group_size=config.group_size,
        actorder=act_order,
    )
    return QuantizationScheme(targets=["Linear"], weights=weights)


def _recording_gptq_modifier(**kwargs):
    """Create a GPTQModifier that records which modules fell back to round-to-nearest.

    llmcompressor 0.14 does not raise when a Hessian is not positive definite. It
    quantizes that module by rounding instead, logs a warning, and clears the list of
    such modules in ``on_finalize``. The subclass keeps a copy of that list first.
    """
    from llmcompressor.modifiers.quantization import GPTQModifier

    class RecordingGPTQModifier(GPTQModifier):
        _fallback_modules: list[str] = PrivateAttr(default_factory=list)

        def _log_rtn_fallback_summary(self):
            # NOTE: reads a private attribute of llmcompressor 0.14; the getattr default keeps
            # other versions working, without the fallback check.
            self._fallback_modules = list(getattr(self, "_rtn_fallback_module_names", []))
            super()._log_rtn_fallback_summary()

    return RecordingGPTQModifier(**kwargs)


def _oneshot(model: Any, recipe: Any, tokenizer: Any = None, input_ids: torch.Tensor | None = None) -> None:
    from llmcompressor import oneshot

    kwargs: dict[str, Any] = {"model": model, "recipe": recipe}
    if input_ids is not None:
        from datasets import Dataset

        kwargs.update(
            processor=tokenizer,
            dataset=Dataset.from_dict({"input_ids": input_ids.tolist()}),
            num_calibration_samples=int(input_ids.shape[0]),
            max_seq_length=int(input_ids.shape[1]),
            shuffle_calibration_samples=False,
        )
    with config_snapshot(model):
        oneshot(**kwargs)


def dampening_schedule(config: GPTQConfig) -> list[float]:
    """Dampening fractions to try in order: the configured one, then ×10 steps up to the maximum."""
    schedule = [config.dampening_frac]
    while True:
        following = max(schedule[-1] * DAMPENING_STEP, MIN_RETRY_DAMPENING)
        if following > config.max_dampening_frac or following <= schedule[-1]:
            break
        schedule.append(following)
    if schedule[-1] < config.max_dampening_frac:
        schedule.append(config.max_dampening_frac)
    return schedule


def quantize_gptq(model: Any, tokenizer: Any, input_ids: torch.Tensor, config: GPTQConfig) -> tuple[Any, float]:
    """Quantize ``model`` with GPTQ on the calibration windows ``input_ids`` [n, seq_len].

    Returns the quantized model and the dampening fraction that succeeded. The model is
    changed in place on the first attempt. A retry starts again from a copy made
    before that attempt, so the model that comes back may be a different object.
    Raises :class:`HessianFailure` when some layers still fail at ``max_dampening_frac``.
    """
    schedule = dampening_schedule(config)
    pristine = copy.deepcopy(model) if len(schedule) > 1 else None
    scheme = quantization_scheme(config, config.act_order)

    for attempt, dampening in enumerate(schedule):
        if attempt > 0:
            model = copy.deepcopy(pristine)
        modifier = _recording_gptq_modifier(
            config_groups={"group_0": scheme}, ignore=list(config.ignore),
            dampening_frac=dampening, actorder=config.act_order,
        )
        _oneshot(model, modifier, tokenizer, input_ids)
        failed = modifier._fallback_modules
        if not failed:
            return model, dampening
        if attempt + 1 < len(schedule):
            log.warning(
                "GPTQ: the Hessian of %d layers (%s) is not positive definite at dampening_frac=%g; "
                "retrying with %g", len(failed), ", ".join(failed[:5]), dampening, schedule[attempt + 1],
            )
    raise HessianFailure(failed, schedule[-1])


def quantize_rtn(model: Any, config: WeightQuantConfig) -> Any:
    """Round every targeted weight to the nearest point of the grid, in place; no calibration data."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(config_groups={"group_0": quantization_scheme(config)}, ignore=list(config.ignore))
    _oneshot(model, modifier)
    return model


def save_compressed(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save a model quantized by llmcompressor to ``folder`` in the packed compressed-tensors format."""
    from llmcompressor.transformers.compression.compressed_tensors_utils import modify_save_pretrained

    if not getattr(model.save_pretrained, "_overridden", False):
        modify_save_pretrained(model)
    folder.mkdir(parents=True, exist_ok=True)
    with config_snapshot(model):
        model.save_pretrained(str(folder), save_compressed=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def hessian_error(failure: HessianFailure, config: GPTQConfig, n_samples: int, seq_len: int) -> CompressorError:
    listed = ", ".join(failure.modules[:8]) + (f" and {len(failure.modules) - 8} more" if len(failure.modules) > 8 else "")
    return CompressorError(
        f"GPTQ failed: the Hessian of {len(failure.modules)} layers ({listed}) is not positive definite, "
        f"even with dampening_frac={failure.dampening_frac:g}, after calibrating on {n_samples} windows of "
        f"{seq_len} tokens. Use more calibration samples (n_samples) or longer windows (seq_len), "
        f"raise max_dampening_frac (now {config.max_dampening_frac:g}), or add these layers to `ignore`."
    )
