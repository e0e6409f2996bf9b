"""Recipe schema, YAML loading and command-line overrides.

A recipe is YAML validated by pydantic. Every mapping is strict: an unknown key, a wrong
type, an unknown plugin or an out-of-range value is a :class:`RecipeError` that names the
key path and the YAML line it came from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compressor.errors import RecipeError

Path_ = tuple[Any, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """The model to load, with its dtype and device."""

    source: str = Field(
        description="Built-in asset name (see `compressor assets list`), Hugging Face hub id, "
        "local model folder, or path to a .gguf file."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weight dtype the model is loaded in."
    )
    device: str = Field("cpu", description="torch device, for example `cpu`, `cuda` or `cuda:1`.")
    trust_remote_code: bool = Field(
        False, description="Allow custom modelling code from the hub. Off unless you trust the source."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model source is empty; name an asset, a hub id, a folder or a .gguf file")
        return value


class TextSpec(_Strict):
    """A text source cut into token windows."""

    source: str = Field(
        description="Built-in corpus (`sotu`, `brown`), `file:PATH` (plain text, or JSONL with "
        "`text_field`), or `hf:DATASET[:CONFIG]` (needs the hub)."
    )
    split: str | None = Field(
        None,
        description="Split of the source. For `sotu`: `calibration` (speeches before 2000) or "
        "`heldout` (2010 onwards). For `hf:` sources the dataset split (default `train`).",
    )
    text_field: str = Field("text", description="Field holding the text in JSONL and hub datasets.")
    n_samples: int = Field(16, ge=1, le=100_000, description="Number of windows.")
    seq_len: int = Field(128, ge=2, le=131_072, description="Tokens per window.")
    seed: int = Field(0, description="Seed for choosing window positions.")
    bos: Literal["auto", "always", "never"] = Field(
        "auto",
        description="BOS policy: `always` puts the tokenizer's BOS token first in every window "
        "(it is context, not scored), `never` does not, `auto` follows the tokenizer's own setting.",
    )


class DataSpec(_Strict):
    calibration: TextSpec = Field(description="Text for estimators and quantizer calibration.")
    evaluation: TextSpec | None = Field(
        None, description="Held-out text for evaluators. It should not overlap the calibration text."
    )


class StageSpec(_Strict):
    """One pipeline stage: a registered component and its config."""

    kind: Literal["estimator", "pruner", "quantizer", "evaluator"] = Field(
        description="Kind of component."
    )
    plugin: str = Field(description="Component name, as listed by `compressor plugins`.")
    name: str | None = Field(
        None, description="Stage name, unique in the recipe; defaults to the component name."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Component config, validated against its schema."
    )

    @property
    def label(self) -> str:
        return self.name or self.plugin


class SearchParam(_Strict):
    """One searchable value: either `choices`, or a numeric range `low`..`high`."""

    choices: list[Any] | None = Field(None, description="Categorical values to choose from.")
    low: float | None = Field(None, description="Lower bound of a numeric range (inclusive).")
    high: float | None = Field(None, description="Upper bound of a numeric range (inclusive).")
    step: float | None = Field(None, gt=0, description="Step of a numeric range.")
    log: bool = Field(False, description="Sample the range on a log scale.")
    int: bool = Field(False, description="The range contains only integers.")

    @model_validator(mode="after")
    def _check(self) -> "SearchParam":
        has_range = self.low is not None or self.high is not None
        if self.choices is not None and has_range:
            raise ValueError("give either `choices` or `low`/`high`, not both")
        if self.choices is None and not has_range:
            raise ValueError("give `choices` or `low` and `high`")
        if self.choices is not None and len(self.choices) == 0:
            raise ValueError("`choices` is empty; list at least one value")
        if has_range:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both `low` and `high`")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        return self


class Objective(_Strict):
    metric: str = Field(description="`STAGE.METRIC`, for example `heldout.ppl_token`.")
    direction: Literal["minimize", "maximize"] = Field(description="Optimisation direction.")

    @field_validator("metric")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if "." not in value:
            raise ValueError(f"metric {value!r} must be STAGE.METRIC, for example heldout.ppl_token")
        return value


class SearchSpec(_Strict):
    """Optuna search over recipe values; keys of `space` are `--set` paths."""

    study: str | None = Field(None, description="Study name; defaults to the recipe name.")
    sampler: Literal["tpe", "nsga2", "random", "grid"] = Field(
        "tpe", description="Optuna sampler. `nsga2` suits several objectives."
    )
    seed: int = Field(0, description="Sampler seed.")
    objectives: list[Objective] = Field(min_length=1, description="Metrics to optimise.")
    space: dict[str, SearchParam] = Field(
        min_length=1, description="Map from a recipe path (as in `--set`) to its values."
    )
    trials: int = Field(
        10, ge=1,
        description="Number of trials the study should hold. Workers share it, and a rerun runs only the missing ones.",
    )
    heartbeat_interval: int = Field(
        60, ge=1, description="Seconds between a running trial's heartbeats in the study database."
    )
    grace_period: int | None = Field(
        None, ge=1,
        description="Seconds without a heartbeat after which a running trial counts as crashed and is "
        "queued again. Defaults to twice `heartbeat_interval`.",
    )


class CompareMethod(_Strict):
    plugin: str = Field(description="Estimator component name.")
    label: str | None = Field(None, description="Column label; defaults to the plugin name.")
    config: dict[str, Any] = Field(default_factory=dict, description="Estimator config.")
    seeds: list[int] | None = Field(
        None, description="Run once per seed and average (for randomised methods)."
    )


class CompareSpec(_Strict):
    """Methods and removal targets for `compressor compare`."""

    methods: list[CompareMethod] = Field(min_length=1)
    ratios: list[float] | None = Field(None, description="Fractions of layers to remove.")
    num_layers: list[int] | None = Field(None, description="Numbers of layers to remove.")

    @model_validator(mode="after")
    def _one_target(self) -> "CompareSpec":
        if (self.ratios is None) == (self.num_layers is None):
            raise ValueError("give exactly one of `ratios` or `num_layers`")
        for ratio in self.ratios or []:
            if not 0 < ratio < 1:
                raise ValueError(f"ratio {ratio} is outside (0, 1)")
        return self


class Recipe(_Strict):
    """A compression recipe: a model, its data and an ordered list of stages."""

    name: str = Field(description="Recipe name; also the default run name.")
    description: str = Field("", description="Free text shown in reports.")
    model: ModelSpec = Field(description="The model to compress (see `model` below).")
    data: DataSpec = Field(description="Calibration and held-out text (see `data` below).")
    stages: list[StageSpec] = Field(min_length=1, description="Stages, run in order.")
    output_dir: str = Field(
        "runs/{run}", description="Output folder; `{run}` is replaced by the run name."
    )
    seed: int = Field(0, description="Global seed passed to every stage.")
    db: str | None = Field(
        None, description="SQLAlchemy database URL of the store; overrides COMPRESSOR_DB."
    )
    save_model: bool = Field(True, description="Save the final model folder to `OUTPUT/model`.")
    search: SearchSpec | None = Field(None, description="Search space and objectives for `compressor search`.")
    compare: CompareSpec | None = Field(None, description="Methods and removal targets for `compressor compare`.")

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(
                f"name {value!r} may contain only letters, digits, '.', '_' and '-', "
                "because it names folders and database rows"
            )
        return value

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "Recipe":
        seen: dict[str, int] = {}
        for index, stage in enumerate(self.stages):
            if stage.label in seen:
                raise ValueError(
                    f"stages {seen[stage.label]} and {index} are both named {stage.label!r}; "
                    "give one of them a distinct `name`"
                )
            seen[stage.label] = index
        return self

    def stage_index(self, label: str) -> int:
        for index, stage in enumerate(self.stages):
            if stage.label == label:
                return index
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def fingerprint(self) -> str:
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _line_map(text: str) -> dict[Path_, int]:
    """Map every key path in a YAML document to its 1-based line number."""
    lines: dict[Path_, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, path: Path_) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                walk(item, path + (index,))

    if root is not None:
        walk(root, ())
    return lines


def _format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "(top level)"


def _locate(path: Path_, lines: dict[Path_, int]) -> str:
    probe = tuple(path)
    while probe:
        if probe in lines:
            return f" (line {lines[probe]})"
        probe = probe[:-1]
    return ""


def _fields_at(model: type[BaseModel], loc: Path_) -> list[str]:
    """Return the field names of the pydantic model reached by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            current = field.annotation
        # Unwrap Optional[X], list[X] and dict[str, X] down to a model class.
        for _ in range(3):
            args = [a for a in getattr(current, "__args__", ()) if a is not type(None)]
            if not args or (isinstance(current, type) and issubclass(current, BaseModel)):
                break
            current = args[-1]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _raise_validation(
    error: ValidationError, lines: dict[Path_, int], source: str, model: type[BaseModel], prefix: Path_ = ()
) -> None:
    problems = []
    for item in error.errors():
        own_loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = prefix + own_loc
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            valid = _fields_at(model, tuple(p for p in own_loc[:-1] if not isinstance(p, int)))
            message = "unknown key; remove it or fix its spelling"
            if valid:
                message += f" (valid keys: {', '.join(valid)})"
        elif "input" in item and item["type"] != "missing" and own_loc and not isinstance(item["input"], (dict, list)):
            message += f", got {item['input']!r}"
        problems.append(f"{source}: {_format_path(loc)}{_locate(loc, lines)}: {message}")
    raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))


