"""Test-time-training data from a task's demonstrations, augmented inference views, and voting.

Following MARC/SEAL: from ``n`` demonstrations, leave-one-out makes ``n`` tasks (``n-1`` demos as
context, the held-out demo as the query); leave-two-out makes ``C(n, 2)`` tasks with ``n-2`` demos
of context, the query being one of the two held out (alternating so each demo is used).  Each such
task is expanded by the recipe's augmentation families (identity always included), optionally
colour-permuted with shuffled demonstrations, and rendered to ``(prompt, completion)`` pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seal_lm.arc.augmentations import (
    BASIC,
    FAMILIES,
    IDENTITY,
    MAX_GRID_SIDE,
    Transform,
    augment_task,
    color_permutation,
    compose,
    shuffle_examples,
)
from seal_lm.arc.data import ArcExample, ArcTask
from seal_lm.arc.grids import Grid, format_task_prompt, split_prompt_completion
from seal_lm.arc.recipe import Recipe

__all__ = ["InferenceView", "build_ttt_examples", "inference_views", "leave_n_out_tasks", "vote"]


def leave_n_out_tasks(task: ArcTask, n: int) -> list[ArcTask]:
    """Tasks built from ``task.train`` alone, each holding out ``n`` demonstrations.

    For every ``n``-subset (in ``itertools.combinations`` order) the context is the remaining demos
    in their original order and the query is one held-out demo (the ``i % n``-th for the ``i``-th
    subset).  Empty if fewer than ``n + 1`` demos (a context must remain).
    """
    demos = task.train
    if n < 1 or len(demos) < n + 1:
        return []
    out = []
    for i, held in enumerate(itertools.combinations(range(len(demos)), n)):
        context = [d for j, d in enumerate(demos) if j not in held]
        q = held[i % n]
        out.append(ArcTask(f"{task.task_id}/l{n}o{i}", context, [demos[q]]))
    return out


def build_ttt_examples(
    task: ArcTask,
    recipe: Recipe | None,
    rng: np.random.Generator,
    max_examples: int,
    *,
    leave_out: Sequence[int] = (1,),
    n_color_perms: int = 1,
    max_side: int = MAX_GRID_SIDE,
    max_chars: int | None = None,
) -> list[tuple[str, str]]:
    """``(prompt_text, completion_text)`` TTT pairs for ``task``, at most ``max_examples`` of them.

    For each leave-``n``-out task (``n`` in ``leave_out``) and each transform of the recipe's
    families plus identity (``recipe=None``: identity only), the transformed task is kept if all its
    grids fit ``max_side``; ``n_color_perms`` extra copies each get a random colour permutation and
    shuffled demonstration order.  Un-augmented leave-out pairs come first, the rest follow in
    ``rng``-shuffled order; duplicates and pairs longer than ``max_chars`` characters (tokens <=
    characters for the grid format) are dropped.
    """
    transforms = [IDENTITY] + [t for fam in (recipe.families() if recipe else []) for t in FAMILIES[fam]]
    first: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for base in (t for n in leave_out for t in leave_n_out_tasks(task, n)):
        for tr in transforms:
            aug = augment_task(base, tr, max_side)
            if aug is None:
                continue
            variants = [aug]
            for _ in range(n_color_perms):
                perm = augment_task(aug, color_permutation(rng), max_side)
                if perm is not None:
                    variants.append(ArcTask(perm.task_id, shuffle_examples(perm.train, rng), perm.test))
            for k, v in enumerate(variants):
                q = v.test[0]
                assert q.output is not None
                pair = split_prompt_completion(v.train, q.input, q.output)
                (first if tr is IDENTITY and k == 0 else rest).append(pair)
    order = rng.permutation(len(rest))
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    for pair in first + [rest[i] for i in order]:
        if len(out) >= max_examples:
            break
        if pair in seen or (max_chars is not None and len(pair[0]) + len(pair[1]) > max_chars):
            continue
        seen.add(pair)
        out.append(pair)
    return out


@dataclass(frozen=True)
class InferenceView:
    """One augmented prompt for a test query; ``to_original`` maps its prediction back."""

    prompt: str
    transform: Transform

    def to_original(self, prediction: Grid | None) -> Grid | None:
        """Inverse-transform a predicted grid (``None`` if missing or of an impossible shape)."""
        return self.transform.invert(prediction)


def inference_views(
    task: ArcTask,
    n_views: int,
    *,
    test_index: int = 0,
    rng: np.random.Generator | None = None,
    max_side: int = MAX_GRID_SIDE,
) -> list[InferenceView]:
    """Up to ``n_views`` distinct augmented prompts for ``task.test[test_index]``.

    View 0 is the plain prompt, views 1-7 the basic transforms; further views combine identity or a
    basic transform with a random colour permutation and shuffled demonstrations (``rng``, default
    seed 0).  Views whose prompt duplicates an earlier one (symmetric grids) are skipped.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    query = ArcTask(task.task_id, task.train, [ArcExample(task.test[test_index].input)])
    geometric = [IDENTITY, *BASIC]
    views: list[InferenceView] = []
    seen: set[str] = set()
    for i in range(4 * n_views):
        if len(views) >= n_views:
            break
        tr = geometric[i % len(geometric)]
        shuffle = i >= len(geometric)
        if shuffle:
            tr = compose(tr, color_permutation(rng))
        aug = augment_task(query, tr, max_side)
        if aug is None:
            continue
        demos = shuffle_examples(aug.train, rng) if shuffle else aug.train
        prompt = format_task_prompt(demos, aug.test[0].input)
        if prompt not in seen:
            seen.add(prompt)
            views.append(InferenceView(prompt, tr))
    return views


def vote(predictions: Sequence[Grid | None], k: int = 2) -> list[Grid]:
    """The ``k`` most frequent distinct grids (``None`` ignored); ties go to the first seen."""
    counts: dict[tuple[tuple[int, ...], ...], int] = {}
    first: dict[tuple[tuple[int, ...], ...], int] = {}
    for i, p in enumerate(predictions):
        if p is None:
            continue
        key = tuple(tuple(int(c) for c in row) for row in p)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    ranked = sorted(counts, key=lambda g: (-counts[g], first[g]))
    return [[list(row) for row in g] for g in ranked[:k]]
