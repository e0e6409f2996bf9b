"""Section 5: where Shapley wins, ties or loses against each baseline, computed from the results."""

from __future__ import annotations

import math
from typing import Any

# Perplexity ratios within this relative band of 1 count as a tie.
# NOTE: 2 % is a chosen threshold, not a measured noise level of the held-out windows.
PPL_TIE_BAND = 0.02
HELDOUT_PPL = "heldout.ppl_token"
BROWN_PPL = "brown.ppl_token"
CLOZE_PREFIX = "cloze."


def _ppl_outcome(ours: float | None, theirs: float | None) -> tuple[str, float | None]:
    if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
        return "n/a", None
    ratio = ours / theirs
    if ratio < 1 - PPL_TIE_BAND:
        return "win", ratio
    if ratio > 1 + PPL_TIE_BAND:
        return "loss", ratio
    return "tie", ratio


def cloze_tasks(metrics: dict[str, float]) -> list[str]:
    return sorted(name[len(CLOZE_PREFIX):-len(".acc")] for name in metrics
                  if name.startswith(CLOZE_PREFIX) and name.endswith(".acc"))


def _cloze_outcome(ours: dict[str, float], theirs: dict[str, float]) -> tuple[str, float | None]:
    """Compare mean cloze accuracy; a difference within the combined standard error is a tie."""
    tasks = [t for t in cloze_tasks(ours) if f"{CLOZE_PREFIX}{t}.acc" in theirs]
    if not tasks:
        return "n/a", None
    diff = sum(ours[f"{CLOZE_PREFIX}{t}.acc"] - theirs[f"{CLOZE_PREFIX}{t}.acc"] for t in tasks) / len(tasks)
    variance = sum((ours.get(f"{CLOZE_PREFIX}{t}.acc_stderr") or 0.0) ** 2
                   + (theirs.get(f"{CLOZE_PREFIX}{t}.acc_stderr") or 0.0) ** 2 for t in tasks) / len(tasks) ** 2
    band = math.sqrt(variance)
    if diff > band:
        return "win", diff
    if diff < -band:
        return "loss", diff
    return "tie", diff


def build_verdict(quality_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one entry per (model, ratio): Shapley against each baseline that ran."""
    entries = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in quality_rows:
        if row["method"] != "dense":
            groups.setdefault((row["model"], row["ratio"]), []).append(row)
    for (model, ratio), rows in groups.items():
        shapley = next((r for r in rows if r["method"] == "shapley"), None)
        entry: dict[str, Any] = {"model": model, "ratio": ratio, "comparisons": []}
        if shapley is None or shapley["status"] == "skipped":
            entry["shapley_missing"] = (shapley or {}).get("reason") or "shapley was not run"
            entries.append(entry)
            continue
        if shapley["status"] != "ran":
            entry["shapley_failed"] = shapley.get("errors") or ["no error recorded"]
            entries.append(entry)
            continue
        ours = shapley["metrics"]
        for row in rows:
            if row["method"] == "shapley" or row["status"] != "ran":
                continue
            theirs = row["metrics"]
            heldout, heldout_ratio = _ppl_outcome(ours.get(HELDOUT_PPL), theirs.get(HELDOUT_PPL))
            brown, brown_ratio = _ppl_outcome(ours.get(BROWN_PPL), theirs.get(BROWN_PPL))
            cloze, cloze_diff = _cloze_outcome(ours, theirs)
            ours_eval = shapley["cost"].get("evaluations")
            theirs_eval = row["cost"].get("evaluations")
            entry["comparisons"].append({
                "baseline": row["method"], "heldout": heldout, "heldout_ratio": heldout_ratio,
                "brown": brown, "brown_ratio": brown_ratio, "cloze": cloze, "cloze_diff": cloze_diff,
                "evaluations_shapley": ours_eval, "evaluations_baseline": theirs_eval,
            })
        ran = [c for c in entry["comparisons"]]
        entry["heldout_counts"] = {k: sum(c["heldout"] == k for c in ran) for k in ("win", "tie", "loss")}
        finite = [r for r in rows if r["method"] != "shapley" and r["status"] == "ran"
                  and r["metrics"].get(HELDOUT_PPL) is not None]
        if finite:
            best = min(finite, key=lambda r: r["metrics"][HELDOUT_PPL])
            entry["best_baseline"] = best["method"]
            entry["shapley_vs_best_heldout"] = ours[HELDOUT_PPL] / best["metrics"][HELDOUT_PPL]
        entries.append(entry)
    return entries
