"""The search space of a recipe: validated up front, sampled per trial, turned into concrete recipes.

Each key of `search.space` is a `--set` path. Two kinds of paths reach into stages:

- `stages.N.plugin` chooses the component of stage N (choices only);
- `stages.N.config.FIELD` sets one field of that stage's component config. When the
  plugin of stage N is searched too, FIELD is a conditional parameter: a trial
  suggests it only when its chosen plugin has that field.

Any other path names a value of the recipe itself, for example `data.calibration.n_samples`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined, to_jsonable_python

from compressor.errors import CompressorError, RecipeError
from compressor.recipe import Recipe, SearchParam, recipe_with

log = logging.getLogger(__name__)

_SCALAR_TYPES = (type(None), bool, int, float, str)


# Searching this key reorders whole stages, for example prune-then-quantize against
# quantize-then-prune. Each choice lists every stage label once, in the order to run.
STAGE_ORDER = "stage_order"


@dataclass
class Dimension:
    """One searched value. ``stage`` and ``field`` are set for `stages.N.plugin` and `stages.N.config.FIELD`."""

    path: str
    param: SearchParam
    stage: int | None = None
    field: str | None = None
    is_plugin: bool = False
    encoded: bool = False  # choices are lists or mappings, passed to Optuna as JSON strings

    @property
    def choices(self) -> list[Any]:
        """Return the choices in the form passed to Optuna (JSON strings when ``encoded``)."""
        assert self.param.choices is not None
        if self.encoded:
            return [json.dumps(choice, sort_keys=True) for choice in self.param.choices]
        return list(self.param.choices)

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value

    def probe_values(self) -> list[Any]:
        """Values checked before the search starts: every choice, or both ends of a range."""
        if self.param.choices is not None:
            return list(self.param.choices)
        if self.param.int:
            return [int(self.param.low), int(self.param.high)]
        return [self.param.low, self.param.high]


class SearchSpace:
    """The validated `search.space` of ``recipe``.

    Construction raises :class:`RecipeError` for a path that does not exist in the
    recipe, a config field the component does not define, a range that Optuna cannot
    sample, or a value that the recipe or the component config rejects.
    """

    def __init__(self, recipe: Recipe, registry=None):
        from compressor.plugins import get_registry

        if recipe.search is None:
            raise RecipeError(
                f"recipe {recipe.name!r} has no `search:` section; add one with `objectives` and `space`, "
                "for example space: {stages.0.config.ratio: {low: 0.1, high: 0.4}}"
            )
        self.recipe = recipe
        self.registry = registry or get_registry()
        self.dimensions: list[Dimension] = []

        # Plugin dimensions first, because config fields are checked against their choices.
        items = sorted(recipe.search.space.items(), key=lambda item: not item[0].endswith(".plugin"))
        for path, param in items:
            self.dimensions.append(self._parse(path, param))
        self._check_objectives()
        self._probe_values()

    # ------------------------------------------------------------------ validation

    def _parse(self, path: str, param: SearchParam) -> Dimension:
        parts = path.split(".")
        where = f"search.space.{path}"
        self._check_param(where, param)
        encoded = param.choices is not None and not all(isinstance(c, _SCALAR_TYPES) for c in param.choices)

        if path == STAGE_ORDER:
            return self._parse_stage_order(path, param)
        if parts[0] == "stages":
            return self._parse_stage_path(path, parts, param, encoded)
        if parts[0] == "search":
            raise RecipeError(f"{where}: the `search` section itself cannot be searched; choose a path outside it")

        node: Any = self.recipe.model_dump(mode="json")
        for depth, part in enumerate(parts):
            here = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"{where}: index {part!r} is out of range at {here} (length {len(node)})")
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node:
                    valid = ", ".join(sorted(node)) or "none"
                    raise RecipeError(f"{where}: unknown recipe key {part!r} at {here}; valid keys: {valid}")
                node = node[part]
            else:
                parent = ".".join(parts[:depth]) or "(top level)"
                raise RecipeError(
                    f"{where}: {parent} is not set in the recipe (value {node!r}), so it has no key {part!r}; "
                    "set it in the recipe first"
                )
        return Dimension(path, param, encoded=encoded)

    def _parse_stage_order(self, path: str, param: SearchParam) -> Dimension:
        where = f"search.space.{path}"
        labels = [stage.label for stage in self.recipe.stages]
        if param.choices is None:
            raise RecipeError(f"{where}: give `choices`, each a list of the stage labels in the order to run them")
        for choice in param.choices:
            if not isinstance(choice, list) or sorted(map(str, choice)) != sorted(labels):
                raise RecipeError(
                    f"{where}: choice {choice!r} must list every stage label exactly once; labels: {', '.join(labels)}"
                )
        return Dimension(path, param, encoded=True)

    def _parse_stage_path(self, path: str, parts: list[str], param: SearchParam, encoded: bool) -> Dimension:
        where = f"search.space.{path}"
        stages = self.recipe.stages
        if len(parts) < 3 or not parts[1].isdigit():
            raise RecipeError(
                f"{where}: a stage path looks like stages.N.plugin or stages.N.config.FIELD, with N a stage index"
            )
        index = int(parts[1])
        if index >= len(stages):
            raise RecipeError(
                f"{where}: the recipe has {len(stages)} stages (indices 0 to {len(stages) - 1}); there is no stage {index}"
            )
        stage = stages[index]

        if parts[2] == "plugin" and len(parts) == 3:
            if param.choices is None:
                raise RecipeError(f"{where}: a plugin is chosen from a list; give `choices`, not a range")
            for choice in param.choices:
                if not isinstance(choice, str):
                    raise RecipeError(f"{where}: choice {choice!r} is not a component name")
                try:
                    self.registry.get(stage.kind, choice)
                except CompressorError as exc:
                    raise RecipeError(f"{where}: choice {choice!r}: {exc}") from None
            return Dimension(path, param, stage=index, is_plugin=True, encoded=encoded)

        if parts[2] == "config" and len(parts) >= 4:
            field = parts[3]
            fields_by_plugin = {plugin: list(self._config_class(index, plugin).model_fields) for plugin in self._plugins_of(index)}
            if not any(field in fields for fields in fields_by_plugin.values()):
                valid = "; ".join(f"{plugin}: {', '.join(fields) or 'none'}" for plugin, fields in fields_by_plugin.items())
                raise RecipeError(
                    f"{where}: unknown config field {field!r} for stage {index} ({stage.label}); valid fields: {valid}"
                )
            return Dimension(path, param, stage=index, field=field, encoded=encoded)

        raise RecipeError(f"{where}: only stages.{index}.plugin and stages.{index}.config.FIELD can be searched in a stage")

    @staticmethod
    def _check_param(where: str, param: SearchParam) -> None:
        # Empty choices and low > high are rejected by SearchParam when the recipe loads.
        if param.choices is not None:
            return
        if param.log and param.step is not None:
            raise RecipeError(f"{where}: Optuna cannot combine `log: true` with `step`; drop one of them")
        if param.log and param.low <= 0:
            raise RecipeError(f"{where}: a log-scale range needs low > 0, got low={param.low}")
        if param.int:
            for name, value in (("low", param.low), ("high", param.high), ("step", param.step)):
                if value is not None and value != int(value):
                    raise RecipeError(f"{where}: an integer range needs whole numbers, got {name}={value}")

    def _check_objectives(self) -> None:
        searched_plugins = {d.stage for d in self.dimensions if d.is_plugin}
        labels = [stage.label for stage in self.recipe.stages]
        for objective in self.recipe.search.objectives:
            label = objective.metric.split(".", 1)[0]
            if label not in labels:
                raise RecipeError(
                    f"search.objectives: metric {objective.metric!r} names stage {label!r}, which is not in the recipe; "
                    f"stages: {', '.join(labels)}"
                )
            index = labels.index(label)
            if index in searched_plugins and self.recipe.stages[index].name is None:
                raise RecipeError(
                    f"search.objectives: metric {objective.metric!r} reads stage {index}, whose plugin is searched, so its "
                    f"label changes from trial to trial; give stage {index} a `name`"
                )

    def _probe_values(self) -> None:
        """Build a recipe for each choice (or each end of a range) so a bad value fails before any trial runs."""
        plugin_dims = {d.stage: d for d in self.dimensions if d.is_plugin}
        for dim in self.dimensions:
            for value in dim.probe_values():
                contexts: list[dict[str, Any]] = [{}]
                if dim.field is not None and dim.stage in plugin_dims:
                    contexts = [
                        {plugin_dims[dim.stage].path: plugin}
                        for plugin in self._plugins_of(dim.stage)
                        if dim.field in self._config_class(dim.stage, plugin).model_fields
                    ]
                for context in contexts:
                    try:
                        self.trial_recipe({**context, dim.path: value})
                    except RecipeError as exc:
                        with_plugin = f" with plugin {next(iter(context.values()))!r}" if context else ""
                        raise RecipeError(f"search.space.{dim.path}: value {value!r}{with_plugin} is rejected: {exc}") from None

    # ------------------------------------------------------------------ helpers

    def _plugins_of(self, index: int) -> list[str]:
        for dim in self.dimensions:
            if dim.is_plugin and dim.stage == index:
                return list(dim.param.choices)
        return [self.recipe.stages[index].plugin]

    def _config_class(self, index: int, plugin: str) -> type[BaseModel]:
        return self.registry.get(self.recipe.stages[index].kind, plugin).config

    # ------------------------------------------------------------------ sampling

    def suggest(self, trial) -> dict[str, Any]:
        """Draw this trial's values through Optuna's define-by-run API; return them by path."""
        values: dict[str, Any] = {}
        chosen: dict[int, str] = {}
        for dim in self.dimensions:
            if dim.field is not None:
                plugin = chosen.get(dim.stage, self.recipe.stages[dim.stage].plugin)
                if dim.field not in self._config_class(dim.stage, plugin).model_fields:
                    continue  # conditional parameter: the chosen plugin has no such field
            values[dim.path] = self._suggest_one(trial, dim)
            if dim.is_plugin:
                chosen[dim.stage] = values[dim.path]
        return values

    @staticmethod
    def _suggest_one(trial, dim: Dimension) -> Any:
        param = dim.param
        if param.choices is not None:
            return dim.decode(trial.suggest_categorical(dim.path, dim.choices))
        if param.int:
            step = int(param.step) if param.step is not None else 1
            return trial.suggest_int(dim.path, int(param.low), int(param.high), step=step, log=param.log)
        return trial.suggest_float(dim.path, param.low, param.high, step=param.step, log=param.log)

    def grid(self) -> dict[str, list[Any]]:
        """Build the grid for Optuna's GridSampler: every choice, and every step of each range (integer ranges default to step 1)."""
        grid: dict[str, list[Any]] = {}
        for dim in self.dimensions:
            param = dim.param
            if param.choices is not None:
                grid[dim.path] = dim.choices
                continue
            step = param.step
            if step is None and param.int:
                step = 1
            if step is None:
                raise RecipeError(
                    f"search.space.{dim.path}: the grid sampler needs a `step` for the range {param.low}..{param.high}, "
                    "or a list of `choices`"
                )
            count = int(round((param.high - param.low) / step)) + 1
            points = [param.low + i * step for i in range(count) if param.low + i * step <= param.high + 1e-12]
            grid[dim.path] = [int(p) for p in points] if param.int else [round(p, 12) for p in points]
        return grid

    # ------------------------------------------------------------------ concrete recipes

    def trial_recipe(self, values: dict[str, Any]) -> Recipe:
        """Return the recipe with ``values`` (path → value) applied, validated again.

        When a value switches a stage to another plugin, the stage's config keeps only
        the keys the new plugin defines. A key whose value equals the old plugin's
        default is dropped as well, so the new plugin's own default applies.
        Trials never save the model folder: rerun a trial's `recipe.resolved.yaml` with
        `compressor run` to get it.
        """
        values = dict(values)
        order = values.pop(STAGE_ORDER, None)
        overrides: dict[str, Any] = {}
        for path, value in values.items():
            parts = path.split(".")
            if len(parts) == 3 and parts[0] == "stages" and parts[2] == "plugin" and parts[1].isdigit():
                index = int(parts[1])
                stage = self.recipe.stages[index]
                if value != stage.plugin:
                    overrides[path] = value
                    overrides[f"stages.{index}.config"] = self._carry_config(index, value)
        for path, value in values.items():
            if path not in overrides:
                overrides[path] = value
        overrides["save_model"] = False

        try:
            recipe = recipe_with(self.recipe, overrides)
            if order is not None:
                # Stage paths above use the recipe's own indices, so reorder only after applying them.
                position = {stage.label: index for index, stage in enumerate(self.recipe.stages)}
                stages = [recipe.stages[position[label]].model_dump(mode="json") for label in order]
                recipe = recipe_with(recipe, {"stages": stages})
            return recipe
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
            raise RecipeError(problems) from None

    def _carry_config(self, index: int, new_plugin: str) -> dict[str, Any]:
        stage = self.recipe.stages[index]
        old_fields = self._config_class(index, stage.plugin).model_fields
        new_fields = self._config_class(index, new_plugin).model_fields
        kept = {}
        for key, value in stage.config.items():
            if key not in new_fields:
                continue
            old = old_fields.get(key)
            if old is not None:
                default = old.get_default(call_default_factory=True)
                if default is not PydanticUndefined and to_jsonable_python(default) == value:
                    continue
            kept[key] = value
        dropped = sorted(set(stage.config) - set(kept))
        if dropped:
            log.debug("stage %d switched to %s: dropped config keys %s", index, new_plugin, ", ".join(dropped))
        return kept
