"""Command-line interface: `compressor run | compare | search | dashboard | plugins | runs | assets`."""

from __future__ import annotations

import json
import logging
import os
import sys

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from compressor.assets_cli import assets
from compressor.errors import CompressorError

console = Console()
log = logging.getLogger("compressor")

DB_HELP = "SQLAlchemy database URL of the store (default: the recipe's `db`, then COMPRESSOR_DB, then sqlite:///compressor.db)."
SET_HELP = "Override a recipe value, for example `--set stages.0.config.ratio=0.25`. Repeatable; the value is read as YAML."


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.INFO - 10 * verbose + 10 * quiet
    level = min(max(level, logging.DEBUG), logging.ERROR)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("compressor").setLevel(level)
    for name in ("compressor_shapley", "compressor_baselines", "compressor_layerdrop", "compressor_gptq", "compressor_eval"):
        logging.getLogger(name).setLevel(level)


class _Group(click.Group):
    """Show CompressorError as one clear message with exit code 2, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompressorError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; rerun the same command to resume from the last finished stage[/]")
            sys.exit(130)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less log output (repeat for errors only).")
@click.version_option(package_name="compressor")
def main(verbose: int, quiet: int) -> None:
    """compressor: plugin-based compression of causal language models.

    Recipes (YAML) chain stages: layer importance, layer pruning, quantization and
    evaluation. Every stage is a plugin; see `compressor plugins`.
    """
    _setup_logging(verbose, quiet)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--run-name", default=None, help="Run name (default: the recipe name). Rerunning a name resumes it.")
@click.option("--output", "output_dir", default=None, type=click.Path(file_okay=False), help="Output folder (default: the recipe's output_dir).")
@click.option("--db", default=None, help=DB_HELP)
def run(recipe: str, overrides: tuple[str, ...], run_name: str | None, output_dir: str | None, db: str | None) -> None:
    """Run RECIPE's stages in order and write the report and the compressed model.

    A rerun with the same run name skips the stages that already finished.
    """
    from compressor.pipeline import Pipeline
    from compressor.recipe import load_recipe
    from compressor.report import print_summary

    loaded = load_recipe(recipe, overrides=overrides)
    outcome = Pipeline(loaded, run_name=run_name, db_url=db, output_dir=output_dir).run()
    print_summary(outcome, console=console)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins with their components, hooks, package and version."""
    from compressor.plugins import get_registry

    infos = get_registry().plugin_infos()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    table = Table(title="compressor plugins")
    for column in ("plugin", "package", "version", "components", "hooks"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(info.name, info.package, info.version, "\n".join(info.components), "\n".join(info.hooks))
    console.print(table)


@main.group()
def runs() -> None:
    """Inspect runs recorded in the store."""


@runs.command("list")
@click.option("--db", default=None, help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runs_list(db: str | None, as_json: bool) -> None:
    """List runs with their status and stage count."""
    from compressor.store import Store

    rows = Store(db).list_runs()
    if as_json:
        click.echo(json.dumps([
            {"name": r.name, "recipe": r.recipe_name, "status": r.status, "created_at": r.created_at.isoformat(), "output_dir": r.output_dir}
            for r in rows
        ], indent=2))
        return
    table = Table(title="runs")
    for column in ("run", "recipe", "status", "created", "output"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.name, r.recipe_name, r.status, r.created_at.strftime("%Y-%m-%d %H:%M"), r.output_dir)
    console.print(table)


@runs.command("show")
@click.argument("run_name")
@click.option("--db", default=None, help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def runs_show(run_name: str, db: str | None, as_json: bool) -> None:
    """Show the stages, metrics and artifacts of RUN_NAME."""
    from compressor.store import Store

    store = Store(db)
    run_row = store.get_run(run_name)
    if run_row is None:
        names = ", ".join(r.name for r in store.list_runs()[-10:]) or "none"
        raise CompressorError(f"run {run_name!r} not found in {store.url}; recent runs: {names}")
    records = store.stage_records(run_row.id)
    if as_json:
        click.echo(json.dumps({
            "name": run_row.name, "status": run_row.status, "error": run_row.error, "output_dir": run_row.output_dir,
            "stages": [
                {"index": s.index, "name": s.name, "kind": s.kind, "plugin": s.plugin, "status": s.status,
                 "seconds": s.seconds, "error": s.error, "metrics": {m.name: m.value for m in s.metrics},
                 "artifacts": {a.label: a.path for a in s.artifacts}}
                for s in records
            ],
        }, indent=2))
        return
    console.print(f"[bold]{run_row.name}[/] ({run_row.status}) → {run_row.output_dir}")
    if run_row.error:
        console.print(f"[red]error:[/] {run_row.error}")
    table = Table()
    for column in ("#", "stage", "kind", "plugin", "status", "seconds", "metrics"):
        table.add_column(column)
    for s in records:
        metrics = ", ".join(f"{m.name}={m.value:.4g}" if m.value is not None else f"{m.name}=nan" for m in s.metrics)
        table.add_row(str(s.index), s.name, s.kind, s.plugin, s.status, f"{s.seconds or 0:.1f}", metrics)
    console.print(table)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--output", "output_dir", default=None, type=click.Path(file_okay=False), help="Output folder (default: OUTPUT_DIR/compare of the recipe).")
@click.option("--db", default=None, help=DB_HELP)
def compare(recipe: str, overrides: tuple[str, ...], output_dir: str | None, db: str | None) -> None:
    """Prune with every method and ratio of RECIPE's `compare:` section and evaluate each."""
    from compressor.compare import run_compare
    from compressor.recipe import load_recipe

    loaded = load_recipe(recipe, overrides=overrides)
    run_compare(loaded, output_dir=output_dir, db_url=db, console=console)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--trials", type=int, default=None, help="Number of trials the study should hold when this worker stops (default: search.trials). Workers share it; a rerun runs only the missing ones.")
@click.option("--timeout", type=float, default=None, help="Stop starting new trials after this many seconds.")
@click.option("--study", default=None, help="Study name (default: search.study, then the recipe name).")
@click.option("--db", default=None, help=DB_HELP)
def search(recipe: str, overrides: tuple[str, ...], trials: int | None, timeout: float | None, study: str | None, db: str | None) -> None:
    """Run an Optuna search over RECIPE's `search:` space. Rerunning continues the study."""
    from compressor.recipe import load_recipe
    from compressor.search import run_search

    loaded = load_recipe(recipe, overrides=overrides)
    run_search(loaded, trials=trials, timeout=timeout, study_name=study, db_url=db, console=console)


@main.command()
@click.option("--study", default=None, help="Open this study's page directly.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; keep 127.0.0.1 unless you mean to expose it.")
@click.option("--port", type=int, default=8080, show_default=True, help="TCP port to serve on.")
@click.option("--db", default=None, help=DB_HELP)
def dashboard(study: str | None, host: str, port: int, db: str | None) -> None:
    """Serve optuna-dashboard on the store's database."""
    from compressor.search import serve_dashboard

    serve_dashboard(db_url=db, study_name=study, host=host, port=port, console=console)


main.add_command(assets)

if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
