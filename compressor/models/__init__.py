"""Models: loading, the per-architecture table of decoder layers, layer removal and export."""

from compressor.models.adapters import ArchitectureAdapter, find_adapter
from compressor.models.export import save_model
from compressor.models.handle import ModelHandle
from compressor.models.loading import load_model
from compressor.models.removal import remove_layers

__all__ = ["ArchitectureAdapter", "ModelHandle", "find_adapter", "load_model", "remove_layers", "save_model"]
