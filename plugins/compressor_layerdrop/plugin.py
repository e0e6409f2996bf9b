"""The ``layerdrop`` pruner.

By default it removes the layers that the most recent estimator stage selected. The
estimator's indices refer to the model it saw, whose layers' original indices the
pipeline records as ``layer_ids``, so the selection stays right even when an earlier
pruner already removed layers. ``layers`` in the config overrides the estimator.

Example stage::

    - kind: pruner
      plugin: layerdrop
      config: {layers: [12, 17]}   # original indices; omit to use the estimator's choice
"""

from __future__ import annotations

import logging

from pydantic import Field

from compressor.components import Component, StageResult, StrictConfig
from compressor.errors import CompressorError
from compressor.hookspecs import hookimpl
from compressor.models import remove_layers
from compressor.models.handle import ModelHandle

log = logging.getLogger(__name__)


class LayerDropConfig(StrictConfig):
    layers: list[int] | None = Field(
        None,
        description="Layers to remove, by their index in the model as loaded (original numbering, "
        "which does not change when earlier stages remove layers). Default: the layers selected "
        "by the most recent estimator stage.",
    )


def _to_current(handle: ModelHandle, originals: list[int]) -> list[int]:
    """Map original layer indices to the current model's numbering."""
    position = {original: i for i, original in enumerate(handle.kept_original_indices)}
    current = []
    for original in originals:
        if original in position:
            current.append(position[original])
        elif 0 <= original < handle.num_original_layers:
            raise CompressorError(
                f"layer {original} (original numbering) was already removed by an earlier stage; "
                f"remaining original layers: {handle.kept_original_indices}"
            )
        else:
            raise CompressorError(
                f"layer {original} is out of range: the model was loaded with {handle.num_original_layers} "
                f"layers, numbered 0 to {handle.num_original_layers - 1}"
            )
    return current


def _estimator_selection(ctx, handle: ModelHandle) -> list[int]:
    """Return the original indices of the layers the latest estimator selected."""
    latest = ctx.latest_selection()
    if latest is None:
        raise CompressorError(
            f"pruner stage {ctx.stage.label!r} has no layers to remove: no estimator stage ran before it "
            "and its config sets no `layers`. Add an estimator stage before it, or list the layers"
        )
    label, selected = latest
    layer_ids = ctx.previous[label].get("layer_ids")
    if layer_ids is None:
        log.warning("estimator %s recorded no layer_ids; assuming it saw the current model", label)
        layer_ids = handle.kept_original_indices

    originals = []
    for index in selected:
        if not 0 <= index < len(layer_ids):
            raise CompressorError(
                f"estimator {label!r} selected layer {index}, but it scored only {len(layer_ids)} layers"
            )
        originals.append(layer_ids[index])
    log.info("removing the layers selected by %s: %s (original numbering)", label, originals)
    return originals


class LayerDrop:
    def __init__(self, config: LayerDropConfig):
        self.config = config

    def run(self, handle: ModelHandle, ctx) -> StageResult:
        if self.config.layers is not None:
            originals = list(self.config.layers)
        else:
            originals = _estimator_selection(ctx, handle)
        return self._remove(handle, originals)

    def restore(self, handle: ModelHandle, data: dict, ctx) -> ModelHandle:
        """Repeat a finished stage's removal from its stored ``data`` (no estimator needed)."""
        return self._remove(handle, [int(i) for i in data["removed"]]).handle

    def _remove(self, handle: ModelHandle, originals: list[int]) -> StageResult:
        before = handle.num_layers
        remove_layers(handle, _to_current(handle, originals))
        after = handle.num_layers
        return StageResult(
            handle,
            data={"removed": sorted(originals), "layers_before": before, "layers_after": after},
            metrics={"layers_removed": float(before - after), "num_layers": float(after)},
        )


@hookimpl
def register_pruners(register):
    register(Component(
        name="layerdrop", kind="pruner", config=LayerDropConfig, factory=LayerDrop,
        description="Remove whole decoder layers: the latest estimator's selection, or a listed set",
    ))
