"""Few-shot ARC as a SEAL domain: task -> recipe (JSON self-edit) -> test-time LoRA -> pass@2 on the test.

The self-edit is a recipe (recipe.py) choosing augmentation families and TTT hyperparameters. Its
training plan is the task's leave-one-out (and leave-two-out) puzzles expanded by those families
(ttt_data.py); an over-budget or unparseable recipe is invalid (reward 0, reason recorded), as in the
paper. The reward is binary: 1 if every test output is among the top-2 voted predictions over
augmented inference views, else 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..engine import Engine, GenerationConfig, TrainPlan, chat_prompt
from .data import ArcTask
from .grids import Grid, parse_completion
from .recipe import (CHOICE_EPOCHS, CHOICE_LEARNING_RATES, DEFAULT_RECIPE, check_compute, parse_recipe,
                     recipe_choices, recipe_prompt)
from .ttt_data import build_ttt_examples, inference_views, vote

MAX_ANSWER_TOKENS = 31 * 30
"""A 30x30 grid: 900 digits + 30 row breaks (grids.py: one token per cell and per row)."""


def answer_token_bound(task: ArcTask) -> int:
    """Max new tokens for `task`'s answers: enough for the largest output its demonstrations suggest.

    The output shape is guessed two ways, and the larger is taken per side: the largest demonstration
    output, and the test input scaled as the demonstrations scale theirs (covers tasks whose output
    size follows the input). The count is for the transposed shape too (views transpose), plus 25%
    slack for content-dependent sizes; capped at a 30x30 grid."""
    sh = max(len(e.output) / len(e.input) for e in task.train if e.output is not None)
    sw = max(len(e.output[0]) / len(e.input[0]) for e in task.train if e.output is not None)
    dh = max(len(e.output) for e in task.train if e.output is not None)
    dw = max(len(e.output[0]) for e in task.train if e.output is not None)
    need = 0
    for ex in task.test:
        h = min(30, max(dh, math.ceil(len(ex.input) * sh), len(ex.input)))
        w = min(30, max(dw, math.ceil(len(ex.input[0]) * sw), len(ex.input[0])))
        need = max(need, h * w + max(h, w))
    return min(MAX_ANSWER_TOKENS, max(16, math.ceil(1.25 * need) + 2))


def _key(g: Grid) -> tuple:
    return tuple(tuple(r) for r in g)


@dataclass
class ArcDomain:
    """How ARC recipes are asked for, turned into TTT data and rewarded."""

    n_views: int = 4
    """Augmented inference views per test input (plain prompt first, then rotations/flips)."""
    max_examples: int = 250
    """At most this many TTT sequences per recipe (paper: 250)."""
    max_epoch_examples: int = 750
    """Compute cap: a recipe with epochs x sequences above this is invalid (paper: 375 steps of batch 2)."""
    leave_out: tuple[int, ...] = (1, 2)
    """Held-out demonstrations per TTT puzzle (paper: leave-one-out and leave-two-out)."""
    n_color_perms: int = 1
    """Colour-permuted (and demo-shuffled) copies of every augmented puzzle."""
    max_seq_chars: int | None = 2048
    """Drop TTT sequences longer than this many characters (>= their tokens), so none is truncated."""
    prompt_demos: int | None = None
    """Demonstrations shown in the recipe prompt (None: all)."""
    eos_text: str = ""
    """Appended to every TTT answer (the tokenizer's EOS), so an adapted model stops after the grid."""
    answer_batch_size: int = 32
    """Rows per batch of the greedy answer decode."""
    answer_compute_dtype: str = "auto"
    """Dtype of the answer decode (GenerationConfig.compute_dtype; runs pass their generation's)."""
    recipe_format: str = "constrained"
    """constrained: recipes are sampled only among valid ones (recipe.recipe_choices); free: free text
    parsed as JSON (the paper; a 135M model rarely writes it validly)."""
    recipe_learning_rates: tuple[float, ...] = CHOICE_LEARNING_RATES
    """constrained: the learning rates a recipe may choose."""
    recipe_epochs: tuple[int, ...] = CHOICE_EPOCHS
    """constrained: the epoch counts a recipe may choose."""

    # -- Domain protocol ------------------------------------------------------------------
    def context_id(self, task: ArcTask) -> str:
        return task.task_id

    def self_edit_choices(self) -> list[str] | None:
        if self.recipe_format == "free":
            return None
        if self.recipe_format != "constrained":
            raise ValueError(f"recipe_format must be 'constrained' or 'free', got {self.recipe_format!r}")
        return recipe_choices(self.recipe_learning_rates, self.recipe_epochs)

    def self_edit_prompt(self, tokenizer, context: ArcTask) -> str:
        constrained = self.recipe_format == "constrained"
        return chat_prompt(tokenizer, recipe_prompt(context, self.prompt_demos,
                                                    self.recipe_learning_rates if constrained else None,
                                                    self.recipe_epochs if constrained else None))

    def training_plan(self, context: ArcTask, self_edit: str | None, seed: int) -> TrainPlan | str:
        if self_edit is None:
            recipe = DEFAULT_RECIPE
        else:
            recipe, reason = parse_recipe(self_edit)
            if recipe is None:
                return f"invalid recipe: {reason}"
        pairs = build_ttt_examples(context, recipe, np.random.default_rng(seed), self.max_examples,
                                   leave_out=self.leave_out, n_color_perms=self.n_color_perms,
                                   max_chars=self.max_seq_chars)
        if not pairs:
            return f"no TTT sequences: {len(context.train)} demonstration(s) (need 2) or all too long"
        over = check_compute(recipe, len(pairs), self.max_epoch_examples)
        if over:
            return over
        if recipe.strategy == "train_using_all_tokens":
            examples = [("", p + c + self.eos_text) for p, c in pairs]
        else:  # train_using_output_tokens: the prompt is masked, loss on the answer grid only
            examples = [(p, c + self.eos_text) for p, c in pairs]
        return TrainPlan(examples=examples, learning_rate=recipe.learning_rate, epochs=recipe.num_train_epochs,
                         seed=seed)

    def evaluate(self, engine: Engine, contexts: Sequence[ArcTask], slots: Sequence[int | None]) -> list[dict]:
        prompts: list[str] = []
        adapters: list[int | None] = []
        owners: list[tuple[int, int, int]] = []  # (context, test index, view index) of each row
        views_of: dict[tuple[int, int], list] = {}
        for i, (task, slot) in enumerate(zip(contexts, slots)):
            for t in range(len(task.test)):
                views = inference_views(task, self.n_views, test_index=t)
                views_of[(i, t)] = views
                for v, view in enumerate(views):
                    prompts.append(view.prompt)
                    adapters.append(slot)
                    owners.append((i, t, v))
        # One decode for every view of every task: max_new_tokens is the largest task's bound.
        cfg = GenerationConfig(max_new_tokens=max((answer_token_bound(c) for c in contexts), default=16),
                               temperature=0.0, batch_size=self.answer_batch_size,
                               compute_dtype=self.answer_compute_dtype)
        t0 = time.perf_counter()
        texts, _ = engine.generate(prompts, cfg, adapters=adapters) if prompts else ([], 0)
        answer_s = time.perf_counter() - t0
        raw: dict[tuple[int, int], list[str]] = {}
        for (i, t, v), text in zip(owners, texts):
            raw.setdefault((i, t), []).append(text)
        out = []
        for i, task in enumerate(contexts):
            tests, solved, known = [], True, True
            for t, ex in enumerate(task.test):
                preds = []
                for view, text in zip(views_of[(i, t)], raw.get((i, t), [])):
                    try:
                        preds.append(view.to_original(parse_completion(text)))
                    except Exception:  # never let a malformed prediction crash a run
                        preds.append(None)
                top2 = vote(preds, k=2)
                ok = None if ex.output is None else any(_key(g) == _key(ex.output) for g in top2)
                known = known and ok is not None
                solved = solved and bool(ok)
                votes = {}
                for p in preds:
                    if p is not None:
                        votes[str(_key(p))] = votes.get(str(_key(p)), 0) + 1
                tests.append({"correct": ok, "top2": top2, "n_parsed": sum(p is not None for p in preds),
                              "votes": sorted(votes.values(), reverse=True),
                              "predictions": preds, "raw": [s[:300] for s in raw.get((i, t), [])]})
            n_rows = sum(len(views_of[(i, t)]) for t in range(len(task.test)))
            out.append({
                # A test output that is not known cannot be graded: no score rather than a wrong one.
                "score": (1.0 if solved else 0.0) if known else None,
                "solved": solved if known else None,
                "tests": tests,
                "answer_s": answer_s * n_rows / max(len(prompts), 1),
                "grade_s": 0.0,
            })
        return out
