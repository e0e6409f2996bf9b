"""ModelHandle: a loaded model with its tokenizer, architecture adapter and identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from compressor.models.adapters import ArchitectureAdapter


@dataclass
class ModelHandle:
    """The model, tokenizer and model identity that stages pass to each other.

    ``base_fingerprint`` identifies the weights as loaded (source, revision, dtype).
    ``removed_layers`` are indices in the original numbering, in removal order, and
    ``quantization`` describes the quantization applied, if any. Both are part of
    :attr:`fingerprint`, so cached results never mix two different models.
    """

    model: Any
    tokenizer: Any
    adapter: "ArchitectureAdapter"
    source: str
    base_fingerprint: str
    num_original_layers: int
    dtype: "torch.dtype"
    device: str = "cpu"
    removed_layers: list[int] = field(default_factory=list)
    quantization: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        payload = json.dumps(
            {"base": self.base_fingerprint, "removed": sorted(self.removed_layers), "quant": self.quantization},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def layers(self):
        return self.adapter.get_layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def kept_original_indices(self) -> list[int]:
        """Original index of each layer the model still has, in order."""
        removed = set(self.removed_layers)
        return [i for i in range(self.num_original_layers) if i not in removed]
