"""Zero- and few-shot accuracy through lm-eval, on the model in memory.

The model is wrapped in lm-eval's ``HFLM`` as it is, so a pruned or quantized model is
scored without a save and reload. BIG-bench tasks are built as local lm-eval tasks from
the ``bigbench:<task>`` asset (see :mod:`compressor_eval.tasks`), so they run offline.
Any other name is passed to lm-eval as one of its own tasks, which usually needs the
Hugging Face hub to download its data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from compressor.components import StageResult, StrictConfig
from compressor.errors import CompressorError
from compressor_eval.tasks import BIGBENCH_TASKS, build_bigbench_task

log = logging.getLogger(__name__)

BIGBENCH_PREFIX = "bigbench:"
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


class LmEvalConfig(StrictConfig):
    """Config of the ``lm_eval`` evaluator."""

    tasks: list[str] = Field(
        default_factory=lambda: list(BIGBENCH_TASKS),
        min_length=1,
        description=f"Tasks to run. {', '.join(BIGBENCH_TASKS)} and `bigbench:<task>` are BIG-bench multiple-choice "
        "tasks built locally from the bigbench asset; any other name is an lm-eval task (its data usually "
        "needs the Hugging Face hub).",
    )
    limit: int | None = Field(
        None, ge=1, description="Examples per task, taken from the start of each task; all examples when unset."
    )
    num_fewshot: int = Field(0, ge=0, description="Few-shot examples put before each question.")
    batch_size: int = Field(8, ge=1, description="Requests per forward pass; scores do not depend on it.")
    seed: int | None = Field(None, description="Seed of lm-eval's random, numpy, torch and few-shot sampling; defaults to the recipe seed.")
    include_path: list[str] = Field(
        default_factory=list, description="Extra folders of lm-eval task YAMLs, searched before lm-eval's own tasks."
    )
    bigbench_dir: str | None = Field(
        None,
        description="Folder holding BIG-bench tasks as `<task>/task.json` (such as `bigbench/benchmark_tasks` of a "
        "BIG-bench checkout), used instead of the bigbench asset.",
    )

    @field_validator("tasks")
    @classmethod
    def _names_not_empty(cls, tasks: list[str]) -> list[str]:
        for name in tasks:
            if not name.strip() or name.strip() == BIGBENCH_PREFIX:
                raise ValueError(f"task name {name!r} is empty; give a task such as social_iqa or bigbench:winowhy")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks {tasks} list a task twice; list each task once")
        return tasks


@dataclass(frozen=True)
class TaskRef:
    """A task under its config name (``key``, the metric prefix) and its lm-eval name."""

    key: str
    lm_eval_name: str
    bigbench_task: str | None = None


def resolve_tasks(names: list[str]) -> list[TaskRef]:
    refs = []
    for name in names:
        if name.startswith(BIGBENCH_PREFIX):
            task = name[len(BIGBENCH_PREFIX):]
            refs.append(TaskRef(key=task.replace("/", "_"), lm_eval_name="", bigbench_task=task))
        elif name in BIGBENCH_TASKS:
            refs.append(TaskRef(key=name, lm_eval_name="", bigbench_task=name))
        else:
            refs.append(TaskRef(key=name, lm_eval_name=name))
    return refs


def local_task_dir() -> Path:
    from compressor.assets import cache_dir

    return cache_dir() / "lm_eval_tasks"


def find_task_json(bigbench_task: str, bigbench_dir: str | None) -> Path:
    """Return the task.json of a BIG-bench task, from ``bigbench_dir`` or else the bigbench asset."""
    if bigbench_dir is None:
        from compressor.assets import asset_path

        return Path(asset_path(BIGBENCH_PREFIX + bigbench_task))

    path = Path(bigbench_dir).expanduser() / bigbench_task / "task.json"
    if not path.is_file():
        raise CompressorError(
            f"BIG-bench task {bigbench_task!r} not found: {str(path)!r} does not exist; check bigbench_dir "
            "(the folder whose subfolders are task names) and the task name"
        )
    return path


def prepare_tasks(refs: list[TaskRef], task_dir: Path, bigbench_dir: str | None = None) -> list[TaskRef]:
    """Build the local lm-eval task of every BIG-bench reference; return the refs with lm-eval names."""
    prepared = []
    for ref in refs:
        if ref.bigbench_task is None:
            prepared.append(ref)
            continue
        task_json = find_task_json(ref.bigbench_task, bigbench_dir)
        name = build_bigbench_task(task_json, ref.bigbench_task, task_dir)
        prepared.append(TaskRef(key=ref.key, lm_eval_name=name, bigbench_task=ref.bigbench_task))
    return prepared


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    refs: list[TaskRef],
    include_path: list[str | Path],
    *,
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run lm-eval on ``model`` in memory and return ``{"metrics", "tasks"}``.

    ``metrics`` maps ``<key>.acc`` (and ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr``)
    to floats. A metric lm-eval does not report for a task is left out. ``tasks`` contains,
    per key, the lm-eval task name and the number of examples scored.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own tasks takes seconds, so it happens only when a task is not local.
    paths = [str(p) for p in include_path] or None
    manager = TaskManager(include_path=paths, include_defaults=False)
    missing = [ref.lm_eval_name for ref in refs if ref.lm_eval_name not in manager.all_tasks]
    if missing:
        manager = TaskManager(include_path=paths, include_defaults=True)
        missing = [ref.lm_eval_name for ref in refs if ref.lm_eval_name not in manager.all_tasks]
    if missing:
        raise CompressorError(
            f"lm-eval task(s) {missing} not found among lm-eval's tasks or in {[str(p) for p in include_path]}; "
            f"check the spelling, use one of {', '.join(BIGBENCH_TASKS)} or bigbench:<task>, or add the folder "
            "of your task YAML to include_path"
        )

    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=batch_size)
    output = lm_eval.simple_evaluate(
        model=wrapped,
        tasks=[ref.lm_eval_name for ref in refs],
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if output is None:
        raise CompressorError("lm-eval returned no results; this happens on a non-zero rank of a distributed run")
    return _collect(output, refs)


def _collect(output: dict[str, Any], refs: list[TaskRef]) -> dict[str, Any]:
    metrics: dict[str, float] = {}
    tasks: dict[str, Any] = {}
    for ref in refs:
        scores = output["results"].get(ref.lm_eval_name)
        if scores is None:
            raise CompressorError(
                f"lm-eval returned no scores for task {ref.lm_eval_name!r}; it may be a group of tasks, "
                "so name its subtasks instead"
            )
        for metric in METRICS:
            value = scores.get(f"{metric},none")
            if isinstance(value, (int, float)) and not math.isnan(value):
                metrics[f"{ref.key}.{metric}"] = float(value)
        samples = output.get("n-samples", {}).get(ref.lm_eval_name, {})
        tasks[ref.key] = {
            "lm_eval_task": ref.lm_eval_name,
            "bigbench_task": ref.bigbench_task,
            "n_examples": samples.get("effective"),
            "n_examples_total": samples.get("original"),
        }
    return {"metrics": metrics, "tasks": tasks}


class LmEvalEvaluator:
    """Accuracy on lm-eval tasks, with BIG-bench multiple-choice tasks built locally."""

    def __init__(self, config: LmEvalConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        config = self.config
        seed = config.seed if config.seed is not None else ctx.seed
        refs = resolve_tasks(config.tasks)
        task_dir = local_task_dir()
        refs = prepare_tasks(refs, task_dir, config.bigbench_dir)
        include = [Path(p) for p in config.include_path] + [task_dir]

        log.info("lm-eval on %s (limit %s, %d-shot)", ", ".join(config.tasks), config.limit, config.num_fewshot)
        result = run_lm_eval(
            handle.model, handle.tokenizer, refs, include, limit=config.limit, num_fewshot=config.num_fewshot,
            batch_size=config.batch_size, seed=seed, device=handle.device,
        )
        data = {
            "tasks": result["tasks"],
            "limit": config.limit,
            "num_fewshot": config.num_fewshot,
            "batch_size": config.batch_size,
            "seed": seed,
            "metrics": result["metrics"],
        }
        return StageResult(handle, data=data, metrics=result["metrics"])
