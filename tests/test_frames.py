"""FrameReplayBuffer: every stored stack is exactly what the agent saw, frames are stored once, episodes never mix."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from sheeprl.data.frames import FrameReplayBuffer, pack_bits, unpack_bits


class CountingEnv(gym.Env):
    """Frames ``(2, 3)`` uint8 that say which episode and step they belong to; ends at random (terminated)."""

    def __init__(self, seed: int) -> None:
        self.observation_space = spaces.Box(0, 255, (2, 3), np.uint8)
        self.action_space = spaces.Discrete(2)
        self._rng = np.random.default_rng(seed)
        self._episode = seed * 50
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros((2, 3), np.uint8)
        obs[0, 0], obs[0, 1] = self._episode % 256, self._t
        obs[1] = self._rng.integers(0, 256, 3)  # noise: no two frames alike
        return obs

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._episode += 1
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._t += 1
        return self._obs(), float(self._t), bool(self._rng.random() < 0.08), False, {}


def make_envs(n_envs: int, stack: int, max_steps: int = 12) -> SyncVectorEnv:
    def thunk(i: int) -> gym.Env:
        env = gym.wrappers.TimeLimit(CountingEnv(i), max_episode_steps=max_steps)  # truncations too
        return gym.wrappers.FrameStackObservation(env, stack)

    return SyncVectorEnv([lambda i=i: thunk(i) for i in range(n_envs)], autoreset_mode=AutoresetMode.SAME_STEP)


def rollout(rb: FrameReplayBuffer, steps: int, n_envs: int, stack: int) -> dict[int, dict[str, np.ndarray]]:
    """Play random actions, add every step, return what was added per flat row (the newest write wins)."""
    envs = make_envs(n_envs, stack)
    obs, _ = envs.reset(seed=0)
    added: dict[int, dict[str, np.ndarray]] = {}
    for _ in range(steps):
        next_obs, rewards, term, trunc, infos = envs.step(envs.action_space.sample())
        real_next = next_obs.copy()
        for i in np.flatnonzero(term | trunc):
            real_next[i] = infos["final_obs"][i]
        rows = rb.add(
            {
                "rgb": obs[None],
                "next_rgb": real_next[None],
                "rewards": rewards[None].astype(np.float32),
                "terminated": term[None],
                "truncated": trunc[None],
            }
        )
        for env, row in enumerate(rows.tolist()):
            added[row] = {"rgb": obs[env].copy(), "next_rgb": real_next[env].copy(), "truncated": trunc[env]}
        obs = next_obs
    return added


def check_stored(rb: FrameReplayBuffer, added: dict[int, dict[str, np.ndarray]]) -> int:
    rows = torch.tensor(sorted(added))
    rows = rows[rb.valid(rows)]
    td = rb.get(rows)
    for i, row in enumerate(rows.tolist()):
        np.testing.assert_array_equal(td["rgb"][i].numpy(), added[row]["rgb"])
        np.testing.assert_array_equal(td["next_rgb"][i].numpy(), added[row]["next_rgb"])
    return len(rows)


@pytest.mark.parametrize("stack", [1, 4])
def test_every_stack_is_what_the_agent_saw_and_never_mixes_episodes(stack):
    rb = FrameReplayBuffer(500, 3, frame_keys=("rgb",), stack=stack)
    added = rollout(rb, 300, 3, stack)
    assert check_stored(rb, added) == 300 * 3
    td = rb.sample(256, sample_next_obs=True, generator=torch.Generator().manual_seed(0))
    assert td["rgb"].shape == (1, 256, stack, 2, 3) and td["rgb"].dtype == torch.uint8
    # One episode id per stack (obs and next obs): a stack never reaches into another episode.
    for key in ("rgb", "next_rgb"):
        episodes = td[key][..., 0, 0].view(-1, stack)
        assert (episodes == episodes[:, -1:]).all()


def test_truncated_step_keeps_the_real_final_frame():
    rb = FrameReplayBuffer(200, 2, stack=4)
    added = rollout(rb, 100, 2, 4)
    truncated = [row for row, a in added.items() if a["truncated"]]
    assert truncated, "the rollout should contain truncations"
    td = rb.get(torch.tensor(truncated))
    # The final frame continues the episode (same episode id, step + 1), not the next episode's first frame.
    np.testing.assert_array_equal(td["next_rgb"][:, -1, 0, 0], td["rgb"][:, -1, 0, 0])
    np.testing.assert_array_equal(td["next_rgb"][:, -1, 0, 1], td["rgb"][:, -1, 0, 1] + 1)


def test_ring_wraps_and_short_episodes_drop_oldest_rows():
    # Extra frames 0: every reset frame eats into the frame ring, so old rows must be dropped, never corrupted.
    rb = FrameReplayBuffer(40, 2, stack=4, extra_frames=0.0)
    added = rollout(rb, 300, 2, 4)
    assert 0 < len(rb) <= 40
    assert check_stored(rb, added) == len(rb) * 2
    rows = rb.sample_indices(500, torch.Generator().manual_seed(1))
    assert rb.valid(rows).all()


def test_frames_stored_once_bytes_per_atari_transition():
    n, n_envs = 2_000, 2
    rb = FrameReplayBuffer(n, n_envs, stack=4)
    frame = torch.zeros(1, n_envs, 4, 84, 84, dtype=torch.uint8)
    rb.add(
        {
            "rgb": frame,
            "next_rgb": frame,
            "actions": torch.zeros(1, n_envs, dtype=torch.int64),
            "rewards": torch.zeros(1, n_envs),
            "terminated": torch.zeros(1, n_envs, dtype=torch.bool),
            "truncated": torch.zeros(1, n_envs, dtype=torch.bool),
        }
    )
    per_transition = rb.nbytes() / (n * n_envs)
    assert 84 * 84 <= per_transition <= 7_500  # 1M transitions in <= 7.5 GB; a plain buffer needs 8 frames each
    assert rb.frames_written == 2 * n_envs  # per env: the reset frame (padding repeats it) + the next frame


def test_bool_frames_are_bit_packed_and_round_trip():
    x = torch.rand(5, 3, 10, 10) > 0.5
    assert pack_bits(x).shape == (5, 38)
    assert torch.equal(unpack_bits(pack_bits(x), (3, 10, 10)), x)
    rb = FrameReplayBuffer(10, 1, frame_keys=("planes",), stack=1)
    rb.add(
        {"planes": x[:1, None], "next_planes": x[1:2, None], "terminated": torch.zeros(1, 1), "truncated": [[False]]}
    )
    td = rb.get(torch.tensor([0]))
    assert td["planes"].dtype == torch.bool and torch.equal(td["planes"][0], x[0])
    assert torch.equal(td["next_planes"][0], x[1])
    assert rb._frames["planes"].dtype == torch.uint8 and rb._frames["planes"].shape[1] == 38


@pytest.mark.parametrize("memmap", [False, True])
def test_state_dict_round_trip_continues_exactly(tmp_path, memmap):
    a = FrameReplayBuffer(64, 2, stack=4)
    rollout(a, 50, 2, 4)
    b = FrameReplayBuffer(64, 2, stack=4, memmap=memmap, memmap_dir=tmp_path / "mm" if memmap else None)
    torch.save(a.state_dict(), tmp_path / "rb.pt")
    b.load_state_dict(torch.load(tmp_path / "rb.pt", weights_only=True))
    assert len(b) == len(a) and b.pos == a.pos
    rows = a.sample_indices(64, torch.Generator().manual_seed(0))
    ta, tb = a.get(rows), b.get(rows)
    for key in ta.keys():
        assert torch.equal(ta[key], tb[key]), key


def test_missing_keys_and_wrong_shapes_are_rejected():
    rb = FrameReplayBuffer(8, 1, stack=4)
    with pytest.raises(ValueError, match="missing"):
        rb.add({"rgb": torch.zeros(1, 1, 4, 2, 2, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="stack"):
        frame = torch.zeros(1, 1, 3, 2, 2, dtype=torch.uint8)
        rb.add({"rgb": frame, "next_rgb": frame, "terminated": [[False]], "truncated": [[False]]})
