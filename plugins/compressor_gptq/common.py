"""Checks and file handling shared by the quantizer backends.

Every check here runs before calibration starts, so a combination that a backend cannot
quantize or save fails in seconds with the layers and values involved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch

from compressor.errors import CompressorError

if TYPE_CHECKING:
    from compressor.context import StageContext
    from compressor.models.handle import ModelHandle

    from .config import GPTQConfig, WeightQuantConfig

log = logging.getLogger(__name__)

MB = 1_000_000
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def targeted_linears(model: torch.nn.Module, ignore: Iterable[str]) -> list[tuple[str, torch.nn.Module]]:
    """Return (name, module) of every ``nn.Linear`` that quantization covers, in model order."""
    from compressed_tensors.utils import match_named_modules

    return list(match_named_modules(model, ["Linear"], list(ignore)))


def check_ignore_entries(model: torch.nn.Module, ignore: Iterable[str]) -> None:
    """Reject an ``ignore`` entry that matches no module, which is almost always a typo."""
    from compressed_tensors.utils import match_named_modules

    unmatched = [entry for entry in ignore if not any(True for _ in match_named_modules(model, [entry]))]
    if unmatched:
        raise CompressorError(
            f"ignore entries {unmatched} match no module of {type(model).__name__}; give module names "
            "(such as lm_head or model.layers.0.mlp.down_proj), class names, or `re:REGEX` patterns"
        )


def check_weight_config(
    model: torch.nn.Module, config: "WeightQuantConfig", backend: str, supported_bits: Iterable[int]
) -> list[tuple[str, torch.nn.Module]]:
    """Validate bits, group size and ``ignore`` against ``model``; return the targeted layers."""
    supported = sorted(supported_bits)
    if config.bits not in supported:
        raise CompressorError(
            f"bits={config.bits} is not supported by the {backend} quantizer, which can save "
            f"{', '.join(map(str, supported))}-bit weights; choose one of those"
        )

    check_ignore_entries(model, config.ignore)
    targets = targeted_linears(model, config.ignore)
    if not targets:
        raise CompressorError(
            f"no Linear layer is left to quantize in {type(model).__name__}: `ignore` "
            f"({config.ignore}) covers all of them; shorten the ignore list"
        )

    if config.group_size is not None:
        bad = [(name, module.in_features) for name, module in targets if module.in_features % config.group_size]
        if bad:
            listed = ", ".join(f"{name} ({features})" for name, features in bad[:8])
            more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
            features = sorted({features for _, features in bad})
            hint = _divisor_hint(features, config.group_size)
            raise CompressorError(
                f"group_size={config.group_size} does not divide the in-features of {len(bad)} Linear "
                f"layers: {listed}{more}. {hint} Or add these layers to `ignore`, or set group_size "
                "to null for one scale per output channel."
            )
    return targets


def _divisor_hint(in_features: list[int], group_size: int) -> str:
    """Suggest the largest power-of-two group size below ``group_size`` that divides every width."""
    candidate = 1
    while candidate * 2 < group_size:
        candidate *= 2
    while candidate > 1 and any(width % candidate for width in in_features):
        candidate //= 2
    if candidate > 1:
        return f"Use group_size={candidate}, which divides {', '.join(map(str, in_features))}."
    return f"No power of two above 1 divides {', '.join(map(str, in_features))}."


def calibration_windows(config: "GPTQConfig", handle: "ModelHandle", ctx: "StageContext") -> tuple[torch.Tensor, str]:
    """Return the calibration token windows [n_samples, seq_len] and their fingerprint.

    The windows come from the recipe's ``data.calibration`` source. The quantizer's own
    ``n_samples`` and ``seq_len``, when set, replace the recipe's, and the fingerprint
    covers the result, so runs with the same windows share it.
    """
    overrides = {key: getattr(config, key) for key in ("n_samples", "seq_len") if getattr(config, key) is not None}
    spec = ctx.calibration_spec.model_copy(update=overrides)
    batches = ctx.batches(spec, handle.tokenizer)
    return batches.input_ids, batches.fingerprint


def unique_parameter_count(model: torch.nn.Module) -> int:
    """Count parameters once each, so tied embeddings are not counted twice."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() in seen:
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel()
    return total


def folder_weight_bytes(folder: Path) -> int:
    """Size in bytes of the weight files in ``folder``."""
    return sum(path.stat().st_size for path in folder.iterdir() if path.name.endswith(WEIGHT_SUFFIXES))


def size_metrics(folder: Path, params: int, seconds: float) -> dict[str, float]:
    """Disk size in MB (10^6 bytes), bits per original parameter and wall time of the stage."""
    weight_bytes = folder_weight_bytes(folder)
    return {
        "size_disk_mb": weight_bytes / MB,
        "bits_per_param": 8.0 * weight_bytes / params,
        "seconds": seconds,
    }


def reload_quantized(folder: Path, handle: "ModelHandle") -> torch.nn.Module:
    """Load the quantized model saved in ``folder`` with the handle's dtype and device."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise CompressorError(
            f"no quantized model at {str(folder)!r} (config.json is missing); the stage folder was "
            "removed or moved, so rerun the quantizer stage under a new run name"
        )
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=handle.dtype)
    model.to(handle.device)
    model.eval()
    return model


def check_restorable(handle: "ModelHandle", data: dict[str, Any]) -> Path:
    """Check that a stored quantizer result fits ``handle``; return its model folder."""
    folder = Path(data.get("model_dir", ""))
    expected_layers = data.get("num_layers")
    if expected_layers is not None and expected_layers != handle.num_layers:
        raise CompressorError(
            f"the stored quantized model in {str(folder)!r} has {expected_layers} layers but the model "
            f"reaching this stage has {handle.num_layers}; rerun the quantizer under a new run name"
        )
    return folder
