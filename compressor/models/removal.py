"""Physical removal of decoder layers, in a form that survives save and reload.

Replacing the ``ModuleList`` alone is not enough. ``from_pretrained`` would rebuild the
old layer count from the config and fill the missing layers with random weights.
An attention module that keeps its old ``layer_idx`` reads past the end of the KV
cache during generation. Per-layer config lists such as ``layer_types`` keep their old
length, which breaks saving or reloading. :func:`remove_layers` fixes all three.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable

from torch import nn

from compressor.errors import CompressorError
from compressor.models.adapters import ArchitectureAdapter, slice_per_layer
from compressor.models.handle import ModelHandle

log = logging.getLogger(__name__)


def _validate(indices: Iterable[Any], num_layers: int) -> list[int]:
    indices = list(indices)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise CompressorError(
                f"layer index {index!r} is a {type(index).__name__}; give whole numbers "
                f"between 0 and {num_layers - 1}"
            )
    out_of_range = [i for i in indices if not 0 <= i < num_layers]
    if out_of_range:
        raise CompressorError(
            f"layer indices {out_of_range} are out of range: the model has {num_layers} layers, "
            f"numbered 0 to {num_layers - 1} in its current numbering"
        )
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise CompressorError(f"layer indices {duplicates} are listed more than once; list each layer once")
    if len(indices) >= num_layers:
        raise CompressorError(
            f"cannot remove all {num_layers} layers of the model; at least one decoder layer must stay"
        )
    return sorted(indices)


def _layer_numbered_entries(quantization: Any) -> list[str]:
    """Return the module names in a quantization config's `ignore` and targets that contain a layer number."""
    if quantization is None:
        return []
    data = quantization if isinstance(quantization, dict) else quantization.to_dict()
    candidates = list(data.get("ignore") or [])
    for group in (data.get("config_groups") or {}).values():
        if isinstance(group, dict):
            candidates += list(group.get("targets") or [])
    pattern = re.compile(r"layers?\.\d+|\.h\.\d+")
    return [name for name in candidates if isinstance(name, str) and pattern.search(name)]


def _check_removable(handle: ModelHandle) -> None:
    config = handle.model.config
    quantization = getattr(config, "quantization_config", None)
    if handle.quantization or quantization is not None:
        # A compressed-tensors model keeps working after removal as long as its quantization
        # config does not name modules by layer number (an `ignore` entry such as
        # `model.layers.3.mlp.down_proj` would then point at the wrong layer).
        fmt = (handle.quantization or {}).get("format", "compressed-tensors")
        named = _layer_numbered_entries(quantization)
        if fmt != "compressed-tensors" or named:
            reason = f"its quantization config names layers by number ({', '.join(named[:3])})" if named else f"its {fmt!r} checkpoint format is not supported for removal"
            raise CompressorError(
                f"cannot remove layers from quantized model {handle.source!r}: {reason}; "
                "remove layers before quantizing instead"
            )
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        # GPT-2 computes this scale from layer_idx when the model is built. Reloading the
        # renumbered model would scale the moved layers differently from the model in memory.
        raise CompressorError(
            f"{type(handle.model).__name__} has scale_attn_by_inverse_layer_idx=True, whose attention "
            "scale depends on the layer number; layers cannot be removed without changing its outputs"
        )


def _slice_extra_per_layer(config: Any, adapter: ArchitectureAdapter, keep: list[int], num_layers: int) -> None:
    """Slice per-layer config entries that the adapter does not list.

    A list whose key mentions "layer" and whose length equals the layer count, or a
    dict keyed by every layer index, is taken to hold one entry per layer.
    """
    for key, value in config.to_dict().items():
        if key in adapter.per_layer_keys or "layer" not in key or not hasattr(config, key):
            continue
        per_layer_list = isinstance(value, list) and len(value) == num_layers
        per_layer_dict = isinstance(value, dict) and len(value) == num_layers and {
            str(k) for k in value
        } == {str(i) for i in range(num_layers)}
        if per_layer_list or per_layer_dict:
            log.info("slicing per-layer config entry %s to %d layers", key, len(keep))
            setattr(config, key, slice_per_layer(getattr(config, key), keep))


def remove_layers(handle: ModelHandle, indices: Iterable[int]) -> ModelHandle:
    """Remove the decoder layers at ``indices`` (current numbering) from ``handle``'s model.

    The model is changed in place and ``handle`` is returned. The removed layers are
    appended to ``handle.removed_layers`` in the original numbering, in ascending order.
    An empty ``indices`` changes nothing.
    """
    adapter = handle.adapter
    model = handle.model
    layers = adapter.get_layers(model)
    num_layers = len(layers)
    remove = _validate(indices, num_layers)
    if not remove:
        return handle
    _check_removable(handle)

    removed = set(remove)
    keep = [i for i in range(num_layers) if i not in removed]
    original_ids = handle.kept_original_indices
    if len(original_ids) != num_layers:
        raise CompressorError(
            f"handle records {len(original_ids)} remaining layers but the model has {num_layers}; "
            "the model's layers were changed outside compressor.models.remove_layers"
        )

    # 1. The modules: a new ModuleList holding the kept layers in order.
    kept_layers = nn.ModuleList([layers[i] for i in keep])
    adapter.set_layers(model, kept_layers)

    # 2. The config: layer count and per-layer entries, so from_pretrained rebuilds this shape.
    config = model.config
    setattr(config, adapter.num_layers_key, len(keep))
    for key, value in adapter.per_layer_values(config).items():
        setattr(config, key, slice_per_layer(value, keep))
    _slice_extra_per_layer(config, adapter, keep, num_layers)

    # 3. The layer indices, so each layer reads and writes its own KV cache slot.
    adapter.renumber_layers(kept_layers)

    handle.removed_layers.extend(original_ids[i] for i in remove)
    log.info(
        "removed layers %s (original %s); %d of %d layers remain",
        remove, [original_ids[i] for i in remove], len(keep), handle.num_original_layers,
    )
    return handle
