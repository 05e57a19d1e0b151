"""Sum tree and prioritized replay: tree sums after vectorized updates, sampling proportions (chi-square with a
fixed seed), importance weights against their formula, max priority for new rows, checkpoints."""

import math

import pytest
import torch

from sheeprl.data.prioritized import PrioritizedReplayBuffer, beta_schedule
from sheeprl.data.sumtree import SumTree


def test_sumtree_updates_keep_every_node_the_sum_of_its_children():
    tree = SumTree(13)  # not a power of two: 16 leaves, 3 unused
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(13, (5,), generator=g)
        tree.update(idx, torch.rand(5, generator=g, dtype=torch.float64))
    for node in range(1, tree.size):
        assert tree.sums[node] == pytest.approx(float(tree.sums[2 * node] + tree.sums[2 * node + 1]), abs=1e-12)
    leaves = tree.leaves()
    assert tree.total == pytest.approx(float(leaves.sum()))
    assert tree.min == pytest.approx(float(leaves[leaves > 0].min()))
    # duplicate indices in one update: one of the values wins and the sums stay consistent
    tree.update(torch.tensor([3, 3]), torch.tensor([0.5, 0.25]))
    assert float(tree[torch.tensor([3])]) in (0.5, 0.25)
    assert tree.total == pytest.approx(float(tree.leaves().sum()))


def test_sumtree_find_walks_prefix_sums():
    tree = SumTree(4)
    tree.update(torch.arange(4), torch.tensor([1.0, 0.0, 2.0, 3.0]))
    prefixes = torch.tensor([0.0, 0.99, 1.0, 2.5, 2.99, 3.0, 5.99])
    assert tree.find(prefixes).tolist() == [0, 0, 2, 2, 2, 3, 3]  # leaf 1 (mass 0) is never found
    tree.set_leaves(torch.tensor([0.0, 0.0, 0.0, 4.0]))
    assert tree.total == 4.0 and tree.min == 4.0
    with pytest.raises(ValueError):
        tree.update(torch.tensor([0]), torch.tensor([-1.0]))
    with pytest.raises(IndexError):
        tree.update(torch.tensor([4]), torch.tensor([1.0]))


def test_sumtree_sampling_proportions_chi_square():
    priorities = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 10.0, 0.5, 7.5])
    tree = SumTree(8)
    tree.update(torch.arange(8), priorities)
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(8)
    for _ in range(100):
        counts += torch.bincount(tree.sample(1000, g), minlength=8)
    n = counts.sum()
    expected = priorities / priorities.sum() * n
    assert counts[4] == 0  # zero priority: never drawn
    mask = expected > 0
    chi2 = float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())
    # 6 degrees of freedom: the 0.999 quantile is 22.46 (stratified draws are tighter than i.i.d. ones)
    assert chi2 < 22.46, (chi2, counts, expected)


def test_per_weights_and_new_rows_at_max_priority():
    rb = PrioritizedReplayBuffer(4, n_envs=2, alpha=0.5, eps=1e-6)
    for t in range(3):
        rb.add({"x": torch.full((1, 2, 1), float(t)), "rewards": torch.zeros(1, 2)})
    assert torch.equal(rb.tree.leaves()[:6], torch.ones(6, dtype=torch.float64))  # max priority is 1 at first
    idx = torch.tensor([0, 3, 5])
    rb.update_priorities(idx, torch.tensor([3.0, -0.5, 0.0]))  # |delta|
    p = torch.tensor([3.0, 0.5, 0.0]) + 1e-6
    assert torch.allclose(rb.tree[idx], p.double() ** 0.5)
    assert rb.max_priority == pytest.approx(3.0 + 1e-6)
    rb.add({"x": torch.full((1, 2, 1), 3.0), "rewards": torch.zeros(1, 2)})  # rows 6, 7 enter at max priority
    assert torch.allclose(rb.tree[torch.tensor([6, 7])], torch.tensor(3.0 + 1e-6, dtype=torch.float64) ** 0.5)
    # importance weights: w_i = (N P(i))^-beta / max_j (N P(j))^-beta
    beta = 0.4
    sampled, w = rb.sample_indices(64, beta, torch.Generator().manual_seed(0))
    probs = rb.probabilities()
    n = int((probs > 0).sum())
    raw = (n * probs) ** -beta
    expected = raw[sampled] / raw[probs > 0].max()
    assert torch.allclose(w.double(), expected, atol=1e-6)
    assert float(w.max()) <= 1.0
    # the ring overwrites row 0..1 (time 0): they get the max priority again
    rb.add({"x": torch.full((1, 2, 1), 4.0), "rewards": torch.zeros(1, 2)})
    assert torch.allclose(rb.tree[torch.tensor([0, 1])], torch.tensor(3.0 + 1e-6, dtype=torch.float64) ** 0.5)


def test_per_alpha_zero_is_uniform_with_unit_weights():
    rb = PrioritizedReplayBuffer(8, n_envs=1, alpha=0.0)
    rb.add({"x": torch.zeros(8, 1, 1)})
    rb.update_priorities(torch.arange(8), torch.arange(8).float())
    _, w = rb.sample_indices(16, 0.7)
    assert torch.equal(w, torch.ones(16))


def test_per_state_dict_round_trip():
    rb = PrioritizedReplayBuffer(6, n_envs=1, alpha=0.6)
    rb.add({"x": torch.arange(5.0).view(5, 1, 1)})
    rb.update_priorities(torch.tensor([1, 2]), torch.tensor([5.0, 0.1]))
    state = rb.state_dict()
    other = PrioritizedReplayBuffer(6, n_envs=1, alpha=0.6)
    other.load_state_dict(state)
    assert (other.tree.sums == rb.tree.sums).all() and (other.tree.mins == rb.tree.mins).all()
    assert other.max_priority == rb.max_priority and other.pos == rb.pos
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(rb.sample_indices(8, 0.5, g1)[0], other.sample_indices(8, 0.5, g2)[0])


def test_beta_schedule_anneals_to_one():
    assert beta_schedule(0.4, 0, 100) == pytest.approx(0.4)
    assert beta_schedule(0.4, 50, 100) == pytest.approx(0.7)
    assert beta_schedule(0.4, 500, 100) == 1.0 and math.isclose(beta_schedule(0.4, 3, 0), 1.0)
