"""Registration of the shapley estimators: the surrogate-assisted method and a direct comparator.

``shapley`` follows Ding et al., "Pruning as a Cooperative Game: Surrogate-Assisted Layer
Contribution Estimation for LLMs" (ICLR 2026). It evaluates stratified masks on the real
model through the utility engine, fits a small MLP surrogate to their utilities, computes
per-layer semivalues on the surrogate and selects the layers to remove. ``preset: paper``
uses the published settings. ``preset: cpu`` (the default) is built for a budget no
larger than greedy SLEB's, measured on SmolLM2-135M (docs/benchmarks/quality_bar.md):

* log-utility −NLL instead of the perplexity ratio;
* strata around the target: L−1 (single removals) and L−k+2, L−k, L−k−2 kept layers;
* a total of :func:`sleb_cost` real evaluations, the count SLEB with protected first and
  last layers spends on the same target, full model included;
* a surrogate trained by optimizer steps with early stopping on held-out masks;
* ``selection: active``: 40 % of the budget samples the strata. Of the rest, 30 % goes to
  ``active_rounds`` (8) rounds that refit the surrogate on every mask so far and evaluate on
  the real model its best k-subsets and its best one-swap neighbours of the best subset so
  far. The other 70 % (``exchange_share``) goes to an exchange search on the real model: it
  measures, around the best subset, the loss of putting back each removed layer and of also
  removing each kept one, ranks the one-for-one swaps by those marginals and evaluates them
  in that order, accepting every swap that lowers the loss. The subset with the lowest real
  calibration NLL is removed. The per-layer values, their intervals and the quality check
  (``min_r2``, ``min_spearman``) come from the first surrogate, fitted on the stratified
  masks alone; below the thresholds the check is reported as an error, but the layers are
  still selected, because the choice rests on real evaluations.

Why: a surrogate fitted on about 150 masks ranks 6-layer removal sets too poorly for
one-shot selection or a single re-scoring of its best sets. On SmolLM2 the one-shot
default lost to SLEB by 39 % in held-out perplexity at 20 % removal, and the surrogate
rounds alone by 9 %; their sets were one or two swaps away from SLEB's. The exchange
search closes that gap (docs/benchmarks/quality_bar.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compressor.components import Component, StageResult
from compressor.engine import UtilityEngine, masks_to_array
from compressor.errors import CompressorError
from compressor.hookspecs import hookimpl
from compressor.scores import LayerScores, TargetConfig
from compressor_shapley import sampling, selection
from compressor_shapley.semivalues import semivalues
from compressor_shapley.surrogate import SurrogateConfig, fit_surrogate, format_quality

log = logging.getLogger(__name__)

Utility = Literal["ppl_ratio", "neg_nll"]

PAPER_SURROGATE = dict(
    hidden_factor=2, head="sigmoid", standardize=False, optimizer="sgd", lr=0.008, momentum=0.9,
    weight_decay=0.0, batch_size=300, epochs=300, lr_step_epochs=100, holdout=0.1, refit=False,
)


class ShapleyConfig(TargetConfig):
    """Settings of the surrogate-assisted Shapley estimator. Unset fields follow ``preset``."""

    preset: Literal["paper", "cpu"] = Field(
        "cpu", description="`paper`: the published settings. `cpu`: the improved default for small budgets."
    )
    utility: Utility | None = Field(
        None, description="`ppl_ratio` = PPL(full)/PPL(mask) (paper), or `neg_nll` = −NLL (cpu)."
    )
    strata: list[int] | None = Field(
        None, description="Kept-layer counts to sample masks from. Default: paper = 30,27,24,21,18 of 32 "
        "scaled to the depth; cpu = L−1, L−k+2, L−k and L−k−2 for a target of k layers.",
    )
    samples_per_stratum: int | None = Field(
        None, ge=1, description="Masks per stratum (paper: 1600). Overrides `budget_evaluations`."
    )
    budget_evaluations: int | None = Field(
        None, ge=2, description="Total masks to evaluate on the real model, including the re-scoring of "
        "candidates, the active rounds and the full model. Default (cpu): what SLEB with protected ends "
        "would spend, the sum of L−2−r for r < k, plus 1.",
    )
    budget_seconds: float | None = Field(
        None, gt=0, description="Stop sampling after this many seconds of evaluation (checked between chunks)."
    )
    antithetic: bool = Field(True, description="Sample masks in pairs from one permutation (see sampling).")
    surrogate: SurrogateConfig | None = Field(None, description="Surrogate settings; default follows the preset.")
    min_r2: float = Field(0.5, description="Lowest acceptable held-out R² of the surrogate.")
    min_spearman: float = Field(0.7, description="Lowest acceptable held-out Spearman correlation of the surrogate.")
    allow_low_quality: bool = Field(
        False, description="Select layers even when the surrogate is below `min_r2` or `min_spearman`."
    )
    semivalue: Literal["paper", "shapley", "banzhaf"] = Field(
        "paper", description="Contribution index computed on the surrogate: `paper` averages over the "
        "strata's coalition sizes, `shapley` and `banzhaf` are the classical semivalues.",
    )
    base_masks: int = Field(80_000, ge=100, description="Monte-Carlo base masks for the semivalue (paper: 80,000).")
    # At 20 layers the exact path scores 2^20 (about a million) coalitions on the surrogate.
    # Measured on 2 shared CPU cores (shapiq 1.4.1, random 20-layer MLP): `paper` 2.6 s,
    # `shapley` and `banzhaf` through shapiq's ExactComputer 45 s each, 1.0 GB peak RSS.
    # Both should roughly double with each extra layer (an estimate from the 2^L coalitions).
    exact_max_layers: int = Field(
        20, ge=1, le=22, description="Enumerate all 2^L coalitions on the surrogate up to this many layers."
    )
    bootstrap: int = Field(200, ge=10, description="Bootstrap resamples for the value intervals.")
    selection: Literal["one_shot", "iterative", "subset_search", "active"] | None = Field(
        None, description="`one_shot` (paper): lowest values. `iterative`: re-estimate after each removal. "
        "`subset_search`: best k-subset by surrogate, re-scored on the real model. `active` (cpu): part of "
        "the budget samples the strata, then rounds refit the surrogate and evaluate its best k-subsets and "
        "one-swap neighbours of the best set so far on the real model, and an exchange search swaps layers "
        "of the best set by their real marginal losses.",
    )
    initial_fraction: float = Field(
        0.4, gt=0, le=1, description="`active`: share of the sampling budget spent on stratified masks before the rounds."
    )
    active_rounds: int = Field(8, ge=1, description="`active`: number of refit-and-evaluate rounds.")
    local_share: float = Field(
        0.75, ge=0, le=1, description="`active`: share of each round spent on one-swap neighbours of the best "
        "set so far (a local search); the rest goes to the surrogate's best sets overall.",
    )
    exchange_share: float = Field(
        0.7, ge=0, le=1, description="`active`: share of the budget after the stratified masks kept for the "
        "exchange search, which refines the best set by one-for-one swaps ranked with real marginal losses.",
    )
    rescore: int = Field(8, ge=1, description="Candidates re-scored on the real model by `subset_search`.")
    beam_width: int = Field(64, ge=1, description="Beam width of `subset_search` when enumeration is too large.")
    batch_size: int = Field(8, ge=1, description="Calibration windows per forward pass.")
    seed: int | None = Field(None, description="Seed of sampling and training; default the recipe seed.")
    plot: bool = Field(True, description="Write a bar chart of the values (PNG) as an artifact.")


def sleb_cost(num_layers: int, count: int, protected: int = 2) -> int:
    """Real evaluations greedy SLEB makes to remove ``count`` of ``num_layers`` layers.

    SLEB tries every remaining unprotected layer in each of its ``count`` rounds (by
    default the first and last layers are protected) and also runs the full model once.
    """
    candidates = max(num_layers - protected, count)
    return sum(candidates - r for r in range(count)) + 1


class ShapleyEstimator:
    def __init__(self, config: ShapleyConfig):
        self.config = config

    # -------------------------------------------------------------- settings

    def _settings(self, num_layers: int, count: int) -> dict[str, Any]:
        c = self.config
        paper = c.preset == "paper"
        strata = (
            sampling.validate_strata(c.strata, num_layers) if c.strata
            else sampling.paper_strata(num_layers) if paper
            else sampling.focused_strata(num_layers, count)
        )
        selection_kind = c.selection or ("one_shot" if paper else "active")
        # Real evaluations outside the sampled masks: the full model, and in subset search
        # the re-scored candidates plus the one-shot choice added to them.
        overhead = 1 + (c.rescore + 1 if selection_kind == "subset_search" else 0)
        rescore = c.rescore if selection_kind == "subset_search" else 0
        if selection_kind == "active":
            overhead = 1
        if c.samples_per_stratum is not None:
            budget = c.samples_per_stratum * len(strata)
        elif c.budget_evaluations is not None:
            budget = c.budget_evaluations - overhead
        elif paper:
            budget = 1600 * len(strata)
        else:
            budget = sleb_cost(num_layers, count) - overhead
        if budget < 10:
            raise CompressorError(
                f"the evaluation budget leaves {budget} masks for the surrogate; raise `budget_evaluations` "
                f"to at least {10 + overhead}"
            )
        surrogate = c.surrogate or (SurrogateConfig(**PAPER_SURROGATE) if paper else SurrogateConfig())
        active_budget = exchange_budget = 0
        if selection_kind == "active":
            initial = max(10, int(round(c.initial_fraction * budget)))
            rest = max(0, budget - initial)
            exchange_budget = int(round(c.exchange_share * rest))
            active_budget = rest - exchange_budget
            budget = initial
        return dict(
            strata=strata, selection=selection_kind, budget=budget, surrogate=surrogate, rescore=rescore,
            active_budget=active_budget, exchange_budget=exchange_budget,
            utility=c.utility or ("ppl_ratio" if paper else "neg_nll"),
        )

    # -------------------------------------------------------------- run

    def run(self, handle, ctx) -> StageResult:
        c = self.config
        num_layers = handle.num_layers
        count = c.layers_to_remove(num_layers)
        settings = self._settings(num_layers, count)
        seed = ctx.seed if c.seed is None else c.seed
        batches = ctx.batches(ctx.calibration_spec, handle.tokenizer)
        engine = UtilityEngine(handle, batches, store=ctx.store, batch_size=c.batch_size)
        scores = estimate(engine, count, c, settings, seed)

        artifacts = {}
        if c.plot:
            path = Path(ctx.stage_dir) / "shapley_values.png"
            plot_values(scores, path, title=f"{scores.method}: layer values ({handle.source})")
            artifacts["values_plot"] = str(path)
        quality = scores.extra.get("surrogate_quality", {})
        metrics = {
            "evaluations": float(scores.cost["evaluations"]),
            "token_layers": float(scores.cost["token_layers"]),
            "seconds": float(scores.cost["seconds"]),
            "surrogate_r2": float(quality.get("r2", float("nan"))),
            "surrogate_spearman": float(quality.get("spearman", float("nan"))),
        }
        if "selected_nll" in scores.extra:
            metrics["calibration_nll"] = float(scores.extra["selected_nll"])
        return StageResult(handle, data=scores.to_dict(), metrics=metrics, artifacts=artifacts)


def _sample_and_evaluate(engine: UtilityEngine, sampler, budget: int, budget_seconds: float | None):
    """Evaluate sampled masks in chunks until the budget (masks or seconds) is spent."""
    masks: list[str] = []
    nll: list[float] = []
    start = time.perf_counter()
    chunk = 16
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("sampling masks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not engine.progress) as bar:
        task = bar.add_task("sample", total=budget)
        while len(masks) < budget:
            if budget_seconds is not None and time.perf_counter() - start > budget_seconds:
                log.info("sampling stopped by the %.0f s budget after %d masks", budget_seconds, len(masks))
                break
            batch = sampler.take(min(chunk, budget - len(masks)))
            if not batch:
                break
            saved = engine.progress
            engine.progress = False
            try:
                values = engine.evaluate(batch)
            finally:
                engine.progress = saved
            masks.extend(batch)
            nll.extend(values.tolist())
            bar.advance(task, len(batch))
    return masks, np.array(nll, dtype=float)


def estimate(engine: UtilityEngine, count: int, config: ShapleyConfig, settings: dict[str, Any], seed: int) -> LayerScores:
    """Run the whole method on ``engine`` and return the scores with cost and quality."""
    num_layers = engine.num_layers
    start = time.perf_counter()
    before = dict(engine.stats)
    full_nll = engine.full_nll

    sampler = sampling.StratifiedSampler(num_layers, settings["strata"], seed=seed, antithetic=config.antithetic)
    masks, nll = _sample_and_evaluate(engine, sampler, settings["budget"], config.budget_seconds)

    # Masks and losses are filtered together, so they stay aligned when a loss is NaN.
    finite = np.isfinite(nll)
    if not finite.all():
        log.warning("%d of %d sampled masks gave a non-finite loss and are left out of the fit",
                    int((~finite).sum()), len(masks))
    kept_masks = [m for m, ok in zip(masks, finite) if ok]
    if len(kept_masks) < 10:
        raise CompressorError(
            f"only {len(kept_masks)} of {len(masks)} sampled masks gave a finite loss; the model may be "
            "numerically unstable in this dtype, so try float32 or fewer removed layers"
        )
    utilities = engine.utility(nll[finite], settings["utility"])
    x = masks_to_array(kept_masks)

    surrogate = fit_surrogate(x, utilities, settings["surrogate"], seed=seed)
    quality = surrogate.quality
    log.info("%s", format_quality(quality))
    active_mode = settings["selection"] == "active" and settings["active_budget"] + settings["exchange_budget"] > 0
    # The active selection removes the evaluated set with the lowest real loss. The surrogate
    # only proposes candidates there, so a weak surrogate is reported but does not stop it.
    low = _check_quality(quality, config, fatal=not active_mode)

    def value_fn(batch: np.ndarray) -> np.ndarray:
        return surrogate(batch)

    sv_kwargs = dict(kind=config.semivalue, strata=settings["strata"], exact_max_players=config.exact_max_layers,
                     n_base=config.base_masks, bootstrap=config.bootstrap, seed=seed)
    result = semivalues(value_fn, num_layers, **sv_kwargs)
    values, lower, upper = result.values, result.lower, result.upper

    extra: dict[str, Any] = {}
    kind = settings["selection"]
    if active_mode:
        rounds = min(config.active_rounds, settings["active_budget"])
        per_round = settings["active_budget"] // rounds if rounds else 0
        last_quality: dict[str, Any] = {}

        def refit(round_masks: list[str], round_nll: np.ndarray, round_index: int):
            ok = np.isfinite(round_nll)
            fitted = fit_surrogate(masks_to_array([m for m, good in zip(round_masks, ok) if good]),
                                   engine.utility(round_nll[ok], settings["utility"]), settings["surrogate"],
                                   seed=seed + 1 + round_index)
            last_quality.clear()
            last_quality.update(fitted.quality)
            return fitted

        active = selection.active_search(
            refit, engine.evaluate, kept_masks, nll[finite], num_layers, count, rounds=rounds,
            per_round=per_round, beam_width=config.beam_width, local_share=config.local_share,
        )
        selected = active.selected
        extra["active_search"] = {"rounds": active.rounds, "evaluated": len(active.evaluated)}
        extra["masks_active"] = len(active.evaluated)
        if not selected:
            log.warning("active search found no set with a finite loss; starting from the lowest values")
            selected = selection.one_shot(values, count)
        if settings["exchange_budget"] > 0:
            # Masks this estimate evaluated before the exchange search. The search treats only
            # these as free, so that its path, and its evaluations, are the same on a rerun,
            # when the store already contains every mask.
            prior = set(masks) | set(active.evaluated)
            known = prior.__contains__
            start_mask = selection.mask_of(num_layers, selected)
            budget = settings["exchange_budget"] - (0 if known(start_mask) else 1)
            spent_before = engine.stats["evaluations"]
            start_nll = engine.nll(start_mask)
            # Single-layer losses already evaluated let the search skip layers too costly to add.
            singles = {}
            for layer in range(num_layers):
                single = selection.mask_of(num_layers, [layer])
                if known(single):
                    singles[layer] = engine.nll(single)
            exchange = selection.exchange_search(
                engine.evaluate, known, selected, start_nll, num_layers,
                budget=max(0, budget), single_nll=singles, full_nll=full_nll,
            )
            if np.isfinite(exchange.nll):
                selected = exchange.selected
            extra["exchange_search"] = {"swaps": exchange.swaps, "evaluated": exchange.evaluations,
                                        "budget": settings["exchange_budget"]}
            extra["masks_active"] += int(engine.stats["evaluations"] - spent_before)
        # The values and intervals stay those of the first surrogate, whose held-out masks
        # are a stratified sample. Later fits see masks chosen for their low loss, so their
        # held-out quality describes only the region around the best sets.
        extra["last_surrogate_quality"] = dict(last_quality)
    elif kind in ("one_shot", "active"):
        selected = selection.one_shot(values, count)
    elif kind == "iterative":
        order, _ = selection.iterative(lambda removed: semivalues(value_fn, num_layers, fixed_off=removed,
                                                                  **sv_kwargs).values, count)
        selected = sorted(order)
        extra["removal_order"] = order
    else:
        search = selection.subset_search(
            value_fn, engine.evaluate, num_layers, count, rescore=settings["rescore"],
            extra_candidates=[selection.one_shot(values, count)], beam_width=config.beam_width,
        )
        selected = sorted(search.selected)
        extra["subset_search"] = {"strategy": search.strategy, "candidates": search.candidates}

    selected_mask = "".join("0" if i in selected else "1" for i in range(num_layers))
    if engine.known(selected_mask):
        extra["selected_nll"] = float(engine.nll(selected_mask))
    cost = {
        key: float(engine.stats[key] - before.get(key, 0))
        for key in ("evaluations", "token_layers", "seconds")
    }
    cost["seconds"] = time.perf_counter() - start
    extra.update(
        preset=config.preset, utility=settings["utility"], strata=settings["strata"],
        semivalue=config.semivalue, semivalue_method=result.method, selection=kind,
        masks_sampled=len(masks), masks_requested=1 + len(masks) + int(extra.get("masks_active", 0))
        + (len(extra["subset_search"]["candidates"]) if "subset_search" in extra else 0),
        nonfinite_masks=int((~finite).sum()), cache_hits=int(engine.stats["cache_hits"] - before.get("cache_hits", 0)),
        full_nll=full_nll, surrogate_quality=quality, surrogate_low_quality=low,
    )
    return LayerScores(
        method="shapley", values=_json_list(values), selected=selected, lower=_json_list(lower),
        upper=_json_list(upper), cost=cost, extra=extra,
    )


def _check_quality(quality: dict[str, Any], config: ShapleyConfig, fatal: bool = True) -> bool:
    """Compare the surrogate quality with the thresholds.

    Below them, raise when ``fatal`` (the selection trusts the surrogate) unless
    `allow_low_quality` is set; otherwise log the shortfall as an error and go on.
    """
    low = not (quality["r2"] >= config.min_r2 and quality["spearman"] >= config.min_spearman)
    if not low:
        return False
    message = (
        f"surrogate quality is below the threshold: held-out R² {quality['r2']:.3f} (min {config.min_r2}), "
        f"Spearman {quality['spearman']:.3f} (min {config.min_spearman})"
    )
    log.error("%s\n%s", message, format_quality(quality))
    if not fatal:
        log.error("the layers are still selected, because the active selection keeps the set with the "
                  "lowest real calibration loss; the per-layer values and intervals are unreliable")
    elif not config.allow_low_quality:
        raise CompressorError(
            message + "; raise `budget_evaluations`, change `strata`, or set `allow_low_quality: true` "
            "to select anyway"
        )
    return True


def _json_list(array: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(array, dtype=float)]


def plot_values(scores: LayerScores, path: Path, title: str = "") -> Path:
    """Write a bar chart of per-layer values with interval bars, removed layers in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array([np.nan if v is None else v for v in scores.values], dtype=float)
    n = len(values)
    colors = ["tab:red" if i in scores.selected else "tab:blue" for i in range(n)]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * n + 2), 3.5))
    ax.bar(range(n), np.nan_to_num(values), color=colors)
    if scores.lower is not None and scores.upper is not None:
        lower = np.array([np.nan if v is None else v for v in scores.lower], dtype=float)
        upper = np.array([np.nan if v is None else v for v in scores.upper], dtype=float)
        errors = np.vstack([np.clip(values - lower, 0, None), np.clip(upper - values, 0, None)])
        ax.errorbar(range(n), np.nan_to_num(values), yerr=np.nan_to_num(errors), fmt="none", ecolor="black",
                    capsize=2, linewidth=0.8)
    ax.set_xlabel("decoder layer (red: removed)")
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.set_xticks(range(n))
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ comparator


