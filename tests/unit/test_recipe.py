"""Recipe loading: strict validation, error messages with key paths and lines, overrides."""

import textwrap

import pytest

from compressor.errors import RecipeError
from compressor.recipe import apply_override, dump_recipe, load_recipe, load_recipe_text, parse_override

GOOD = textwrap.dedent(
    """\
    name: tiny
    model:
      source: some/folder
    data:
      calibration:
        source: file:/tmp/text.txt
        n_samples: 4
        seq_len: 32
    stages:
      - kind: estimator
        plugin: reverse_order
        config:
          ratio: 0.25
      - kind: pruner
        plugin: layerdrop
    """
)


def test_good_recipe_loads_and_fills_defaults():
    recipe = load_recipe_text(GOOD)

    assert recipe.name == "tiny"
    assert recipe.model.dtype == "float32"
    assert recipe.stages[0].config["ratio"] == 0.25
    assert recipe.stages[1].label == "layerdrop"
    assert "layers" in recipe.stages[1].config  # the pruner's defaults were filled in


def test_dump_then_load_round_trips():
    recipe = load_recipe_text(GOOD)
    again = load_recipe_text(dump_recipe(recipe))
    assert again.to_dict() == recipe.to_dict()


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


# Each case: recipe text, then fragments the error message must contain.
BAD_RECIPES = [
    ("unknown top-level key", GOOD + "colour: blue\n", ["colour", "unknown key", "line 16", "valid keys"]),
    ("misspelt model key", _replace("  source: some/folder\n", "  sauce: some/folder\n"), ["model.sauce", "unknown key", "line 3"]),
    ("missing model", _replace("model:\n  source: some/folder\n", ""), ["model", "Field required"]),
    ("bad dtype", _replace("  source: some/folder\n", "  source: some/folder\n  dtype: float8\n"), ["model.dtype", "line 4", "float8"]),
    ("negative samples", _replace("n_samples: 4", "n_samples: -4"), ["data.calibration.n_samples", "line 7", "-4"]),
    ("seq_len wrong type", _replace("seq_len: 32", "seq_len: long"), ["data.calibration.seq_len", "line 8", "long"]),
    ("bad bos policy", _replace("seq_len: 32", "seq_len: 32\n    bos: sometimes"), ["data.calibration.bos", "sometimes"]),
    ("empty stages", GOOD.split("stages:")[0] + "stages: []\n", ["stages", "at least 1"]),
    ("unknown stage kind", _replace("kind: pruner", "kind: distiller"), ["stages[1].kind", "line 14", "distiller"]),
    ("unknown plugin", _replace("plugin: reverse_order", "plugin: reverse_ordr"), ["stages[0].plugin", "line 11", "reverse_ordr", "available:", "reverse_order"]),
    ("plugin of wrong kind", _replace("plugin: layerdrop", "plugin: param_count"), ["stages[1].plugin", "line 15", "unknown pruner 'param_count'", "layerdrop"]),
    ("unknown config key", _replace("ratio: 0.25", "ratio: 0.25\n      ration: 0.3"), ["stages[0].config.ration", "unknown key", "line 14", "ratio"]),
    ("ratio out of range", _replace("ratio: 0.25", "ratio: 1.5"), ["stages[0].config.ratio", "line 13", "1.5"]),
    ("ratio and num_layers", _replace("ratio: 0.25", "ratio: 0.25\n      num_layers: 2"), ["stages[0].config", "not both"]),
    ("duplicate stage names", GOOD + "  - kind: pruner\n    plugin: layerdrop\n", ["both named", "layerdrop"]),
    ("bad recipe name", _replace("name: tiny", "name: my run/1"), ["name", "line 1", "letters, digits"]),
    ("empty model source", _replace("source: some/folder", "source: '  '"), ["model.source", "empty"]),
    ("not a mapping", "- just\n- a list\n", ["must be a YAML mapping", "list"]),
    ("broken yaml", "name: [unclosed\n", ["not valid YAML", "line"]),
    ("search low above high", GOOD + "search:\n  objectives: [{metric: ppl.ppl_token, direction: minimize}]\n  space:\n    stages.0.config.ratio: {low: 0.5, high: 0.1}\n",
     ["search.space", "greater than high"]),
    ("search empty choices", GOOD + "search:\n  objectives: [{metric: ppl.ppl_token, direction: minimize}]\n  space:\n    stages.0.plugin: {choices: []}\n",
     ["search.space", "empty"]),
    ("objective without stage", GOOD + "search:\n  objectives: [{metric: ppl_token, direction: minimize}]\n  space:\n    stages.0.plugin: {choices: [random]}\n",
     ["search.objectives[0].metric", "STAGE.METRIC"]),
    ("compare without target", GOOD + "compare:\n  methods: [{plugin: random}]\n", ["compare", "exactly one of"]),
]


@pytest.mark.parametrize("text, fragments", [(t, f) for _, t, f in BAD_RECIPES], ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_is_rejected_with_clear_message(text, fragments):
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, source="bad.yaml")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_bad_recipe_table_is_large_enough():
    assert len(BAD_RECIPES) >= 15


def test_missing_recipe_file_names_path(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml.*not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_override_sets_nested_value():
    recipe = load_recipe_text(GOOD, overrides=["stages.0.config.ratio=0.5", "model.dtype=bfloat16"])
    assert recipe.stages[0].config["ratio"] == 0.5
    assert recipe.model.dtype == "bfloat16"


def test_override_is_validated_like_the_file():
    with pytest.raises(RecipeError, match=r"stages\[0\].config.ratio"):
        load_recipe_text(GOOD, overrides=["stages.0.config.ratio=2"])


def test_override_index_out_of_range():
    with pytest.raises(RecipeError, match="out of range"):
        load_recipe_text(GOOD, overrides=["stages.5.config.ratio=0.2"])


def test_override_without_equals_sign():
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        parse_override("stages.0.config.ratio")


def test_override_value_is_yaml():
    path, value = parse_override("a.b=[1, 2]")
    data = {"a": {}}
    apply_override(data, path, value)
    assert data == {"a": {"b": [1, 2]}}
