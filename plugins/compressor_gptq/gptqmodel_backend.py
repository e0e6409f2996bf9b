"""GPTQ through GPTQModel, saved in the classic GPTQ checkpoint format (qweight, qzeros, scales, g_idx).

GPTQModel is an optional extra (``compressor[gptqmodel]``, version 7.6.0). It pins
``numpy==2.2.6``, so it usually lives in its own virtual environment.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from compressor.errors import CompressorError

from .config import GPTQConfig

if TYPE_CHECKING:
    from compressor.models.handle import ModelHandle

log = logging.getLogger(__name__)

SUPPORTED_BITS = (2, 3, 4, 8)
GPTQMODEL_VERSION = "7.6.0"
# GPTQModel's worker pool fails on a 2-core machine unless the worker count is set.
CPU_WORKERS_ENV = "GPTQMODEL_CPU_WORKERS"
# Additive step of GPTQModel's own dampening recovery. That recovery stops below 1.0, not at
# max_dampening_frac, which only decides whether it is enabled.
DAMP_AUTO_INCREMENT = 0.0025


def require_gptqmodel() -> None:
    """Raise a CompressorError with install instructions when GPTQModel cannot be imported."""
    if importlib.util.find_spec("gptqmodel") is None:
        raise CompressorError(
            "the gptqmodel quantizer needs the GPTQModel package, which is not installed; install it "
            f"with `pip install 'compressor[gptqmodel]'` (gptqmodel=={GPTQMODEL_VERSION}, which pins "
            "numpy==2.2.6, so use a separate virtual environment), or use the `gptq` quantizer, which "
            "runs the same algorithm through llmcompressor"
        )


def dynamic_excludes(ignore: list[str]) -> dict[str, dict]:
    """Translate ``ignore`` entries into GPTQModel ``dynamic`` rules that skip those modules.

    GPTQModel only quantizes the Linear layers inside the decoder layers, so ``lm_head``
    needs no rule. A name becomes an exact-match pattern, and ``re:REGEX`` passes its
    pattern through.
    """
    rules: dict[str, dict] = {}
    for entry in ignore:
        if entry == "lm_head":
            continue
        if entry.startswith("re:"):
            rules[f"-:{entry[3:]}"] = {}
        elif "." in entry:
            rules[f"-:^{re.escape(entry)}$"] = {}
        else:
            raise CompressorError(
                f"ignore entry {entry!r} looks like a class name, which the gptqmodel quantizer cannot "
                "match; give full module names (model.layers.0.mlp.down_proj) or `re:REGEX` patterns"
            )
    return rules


def quantize_gptqmodel(handle: "ModelHandle", input_ids: torch.Tensor, config: GPTQConfig, folder: Path) -> None:
    """Quantize ``handle``'s model with GPTQModel on ``input_ids`` [n, seq_len] and save it to ``folder``.

    GPTQModel loads its model from a folder, so the current model (pruned or not) is
    first saved to a temporary folder next to ``folder``.
    """
    require_gptqmodel()
    os.environ.setdefault(CPU_WORKERS_ENV, "2")
    from gptqmodel import GPTQModel, QuantizeConfig

    from compressor.models import save_model

    quantize_config = QuantizeConfig(
        bits=config.bits,
        group_size=config.group_size if config.group_size is not None else -1,
        desc_act=config.act_order is not None,
        sym=config.symmetric,
        damp_percent=config.dampening_frac,
        damp_auto_increment=DAMP_AUTO_INCREMENT if config.max_dampening_frac > config.dampening_frac else 0.0,
        dynamic=dynamic_excludes(config.ignore) or None,
    )
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in input_ids]

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="float-", dir=folder.parent) as float_folder:
        save_model(handle, float_folder)
        model = GPTQModel.load(float_folder, quantize_config, device="cpu")
        # NOTE: this call was not run here, because GPTQModel is not installed in the test environment.
        # Its own error for a Hessian that stays singular is not mapped to a CompressorError.
        model.quantize(calibration, batch_size=1, tokenizer=handle.tokenizer)
        model.save(str(folder))
    if handle.tokenizer is not None:
        handle.tokenizer.save_pretrained(str(folder))


def load_gptqmodel(folder: Path, handle: "ModelHandle") -> Any:
    """Load a GPTQ checkpoint with GPTQModel's torch kernels; return the transformers model inside."""
    require_gptqmodel()
    os.environ.setdefault(CPU_WORKERS_ENV, "2")
    from gptqmodel import GPTQModel

    wrapper = GPTQModel.load(str(folder), device=handle.device, backend="torch")
    model = wrapper.model
    model.eval()
    return model
