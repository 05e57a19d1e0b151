"""Value-based pieces: C51 projection against a hand-computed distribution, dueling aggregation, noisy layer
noise reset and its deterministic eval mode, DQN's double/plain targets, the target-network helpers."""

import pytest
import torch

from sheeprl.algos.dqn.loss import q_loss, td_target
from sheeprl.algos.rainbow.loss import distributional_loss, project_distribution
from sheeprl.models.qheads import NoisyLinear, dueling, reset_noise
from sheeprl.utils.schedules import linear_schedule
from sheeprl.utils.targets import update_target


def test_c51_projection_hand_computed():
    support = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])  # dz = 1
    p = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2]] * 3)
    rewards = torch.tensor([0.5, 1.0, 3.0])
    discounts = torch.tensor([0.5, 0.0, 1.0])
    out = project_distribution(p, rewards, discounts, support)
    # row 0: Tz = 0.5 + 0.5 z = [0.5, 1.0, 1.5, 2.0, 2.5]; 0.5 splits 50/50 onto atoms 0 and 1, 1.0 lands on atom 1,
    # 1.5 splits onto 1 and 2, 2.0 on atom 2, 2.5 onto 2 and 3
    row0 = [0.05, 0.05 + 0.2 + 0.15, 0.15 + 0.2 + 0.1, 0.1, 0.0]
    # row 1: terminated (discount 0): all mass on r = 1.0, exactly atom 1
    row1 = [0.0, 1.0, 0.0, 0.0, 0.0]
    # row 2: Tz = 3 + z = [3, 4, 5, 6, 7] clipped to [3, 4, 4, 4, 4]
    row2 = [0.0, 0.0, 0.0, 0.1, 0.9]
    assert torch.allclose(out, torch.tensor([row0, row1, row2]), atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(3))
    # the edge atoms: a shift onto exactly v_min keeps its mass
    edge = project_distribution(torch.tensor([[1.0, 0, 0, 0, 0]]), torch.tensor([0.0]), torch.tensor([1.0]), support)
    assert torch.allclose(edge, torch.tensor([[1.0, 0, 0, 0, 0]]))


def test_distributional_loss_is_cross_entropy_of_the_taken_action():
    log_probs = torch.log_softmax(torch.randn(2, 3, 4), dim=-1)
    target = torch.softmax(torch.randn(2, 4), dim=-1)
    actions = torch.tensor([2, 0])
    loss, per_sample = distributional_loss(log_probs, actions, target, torch.tensor([1.0, 0.5]))
    expected = torch.stack([-(target[i] * log_probs[i, actions[i]]).sum() for i in range(2)])
    assert torch.allclose(per_sample, expected)
    assert loss.item() == pytest.approx(float((expected * torch.tensor([1.0, 0.5])).mean()))


def test_dueling_aggregation():
    value = torch.tensor([[1.0], [2.0]])
    advantage = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    q = dueling(value, advantage)
    assert torch.allclose(q, torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 4.0]]))
    assert torch.allclose(q.mean(-1, keepdim=True), value)  # the advantages average to 0
    # per atom (distributional): the mean runs over the actions dim, not the atoms
    v, a = torch.randn(2, 1, 5), torch.randn(2, 3, 5)
    q = dueling(v, a, action_dim=-2)
    assert torch.allclose(q.mean(1, keepdim=True), v, atol=1e-6)


def test_noisy_linear_reset_and_eval():
    torch.manual_seed(0)
    layer = NoisyLinear(4, 3, sigma0=0.5)
    assert layer.weight_sigma.eq(0.25).all()  # sigma0 / sqrt(in_features)
    x = torch.randn(5, 4)
    layer.reset_noise()
    y1, y1_again = layer(x), layer(x)
    assert torch.equal(y1, y1_again)  # the noise is fixed between resets
    eps_in = layer.eps_in.clone()
    reset_noise(torch.nn.Sequential(layer))
    assert not torch.equal(layer.eps_in, eps_in)
    assert not torch.allclose(layer(x), y1)
    # factorized noise: eps_w = f(eps_out) f(eps_in)^T with f(x) = sign(x) sqrt(|x|)
    layer.eval()
    assert torch.allclose(layer(x), x @ layer.weight_mu.T + layer.bias_mu)  # eval: the mean weights
    layer.train()
    weight = layer.weight_mu + layer.weight_sigma * torch.outer(layer.eps_out, layer.eps_in)
    assert torch.allclose(layer(x), x @ weight.T + layer.bias_mu + layer.bias_sigma * layer.eps_out, atol=1e-6)
    # the sigmas get gradients: the noise is learned
    layer(x).sum().backward()
    assert layer.weight_sigma.grad is not None and layer.weight_sigma.grad.abs().sum() > 0


