"""Pipeline: run a recipe's stages in order, record each in the store, resume finished ones."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.components import StageResult
from compressor.context import StageContext
from compressor.errors import CompressorError
from compressor.recipe import Recipe, dump_recipe
from compressor.store import Store, resolve_db_url

log = logging.getLogger(__name__)

RESOLVED_RECIPE_FILE = "recipe.resolved.yaml"


@dataclass
class StageOutcome:
    index: int
    label: str
    kind: str
    plugin: str
    status: str  # finished | resumed
    seconds: float
    data: dict[str, Any]
    metrics: dict[str, float]
    artifacts: dict[str, str]


@dataclass
class RunOutcome:
    run_name: str
    run_id: int
    output_dir: Path
    stages: list[StageOutcome] = field(default_factory=list)
    model_dir: Path | None = None
    seconds: float = 0.0
    report_files: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Return every metric of the run, keyed ``STAGE.METRIC``."""
        return {f"{s.label}.{name}": value for s in self.stages for name, value in s.metrics.items()}


def stage_hashes(recipe: Recipe) -> list[str]:
    """Hash each stage together with everything upstream of it (model, data, seed, earlier stages)."""
    upstream = json.dumps(
        {"model": recipe.model.model_dump(mode="json"), "data": recipe.data.model_dump(mode="json"), "seed": recipe.seed},
        sort_keys=True,
    )
    hashes = []
    for stage in recipe.stages:
        payload = json.dumps(
            {"up": upstream, "kind": stage.kind, "plugin": stage.plugin, "config": stage.config}, sort_keys=True
        )
        upstream = hashlib.sha256(payload.encode()).hexdigest()[:24]
        hashes.append(upstream)
    return hashes


class Pipeline:
    """Runs one recipe as one named run.

    A rerun with the same run name skips every leading stage whose record is finished
    and whose hash (config plus everything upstream) is unchanged, restoring its
    effect on the model from the stored result instead of recomputing it.
    """

    def __init__(
        self,
        recipe: Recipe,
        run_name: str | None = None,
        db_url: str | None = None,
        output_dir: str | Path | None = None,
        store: Store | None = None,
        registry=None,
        console=None,
    ):
        from compressor.plugins import get_registry

        self.recipe = recipe
        self.run_name = run_name or recipe.name
        self.store = store or Store(resolve_db_url(db_url, recipe.db))
        self.registry = registry or get_registry()
        self.output_dir = Path(output_dir or recipe.output_dir.replace("{run}", self.run_name))
        self.console = console

    def run(self) -> RunOutcome:
        from compressor.models import load_model, save_model

        started = time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / RESOLVED_RECIPE_FILE).write_text(dump_recipe(self.recipe))

        run = self.store.start_run(self.run_name, self.recipe.name, self.recipe.to_dict(), str(self.output_dir))
        outcome = RunOutcome(run_name=self.run_name, run_id=run.id, output_dir=self.output_dir)
        hashes = stage_hashes(self.recipe)
        records = {r.index: r for r in self.store.stage_records(run.id)}

        log.info("run %s: loading model %s", self.run_name, self.recipe.model.source)
        handle = load_model(self.recipe.model, registry=self.registry)

        previous: dict[str, dict[str, Any]] = {}
        kinds: dict[str, str] = {}
        resuming = True
        try:
            for index, stage in enumerate(self.recipe.stages):
                component = self.registry.get(stage.kind, stage.plugin)
                impl = component.build(component.config.model_validate(stage.config))
                stage_dir = self.output_dir / "stages" / f"{index:02d}-{stage.label}"
                ctx = StageContext(
                    recipe=self.recipe, stage=stage, index=index, run_name=self.run_name, run_id=run.id,
                    output_dir=self.output_dir, stage_dir=stage_dir, store=self.store, registry=self.registry,
                    previous=previous, previous_kinds=kinds,
                )

                record = records.get(index)
                resuming = resuming and record is not None and record.status == "finished" and record.config_hash == hashes[index]
                if resuming:
                    log.info("stage %d %s: finished in an earlier attempt, restoring its result", index, stage.label)
                    data = dict(record.result or {})
                    restore = getattr(impl, "restore", None)
                    if restore is not None:
                        handle = restore(handle, data, ctx)
                    result = StageResult(
                        handle=handle, data=data,
                        metrics={m.name: m.value for m in record.metrics},
                        artifacts={a.label: a.path for a in record.artifacts},
                    )
                    seconds, status = record.seconds or 0.0, "resumed"
                else:
                    result, seconds = self._run_stage(impl, handle, ctx, index, stage, hashes[index])
                    status = "finished"

                handle = result.handle
                previous[stage.label] = result.data
                kinds[stage.label] = stage.kind
                outcome.stages.append(
                    StageOutcome(index, stage.label, stage.kind, stage.plugin, status, seconds,
                                 result.data, result.metrics, result.artifacts)
                )

            if self.recipe.save_model and (handle.removed_layers or handle.quantization):
                outcome.model_dir = self.output_dir / "model"
                save_model(handle, outcome.model_dir)
                log.info("saved the compressed model to %s", outcome.model_dir)
        except BaseException as exc:
            self.store.finish_run(run.id, "failed", error=_describe(exc))
            raise

        outcome.seconds = time.perf_counter() - started
        self.store.finish_run(run.id, "finished")

        from compressor.report import write_run_report

        outcome.report_files = write_run_report(self.recipe, outcome, handle)
        return outcome

    def _run_stage(self, impl, handle, ctx: StageContext, index: int, stage, config_hash: str) -> tuple[StageResult, float]:
        import shutil

        if ctx.stage_dir.exists():
            shutil.rmtree(ctx.stage_dir)  # left by a failed attempt: never mix its files with this one
        ctx.stage_dir.mkdir(parents=True)
        stage_id = self.store.begin_stage(ctx.run_id, index, stage.label, stage.kind, stage.plugin, stage.config, config_hash)
        log.info("stage %d %s: %s %s", index, stage.label, stage.kind, stage.plugin)
        started = time.perf_counter()
        try:
            result = impl.run(handle, ctx)
        except BaseException as exc:
            self.store.fail_stage(stage_id, _describe(exc), time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        if stage.kind == "estimator":
            # Record which original layers the scores refer to, so a later pruner maps indices correctly.
            result.data.setdefault("layer_ids", handle.kept_original_indices)
        json.dumps(result.data)  # fail here, before the record is marked finished, if it is not serialisable
        self.store.finish_stage(stage_id, result.data, result.metrics, result.artifacts, seconds)
        log.info("stage %d %s: finished in %.1f s", index, stage.label, seconds)
        return result, seconds


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CompressorError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
