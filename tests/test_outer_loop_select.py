"""ReST-EM selection logic and the continual-learning metrics."""

import numpy as np
import pytest

from seal_lm.knowledge.continual import continual_metrics
from seal_lm.outer_loop import select


def test_top1_picks_best_and_breaks_ties_by_first_sample():
    rewards = {"a": [(0, 0.2), (1, 0.6), (2, 0.6)], "b": [(0, None), (1, 0.0)], "c": [(0, None)]}
    kept = select(rewards, {"a": 0.2, "b": 0.0, "c": 0.0}, "top1")
    assert kept == {"a": [1], "b": [1], "c": []}


def test_top1_with_min_gain_and_threshold_mode():
    rewards = {"a": [(0, 0.4), (1, 0.6)], "b": [(0, 0.2), (1, 0.1)]}
    base = {"a": 0.4, "b": 0.2}
    assert select(rewards, base, "top1", min_gain=0.1) == {"a": [1], "b": []}
    assert select(rewards, base, "threshold") == {"a": [1], "b": []}
    assert select({"a": [(0, 0.5), (1, 0.7), (2, 0.3)]}, {"a": 0.4}, "threshold") == {"a": [0, 1]}
    with pytest.raises(ValueError):
        select(rewards, base, "best-of-all")
    solved = {"t1": [(0, 1.0), (1, 0.0), (2, 1.0)], "t2": [(0, 0.0)]}
    assert select(solved, {"t1": 1.0, "t2": 0.0}, "reward") == {"t1": [0, 2], "t2": []}


def test_continual_metrics_against_hand_computed_matrix():
    nan = np.nan
    R = np.array([[0.6, nan, nan],
                  [0.4, 0.8, nan],
                  [0.2, 0.6, 1.0]])
    m = continual_metrics(R)
    assert m["final_mean"] == pytest.approx((0.2 + 0.6 + 1.0) / 3)
    # BWT: ((0.2-0.6) + (0.6-0.8)) / 2 = -0.3
    assert m["backward_transfer"] == pytest.approx(-0.3)
    # forgetting: passage 0: max(0.6, 0.4) - 0.2 = 0.4; passage 1: max(0.8) - 0.6 = 0.2 -> 0.3
    assert m["forgetting"] == pytest.approx(0.3)


def test_reward_spread():
    from seal_lm.outer_loop import reward_spread

    rewards = {"a": [(0, 0.2), (1, 0.4)], "b": [(0, 0.0), (1, None), (2, 0.0)], "c": [(0, None)]}
    out = reward_spread(rewards, {"a": 0.3, "b": 0.0, "c": 0.1})
    assert out["contexts_best_beats_baseline"] == 1  # only a's best (0.4) beats its baseline
    assert abs(out["within_context_std"] - (0.1 + 0.0) / 2) < 1e-9
