"""Registration of the quantizers gptq, gptqmodel and rtn, and the stages that run them.

Each stage saves its quantized model to ``STAGE_DIR/model`` and hands the next stage the
model reloaded from that folder, so the model that later stages measure is the one on
disk. ``restore`` reloads the same folder when a pipeline resumes, without quantizing again.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from compressor.components import Component, StageResult
from compressor.errors import CompressorError
from compressor.hookspecs import hookimpl

from . import gptqmodel_backend, llmcompressor_backend
from .common import (
    calibration_windows,
    check_restorable,
    check_weight_config,
    reload_quantized,
    size_metrics,
    unique_parameter_count,
)
from .config import GPTQConfig, RTNConfig, WeightQuantConfig

log = logging.getLogger(__name__)


@contextmanager
def _spinner(description: str) -> Iterator[None]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as progress:
        progress.add_task(description, total=None)
        yield


def _quant_method(model) -> str | None:
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    return str(getattr(method, "value", method))


def _check_not_quantized(handle) -> None:
    # A model read from a GGUF file keeps a "gguf" quantization config, but its weights are
    # already dequantized floats, so it counts as unquantized.
    method = _quant_method(handle.model)
    if handle.quantization or method not in (None, "gguf"):
        method = (handle.quantization or {}).get("method", method)
        raise CompressorError(
            f"model {handle.source!r} is already quantized ({method}); a recipe may contain only one "
            "quantizer stage, so remove the second one"
        )


def _scheme_label(config: WeightQuantConfig) -> str:
    group = f"group {config.group_size}" if config.group_size is not None else "per channel"
    return f"W{config.bits} {group}, {'symmetric' if config.symmetric else 'asymmetric'}"


class _QuantizerStage:
    """The steps every quantizer stage shares: check, quantize, save, reload, report."""

    method = ""
    backend = ""
    format = ""
    supported_bits: tuple[int, ...] = ()

    def __init__(self, config: WeightQuantConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        started = time.perf_counter()
        _check_not_quantized(handle)
        check_weight_config(handle.model, self.config, self.method, self.supported_bits)
        params = unique_parameter_count(handle.model)
        folder = Path(ctx.stage_dir) / "model"

        details = self._quantize(handle, ctx, folder)

        handle.model = self._load(folder, handle)
        handle.quantization = {
            "method": self.method, "backend": self.backend, "format": self.format,
            "bits": self.config.bits, "group_size": self.config.group_size,
            "symmetric": self.config.symmetric, "ignore": list(self.config.ignore), **details,
        }
        metrics = size_metrics(folder, params, time.perf_counter() - started)
        log.info("%s: saved %s to %s (%.1f MB, %.2f bits per parameter)", self.method,
                 _scheme_label(self.config), folder, metrics["size_disk_mb"], metrics["bits_per_param"])
        data = {
            "model_dir": str(folder), "num_layers": handle.num_layers, "bits": self.config.bits,
            "group_size": self.config.group_size, "quantization": handle.quantization,
        }
        return StageResult(handle, data=data, metrics=metrics, artifacts={"model": str(folder)})

    def restore(self, handle, data: dict[str, Any], ctx):
        folder = check_restorable(handle, data)
        handle.model = self._load(folder, handle)
        handle.quantization = data.get("quantization")
        log.info("%s: reloaded the quantized model from %s", self.method, folder)
        return handle

    def _quantize(self, handle, ctx, folder: Path) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, folder: Path, handle):
        return reload_quantized(folder, handle)


class GPTQStage(_QuantizerStage):
    method = "gptq"
    backend = "llmcompressor"
    format = "compressed-tensors"
    supported_bits = llmcompressor_backend.SUPPORTED_BITS

    def _quantize(self, handle, ctx, folder: Path) -> dict[str, Any]:
        input_ids, fingerprint = calibration_windows(self.config, handle, ctx)
        n_samples, seq_len = input_ids.shape
        description = f"GPTQ {_scheme_label(self.config)} on {n_samples} × {seq_len} calibration tokens"
        log.info("%s", description)
        try:
            with _spinner(description):
                model, dampening = llmcompressor_backend.quantize_gptq(
                    handle.model, handle.tokenizer, input_ids, self.config
                )
        except llmcompressor_backend.HessianFailure as failure:
            raise llmcompressor_backend.hessian_error(failure, self.config, n_samples, seq_len) from None
        llmcompressor_backend.save_compressed(model, handle.tokenizer, folder)
        return {
            "act_order": self.config.act_order, "dampening_frac": dampening,
            "calibration": fingerprint, "n_samples": int(n_samples), "seq_len": int(seq_len),
        }


class RTNStage(_QuantizerStage):
    method = "rtn"
    backend = "llmcompressor"
    format = "compressed-tensors"
    supported_bits = llmcompressor_backend.SUPPORTED_BITS

    def _quantize(self, handle, ctx, folder: Path) -> dict[str, Any]:
        with _spinner(f"round-to-nearest {_scheme_label(self.config)}"):
            model = llmcompressor_backend.quantize_rtn(handle.model, self.config)
        llmcompressor_backend.save_compressed(model, handle.tokenizer, folder)
        return {}


class GPTQModelStage(_QuantizerStage):
    method = "gptqmodel"
    backend = "gptqmodel"
    format = "gptq"
    supported_bits = gptqmodel_backend.SUPPORTED_BITS

    def run(self, handle, ctx) -> StageResult:
        gptqmodel_backend.require_gptqmodel()  # before any calibration work
        gptqmodel_backend.dynamic_excludes(self.config.ignore)
        return super().run(handle, ctx)

    def _quantize(self, handle, ctx, folder: Path) -> dict[str, Any]:
        input_ids, fingerprint = calibration_windows(self.config, handle, ctx)
        n_samples, seq_len = input_ids.shape
        with _spinner(f"GPTQModel {_scheme_label(self.config)} on {n_samples} × {seq_len} calibration tokens"):
            gptqmodel_backend.quantize_gptqmodel(handle, input_ids, self.config, folder)
        return {
            "act_order": self.config.act_order, "dampening_frac": self.config.dampening_frac,
            "calibration": fingerprint, "n_samples": int(n_samples), "seq_len": int(seq_len),
        }

    def _load(self, folder: Path, handle):
        return gptqmodel_backend.load_gptqmodel(folder, handle)


@hookimpl
def register_quantizers(register):
    register(Component(
        name="gptq", kind="quantizer", config=GPTQConfig, factory=GPTQStage,
        description="GPTQ weight quantization through llmcompressor, saved as compressed-tensors "
        "(reloads with transformers on CPU)",
    ))
    register(Component(
        name="gptqmodel", kind="quantizer", config=GPTQConfig, factory=GPTQModelStage,
        description="GPTQ through GPTQModel (optional extra compressor[gptqmodel]), saved in the classic "
        "GPTQ checkpoint format",
    ))
    register(Component(
        name="rtn", kind="quantizer", config=RTNConfig, factory=RTNStage,
        description="Round-to-nearest weight quantization without calibration, in the same format as gptq",
    ))