def parse_override(text: str) -> tuple[Path_, Any]:
    """Parse `a.b.0.c=value`; the value is read as YAML, so `0.25`, `true` and `[1, 2]` work."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like KEY.PATH=VALUE, for example stages.0.config.ratio=0.25")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise RecipeError(f"override {text!r} has an empty key path")
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return tuple(parts), value


def apply_override(data: dict[str, Any], path: Path_, value: Any) -> None:
    """Set ``value`` at ``path`` in nested dicts and lists, creating missing mapping keys."""
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        here = _format_path(path[: depth + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise RecipeError(f"override {_format_path(path)}: index {part!r} is out of range at {here} (length {len(node)})")
            node = node[part]
        elif isinstance(node, dict):
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise RecipeError(f"override {_format_path(path)}: {here} is a {type(node).__name__}, not a mapping or list")
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or not 0 <= last < len(node):
            raise RecipeError(f"override {_format_path(path)}: index {last!r} is out of range (length {len(node)})")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {_format_path(path)}: parent is a {type(node).__name__}, not a mapping or list")


def load_recipe_text(text: str, source: str = "<recipe>", overrides: list[str] | tuple[str, ...] = (), registry=None) -> Recipe:
    """Parse, override and validate a recipe, including each stage's component config."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping with keys such as name, model, data and stages; got {type(data).__name__}")

    for override in overrides:
        path, value = parse_override(override)
        apply_override(data, path, value)

    lines = _line_map(text)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        _raise_validation(error, lines, source, Recipe)

    validate_stage_configs(recipe, registry=registry, lines=lines, source=source)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry=None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} not found; pass the path of a YAML recipe, for example recipes/llama_shapley_gptq.yaml")
    return load_recipe_text(path.read_text(), source=str(path), overrides=overrides, registry=registry)


