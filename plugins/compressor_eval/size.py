"""Model size (parameters, disk, memory) and the speed of a fixed greedy generation.

Sizes are in MB of 10^6 bytes. ``bits_per_param`` is the weight files' size on disk in
bits divided by ``params``, so it reflects quantization of the saved model: 32 plus a
small header for float32, 16 for bfloat16, less for quantized weights (layers that a
quantizer skips, such as the lm_head, keep their full width).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from pydantic import Field

from compressor.components import StageResult, StrictConfig
from compressor.errors import CompressorError

log = logging.getLogger(__name__)

MB = 1_000_000
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Parameters that quantizers add next to each weight. They are counted apart from
# ``params`` so that quantizing a model does not change its parameter count.
# NOTE: a model reloaded in packed form (int32 words holding several 4-bit weights)
# reports the packed element count, not the original parameter count.
QUANT_AUX_SUFFIXES = ("_scale", "_zero_point", "_g_idx", "_global_scale")


class SizeConfig(StrictConfig):
    """Config of the ``size`` evaluator."""

    disk: bool = Field(True, description="Measure the size on disk (saves the model to a temporary folder if needed).")
    model_dir: str | None = Field(
        None, description="Folder of the saved model to measure instead of saving one; defaults to the "
        "quantizer's saved folder when the handle records one."
    )
    latency: bool = Field(True, description="Time a fixed greedy generation.")
    prompt_len: int = Field(32, ge=1, description="Prompt length in tokens.")
    new_tokens: int = Field(32, ge=1, description="Tokens generated per run (end-of-sequence is suppressed).")
    warmup: int = Field(1, ge=0, description="Untimed runs before the timed ones.")
    repeats: int = Field(3, ge=1, description="Timed runs; the median is reported.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads during timing; defaults to the current setting."
    )
    seed: int = Field(0, description="Seed of the prompt's token ids.")


def _unique_tensors(tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield each tensor once, even when several names share its storage (tied weights)."""
    seen: set[tuple[str, int, int]] = set()
    for name, tensor in tensors:
        if tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr(), storage.nbytes())
        if key in seen:
            continue
        seen.add(key)
        yield name, tensor


def count_parameters(model: Any) -> tuple[int, int]:
    """Return (parameters, quantization auxiliary parameters), tied weights counted once."""
    params = 0
    aux = 0
    for name, tensor in _unique_tensors(model.named_parameters(remove_duplicate=False)):
        if name.endswith(QUANT_AUX_SUFFIXES):
            aux += tensor.numel()
        else:
            params += tensor.numel()
    return params, aux


def memory_bytes(model: Any) -> int:
    """Return the bytes of all parameters and buffers, each shared storage counted once."""
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return sum(storage_bytes(tensor) for _, tensor in _unique_tensors(iter(tensors)))


def storage_bytes(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def folder_weight_bytes(folder: Path) -> tuple[int, dict[str, int]]:
    """Return (bytes of the weight files in ``folder``, bytes per file name)."""
    files = {p.name: p.stat().st_size for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)}
    if not files:
        raise CompressorError(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) found in {str(folder)!r}; point model_dir at a saved model folder"
        )
    return sum(files.values()), files


def saved_folder(handle: Any, config: SizeConfig) -> Path | None:
    """Return a saved model folder that already represents ``handle``, if one is known."""
    if config.model_dir:
        folder = Path(config.model_dir)
        if not folder.is_dir():
            raise CompressorError(f"model_dir {config.model_dir!r} is not a folder; give the folder of a saved model")
        return folder
    for record in (handle.quantization or {}, handle.info or {}):
        value = record.get("saved_dir") if isinstance(record, dict) else None
        if value and Path(value).is_dir():
            return Path(value)
    return None


def measure_disk(handle: Any, config: SizeConfig) -> dict[str, Any]:
    folder = saved_folder(handle, config)
    if folder is not None:
        total, files = folder_weight_bytes(folder)
        return {"disk_bytes": total, "disk_files": files, "disk_folder": str(folder)}

    from compressor.models import save_model

    with tempfile.TemporaryDirectory(prefix="compressor-size-") as tmp:
        target = Path(tmp) / "model"
        save_model(handle, target)
        total, files = folder_weight_bytes(target)
    return {"disk_bytes": total, "disk_files": files, "disk_folder": None}


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def measure_generation(model: Any, tokenizer: Any, config: SizeConfig) -> dict[str, Any]:
    """Time greedy generation of ``new_tokens`` tokens after a ``prompt_len``-token prompt.

    The prompt is random token ids from a seeded generator. ``min_new_tokens`` keeps an
    early end-of-sequence from shortening a run, so every run does the same work.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    prompt = torch.randint(0, vocab, (1, config.prompt_len), generator=generator).to(device)
    attention_mask = torch.ones_like(prompt)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate() -> float:
        started = time.perf_counter()
        output = model.generate(
            input_ids=prompt, attention_mask=attention_mask, max_new_tokens=config.new_tokens,
            min_new_tokens=config.new_tokens, do_sample=False, pad_token_id=pad_id,
        )
        seconds = time.perf_counter() - started
        if output.shape[1] != config.prompt_len + config.new_tokens:
            raise CompressorError(
                f"generation produced {output.shape[1] - config.prompt_len} new tokens instead of {config.new_tokens}; "
                "the model's generation config may cap the length (check max_length)"
            )
        return seconds

    with torch_threads(config.threads) as threads:
        for _ in range(config.warmup):
            generate()
        times = [generate() for _ in range(config.repeats)]

    median = statistics.median(times)
    return {
        "latency_ms": 1000.0 * median,
        "tokens_per_s": config.new_tokens / median,
        "ms_per_token": 1000.0 * median / config.new_tokens,
        "latency_runs_ms": [1000.0 * t for t in times],
        "threads": threads,
        "prompt_len": config.prompt_len,
        "new_tokens": config.new_tokens,
        "warmup": config.warmup,
        "repeats": config.repeats,
    }


class SizeEvaluator:
    """Parameter count, size on disk and in memory, and generation speed."""

    def __init__(self, config: SizeConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        model = handle.model
        params, aux = count_parameters(model)
        memory = memory_bytes(model)
        metrics: dict[str, float] = {"params": float(params), "size_memory_mb": memory / MB}
        data: dict[str, Any] = {
            "params": params,
            "quant_aux_params": aux,
            "memory_bytes": memory,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(handle.device),
            "num_layers": handle.num_layers,
        }

        if self.config.disk:
            disk = measure_disk(handle, self.config)
            data.update(disk)
            metrics["size_disk_mb"] = disk["disk_bytes"] / MB
            metrics["bits_per_param"] = 8.0 * disk["disk_bytes"] / params

        if self.config.latency:
            speed = measure_generation(model, handle.tokenizer, self.config)
            data.update(speed)
            metrics["latency_ms"] = speed["latency_ms"]
            metrics["tokens_per_s"] = speed["tokens_per_s"]

        log.info("size: %d parameters, %.1f MB in memory%s", params, memory / MB,
                 f", {metrics['size_disk_mb']:.1f} MB on disk" if "size_disk_mb" in metrics else "")
        return StageResult(handle, data=data, metrics=metrics)