def test_td_targets_plain_and_double_and_huber():
    rewards, discounts = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.0])
    next_target = torch.tensor([[1.0, 5.0], [3.0, 2.0]])
    next_online = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert td_target(rewards, discounts, next_target, None).tolist() == pytest.approx([1.0 + 0.9 * 5.0, 1.0])
    assert td_target(rewards, discounts, next_target, next_online).tolist() == pytest.approx([1.0 + 0.9 * 1.0, 1.0])
    q = torch.tensor([[0.0, 3.0], [1.0, 0.0]], requires_grad=True)
    loss, td = q_loss(q, torch.tensor([1, 0]), torch.tensor([0.5, 1.5]))
    # errors -2.5 (Huber: 2.5 - 0.5 = 2.0) and 0.5 (0.5 * 0.25 = 0.125)
    assert loss.item() == pytest.approx((2.0 + 0.125) / 2) and td.tolist() == [-2.5, 0.5]


def test_target_update_hard_and_polyak_and_epsilon_schedule():
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    update_target(online, target, 0.1)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    update_target(online, target, 1.0)
    assert torch.equal(target.weight, online.weight)
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 1000) == pytest.approx(0.1)


def test_target_values_of_a_burst_equal_one_pass_per_batch():
    """A burst's target pass over several batches gives each batch's own Q'(s'); the chunk respects its caps."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.dqn.agent import build_agent
    from sheeprl.algos.dqn.args import DQNConfig
    from sheeprl.algos.dqn.dqn import TARGET_MAX_ROWS, target_chunk, target_values

    torch.manual_seed(0)
    cfg = OmegaConf.structured(DQNConfig)
    cfg.algo.dense_units, cfg.algo.mlp_keys.encoder = 16, ["state"]
    space = gym.spaces.Dict({"state": gym.spaces.Box(-1.0, 1.0, (4,))})
    target_q = build_agent(space, gym.spaces.Discrete(3), cfg).requires_grad_(False)
    data = {"next_state": torch.randn(5, 8, 4)}
    values = target_values(target_q, data, 1, 3)
    assert values.shape == (3, 8, 3)
    for j in range(3):
        torch.testing.assert_close(values[j], target_q({"state": data["next_state"][1 + j]}))
    assert target_chunk(data, ["state"], 8) == TARGET_MAX_ROWS // 8
    frames = {"next_rgb": torch.zeros(1, 32, 4, 84, 84, dtype=torch.uint8)}
    assert target_chunk(frames, ["rgb"], 32) == 1  # an Atari batch is over the input cap alone: one at a time


def test_burst_targets_are_each_batchs_plain_dqn_target():
    """burst_targets gives, for every batch of a chunk, y = r + gamma * (1 - terminated) * max_a Q'(s', a): checked
    against hand-computed values and against td_target one batch at a time (the same bits)."""
    from sheeprl.algos.dqn.dqn import burst_targets
    from sheeprl.algos.dqn.loss import td_target

    next_q = torch.tensor([[[1.0, 3.0], [2.0, -1.0]], [[0.5, 0.25], [-2.0, -3.0]]])  # (count 2, B 2, A 2)
    data = {
        "rewards": torch.tensor([[9.0, 9.0], [1.0, 0.0], [2.0, 1.0]]),  # (steps 3, B 2): the chunk starts at 1
        "terminated": torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
    }
    y = burst_targets(next_q, data, 1, 0.5)
    expected = torch.tensor([[1.0 + 0.5 * 3.0, 0.0], [2.0 + 0.5 * 0.5, 1.0 + 0.5 * -2.0]])
    torch.testing.assert_close(y, expected)
    for j in range(2):
        one = td_target(data["rewards"][1 + j], 0.5 * (1.0 - data["terminated"][1 + j]), next_q[j], None)
        assert torch.equal(y[j], one)
