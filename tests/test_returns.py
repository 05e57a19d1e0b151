"""Return estimators against hand-computed values, on a rollout with a truncation, a termination and a cut.

Rollout (gamma 0.9, lambda 0.8), one env:
  t=0 r=1 V=0.5            same episode continues
  t=1 r=2 V=1.0 truncated  bootstrap V(final obs)=3.0
  t=2 r=3 V=1.5 terminated nothing bootstrapped
  t=3 r=4 V=2.0            the rollout ends; V(next obs)=5.0
"""

import pytest
import torch

from sheeprl.utils.returns import discounted_returns, gae, lambda_returns, next_values_from_rollout, nstep_targets

GAMMA, LAMBDA = 0.9, 0.8


def rollout(n_envs: int = 1):
    col = lambda xs: torch.tensor(xs, dtype=torch.float32).unsqueeze(1).repeat(1, n_envs)  # noqa: E731
    rewards = col([1, 2, 3, 4])
    values = col([0.5, 1.0, 1.5, 2.0])
    terminated = col([0, 0, 1, 0]).bool()
    dones = col([0, 1, 1, 0]).bool()
    bootstrap = col([0, 3.0, 0, 0])
    last_value = torch.full((n_envs,), 5.0)
    return rewards, values, terminated, dones, bootstrap, last_value


def test_next_values_use_the_real_final_observation():
    _, values, _, dones, bootstrap, last = rollout()
    nv = next_values_from_rollout(values, last, dones, bootstrap)
    assert nv.squeeze(1).tolist() == [1.0, 3.0, 0.0, 5.0]


def test_gae_matches_hand_computation():
    rewards, values, terminated, dones, bootstrap, last = rollout(n_envs=3)
    nv = next_values_from_rollout(values, last, dones, bootstrap)
    adv, ret = gae(rewards, values, nv, terminated, dones, GAMMA, LAMBDA)
    # deltas: 1+0.9*1-0.5=1.4, 2+0.9*3-1=3.7, 3-1.5=1.5, 4+0.9*5-2=6.5; A0 = 1.4 + 0.72*3.7
    expected = torch.tensor([4.064, 3.7, 1.5, 6.5])
    for env in range(3):
        assert torch.allclose(adv[:, env], expected, atol=1e-5)
        assert torch.allclose(ret[:, env], expected + values[:, env], atol=1e-5)


def test_gae_equals_explicit_sum_of_discounted_deltas():
    torch.manual_seed(0)
    T, N = 12, 4
    rewards, values = torch.randn(T, N), torch.randn(T, N)
    dones = torch.rand(T, N) < 0.2
    terminated = dones & (torch.rand(T, N) < 0.5)
    nv = torch.randn(T, N) * (~terminated)
    adv, _ = gae(rewards, values, nv, terminated, dones, GAMMA, LAMBDA)
    deltas = rewards + GAMMA * nv * (~terminated) - values
    for n in range(N):
        for t in range(T):
            total, coef = 0.0, 1.0
            for k in range(t, T):
                total += coef * deltas[k, n].item()
                if dones[k, n]:
                    break
                coef *= GAMMA * LAMBDA
            assert adv[t, n].item() == pytest.approx(total, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_numpy_path_equals_the_torch_path(dtype):
    """CPU rollouts take a numpy recursion; the torch one (GPU tensors, or inputs with a graph) gives the same."""
    torch.manual_seed(1)
    T, N = 9, 3
    rewards, values = torch.randn(T, N, dtype=dtype), torch.randn(T, N, dtype=dtype)
    dones = torch.rand(T, N) < 0.3
    terminated = dones & (torch.rand(T, N) < 0.5)
    nv = torch.randn(T, N, dtype=dtype)
    adv, ret = gae(rewards, values, nv, terminated, dones, GAMMA, LAMBDA)  # numpy
    adv_t, ret_t = gae(rewards, values.requires_grad_(), nv, terminated, dones, GAMMA, LAMBDA)  # torch
    assert adv.dtype == adv_t.dtype == dtype and not adv_t.requires_grad
    torch.testing.assert_close(adv, adv_t)
    torch.testing.assert_close(ret, ret_t.detach())


def test_lambda_one_and_zero_limits():
    rewards, values, terminated, dones, bootstrap, last = rollout()
    nv = next_values_from_rollout(values, last, dones, bootstrap)
    _, ret1 = gae(rewards, values, nv, terminated, dones, GAMMA, 1.0)
    assert torch.allclose(ret1, discounted_returns(rewards, nv, terminated, dones, GAMMA))
    adv0, _ = gae(rewards, values, nv, terminated, dones, GAMMA, 0.0)
    assert torch.allclose(adv0, rewards + GAMMA * nv * (~terminated) - values)


def test_discounted_returns_hand_computed():
    rewards, values, terminated, dones, bootstrap, last = rollout()
    nv = next_values_from_rollout(values, last, dones, bootstrap)
    g = discounted_returns(rewards, nv, terminated, dones, GAMMA)
    assert g.squeeze(1).tolist() == pytest.approx([1 + 0.9 * 4.7, 2 + 0.9 * 3.0, 3.0, 4 + 0.9 * 5.0])


def test_lambda_returns_hand_computed_and_equal_to_gae_returns():
    rewards, values, terminated, dones, bootstrap, last = rollout()
    nv = next_values_from_rollout(values, last, dones, bootstrap)
    g = lambda_returns(rewards, nv, terminated, dones, GAMMA, LAMBDA)
    assert g.squeeze(1).tolist() == pytest.approx([1 + 0.9 * (0.2 * 1.0 + 0.8 * 4.7), 4.7, 3.0, 8.5])
    _, ret = gae(rewards, values, nv, terminated, dones, GAMMA, LAMBDA)
    assert torch.allclose(g, ret, atol=1e-5)


def test_nstep_targets_hand_computed():
    rewards, values, terminated, dones, bootstrap, last = rollout()
    nv = next_values_from_rollout(values, last, dones, bootstrap)
    two = nstep_targets(rewards, nv, terminated, dones, GAMMA, n=2)
    assert two.squeeze(1).tolist() == pytest.approx([1 + 0.9 * 2 + 0.81 * 3.0, 2 + 0.9 * 3.0, 3.0, 4 + 0.9 * 5.0])
    one = nstep_targets(rewards, nv, terminated, dones, GAMMA, n=1)
    assert torch.allclose(one, rewards + GAMMA * nv * (~terminated))