def validate_stage_configs(recipe: Recipe, registry=None, lines: dict[Path_, int] | None = None, source: str = "<recipe>") -> None:
    """Check each stage's plugin exists for its kind and its config matches the plugin's schema.

    The validated config (with defaults filled in) replaces the raw mapping.
    """
    from compressor.errors import CompressorError
    from compressor.plugins import get_registry

    registry = registry or get_registry()
    lines = lines or {}
    for index, stage in enumerate(recipe.stages):
        path = ("stages", index)
        try:
            component = registry.get(stage.kind, stage.plugin)
        except CompressorError as exc:
            raise RecipeError(f"{source}: {_format_path(path + ('plugin',))}{_locate(path + ('plugin',), lines)}: {exc}") from None
        try:
            validated = component.config.model_validate(stage.config)
        except ValidationError as error:
            _raise_validation(error, lines, source, component.config, prefix=path + ("config",))
        stage.config = validated.model_dump(mode="json")


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def stage_config_hash(stage: StageSpec, upstream: str = "") -> str:
    payload = json.dumps({"kind": stage.kind, "plugin": stage.plugin, "config": stage.config, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def recipe_with(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Return a copy of ``recipe`` with `--set`-style paths replaced, validated again."""
    data = copy.deepcopy(recipe.to_dict())
    for key, value in overrides.items():
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        apply_override(data, path, value)
    new = Recipe.model_validate(data)
    validate_stage_configs(new)
    return new

