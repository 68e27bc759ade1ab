"""The ARC self-edit: a JSON recipe choosing augmentation families and TTT hyperparameters.

Canonical form (as in the SEAL paper's few-shot domain)::

    {"data_generation": {"use_basic_augmentations": true, "use_size_augmentations": false,
                         "use_chain_augmentations": false, "use_repeat_augmentations": false},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 0.0001,
                  "num_train_epochs": 2}}

:func:`parse_recipe` pulls the first valid recipe out of arbitrary model text and never raises.
The flat form (all seven keys in one object) is accepted too.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from seal_lm.arc.data import ArcExample, ArcTask
from seal_lm.arc.grids import grid_to_text

__all__ = [
    "AUG_KEYS",
    "DEFAULT_RECIPE",
    "MAX_EPOCHS",
    "MAX_RECIPE_TEXT_CHARS",
    "ORACLE_GRID",
    "Recipe",
    "STRATEGIES",
    "Strategy",
    "check_compute",
    "parse_recipe",
    "recipe_choices",
    "recipe_from_dict",
    "recipe_prompt",
    "recipe_text",
]

Strategy = Literal["train_using_all_tokens", "train_using_output_tokens"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
AUG_KEYS: tuple[str, ...] = (
    "use_basic_augmentations",
    "use_size_augmentations",
    "use_chain_augmentations",
    "use_repeat_augmentations",
)
TRAIN_KEYS: tuple[str, ...] = ("strategy", "learning_rate", "num_train_epochs")
MAX_EPOCHS = 100
MAX_RECIPE_TEXT_CHARS = 20_000
"""Longer texts are rejected outright (a recipe is ~300 characters)."""
_MAX_CANDIDATES = 64
"""At most this many ``{`` positions are tried as the start of a JSON object."""


@dataclass(frozen=True)
class Recipe:
    """A validated self-edit."""

    use_basic_augmentations: bool
    use_size_augmentations: bool
    use_chain_augmentations: bool
    use_repeat_augmentations: bool
    strategy: Strategy
    learning_rate: float
    num_train_epochs: int

    def families(self) -> list[str]:
        """Enabled augmentation family names (keys of ``augmentations.FAMILIES``)."""
        return [k.split("_")[1] for k in AUG_KEYS if getattr(self, k)]

    def to_dict(self) -> dict[str, Any]:
        """The nested paper format."""
        return {
            "data_generation": {k: getattr(self, k) for k in AUG_KEYS},
            "training": {k: getattr(self, k) for k in TRAIN_KEYS},
        }

    def to_json(self) -> str:
        """Compact JSON in the nested paper format; ``parse_recipe(r.to_json())[0] == r``."""
        return json.dumps(self.to_dict())


def recipe_from_dict(obj: Any) -> tuple[Recipe | None, str | None]:
    """Validate a decoded JSON value (nested or flat form); ``(recipe, None)`` or ``(None, reason)``."""
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    if "data_generation" in obj or "training" in obj:
        dg, tr = obj.get("data_generation"), obj.get("training")
        if not isinstance(dg, dict):
            return None, "'data_generation' missing or not an object"
        if not isinstance(tr, dict):
            return None, "'training' missing or not an object"
        flat = {**dg, **tr}
    else:
        flat = obj
    for k in AUG_KEYS:
        if k not in flat:
            return None, f"missing '{k}'"
        if type(flat[k]) is not bool:
            return None, f"'{k}' must be true or false, got {flat[k]!r:.40}"
    for k in TRAIN_KEYS:
        if k not in flat:
            return None, f"missing '{k}'"
    strategy, lr, epochs = flat["strategy"], flat["learning_rate"], flat["num_train_epochs"]
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        return None, f"'strategy' must be one of {list(STRATEGIES)}, got {strategy!r:.60}"
    if type(lr) not in (int, float) or not 0 < lr <= 1:  # also rejects NaN and inf
        return None, f"'learning_rate' must be a number in (0, 1], got {lr!r:.40}"
    if type(epochs) is not int or not 1 <= epochs <= MAX_EPOCHS:
        return None, f"'num_train_epochs' must be an integer in [1, {MAX_EPOCHS}], got {epochs!r:.40}"
    return Recipe(*(flat[k] for k in AUG_KEYS), strategy, float(lr), epochs), None


_DECODER = json.JSONDecoder()


def parse_recipe(text: str) -> tuple[Recipe | None, str | None]:
    """Find and validate the first recipe JSON object in ``text`` (prose and code fences allowed).

    Returns ``(recipe, None)`` or ``(None, reason)``; never raises.  Each ``{`` (up to 64 of them)
    is tried as the start of a JSON value with ``json`` only (``NaN``/``Infinity`` decode but fail
    validation); over-long text and over-deep nesting give a reason instead of an error.  The reason
    comes from the first object that decoded, else the first decoding error.
    """
    try:
        if not isinstance(text, str):
            return None, f"expected str, got {type(text).__name__}"
        if len(text) > MAX_RECIPE_TEXT_CHARS:
            return None, f"text too long ({len(text)} > {MAX_RECIPE_TEXT_CHARS} characters)"
        first_reason: str | None = None  # from the first object that decoded but did not validate
        first_error: str | None = None  # from the first '{' that did not decode
        start = text.find("{")
        tries = 0
        while start != -1 and tries < _MAX_CANDIDATES:
            tries += 1
            try:
                obj, _ = _DECODER.raw_decode(text, start)
            except RecursionError:
                first_error = first_error or "invalid JSON: nested too deeply"
            except ValueError as e:
                first_error = first_error or f"invalid JSON: {str(e):.80}"
            else:
                recipe, reason = recipe_from_dict(obj)
                if recipe is not None:
                    return recipe, None
                first_reason = first_reason or reason
            start = text.find("{", start + 1)
        return None, first_reason or first_error or "no JSON object found"
    except Exception as e:  # last-resort guard: parsing model output must never crash a run
        return None, f"unparseable ({type(e).__name__})"


def check_compute(recipe: Recipe, n_examples: int, max_epoch_examples: int) -> str | None:
    """``None`` if ``epochs * n_examples`` fits ``max_epoch_examples``, else the reason it does not."""
    cost = recipe.num_train_epochs * n_examples
    if cost > max_epoch_examples:
        return (
            f"compute cap: {recipe.num_train_epochs} epochs x {n_examples} examples = {cost} "
            f"> {max_epoch_examples} example-steps"
        )
    return None


DEFAULT_RECIPE = Recipe(True, True, True, True, "train_using_output_tokens", 1e-4, 2)
"""A hand-written recipe (every family, output-token loss) for the no-self-edit TTT baseline."""

_ORACLE_FAMILIES = [(True, False, False, False), (True, True, True, False), (True, True, True, True)]
ORACLE_GRID: list[Recipe] = [
    Recipe(*fam, strategy, lr, 2)
    for fam, strategy, lr in itertools.product(_ORACLE_FAMILIES, STRATEGIES, (1e-4, 1e-3))
]
"""12 recipes: {basic, basic+size+chain, all} x both strategies x lr {1e-4, 1e-3}, 2 epochs."""

_EXAMPLE = Recipe(True, False, True, False, "train_using_output_tokens", 1e-4, 2)

CHOICE_LEARNING_RATES: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
CHOICE_EPOCHS: tuple[int, ...] = (1, 2, 3, 4, 5)


def recipe_text(recipe: Recipe) -> str:
    """A recipe in the layout the prompt shows (indented JSON); ``parse_recipe`` reads it back."""
    return json.dumps(recipe.to_dict(), indent=1)


def recipe_choices(learning_rates: Sequence[float] = CHOICE_LEARNING_RATES,
                   epochs: Sequence[int] = CHOICE_EPOCHS) -> list[str]:
    """Every recipe of the grid (16 family subsets x 2 strategies x lrs x epochs) as text, for sampling
    constrained to valid recipes: a small model rarely writes the free-form JSON correctly, so each field
    is instead chosen by the model's own token probabilities among the valid values."""
    out = []
    for fams in itertools.product((True, False), repeat=len(AUG_KEYS)):
        for strategy, lr, ep in itertools.product(STRATEGIES, learning_rates, epochs):
            out.append(recipe_text(Recipe(*fams, strategy, float(lr), int(ep))))
    return out


def _show_examples(examples: Sequence[ArcExample]) -> str:
    parts = []
    for i, ex in enumerate(examples, 1):
        parts.append(f"Example {i}\ninput:\n{grid_to_text(ex.input)}\n")
        if ex.output is not None:
            parts.append(f"output:\n{grid_to_text(ex.output)}\n")
    return "".join(parts)


def recipe_prompt(task: ArcTask, max_examples: int | None = None, learning_rates: Sequence[float] | None = None,
                  epochs: Sequence[int] | None = None) -> str:
    """The self-edit prompt: the demonstrations plus the recipe schema, asking for JSON only.

    ``max_examples`` limits how many demonstrations are shown (all by default). ``learning_rates`` /
    ``epochs`` list the allowed values (constrained sampling); otherwise any value in range is asked for.
    """
    lr_line = (f"- learning_rate: one of {', '.join(json.dumps(float(x)) for x in learning_rates)}\n"
               if learning_rates else "- learning_rate: a number in (0, 1], e.g. 0.0001\n")
    ep_line = (f"- num_train_epochs: one of {', '.join(str(int(e)) for e in epochs)}\n\n"
               if epochs else f"- num_train_epochs: an integer from 1 to {MAX_EPOCHS}\n\n")
    shown = task.train if max_examples is None else task.train[:max_examples]
    return (
        "You are configuring test-time training for a model that solves a visual puzzle. "
        "Each grid is written one digit (a colour 0-9) per cell, one row per line. "
        "The demonstrations below show input grids and the output grids that a hidden rule produces.\n\n"
        f"{_show_examples(shown)}\n"
        "The model will be fine-tuned on puzzles made from these demonstrations (each one held out in "
        "turn) and on augmented copies of them. Choose the augmentations and training settings:\n"
        "- use_basic_augmentations: rotations, flips and transpositions of every grid\n"
        "- use_size_augmentations: every grid at double resolution, double height or double width\n"
        "- use_chain_augmentations: a rotation/flip followed by double resolution\n"
        "- use_repeat_augmentations: every grid tiled twice vertically, horizontally or 2x2\n"
        "- strategy: \"train_using_all_tokens\" (loss on the whole sequence) or "
        "\"train_using_output_tokens\" (loss on the answer grid only)\n"
        f"{lr_line}{ep_line}"
        "Pick augmentations that keep the rule valid (e.g. no rotations if the rule depends on "
        "direction). Answer with a single JSON object in exactly this format and nothing else:\n"
        f"{recipe_text(_EXAMPLE)}\n"
    )
