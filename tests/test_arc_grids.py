"""Grid text format: round trips, malformed text, prompt layout."""

from hypothesis import given, settings
from hypothesis import strategies as st

from seal_lm.arc.data import ArcExample
from seal_lm.arc.grids import (
    format_completion,
    format_example,
    format_query,
    format_task_prompt,
    grid_to_text,
    parse_completion,
    split_prompt_completion,
    text_to_grid,
)


@st.composite
def grids(draw, max_side: int = 10):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return draw(st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h))


@given(grids())
def test_round_trip(g):
    text = grid_to_text(g)
    assert text_to_grid(text) == g
    assert text_to_grid(text + "\n") == g
    assert parse_completion(format_completion(g) + "input:\n12\n") == g


def test_format():
    assert grid_to_text([[1, 2], [3, 0]]) == "12\n30"
    assert format_example([[1]], [[2, 3]]) == "input:\n1\noutput:\n23\n"
    assert format_query([[1]]) + format_completion([[2, 3]]) == format_example([[1]], [[2, 3]])


def test_prompt_and_split():
    demos = [ArcExample([[1]], [[2]]), ArcExample([[3]], [[4]])]
    prompt, completion = split_prompt_completion(demos, [[5]], [[6]])
    assert prompt == "input:\n1\noutput:\n2\ninput:\n3\noutput:\n4\ninput:\n5\noutput:\n"
    assert prompt == format_task_prompt(demos, [[5]])
    assert completion == "6\n"


def test_malformed_returns_none():
    for bad in ["", "   ", "\n\n", "12\n3", "1a\n22", "12\n\n34", "-1", "1 2", "output:", "1.0"]:
        assert text_to_grid(bad) is None, bad
    assert text_to_grid(None) is None  # type: ignore[arg-type]
    assert parse_completion("no grid here") is None
    assert parse_completion("12\n345\n") is None
    assert parse_completion("\n12\r\n34\n\ninput:") == [[1, 2], [3, 4]]


@settings(max_examples=300)
@given(st.text())
def test_text_to_grid_never_raises(text):
    for fn in (text_to_grid, parse_completion):
        g = fn(text)
        assert g is None or (g and all(len(r) == len(g[0]) and all(0 <= c <= 9 for c in r) for r in g))
