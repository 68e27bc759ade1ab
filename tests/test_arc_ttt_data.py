"""Leave-n-out tasks, TTT pair building, inference views and voting."""

from math import comb

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from seal_lm.arc.data import ArcExample, ArcTask
from seal_lm.arc.grids import format_example, parse_completion, text_to_grid
from seal_lm.arc.recipe import Recipe
from seal_lm.arc.ttt_data import build_ttt_examples, inference_views, leave_n_out_tasks, vote

ALL = Recipe(True, True, True, True, "train_using_output_tokens", 1e-4, 1)


def make_task(n_demos: int, side: int = 3, seed: int = 0) -> ArcTask:
    rng = np.random.default_rng(seed)
    demos = []
    for _ in range(n_demos):
        g = rng.integers(0, 10, (side, side))
        demos.append(ArcExample(g.tolist(), np.fliplr(g).tolist()))
    q = rng.integers(0, 10, (side, side))
    return ArcTask("t", demos, [ArcExample(q.tolist(), np.fliplr(q).tolist())])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_leave_out_sizes(n):
    task = make_task(n)
    loo = leave_n_out_tasks(task, 1)
    lto = leave_n_out_tasks(task, 2)
    assert len(loo) == (n if n >= 2 else 0)
    assert len(lto) == (comb(n, 2) if n >= 3 else 0)
    assert all(len(t.train) == n - 1 and len(t.test) == 1 for t in loo)
    assert all(len(t.train) == n - 2 for t in lto)
    for t in loo + lto:
        assert t.test[0] in task.train and t.test[0] not in t.train
    if n >= 2:
        assert [t.test[0] for t in loo] == task.train
    if n >= 3:
        assert {id(t.test[0]) for t in lto} == {id(d) for d in task.train}


def test_build_identity_first_and_consistent():
    task = make_task(4)
    rng = np.random.default_rng(0)
    pairs = build_ttt_examples(task, ALL, rng, 1000)
    assert len(pairs) == len(set(pairs)) > 4 * 10
    loo = leave_n_out_tasks(task, 1)
    for (prompt, completion), t in zip(pairs[:4], loo):  # un-augmented leave-one-out pairs come first
        assert prompt.startswith(format_example(t.train[0].input, t.train[0].output))
        assert text_to_grid(completion) == t.test[0].output
    for prompt, completion in pairs:
        assert prompt.endswith("output:\n") and prompt.count("input:\n") == 4
        assert parse_completion(completion) is not None


def test_build_respects_recipe_cap_and_size():
    task = make_task(3)
    rng = np.random.default_rng(0)
    only_id = build_ttt_examples(task, None, rng, 100, n_color_perms=0)
    assert len(only_id) == 3
    basic = Recipe(True, False, False, False, "train_using_all_tokens", 1e-4, 1)
    assert len(build_ttt_examples(task, basic, rng, 100, n_color_perms=0)) == 3 * 8
    assert len(build_ttt_examples(task, ALL, rng, 7)) == 7
    assert len(build_ttt_examples(task, ALL, rng, 1000, leave_out=(1, 2))) > len(build_ttt_examples(task, ALL, rng, 1000))
    big = make_task(3, side=16)
    pairs = build_ttt_examples(big, ALL, rng, 1000, n_color_perms=0)
    assert len(pairs) == 3 * 8  # size/chain/repeat all exceed 30 cells per side
    assert all(len(row) <= 30 for p, c in pairs for row in (p + c).split("\n"))
    short = build_ttt_examples(task, ALL, rng, 1000, max_chars=60)
    assert all(len(p) + len(c) <= 60 for p, c in short)
    assert build_ttt_examples(make_task(1), ALL, rng, 100) == []


def test_build_is_seeded():
    task = make_task(3)
    a = build_ttt_examples(task, ALL, np.random.default_rng(5), 50)
    b = build_ttt_examples(task, ALL, np.random.default_rng(5), 50)
    assert a == b


def test_inference_views_invert_to_answer():
    task = make_task(3, side=4)
    truth = task.test[0].output
    views = inference_views(task, 12, rng=np.random.default_rng(1))
    assert len(views) == 12 and len({v.prompt for v in views}) == 12
    assert views[0].transform.name == "identity"
    for v in views:
        assert v.prompt.endswith("output:\n")
        answer_in_view = v.transform.apply(truth)  # what a perfect model would write for this view
        assert v.to_original(answer_in_view) == truth
        assert v.to_original(None) is None


def test_inference_views_dedup_symmetric():
    sym = ArcTask("s", [ArcExample([[0, 0], [0, 0]], [[0]])], [ArcExample([[0, 0], [0, 0]])])
    views = inference_views(sym, 8)
    assert len(views) == 1


def test_vote():
    a, b, c = [[1]], [[2]], [[3, 3]]
    assert vote([]) == []
    assert vote([None, None]) == []
    assert vote([a, None, b, b, a, c, b]) == [b, a]
    assert vote([c, a, b]) == [c, a]  # tie: first seen wins
    assert vote([a, a, None]) == [a]
    assert vote([b, a, a, b], k=1) == [b]
    assert vote([np.array([[1]]), [[1]]]) == [[[1]]]


@given(st.lists(st.one_of(st.none(), st.sampled_from([[[1]], [[2]], [[1, 2]], [[3], [4]]])), max_size=20))
def test_vote_properties(preds):
    out = vote(preds)
    counts = [sum(p == g for p in preds) for g in out]
    assert len(out) == min(2, len({str(p) for p in preds if p is not None}))
    assert counts == sorted(counts, reverse=True)
    rest = [p for p in preds if p is not None and p not in out]
    assert all(sum(q == p for q in preds) <= min(counts) for p in rest)
