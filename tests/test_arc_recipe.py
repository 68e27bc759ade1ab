"""Recipe parsing (never raises), validation, compute cap, prompt, oracle grid."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seal_lm.arc.data import ArcExample, ArcTask
from seal_lm.arc.recipe import (
    DEFAULT_RECIPE,
    MAX_RECIPE_TEXT_CHARS,
    ORACLE_GRID,
    STRATEGIES,
    Recipe,
    check_compute,
    parse_recipe,
    recipe_prompt,
)

R = Recipe(True, False, True, False, "train_using_all_tokens", 1e-3, 3)


def nested(**over):
    d = json.loads(R.to_json())
    for k, v in over.items():
        (d["training"] if k in d["training"] else d["data_generation"])[k] = v
    return json.dumps(d)


def test_round_trip_and_format():
    d = json.loads(R.to_json())
    assert set(d) == {"data_generation", "training"}
    assert d["training"] == {"strategy": "train_using_all_tokens", "learning_rate": 1e-3, "num_train_epochs": 3}
    assert parse_recipe(R.to_json()) == (R, None)
    assert R.families() == ["basic", "chain"]
    for r in ORACLE_GRID + [DEFAULT_RECIPE]:
        assert parse_recipe(r.to_json()) == (r, None)


def test_extraction_from_prose():
    text = f"Sure! Here is my plan:\n```json\n{json.dumps(R.to_dict(), indent=2)}\n```\nGood luck {{:)"
    assert parse_recipe(text) == (R, None)
    bad = nested(num_train_epochs=0)
    assert parse_recipe(f"{{not json}} {bad} then {R.to_json()}") == (R, None)
    flat = {**R.to_dict()["data_generation"], **R.to_dict()["training"]}
    assert parse_recipe(json.dumps(flat)) == (R, None)
    assert parse_recipe(json.dumps(flat) + " trailing") == (R, None)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no JSON object"),
        ("no braces here", "no JSON object"),
        ('{"data_generation": ', "invalid JSON"),
        ('{"data_generation": {"use_basic_augmentations": tru', "invalid JSON"),
        ("[1, 2, 3]", "no JSON object"),
        ('{"a": 1}', "missing"),
        ('{"data_generation": 3, "training": {}}', "data_generation"),
        (nested(use_basic_augmentations="true"), "use_basic_augmentations"),
        (nested(use_size_augmentations=1), "use_size_augmentations"),
        (nested(strategy="train_everything"), "strategy"),
        (nested(strategy=["train_using_all_tokens"]), "strategy"),
        (nested(learning_rate=0), "learning_rate"),
        (nested(learning_rate=2.0), "learning_rate"),
        (nested(learning_rate="1e-4"), "learning_rate"),
        (nested(learning_rate=True), "learning_rate"),
        (nested(learning_rate=10**300), "learning_rate"),
        (nested(num_train_epochs=2.5), "num_train_epochs"),
        (nested(num_train_epochs=101), "num_train_epochs"),
        (nested(num_train_epochs=True), "num_train_epochs"),
        (nested(num_train_epochs=None), "num_train_epochs"),
        (nested().replace("0.001", "NaN"), "learning_rate"),
        (nested().replace("0.001", "Infinity"), "learning_rate"),
        (nested().replace("0.001", "1e999"), "learning_rate"),
        (nested().replace("3}", "1" + "0" * 5000 + "}"), "missing 'strategy'"),  # outer fails to decode
    ],
)
def test_invalid(text, needle):
    recipe, reason = parse_recipe(text)
    assert recipe is None and needle in reason, reason


def test_adversarial_inputs():
    cases = [
        "[" * 100_000,
        "{" * 10_000,
        '{"a":' + "[" * 15_000,
        '{"a":' + "[" * 5_000 + "]" * 5_000 + "}",
        '{"a": ' * 3000,
        "{" + "x" * (MAX_RECIPE_TEXT_CHARS + 1),
        "\x00{\ud800}",
        '{"data_generation": {"use_basic_augmentations": true}}' * 500,
    ]
    for text in cases:
        recipe, reason = parse_recipe(text)
        assert recipe is None and isinstance(reason, str)
    assert parse_recipe(None)[0] is None  # type: ignore[arg-type]
    # a valid recipe after deep junk is still found
    assert parse_recipe('{"a":' + "[" * 2000 + " " + R.to_json())[0] == R


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.text())
def test_never_raises_on_text(text):
    recipe, reason = parse_recipe(text)
    assert (recipe is None) != (reason is None)


@settings(max_examples=200)
@given(json_values, st.text(max_size=30))
def test_never_raises_on_json(value, junk):
    for text in (json.dumps(value), junk + json.dumps(value)[:-1], json.dumps({"training": value, "data_generation": value})):
        recipe, reason = parse_recipe(text)
        assert (recipe is None) != (reason is None)


@given(
    st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    st.sampled_from(STRATEGIES),
    st.floats(1e-8, 1.0),
    st.integers(1, 100),
)
def test_valid_recipes_round_trip(flags, strategy, lr, epochs):
    r = Recipe(*flags, strategy, lr, epochs)
    assert parse_recipe("noise " + r.to_json() + " noise") == (r, None)


def test_check_compute():
    assert check_compute(R, 10, 30) is None
    reason = check_compute(R, 11, 30)
    assert reason is not None and "33" in reason


def test_oracle_grid():
    assert 8 <= len(ORACLE_GRID) <= 16 and len(set(ORACLE_GRID)) == len(ORACLE_GRID)
    assert {r.strategy for r in ORACLE_GRID} == set(STRATEGIES)


def test_recipe_prompt():
    task = ArcTask("t", [ArcExample([[1, 2]], [[3]]), ArcExample([[4]], [[5, 6]])], [ArcExample([[7]])])
    p = recipe_prompt(task)
    assert "12\noutput:\n3" in p and "56" in p and "7" not in p.split("use_basic")[0]
    for key in ("use_basic_augmentations", "use_repeat_augmentations", "train_using_output_tokens", "num_train_epochs"):
        assert key in p
    assert "56" not in recipe_prompt(task, max_examples=1)


def test_recipe_prompt_lists_the_allowed_values_when_constrained():
    from seal_lm.arc.data import load_kaggle
    from pathlib import Path

    fix = Path(__file__).parent / "fixtures" / "arc"
    task = load_kaggle(fix / "tiny_challenges.json", fix / "tiny_solutions.json")[0]
    p = recipe_prompt(task, learning_rates=[1e-4, 1e-3], epochs=[1, 2])
    assert "one of 0.0001, 0.001" in p and "num_train_epochs: one of 1, 2" in p
    free = recipe_prompt(task)
    assert "e.g. 0.0001" in free and "from 1 to" in free
