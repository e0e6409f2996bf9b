"""Plugin loading: built-ins and third-party packages through one entry-point group."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.components import Component
from compressor.errors import CompressorError
from compressor.plugins import Registry, create_plugin_manager, get_registry
from compressor.recipe import load_recipe_text

BUILTINS = {"architectures", "shapley", "baselines", "layerdrop", "gptq", "eval"}


def test_builtins_and_test_plugin_are_loaded():
    names = {info.name for info in get_registry().plugin_infos()}
    assert BUILTINS <= names
    assert "testplugin" in names  # tests/plugin_package, pip-installed by `make test`


def test_plugins_json_lists_components_hooks_package_and_version():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    infos = {info["name"]: info for info in json.loads(result.output)}

    test_plugin = infos["testplugin"]
    assert test_plugin["package"] == "compressor-testplugin"
    assert test_plugin["version"] == "0.0.1"
    assert test_plugin["components"] == ["evaluator:param_count"]
    assert test_plugin["hooks"] == ["register_evaluators"]
    assert "pruner:layerdrop" in infos["layerdrop"]["components"]
    assert any(c.startswith("architecture:") for c in infos["architectures"]["components"])


def test_plugins_table_is_printed():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "testplugin" in result.output
    assert "layerdrop" in result.output
    assert "register_" in result.output


def test_third_party_component_works_in_a_recipe():
    text = """
name: t
model: {source: x}
data: {calibration: {source: "file:x.txt"}}
stages:
  - {kind: evaluator, plugin: param_count, config: {include_embeddings: false}}
"""
    recipe = load_recipe_text(text)
    assert recipe.stages[0].config == {"include_embeddings": False}


def _plugins_in_subprocess(value: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("COMPRESSOR_LOAD_PLUGINS", None)
    if value is not None:
        env["COMPRESSOR_LOAD_PLUGINS"] = value
    out = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "plugins", "--json"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return sorted(info["name"] for info in json.loads(out))


def test_env_var_restricts_loaded_plugins():
    assert _plugins_in_subprocess("layerdrop,testplugin") == ["layerdrop", "testplugin"]


def test_env_var_empty_loads_none():
    assert _plugins_in_subprocess("") == []


def test_unknown_component_lists_available_names():
    with pytest.raises(CompressorError, match=r"unknown evaluator 'nope'; available: .*param_count"):
        get_registry().get("evaluator", "nope")


def test_duplicate_component_name_is_an_error():
    from compressor.hookspecs import hookimpl
    from compressor.components import StrictConfig

    class Twin:
        @hookimpl
        def register_evaluators(self, register):
            register(Component("param_count", "evaluator", StrictConfig, lambda c: None))

    pm = create_plugin_manager()
    pm.register(Twin(), name="twin")
    with pytest.raises(CompressorError, match="registered twice.*testplugin.*twin"):
        Registry(pm)


def test_component_registered_through_wrong_hook_is_an_error():
    from compressor.hookspecs import hookimpl
    from compressor.components import StrictConfig

    class Confused:
        @hookimpl
        def register_pruners(self, register):
            register(Component("oops", "evaluator", StrictConfig, lambda c: None))

    pm = create_plugin_manager()
    pm.register(Confused(), name="confused")
    with pytest.raises(CompressorError, match="register_evaluators"):
        Registry(pm)
