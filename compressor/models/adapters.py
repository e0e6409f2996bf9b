"""Architecture adapters: where each model family keeps its decoder layers.

An adapter is a small table entry. It names the ``config.model_type`` values it handles
and the dotted attribute paths of the decoder layer ``ModuleList``, the final norm, the
embedding and the lm_head. It also names the config key of the layer count, the
per-layer config keys (such as ``layer_types``) and the attributes that carry each
layer's own index (``layer_idx``, which the KV cache uses).

This module is itself a plugin: it registers the built-in adapters through the
``register_architectures`` hook, the same way a third-party package would add one::

    from compressor import hookimpl
    from compressor.models.adapters import ArchitectureAdapter

    @hookimpl
    def register_architectures(register):
        register(ArchitectureAdapter(name="my-family", model_types=("my_type",),
                                     layers_path="model.layers", norm_path="model.norm",
                                     embedding_path="model.embed_tokens"))
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from torch import nn

from compressor.errors import CompressorError
from compressor.hookspecs import hookimpl

log = logging.getLogger(__name__)


def _resolve(obj: Any, dotted: str) -> Any:
    """Follow a dotted attribute path such as ``model.decoder.layers``."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _is_derived(config: Any, key: str) -> bool:
    """Return whether ``config.key`` is a read-only property computed from other fields."""
    return isinstance(getattr(type(config), key, None), property)


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Table entry locating one causal-LM family's decoder layers, norm, embedding and lm_head.

    ``slices_layers_by_config`` is True when the family's forward loops over
    ``self.layers[: config.num_hidden_layers]``, and False when it loops over the whole
    ``ModuleList``. Either way, a shorter ``ModuleList`` runs only the layers it contains,
    so an engine can skip layers by swapping the list (see :meth:`layer_subset`).
    ``per_layer_keys`` are config entries with one value per layer. Read-only
    properties among them (Mamba derives ``layer_types``) are recomputed by the
    config and left alone.
    """

    name: str
    model_types: tuple[str, ...]
    layers_path: str
    norm_path: str | None
    embedding_path: str
    lm_head_path: str = "lm_head"
    num_layers_key: str = "num_hidden_layers"
    per_layer_keys: tuple[str, ...] = ()
    layer_index_attrs: tuple[str, ...] = ("layer_idx",)
    slices_layers_by_config: bool = True
    description: str = ""
    plugin: str = field(default="", compare=False)

    # ------------------------------------------------------------------ lookup

    def handles(self, model: Any) -> bool:
        """Return whether this adapter is meant for ``model`` (by ``config.model_type``)."""
        return getattr(getattr(model, "config", None), "model_type", None) in self.model_types

    def get_layers(self, model: Any) -> nn.ModuleList:
        """Return the decoder layer ``ModuleList`` of ``model``."""
        try:
            layers = _resolve(model, self.layers_path)
        except AttributeError:
            raise CompressorError(
                f"{type(model).__name__} has no attribute path {self.layers_path!r}, where the "
                f"{self.name!r} adapter expects the decoder layers; load the model with "
                "AutoModelForCausalLM, or register an adapter that matches this class"
            ) from None
        if not isinstance(layers, nn.ModuleList):
            raise CompressorError(
                f"{type(model).__name__}.{self.layers_path} is a {type(layers).__name__}, not a "
                f"torch.nn.ModuleList; the {self.name!r} adapter does not fit this model"
            )
        return layers

    def set_layers(self, model: Any, module_list: nn.ModuleList) -> None:
        """Replace the decoder layer ``ModuleList`` of ``model`` by ``module_list``.

        Only the module changes: the config and each layer's index stay as they were
        (``compressor.models.removal`` fixes those for a permanent removal).
        """
        if not isinstance(module_list, nn.ModuleList):
            module_list = nn.ModuleList(module_list)
        parent_path, _, attr = self.layers_path.rpartition(".")
        parent = _resolve(model, parent_path) if parent_path else model
        setattr(parent, attr, module_list)

    def get_norm(self, model: Any) -> nn.Module | None:
        return _resolve(model, self.norm_path) if self.norm_path else None

    def get_embedding(self, model: Any) -> nn.Module:
        return _resolve(model, self.embedding_path)

    def get_lm_head(self, model: Any) -> nn.Module:
        return _resolve(model, self.lm_head_path)

    # ------------------------------------------------------------------ config

    def config_num_layers(self, config: Any) -> int:
        return int(getattr(config, self.num_layers_key))

    def per_layer_values(self, config: Any) -> dict[str, Any]:
        """Return the stored (not derived) per-layer config entries that are set."""
        values = {}
        for key in self.per_layer_keys:
            if _is_derived(config, key):
                continue
            value = getattr(config, key, None)
            if value is not None:
                values[key] = value
        return values

    def renumber_layers(self, layers: Sequence[nn.Module]) -> None:
        """Set every ``layer_index_attrs`` attribute inside layer ``i`` to ``i``.

        The KV cache stores one entry per layer position, so a layer keeps working after
        its neighbours are removed only if its attention uses its new position.
        """
        for position, layer in enumerate(layers):
            for module in layer.modules():
                for attr in self.layer_index_attrs:
                    if isinstance(getattr(module, attr, None), int):
                        setattr(module, attr, position)

    @contextlib.contextmanager
    def layer_subset(self, model: Any, keep: Sequence[int]) -> Iterator[nn.ModuleList]:
        """Run ``model`` with only the layers at positions ``keep`` inside the block.

        The ``ModuleList``, the layer count and the per-layer config entries are swapped
        for the subset and restored on exit. Layer indices are left alone, so use it
        with ``use_cache=False``: it is meant for scoring masks, not for generation.
        """
        config = model.config
        full = self.get_layers(model)
        saved_count = self.config_num_layers(config)
        saved_values = self.per_layer_values(config)

        subset = nn.ModuleList([full[i] for i in keep])
        self.set_layers(model, subset)
        setattr(config, self.num_layers_key, len(subset))
        for key, value in saved_values.items():
            setattr(config, key, slice_per_layer(value, keep))
        try:
            yield subset
        finally:
            self.set_layers(model, full)
            setattr(config, self.num_layers_key, saved_count)
            for key, value in saved_values.items():
                setattr(config, key, value)


def slice_per_layer(value: Any, keep: Sequence[int]) -> Any:
    """Keep the entries of a per-layer list, or of a dict keyed by layer index, at ``keep``.

    A dict is renumbered: the entry of old layer ``keep[j]`` becomes key ``j``, with the
    key type (int or str) it had.
    """
    if isinstance(value, (list, tuple)):
        return type(value)(value[i] for i in keep)
    if isinstance(value, dict):
        out = {}
        for new, old in enumerate(keep):
            if old in value:
                out[new] = value[old]
            elif str(old) in value:
                out[str(new)] = value[str(old)]
        return out
    raise CompressorError(
        f"cannot slice a per-layer config value of type {type(value).__name__}; "
        "only lists and dicts keyed by layer index are supported"
    )


BUILTIN_ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter(
        name="llama", model_types=("llama",), layers_path="model.layers",
        norm_path="model.norm", embedding_path="model.embed_tokens",
        description="Llama and Llama-shaped models such as SmolLM2",
    ),
    ArchitectureAdapter(
        name="mistral", model_types=("mistral",), layers_path="model.layers",
        norm_path="model.norm", embedding_path="model.embed_tokens",
    ),
    ArchitectureAdapter(
        name="qwen2", model_types=("qwen2",), layers_path="model.layers",
        norm_path="model.norm", embedding_path="model.embed_tokens",
        per_layer_keys=("layer_types",),
        description="layer_types marks sliding-window and full-attention layers",
    ),
    ArchitectureAdapter(
        name="gemma3", model_types=("gemma3_text",), layers_path="model.layers",
        norm_path="model.norm", embedding_path="model.embed_tokens",
        per_layer_keys=("layer_types",),
        description="text-only Gemma 3; layer_types picks local or global attention and RoPE",
    ),
    ArchitectureAdapter(
        name="gpt2", model_types=("gpt2",), layers_path="transformer.h",
        norm_path="transformer.ln_f", embedding_path="transformer.wte",
        num_layers_key="n_layer", slices_layers_by_config=False,
        description="lm_head is tied to transformer.wte",
    ),
    ArchitectureAdapter(
        name="opt", model_types=("opt",), layers_path="model.decoder.layers",
        norm_path="model.decoder.final_layer_norm", embedding_path="model.decoder.embed_tokens",
        slices_layers_by_config=False,
    ),
    ArchitectureAdapter(
        name="gpt_neox", model_types=("gpt_neox",), layers_path="gpt_neox.layers",
        norm_path="gpt_neox.final_layer_norm", embedding_path="gpt_neox.embed_in",
        lm_head_path="embed_out", slices_layers_by_config=False,
    ),
    ArchitectureAdapter(
        name="phi3", model_types=("phi3",), layers_path="model.layers",
        norm_path="model.norm", embedding_path="model.embed_tokens",
    ),
    ArchitectureAdapter(
        name="mamba", model_types=("mamba",), layers_path="backbone.layers",
        norm_path="backbone.norm_f", embedding_path="backbone.embeddings",
        per_layer_keys=("layer_types",), slices_layers_by_config=False,
        description="state-space blocks; layer_types is derived from num_hidden_layers",
    ),
)


@hookimpl
def register_architectures(register):
    for adapter in BUILTIN_ADAPTERS:
        register(adapter)


def find_adapter(model: Any, registry=None) -> ArchitectureAdapter:
    """Return the registered adapter for ``model``'s ``config.model_type``.

    When several plugins register one model type, the adapter registered last wins,
    so a plugin can replace a built-in entry.
    """
    if registry is None:
        from compressor.plugins import get_registry

        registry = get_registry()

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in reversed(registry.architectures):
        if adapter.handles(model):
            adapter.get_layers(model)  # fail now, with the path, if the class does not fit
            return adapter

    known = sorted({t for a in registry.architectures for t in a.model_types})
    raise CompressorError(
        f"no architecture adapter for {type(model).__name__} (config.model_type={model_type!r}); "
        f"supported model types: {', '.join(known) or 'none (is the `architectures` plugin loaded?)'}. "
        "To add one, write a plugin whose `register_architectures(register)` hook calls "
        "register(ArchitectureAdapter(...)) with the path of its decoder layers, and install it "
        "under the `compressor` entry-point group"
    )


def get_layers(model: Any, registry=None) -> nn.ModuleList:
    """Return ``model``'s decoder layer ``ModuleList``, found through its adapter."""
    return find_adapter(model, registry).get_layers(model)


def set_layers(model: Any, module_list: nn.ModuleList, registry=None) -> None:
    """Replace ``model``'s decoder layer ``ModuleList`` (the config is not changed)."""
    find_adapter(model, registry).set_layers(model, module_list)
