"""Zero- and few-shot accuracy through lm-eval, on the model in memory.

The model is wrapped in lm-eval's ``HFLM`` as it is, so a pruned or quantized model is
scored without a save and reload. Three kinds of task names are accepted:

- ``sotu_cloze`` and ``brown_cloze`` (the default): derived next-sentence cloze tasks built
  from the built-in corpora (see :mod:`compressor_eval.tasks.cloze`). They run offline and
  are not published benchmarks. How they were built is stored with the metrics.
- ``social_iqa``, ``physical_intuition`` and ``bigbench:<task>``: BIG-bench multiple-choice
  tasks converted from ``<task>/task.json``. Their data comes from ``bigbench_dir`` (the
  ``bigbench/benchmark_tasks`` folder of a BIG-bench checkout) or a pulled ``bigbench``
  asset. The asset's release, bigbench 1.0.0, is not on PyPI (only 0.0.1, without task
  files), so in practice they need a checkout.
- any other name is passed to lm-eval as one of its own tasks, which usually needs the
  Hugging Face hub to download its data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from compressor.components import StageResult, StrictConfig
from compressor.errors import CompressorError
from compressor_eval.tasks import BIGBENCH_TASKS, build_bigbench_task
from compressor_eval.tasks.cloze import CLOZE_TASKS, build_cloze_task

log = logging.getLogger(__name__)

BIGBENCH_PREFIX = "bigbench:"
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
DEFAULT_TASKS = ("sotu_cloze", "brown_cloze")


class LmEvalConfig(StrictConfig):
    """Config of the ``lm_eval`` evaluator."""

    tasks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASKS),
        min_length=1,
        description=f"Tasks to run. {', '.join(CLOZE_TASKS)} are derived next-sentence cloze tasks built offline "
        f"from the built-in corpora (4 choices, chance 0.25). {', '.join(BIGBENCH_TASKS)} and `bigbench:<task>` are "
        "BIG-bench multiple-choice tasks, which need `bigbench_dir`. Any other name is an lm-eval task (its data "
        "usually needs the Hugging Face hub).",
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
                raise ValueError(f"task name {name!r} is empty; give a task such as sotu_cloze or bigbench:winowhy")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks {tasks} list a task twice; list each task once")
        return tasks


@dataclass(frozen=True)
class TaskRef:
    """A task under its config name (``key``, the metric prefix) and its lm-eval name.

    ``cloze_info`` describes how a derived cloze task was built, once it is.
    """

    key: str
    lm_eval_name: str
    bigbench_task: str | None = None
    cloze_task: str | None = None
    cloze_info: dict[str, Any] | None = field(default=None, compare=False)


def resolve_tasks(names: list[str]) -> list[TaskRef]:
    refs = []
    for name in names:
        if name.startswith(BIGBENCH_PREFIX):
            task = name[len(BIGBENCH_PREFIX):]
            refs.append(TaskRef(key=task.replace("/", "_"), lm_eval_name="", bigbench_task=task))
        elif name in CLOZE_TASKS:
            refs.append(TaskRef(key=name, lm_eval_name="", cloze_task=name))
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

        try:
            return Path(asset_path(BIGBENCH_PREFIX + bigbench_task))
        except CompressorError as exc:
            raise CompressorError(
                f"BIG-bench task {bigbench_task!r} needs a BIG-bench checkout: set bigbench_dir to its "
                "`bigbench/benchmark_tasks` folder (whose subfolders are task names holding task.json). "
                "The bigbench asset cannot provide it, because the release with task files, bigbench 1.0.0, "
                "is not on PyPI (only 0.0.1, without tasks). For offline accuracy without a checkout use "
                f"the tasks {', '.join(CLOZE_TASKS)}. Asset error: {exc}"
            ) from exc

    path = Path(bigbench_dir).expanduser() / bigbench_task / "task.json"
    if not path.is_file():
        raise CompressorError(
            f"BIG-bench task {bigbench_task!r} not found: {str(path)!r} does not exist; check bigbench_dir "
            "(the folder whose subfolders are task names) and the task name"
        )
    return path


def prepare_tasks(refs: list[TaskRef], task_dir: Path, bigbench_dir: str | None = None) -> list[TaskRef]:
    """Build the local lm-eval task of every BIG-bench and cloze reference; return the refs with lm-eval names."""
    prepared = []
    for ref in refs:
        if ref.cloze_task is not None:
            name, info = build_cloze_task(CLOZE_TASKS[ref.cloze_task], task_dir)
            prepared.append(replace(ref, lm_eval_name=name, cloze_info=info))
            continue
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
            f"check the spelling, use one of {', '.join([*CLOZE_TASKS, *BIGBENCH_TASKS])} or bigbench:<task>, or add the folder "
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
        if ref.cloze_info is not None:
            tasks[ref.key]["derived_task"] = ref.cloze_info
    return {"metrics": metrics, "tasks": tasks}


class LmEvalEvaluator:
    """Accuracy on lm-eval tasks, with the cloze and BIG-bench multiple-choice tasks built locally."""

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
