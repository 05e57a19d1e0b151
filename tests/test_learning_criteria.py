"""The learning benchmark's criteria (benchmarks/learning.py) on hand-made curves: no training runs here."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from learning import REGISTRY, Result, criteria, markdown, summarize  # noqa: E402

# A lucky 500 at step 2, a dip to 200 at step 7 after the windowed return settles at 500.
CURVE = [(1, 100.0), (2, 500.0), (3, 100.0), (4, 500.0), (5, 500.0), (6, 500.0), (7, 200.0), (8, 500.0)]


def test_raw_curve_reaches_at_the_first_point_and_sees_every_dip():
    assert criteria(CURVE, 475.0, window=1) == (2, 100.0, 2)


def test_window_ignores_a_single_lucky_point():
    # Means of the last 3 points: 100, 300, 233.3, 366.7, 366.7, 500, 400, 400 -> reached at step 6, lowest 400.
    first, lowest, raw_first = criteria(CURVE, 475.0, window=3)
    assert (first, raw_first) == (6, 2)
    assert lowest == pytest.approx(400.0)


def test_never_reached():
    assert criteria(CURVE, 600.0, window=3) == (None, None, None)


def test_table_counts_seeds_that_stayed_above_the_floor():
    floor = REGISTRY["ppo_cartpole"].floor
    ok = Result("ppo_cartpole", 1, 0, 1.0, 500.0, 20_000, [], None, "", floor + 10, 10_000)
    collapsed = Result("ppo_cartpole", 2, 0, 1.0, 500.0, 30_000, [], None, "", floor - 250, 30_000)
    never = Result("ppo_cartpole", 3, 0, 1.0, 300.0, None, [], None, "", None, None)
    s = summarize([ok, collapsed, never])["ppo_cartpole"]
    assert (s["reached"], s["stayed"]) == (2, 1)
    assert s["steps"][0] == pytest.approx((20_000 + 30_000 + REGISTRY["ppo_cartpole"].budget) / 3)
    assert "| 2/3 | 400 | " in markdown({"ppo_cartpole": s}, [1, 2, 3]) and "| 1/3 |" in markdown(
        {"ppo_cartpole": s}, [1, 2, 3]
    )
