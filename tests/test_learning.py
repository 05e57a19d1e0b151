"""Learning tests through the benchmark harness (benchmarks/learning.py), on fewer seeds than the benchmark.

What is checked is what a user watches: the training return ``Rewards/rew_avg`` of the stochastic policy (averaged
over the entry's window of logged points) reaches the threshold within the budget on every seed and never falls
below the entry's floor afterwards (no collapse), and the final greedy evaluation ``Test/rew_avg`` is solved too.
"""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from learning import REGISTRY, run_many  # noqa: E402

pytestmark = pytest.mark.learning


@pytest.mark.parametrize(
    "entry, budget, reach",
    [
        ("ppo_cartpole", 100_000, 50_000),
        pytest.param("ppo_decoupled_cartpole", 100_000, 60_000, marks=pytest.mark.distributed),
    ],
)
def test_ppo_defaults_solve_cartpole_on_every_seed(entry, budget, reach, tmp_path):
    """``ppo --env_id CartPole-v1`` with its defaults (no preset): the training return, averaged over 5 logged
    windows as the benchmark reads it, reaches 475 within ``reach`` steps (issue 13: 50k, decoupled 60k), never
    falls below the floor (400) afterwards, and the greedy return is solved, on seeds 1 and 2, at the benchmark's
    budget (100k steps; the benchmark runs seeds 1-10). The budget is the run's length, so it sets how fast the lr and the clip anneal: a shorter
    test budget would test other settings than the ones the README measures."""
    results = run_many([entry], [1, 2], tmp_path, jobs=2, budget=budget)
    e = REGISTRY[entry]
    for r in results:
        assert r.returncode == 0, r.stderr_tail
        assert r.first_step is not None and r.first_step <= reach, (r.seed, r.first_step, r.curve)
        assert r.min_after >= e.floor, f"seed {r.seed} collapsed to {r.min_after:.0f} after {r.first_step}: {r.curve}"
        assert r.final_greedy is not None and r.final_greedy >= e.threshold, (r.seed, r.final_greedy)
