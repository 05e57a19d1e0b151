"""n-step transitions read from the buffer: a hand-computed case with a terminated and a truncated end, the
window cut at the newest stored step and across the ring's wrap, and agreement with utils/returns.nstep_targets."""

import pytest
import torch

from sheeprl.data import ReplayBuffer
from sheeprl.data.nstep import nstep_batch, nstep_window, uniform_rows
from sheeprl.utils.returns import nstep_targets

# t:            0  1  2(terminated) 3  4(truncated) 5  6(newest)
REWARDS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
TERMINATED = [0, 0, 1, 0, 0, 0, 0]
TRUNCATED = [0, 0, 0, 0, 1, 0, 0]


def filled(size: int, steps: int = 7) -> ReplayBuffer:
    rb = ReplayBuffer(size, n_envs=1, obs_keys=("observations",))
    for t in range(steps):
        rb.add(
            {
                "observations": torch.tensor([[[float(t)]]]),
                "next_observations": torch.tensor([[[10.0 + t]]]),  # the real next state (final obs at an end)
                "actions": torch.tensor([[t]]),
                "rewards": torch.tensor([[REWARDS[t]]]),
                "terminated": torch.tensor([[float(TERMINATED[t])]]),
                "truncated": torch.tensor([[float(TRUNCATED[t])]]),
            }
        )
    return rb


def test_nstep_hand_computed_both_kinds_of_ends():
    rb = filled(16)
    out = nstep_batch(rb, torch.arange(7), n=3, gamma=0.5)
    # t0: 1 + .5*2 + .25*4, terminated at t2: no bootstrap       t1: 2 + .5*4, no bootstrap       t2: 4
    # t3: 8 + .5*16, truncated at t4: bootstrap gamma^2 from s'_4  t4: 16, gamma^1 from s'_4
    # t5, t6: cut at the newest stored step t6 and bootstrapped from its next observation
    assert out["rewards"].tolist() == [3.0, 4.0, 4.0, 16.0, 16.0, 64.0, 64.0]
    assert out["discounts"].tolist() == [0.0, 0.0, 0.0, 0.25, 0.5, 0.25, 0.5]
    assert out["next_observations"].flatten().tolist() == [12.0, 12.0, 12.0, 14.0, 14.0, 16.0, 16.0]
    assert out["observations"].flatten().tolist() == list(range(7))
    assert out["actions"].tolist() == list(range(7))
    one = nstep_batch(rb, torch.arange(7), n=1, gamma=0.5)  # n = 1: the stored one-step transitions
    assert one["rewards"].tolist() == REWARDS
    assert one["discounts"].tolist() == [0.5, 0.5, 0.0, 0.5, 0.5, 0.5, 0.5]


def test_nstep_window_does_not_cross_the_ring_write_position():
    rb = filled(5)  # 7 steps in a ring of 5: rows hold t = 5, 6, 2, 3, 4 and pos = 2
    assert rb.pos == 2 and rb.full
    t_of_row = {0: 5, 1: 6, 2: 2, 3: 3, 4: 4}
    out = nstep_batch(rb, torch.arange(5), n=3, gamma=0.5)
    expected = {2: 4.0, 3: 16.0, 4: 16.0, 5: 64.0, 6: 64.0}
    assert out["rewards"].tolist() == [expected[t_of_row[r]] for r in range(5)]
    # the newest step (t=6, row 1) never wraps onto the oldest (t=2, row 2)
    assert out["discounts"][1] == 0.5 and out["next_observations"][1].item() == 16.0


def test_nstep_matches_nstep_targets_on_random_rollouts():
    g = torch.Generator().manual_seed(0)
    T, N, n, gamma = 40, 3, 4, 0.9
    rewards = torch.randn(T, N, generator=g)
    terminated = (torch.rand(T, N, generator=g) < 0.08).float()
    truncated = (torch.rand(T, N, generator=g) < 0.08).float() * (1 - terminated)
    dones = torch.clamp(terminated + truncated, max=1)
    next_obs = torch.randn(T, N, 1, generator=g)
    rb = ReplayBuffer(64, n_envs=N, obs_keys=("observations",))
    rb.add(
        {
            "observations": torch.zeros(T, N, 1),
            "next_observations": next_obs,
            "actions": torch.zeros(T, N, dtype=torch.long),
            "rewards": rewards,
            "terminated": terminated,
            "truncated": truncated,
        }
    )
    value = lambda s: 2.0 * s.squeeze(-1) + 1.0  # noqa: E731  any fixed V(s')
    expected = nstep_targets(rewards, value(next_obs), terminated, dones, gamma, n)
    out = nstep_batch(rb, torch.arange(T * N), n=n, gamma=gamma)
    got = out["rewards"] + out["discounts"] * value(out["next_observations"])
    assert torch.allclose(got.view(T, N), expected, atol=1e-5)


def test_nstep_window_validates_and_uniform_rows_cover_the_stored_steps():
    r, term, done = torch.ones(1, 3), torch.zeros(1, 3), torch.zeros(1, 3)
    ret, disc, last = nstep_window(r, term, done, torch.tensor([3]), 0.5)
    assert ret.item() == pytest.approx(1.75) and disc.item() == pytest.approx(0.125) and last.item() == 2
    with pytest.raises(ValueError):
        nstep_batch(filled(8), torch.arange(2), n=0, gamma=0.5)
    rb = filled(5)
    rows = uniform_rows(rb, 1000, torch.Generator().manual_seed(0))
    assert set(rows.tolist()) == set(range(5))


def test_nstep_on_a_frame_buffer_matches_the_replay_buffer():
    """The same steps in a FrameReplayBuffer (frames stored once) give the same n-step transitions."""
    from sheeprl.data.frames import FrameReplayBuffer

    g = torch.Generator().manual_seed(1)
    T, N, n, gamma = 30, 2, 3, 0.9
    frames = torch.randint(0, 255, (T + 1, N, 1, 4, 4), generator=g, dtype=torch.uint8)
    terminated = (torch.rand(T, N, generator=g) < 0.1).float()
    truncated = (torch.rand(T, N, generator=g) < 0.1).float() * (1 - terminated)
    rewards = torch.randn(T, N, generator=g)
    actions = torch.randint(3, (T, N), generator=g)
    plain = ReplayBuffer(64, n_envs=N, obs_keys=("px",))
    framed = FrameReplayBuffer(64, n_envs=N, frame_keys=("px",), stack=1)
    for t in range(T):
        step = {
            "px": frames[t][None],
            "next_px": frames[t + 1][None],
            "actions": actions[t][None],
            "rewards": rewards[t][None],
            "terminated": terminated[t][None],
            "truncated": truncated[t][None],
        }
        plain.add(step)
        framed.add(step)
    rows = torch.arange(T * N)
    a = nstep_batch(plain, rows, n=n, gamma=gamma, obs_keys=("px",))
    b = nstep_batch(framed, rows, n=n, gamma=gamma, obs_keys=("px",))
    for key in ("px", "next_px", "actions", "rewards", "discounts"):
        assert torch.allclose(a[key].float(), b[key].float()), key
