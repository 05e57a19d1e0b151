"""Unit tests of the off-policy pieces: SAC/TD3 targets, Polyak averaging, the temperature update, the ratio."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sheeprl.algos.droq.loss import actor_loss as droq_actor_loss
from sheeprl.algos.sac.agent import QEnsemble, SACActor, polyak_update
from sheeprl.algos.sac.loss import actor_loss, critic_loss, critic_target, entropy_loss
from sheeprl.algos.td3 import loss as td3_loss
from sheeprl.data.collector import Collector
from sheeprl.utils.ratio import Ratio


def hand_made_batch():
    """Two transitions: the first ends in a terminal state, the second is cut by the time limit (truncated)."""
    rewards = torch.tensor([1.0, 2.0])
    terminated = torch.tensor([1.0, 0.0])  # truncated is not terminated: it must be bootstrapped
    next_q = torch.tensor([[10.0, 5.0], [8.0, 7.0]])  # (num_critics=2, B=2): min is [8, 5]
    return rewards, terminated, next_q


def test_sac_target_bootstraps_truncated_but_not_terminated():
    rewards, terminated, next_q = hand_made_batch()
    next_log_prob = torch.tensor([-1.0, -2.0])
    y = critic_target(rewards, next_q, next_log_prob, terminated, gamma=0.9, alpha=0.5)
    # terminated: y = r; truncated: y = r + gamma * (min Q' - alpha * log pi) = 2 + 0.9 * (5 + 1)
    assert torch.allclose(y, torch.tensor([1.0, 2.0 + 0.9 * (5.0 + 0.5 * 2.0)]))


def test_td3_target_and_smoothing():
    rewards, terminated, next_q = hand_made_batch()
    y = td3_loss.critic_target(rewards, next_q, terminated, gamma=0.9)
    assert torch.allclose(y, torch.tensor([1.0, 2.0 + 0.9 * 5.0]))
    # DDPG: one critic, no minimum
    y1 = td3_loss.critic_target(rewards, next_q[:1], terminated, gamma=0.9)
    assert torch.allclose(y1, torch.tensor([1.0, 2.0 + 0.9 * 5.0]))
    actions = torch.tensor([[0.9, -0.2]])
    noise = torch.tensor([[0.8, -0.05]])
    smoothed = td3_loss.smoothed_target_actions(actions, noise, 0.5, torch.tensor(-1.0), torch.tensor(1.0))
    assert torch.allclose(smoothed, torch.tensor([[1.0, -0.25]]))  # noise clipped to 0.5, action to the bound
    q = torch.tensor([[1.0, 3.0], [-5.0, -5.0]])
    assert td3_loss.actor_loss(q) == -2.0  # the first critic only


def test_critic_and_actor_losses():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    target = torch.tensor([1.0, 1.0])
    assert torch.isclose(critic_loss(q, target), torch.tensor((0 + 1) / 2 + (4 + 1) / 2))
    log_prob = torch.tensor([-1.0, -1.0])
    # SAC: min over the critics; DroQ: their mean
    assert torch.isclose(actor_loss(log_prob, q, 0.5), torch.tensor(((-0.5 - 1) + (-0.5 - 0)) / 2))
    assert torch.isclose(droq_actor_loss(log_prob, q, 0.5), torch.tensor(((-0.5 - 2) + (-0.5 - 1)) / 2))


def test_polyak_update():
    online = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    target = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    polyak_update(online, target, tau=0.25)
    assert torch.allclose(target[0], torch.tensor([0.25, 0.5]))
    assert torch.allclose(target[1], torch.tensor([[1.5]]))
    polyak_update(online, target, tau=1.0)  # tau = 1 copies
    assert torch.equal(target[0], online[0])


@pytest.mark.parametrize("log_prob, grows", [(2.0, True), (-3.0, False)])
def test_temperature_moves_toward_the_target_entropy(log_prob, grows):
    """Entropy below the target (log pi high) raises alpha; above it lowers alpha."""
    target_entropy = -1.0
    log_alpha = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.SGD([log_alpha], lr=0.1)
    loss = entropy_loss(log_alpha, torch.full((8,), log_prob, requires_grad=True), target_entropy)
    loss.backward()
    assert torch.isclose(log_alpha.grad, torch.tensor(-(log_prob + target_entropy)))
    opt.step()
    assert (log_alpha.item() > 0) == grows


def test_ratio_accumulates_fractions_and_resumes():
    r = Ratio(0.5)
    assert [r(1) for _ in range(4)] == [0, 1, 0, 1]
    assert Ratio(0.25)(8) == 2 and Ratio(3)(4) == 12
    r = Ratio(0.1)
    assert sum(r(1) for _ in range(100)) == 10
    a, b = Ratio(0.3), Ratio(0.3)
    a(1)
    b.load_state_dict(a.state_dict())
    assert [a(1) for _ in range(10)] == [b(1) for _ in range(10)]
    with pytest.raises(ValueError):
        Ratio(0)


def test_q_ensemble_members_are_independent_mlps_and_detach_params():
    torch.manual_seed(0)
    ens = QEnsemble(5, 3, [16, 16], "relu", dropout=0.0, layer_norm=True)
    obs, act = torch.randn(4, 3), torch.randn(4, 2)
    q = ens(obs, act)
    assert q.shape == (3, 4)
    # member 1 computed by hand equals the batched result
    x = torch.cat([obs, act], -1)
    for i in range(2):
        x = x @ ens.weights[i][1] + ens.biases[i][1]
        x = torch.relu(torch.nn.functional.layer_norm(x, x.shape[-1:]) * ens.ln_weights[i][1] + ens.ln_biases[i][1])
    assert torch.allclose(q[1], (x @ ens.weights[2][1] + ens.biases[2][1]).squeeze(-1), atol=1e-5)
    # detach_params: gradients reach the actions, never the critic's weights
    act.requires_grad_(True)
    ens(obs, act, detach_params=True).sum().backward()
    assert act.grad is not None and all(p.grad is None for p in ens.parameters())


def test_sac_actor_actions_within_bounds_and_log_prob_finite():
    import gymnasium as gym

    space = gym.spaces.Box(np.array([-2.0, 0.0], dtype=np.float32), np.array([2.0, 1.0], dtype=np.float32))
    actor = SACActor(["state"], 3, space, [32])
    actions, log_prob = actor(torch.randn(64, 3) * 10)
    assert actions.shape == (64, 2) and torch.isfinite(log_prob).all()
    assert (actions[:, 0].abs() <= 2).all() and (actions[:, 1] >= 0).all() and (actions[:, 1] <= 1).all()
    assert torch.isclose(actor.log_scale_sum, torch.tensor(math.log(2.0) + math.log(0.5)))


def test_real_next_obs_uses_final_observation_at_episode_ends():
    next_obs = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # env 1 already shows the next episode's first obs
    infos = {
        "_final_obs": np.array([False, True]),
        "final_obs": np.array([None, {"state": np.array([9.0, 9.0])}], dtype=object),
    }
    collector = Collector.__new__(Collector)
    collector.obs_fn = lambda o: torch.as_tensor(o["state"], dtype=torch.float32)
    real = collector._real_next(next_obs, infos)
    assert torch.equal(real, torch.tensor([[1.0, 1.0], [9.0, 9.0]]))
    assert torch.equal(next_obs[1], torch.tensor([2.0, 2.0]))  # the observation the policy acts on is untouched


def test_tanh_normal_rsample_log_prob_matches_torch_distributions():
    from torch.distributions import Normal, TanhTransform

    from sheeprl.utils.distributions import tanh_normal_rsample

    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3), torch.randn(64, 3).clamp(-3, 1)
    torch.manual_seed(1)
    action, log_prob = tanh_normal_rsample(mean, log_std)
    torch.manual_seed(1)  # the same noise: u = mean + std * eps
    u = mean + torch.randn_like(mean) * log_std.exp()
    assert torch.allclose(action, torch.tanh(u))
    # log pi(a) = log N(u) - log |d tanh(u) / du|, computed by torch.distributions on u (no atanh round trip)
    expected = Normal(mean, log_std.exp()).log_prob(u) - TanhTransform().log_abs_det_jacobian(u, torch.tanh(u))
    assert torch.allclose(log_prob, expected.sum(-1), atol=1e-4)


def test_tanh_normal_rsample_gradients_match_the_textbook_formula():
    """log N(u) written with eps (no division by std) has the gradients of log N((u - mean) / std)."""
    from sheeprl.utils.distributions import normal_log_prob, tanh_normal_rsample

    mean = torch.randn(16, 2, requires_grad=True)
    log_std = (0.3 * torch.randn(16, 2)).requires_grad_(True)
    torch.manual_seed(3)
    action, log_prob = tanh_normal_rsample(mean, log_std)
    grads = torch.autograd.grad((log_prob + action.sum(-1)).sum(), [mean, log_std])
    torch.manual_seed(3)
    u = mean + torch.randn_like(mean) * log_std.exp()
    reference = normal_log_prob(mean, log_std, u) - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    expected = torch.autograd.grad((reference + torch.tanh(u).sum(-1)).sum(), [mean, log_std])
    assert torch.allclose(log_prob, reference, atol=1e-5)
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu", "silu", "gelu", "leaky_relu"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_q_ensemble_in_place_activations_match_a_per_member_reference(activation, layer_norm):
    """Values and gradients (weights and actions) of the batched ensemble equal member-by-member nn ops."""
    from sheeprl.models import get_activation

    torch.manual_seed(0)
    ens = QEnsemble(5, 2, [8, 8], activation, layer_norm=layer_norm)
    obs, act = torch.randn(4, 3), torch.randn(4, 2, requires_grad=True)
    q = ens(obs, act)
    q.sum().backward()
    got = [act.grad.clone()] + [w.grad.clone() for w in ens.weights]
    act.grad = None
    ens.zero_grad(set_to_none=True)
    f = get_activation(activation)()
    members = []
    for m in range(2):
        x = torch.cat([obs, act], -1)
        for i in range(2):
            x = x @ ens.weights[i][m] + ens.biases[i][m]
            if layer_norm:
                x = F.layer_norm(x, x.shape[-1:]) * ens.ln_weights[i][m] + ens.ln_biases[i][m]
            x = f(x)
        members.append((x @ ens.weights[2][m] + ens.biases[2][m]).squeeze(-1))
    reference = torch.stack(members)
    reference.sum().backward()
    assert torch.allclose(q, reference, atol=1e-6)
    for g, e in zip(got, [act.grad] + [w.grad for w in ens.weights], strict=True):
        assert torch.allclose(g, e, atol=1e-5)
