"""Saving a (pruned, quantized) model as an ordinary transformers folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from compressor.errors import CompressorError
from compressor.models.handle import ModelHandle

log = logging.getLogger(__name__)

EXPORT_RECORD = "compressor.json"


def _quant_method(model: Any) -> str | None:
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get("quant_method")
    return getattr(config, "quant_method", None)


def is_compressed_tensors(handle: ModelHandle) -> bool:
    """Return whether the model carries an llmcompressor (compressed-tensors) quantization."""
    method = _quant_method(handle.model)
    if method is not None:
        return str(getattr(method, "value", method)) == "compressed-tensors"
    return bool(handle.quantization) and handle.quantization.get("format", "compressed-tensors") == "compressed-tensors"


@contextmanager
def config_snapshot(model: Any) -> Iterator[Path]:
    """Point ``model.config._name_or_path`` at a folder with the model's current config.json.

    llmcompressor reads the config at ``_name_or_path`` twice: ``oneshot`` checks that
    the model is not already quantized, and its compressed ``save_pretrained`` rewrites
    config.json from it. Pointing at the source folder would fail for a model built in
    memory, and would undo layer removal, since that config still lists every layer.
    """
    original = getattr(model.config, "_name_or_path", "")
    with tempfile.TemporaryDirectory(prefix="compressor-config-") as folder:
        model.config.save_pretrained(folder)
        model.config._name_or_path = folder
        try:
            yield Path(folder)
        finally:
            model.config._name_or_path = original


def _save_weights(handle: ModelHandle, folder: Path) -> None:
    model = handle.model
    if is_compressed_tensors(handle):
        # NOTE: the unit tests of compressor.models do not quantize, so this branch runs
        # only with a model that llmcompressor has quantized.
        if not getattr(model.save_pretrained, "_overridden", False):
            from llmcompressor.transformers.compression.compressed_tensors_utils import modify_save_pretrained

            modify_save_pretrained(model)
        with config_snapshot(model):
            model.save_pretrained(str(folder), save_compressed=True)
        return

    if str(getattr(_quant_method(model), "value", _quant_method(model))) == "gguf":
        # A model straight from a GGUF file: its weights are already plain floats, but
        # transformers will not save it while the GGUF quantizer is attached.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.save_pretrained(str(folder))


def export_record(handle: ModelHandle) -> dict[str, Any]:
    return {
        "source": handle.source,
        "base_fingerprint": handle.base_fingerprint,
        "fingerprint": handle.fingerprint,
        "architecture": handle.adapter.name,
        "num_original_layers": handle.num_original_layers,
        "removed_layers": list(handle.removed_layers),
        "kept_original_layers": handle.kept_original_indices,
        "quantization": handle.quantization,
    }


def save_model(handle: ModelHandle, path: str | Path) -> Path:
    """Write ``handle``'s model, tokenizer and ``compressor.json`` to the folder ``path``.

    The folder is written beside ``path`` under a temporary name and renamed at the end,
    so ``path`` never contains a half-written model. An existing folder at ``path`` is
    replaced. Quantized llmcompressor models are saved compressed. Returns ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CompressorError(f"cannot save the model to {str(path)!r}: a file with that name exists")
    path.parent.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        folder = work / "model"
        folder.mkdir()
        _save_weights(handle, folder)
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(str(folder))
        (folder / EXPORT_RECORD).write_text(json.dumps(export_record(handle), indent=1))

        old = work / "previous"
        if path.exists():
            os.replace(path, old)
        os.replace(folder, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("saved %s (%d layers) to %s", handle.source, handle.num_layers, path)
    return path
