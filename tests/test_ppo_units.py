"""PPO's losses and agent against hand-computed or independently computed values (torch.distributions)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sheeprl.algos.ppo.agent import build_agent
from sheeprl.algos.ppo.args import PPOConfig
from sheeprl.algos.ppo.loss import approx_kl, clip_at, entropy_loss, policy_loss, value_loss

# ----------------------------------------------------------------------------------------------- losses


def test_policy_loss_by_hand():
    # ratios 1.5 (clipped to 1.2 for A > 0), 0.5 (clipped to 0.8, but min keeps 0.5 * -1 ... for A < 0: max)
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # min(r A, clip(r) A): 1.2, 0.5, -1.5, -0.8 -> mean -0.15 -> loss 0.15
    assert policy_loss(new, old, adv, 0.2).item() == pytest.approx(-(1.2 + 0.5 - 1.5 - 0.8) / 4)


def test_clip_schedule_by_hand():
    # 4 updates: linear 0.2 * (1 - t / 4) for t = 0..3, as SB3's lin_0.2; constant stays; cosine ends near 0.
    assert [clip_at(0.2, "linear", i, 4) for i in (1, 2, 3, 4)] == pytest.approx([0.2, 0.15, 0.1, 0.05])
    assert [clip_at(0.2, "constant", i, 4) for i in (1, 4)] == [0.2, 0.2]
    assert clip_at(0.2, "cosine", 3, 4) == pytest.approx(0.2 * 0.5 * (1 + np.cos(np.pi * 0.5)))


def test_value_loss_clipping_by_hand():
    old = torch.tensor([0.0, 0.0, 0.0])
    new = torch.tensor([1.0, -0.5, 0.1])
    ret = torch.tensor([2.0, 0.0, 0.1])
    # unclipped errors: 1, 0.25, 0; clipped values (+-0.2 around old): 0.2, -0.2, 0.1 -> errors 3.24, 0.04, 0
    assert value_loss(new, old, ret, 0.2, clip_vloss=False).item() == pytest.approx(0.5 * (1 + 0.25 + 0) / 3)
    assert value_loss(new, old, ret, 0.2, clip_vloss=True).item() == pytest.approx(0.5 * (3.24 + 0.25 + 0) / 3)
    # Inside the clip range the two agree.
    small = torch.tensor([0.1, -0.1, 0.05])
    assert value_loss(small, old, ret, 0.2, True).item() == pytest.approx(
        value_loss(small, old, ret, 0.2, False).item()
    )


def test_entropy_and_kl_by_hand():
    assert entropy_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)
    log_ratio = torch.tensor([0.1, -0.2])
    expected = ((np.exp(0.1) - 1 - 0.1) + (np.exp(-0.2) - 1 + 0.2)) / 2
    assert approx_kl(log_ratio, torch.zeros(2)).item() == pytest.approx(expected, rel=1e-5)
    assert approx_kl(torch.zeros(3), torch.zeros(3)).item() == 0.0


# ----------------------------------------------------------------------------------------------- agent


def _agent(action_space: gym.Space, **algo):
    cfg = OmegaConf.structured(PPOConfig)
    for k, v in algo.items():
        cfg.algo[k] = v
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (3,), np.float32)})
    torch.manual_seed(0)
    agent = build_agent(obs_space, action_space, cfg)
    # Larger output weights than the near-uniform initialization, so that the checks below see real differences.
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.mul_(50.0)
    return agent


def test_multidiscrete_log_prob_and_entropy_match_torch_distributions():
    agent = _agent(gym.spaces.MultiDiscrete([3, 2, 4]))
    obs = {"state": torch.randn(16, 3)}
    actions = torch.stack([torch.randint(0, n, (16,)) for n in (3, 2, 4)], dim=-1)
    logp, entropy, values = agent(obs, actions)
    logits = agent.actor(agent.encoder(obs)).split([3, 2, 4], dim=-1)
    dists = [torch.distributions.Categorical(logits=lg) for lg in logits]
    expected_logp = sum(d.log_prob(actions[:, i]) for i, d in enumerate(dists))
    expected_entropy = sum(d.entropy() for d in dists)
    torch.testing.assert_close(logp, expected_logp)
    torch.testing.assert_close(entropy, expected_entropy)
    assert values.shape == (16,)
    # Rollout path: sampled actions are valid, and their log-probs are the training path's.
    sampled, sampled_logp, sampled_values = agent.act(obs)
    assert sampled.shape == (16, 3) and all((sampled[:, i] < n).all() for i, n in enumerate((3, 2, 4)))
    torch.testing.assert_close(sampled_logp, agent(obs, sampled)[0])
    torch.testing.assert_close(sampled_values, values)


def test_gaussian_log_prob_and_entropy_match_torch_distributions():
    agent = _agent(gym.spaces.Box(-2.0, 2.0, (2,), np.float32), log_std_init=-0.5)
    obs = {"state": torch.randn(8, 3)}
    actions = torch.randn(8, 2)
    logp, entropy, _ = agent(obs, actions)
    mean = agent.actor(agent.encoder(obs))
    dist = torch.distributions.Normal(mean, torch.full_like(mean, np.exp(-0.5)))
    torch.testing.assert_close(logp, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Discrete(4), gym.spaces.MultiDiscrete([3, 5]), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)],
    ids=["discrete", "multidiscrete", "box"],
)
def test_greedy_action_is_the_mode(space):
    agent = _agent(space)
    obs = {"state": torch.randn(32, 3)}
    out = agent.actor(agent.encoder(obs))
    greedy = agent.greedy(obs)
    if isinstance(space, gym.spaces.Discrete):
        assert torch.equal(greedy, out.argmax(-1))
        # The mode is the most likely action: no other action has a higher log-probability.
        all_logp = torch.stack([agent(obs, torch.full((32,), a))[0] for a in range(4)], dim=-1)
        assert torch.equal(all_logp.argmax(-1), greedy)
    elif isinstance(space, gym.spaces.MultiDiscrete):
        expected = torch.stack([lg.argmax(-1) for lg in out.split([3, 5], dim=-1)], dim=-1)
        assert torch.equal(greedy, expected)
    else:
        torch.testing.assert_close(greedy, out.clamp(-1.0, 1.0))  # the mean, clipped into the bounds
        assert greedy.abs().max() <= 1.0
    # Deterministic: the same observation gives the same action.
    assert torch.equal(agent.greedy(obs), greedy)
