"""Docs that are generated or quoted from code must match it."""

import re
from pathlib import Path

from compressor.docs_gen import SECTIONS, render
from compressor.plugins import get_registry

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_reference_matches_schema():
    committed = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert committed == render(), "docs/recipe-reference.md is stale; run `python -m compressor.docs_gen docs/recipe-reference.md`"


def test_recipe_reference_lists_every_field():
    text = render()
    for _, model, _ in SECTIONS:
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} missing from the reference"


def test_recipe_reference_covers_builtin_components():
    text = render()
    registry = get_registry()
    for kind in ("estimator", "pruner", "quantizer", "evaluator"):
        for name in registry.names(kind):
            if registry.get(kind, name).plugin in {"shapley", "baselines", "layerdrop", "gptq", "eval"}:
                assert f"### {kind} `{name}`" in text


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    from click.testing import CliRunner

    from compressor.cli import main

    commands = set(re.findall(r"`compressor (\w+)", readme))
    assert {"run", "compare", "search", "dashboard", "plugins", "runs", "assets"} <= commands
    for command in commands:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, f"compressor {command} --help failed: {result.output}"


def test_docs_index_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\((docs/[^)#]+)\)", readme):
        assert (ROOT / target).is_file(), f"README links to missing {target}"