class KernelShapConfig(TargetConfig):
    """A shapiq approximator run directly on the real model, without a surrogate."""

    approximator: Literal["kernelshap", "svarm", "permutation"] = Field(
        "kernelshap", description="shapiq approximator: KernelSHAP, SVARM or permutation sampling."
    )
    budget_evaluations: int | None = Field(
        None, ge=4, description="Coalitions evaluated on the real model. Default: what greedy SLEB would spend."
    )
    utility: Utility = Field("neg_nll", description="`neg_nll` (−NLL) or `ppl_ratio`.")
    batch_size: int = Field(8, ge=1, description="Calibration windows per forward pass.")
    seed: int | None = Field(None, description="Approximator seed; default the recipe seed.")
    plot: bool = Field(True, description="Write a bar chart of the values (PNG) as an artifact.")


class KernelShapEstimator:
    def __init__(self, config: KernelShapConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        c = self.config
        num_layers = handle.num_layers
        count = c.layers_to_remove(num_layers)
        seed = ctx.seed if c.seed is None else c.seed
        engine = UtilityEngine(handle, ctx.batches(ctx.calibration_spec, handle.tokenizer), store=ctx.store,
                               batch_size=c.batch_size)
        scores = estimate_direct(engine, count, c.approximator, c.budget_evaluations or sleb_cost(num_layers, count),
                                 c.utility, seed)
        artifacts = {}
        if c.plot:
            path = Path(ctx.stage_dir) / "shapley_values.png"
            plot_values(scores, path, title=f"{c.approximator} on the real model ({handle.source})")
            artifacts["values_plot"] = str(path)
        metrics = {k: float(v) for k, v in scores.cost.items()}
        return StageResult(handle, data=scores.to_dict(), metrics=metrics, artifacts=artifacts)


def estimate_direct(engine: UtilityEngine, count: int, approximator: str, budget: int, utility: str, seed: int) -> LayerScores:
    """Shapley values of the real model by a shapiq approximator, then one-shot selection."""
    import shapiq

    num_layers = engine.num_layers
    start = time.perf_counter()
    before = dict(engine.stats)
    classes = {"kernelshap": shapiq.KernelSHAP, "svarm": shapiq.SVARM, "permutation": shapiq.PermutationSamplingSV}
    approx = classes[approximator](n=num_layers, random_state=seed)
    game = engine.as_game(utility)
    result = approx.approximate(budget, game)
    values = np.array([result[(i,)] for i in range(num_layers)], dtype=float)
    selected = selection.one_shot(values, count)
    cost = {key: float(engine.stats[key] - before.get(key, 0)) for key in ("evaluations", "token_layers", "seconds")}
    cost["seconds"] = time.perf_counter() - start
    return LayerScores(
        method=approximator, values=_json_list(values), selected=selected, cost=cost,
        extra={"utility": utility, "budget": budget, "approximator": approximator, "full_nll": engine.full_nll},
    )


@hookimpl
def register_estimators(register):
    register(Component(
        name="shapley", kind="estimator", config=ShapleyConfig, factory=ShapleyEstimator,
        description="Surrogate-assisted Shapley layer contributions (Ding et al., ICLR 2026)",
    ))
    register(Component(
        name="kernelshap", kind="estimator", config=KernelShapConfig, factory=KernelShapEstimator,
        description="shapiq approximator (KernelSHAP, SVARM, permutation) run directly on the real model",
    ))
