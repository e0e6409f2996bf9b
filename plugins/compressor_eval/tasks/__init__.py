"""Local lm-eval multiple-choice tasks: BIG-bench conversions and derived cloze tasks.

A BIG-bench example is ``{"input": str, "target_scores": {choice: score}}``. Each one
becomes a JSONL line ``{"query", "choices", "label"}`` in the compressor cache, and a
task YAML next to it (the shared settings of ``multiple_choice.yaml`` plus the task name
and the JSONL's absolute path) lets lm-eval load it offline with ``dataset_path: json``.
The derived cloze tasks of :mod:`compressor_eval.tasks.cloze` are written the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from compressor.errors import CompressorError

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("multiple_choice.yaml")

# BIG-bench tasks with a short name: SmolLM2-135M-Instruct was found above chance on them in
# zero-shot, length-normalised log-likelihood scoring (social_iqa 0.447 against 0.336,
# physical_intuition 0.321 against 0.255). Any other multiple-choice task is reachable as
# `bigbench:<task>`. All of them need a BIG-bench checkout (see compressor_eval.lmeval).
# NOTE: those scores came from an earlier scoring script, not from these task files, whose
# prompt format may differ.
BIGBENCH_TASKS = ("social_iqa", "physical_intuition")

# Prefixes for a task.json that sets none.
_INPUT_PREFIX = "Q: "
_OUTPUT_PREFIX = "\nA:"


def lm_eval_task_name(bigbench_task: str) -> str:
    """Return the lm-eval name of a BIG-bench task, e.g. ``bigbench_social_iqa_mc``.

    The ``_mc`` suffix keeps it apart from lm-eval's own BIG-bench and SIQA tasks.
    """
    return "bigbench_" + re.sub(r"[^A-Za-z0-9]+", "_", bigbench_task).strip("_") + "_mc"


def convert_examples(task: dict[str, Any], source: str = "task.json") -> list[dict[str, Any]]:
    """Turn BIG-bench examples into ``{"query", "choices", "label", "labels"}`` records.

    ``label`` is the first choice with the highest score. ``labels`` lists every choice
    with that score, for reference only: lm-eval scores against ``label``.
    """
    examples = task.get("examples") or []
    if not examples:
        raise CompressorError(f"{source} has no examples; give a BIG-bench task.json with an `examples` list")

    task_prefix = task.get("task_prefix", "")
    input_prefix = task.get("example_input_prefix", _INPUT_PREFIX)
    output_prefix = task.get("example_output_prefix", _OUTPUT_PREFIX).rstrip()

    records = []
    for number, example in enumerate(examples):
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or len(scores) < 2:
            raise CompressorError(
                f"example {number} of {source} has no `target_scores` with two or more choices; "
                "only multiple-choice BIG-bench tasks can be evaluated"
            )
        choices = list(scores)
        best = max(scores.values())
        labels = [i for i, choice in enumerate(choices) if scores[choice] == best]
        query = (task_prefix + input_prefix + str(example["input"]) + output_prefix).strip()
        records.append({"query": query, "choices": choices, "label": labels[0], "labels": labels})
    return records


def build_bigbench_task(task_json: Path, bigbench_task: str, out_dir: Path) -> str:
    """Write ``<name>.jsonl`` and ``<name>.yaml`` for one BIG-bench task into ``out_dir``.

    Returns the lm-eval task name. Files are rewritten only when the task.json changed.
    """
    name = lm_eval_task_name(bigbench_task)
    raw = Path(task_json).read_bytes()
    digest = hashlib.sha256(raw + TEMPLATE.read_bytes()).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = (out_dir / f"{name}.jsonl").resolve()
    yaml_path = out_dir / f"{name}.yaml"
    stamp = out_dir / f"{name}.sha256"
    if stamp.is_file() and stamp.read_text() == digest and data_path.is_file() and yaml_path.is_file():
        return name

    try:
        task = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CompressorError(f"{task_json} is not valid JSON ({exc}); pull the asset again with --force") from None
    records = convert_examples(task, source=str(task_json))
    write_task(name, records, out_dir)
    stamp.write_text(digest)
    log.info("built lm-eval task %s (%d examples) in %s", name, len(records), out_dir)
    return name


def write_task(name: str, records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``records`` as ``<name>.jsonl`` and a task YAML that loads it; return the YAML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = (out_dir / f"{name}.jsonl").resolve()
    with data_path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")

    config = yaml.safe_load(TEMPLATE.read_text())
    config = {"task": name, **config, "dataset_kwargs": {"data_files": {"test": str(data_path)}}}
    yaml_path = out_dir / f"{name}.yaml"
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return yaml_path
