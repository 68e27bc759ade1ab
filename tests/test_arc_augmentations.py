"""Every augmentation is inverted exactly; size limits; task-level application."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seal_lm.arc.augmentations import (
    BASIC,
    FAMILIES,
    IDENTITY,
    augment_task,
    color_permutation,
    compose,
    shuffle_examples,
)
from seal_lm.arc.data import ArcExample, ArcTask

ALL = [IDENTITY] + [t for ts in FAMILIES.values() for t in ts]
shapes = st.tuples(st.integers(1, 10), st.integers(1, 10))
grid_arrays = arrays(np.int64, shapes, elements=st.integers(0, 9))


def test_families():
    assert set(FAMILIES) == {"basic", "size", "chain", "repeat"}
    assert [len(FAMILIES[k]) for k in ("basic", "size", "chain", "repeat")] == [7, 3, 7, 3]
    assert len({t.name for t in ALL}) == len(ALL)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
@given(g=grid_arrays)
def test_inverse_is_identity(t, g):
    out = t.forward(g)
    assert np.array_equal(t.inverse(out), g)
    assert t.invert(out.tolist()) == g.tolist()


@given(g=grid_arrays, seed=st.integers(0, 2**32 - 1))
def test_color_permutation(g, seed):
    t = color_permutation(np.random.default_rng(seed))
    out = t.forward(g)
    assert np.array_equal(t.inverse(out), g)
    assert np.array_equal(out == 0, g == 0)  # background fixed
    c = compose(BASIC[0], t, FAMILIES["size"][0])
    assert np.array_equal(c.inverse(c.forward(g)), g)


def test_concrete_transforms():
    g = np.array([[1, 2], [3, 4]])
    by = {t.name: t for t in ALL}
    assert by["rot90"].apply(g) == [[2, 4], [1, 3]]
    assert by["flip_lr"].apply(g) == [[2, 1], [4, 3]]
    assert by["flip_ud"].apply(g) == [[3, 4], [1, 2]]
    assert by["anti_transpose"].apply(g) == [[4, 2], [3, 1]]
    assert by["double_height"].apply([[1, 2]]) == [[1, 2], [1, 2]]
    assert by["double_resolution"].apply([[5]]) == [[5, 5], [5, 5]]
    assert by["tile_h"].apply([[1, 2]]) == [[1, 2, 1, 2]]
    assert by["rot90+double_resolution"].apply([[1, 2]]) == [[2, 2], [2, 2], [1, 1], [1, 1]]


def test_invert_rejects_impossible_shapes():
    by = {t.name: t for t in ALL}
    assert by["double_resolution"].invert([[1, 2, 3], [4, 5, 6]]) is None
    assert by["tile_v"].invert([[1]]) is None
    assert by["rot90"].invert(None) is None
    assert by["rot90"].invert([]) is None


def test_max_side():
    by = {t.name: t for t in ALL}
    g = np.zeros((15, 20), int)
    assert by["double_height"].fits(g) and not by["double_width"].fits(g)
    assert by["transpose+double_resolution"].fits(np.zeros((15, 15), int))
    assert not by["tile_2x2"].fits(np.zeros((16, 2), int))


def test_augment_task():
    task = ArcTask("t", [ArcExample([[1, 2]], [[3]])], [ArcExample([[4, 5]], None)])
    out = augment_task(task, FAMILIES["basic"][5])  # transpose
    assert out is not None and out.task_id == "t/transpose"
    assert out.train[0].input == [[1], [2]] and out.train[0].output == [[3]]
    assert out.test[0].input == [[4], [5]] and out.test[0].output is None
    assert task.train[0].input == [[1, 2]]  # original untouched
    big = ArcTask("b", [ArcExample([[0] * 16], [[1]])], [ArcExample([[1]], [[1]])])
    assert augment_task(big, FAMILIES["size"][0]) is None
    assert augment_task(big, IDENTITY) is not None


def test_shuffle_examples():
    xs = list(range(10))
    ys = shuffle_examples(xs, np.random.default_rng(1))
    assert sorted(ys) == xs and xs == list(range(10))
