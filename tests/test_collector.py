"""The shared off-policy collector: warm-up actions, policy_step counting, real final observations, episodes."""

from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from sheeprl.data import ReplayBuffer
from sheeprl.data.collector import Collector, flat_state
from sheeprl.utils.tensors import obs_to_torch


class FakeRun:
    """What the collector uses of a Run: the start step, the env timer and episode statistics."""

    def __init__(self, start_step: int = 0) -> None:
        self.start_step = start_step
        self.episodes: list[tuple[float, int]] = []
        self.timed = 0

    @contextmanager
    def timer(self, name):
        assert name == "env"
        self.timed += 1
        yield

    def record_episodes(self, infos):
        if "_episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                self.episodes.append((float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))


class ListBuffer:
    def __init__(self):
        self.steps = []

    def add(self, step):
        self.steps.append({k: v.clone() for k, v in step.items()})


def pendulum(n: int, max_steps: int):
    envs = gym.make_vec(
        "Pendulum-v1",
        n,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        max_episode_steps=max_steps,
    )
    return RecordEpisodeStatistics(envs)


def test_truncated_steps_store_the_real_final_observation_and_the_next_episode_starts():
    envs = pendulum(2, max_steps=3)
    obs, _ = envs.reset(seed=0)
    buf, run = ListBuffer(), FakeRun()
    collector = Collector(envs, buf, run, obs, obs_fn=lambda o: torch.from_numpy(o).float())
    zero = lambda o: torch.zeros(o.shape[0], 1)  # noqa: E731
    for _ in range(4):
        collector.step(zero)
    # Step 3 truncates both envs: next_observations holds where the episode ended, collector.obs the reset.
    third, fourth = buf.steps[2], buf.steps[3]
    assert third["truncated"].tolist() == [[1.0, 1.0]] and third["terminated"].tolist() == [[0.0, 0.0]]
    assert not torch.allclose(third["next_observations"][0], fourth["observations"][0])
    # The stored final observation continues the episode: it is the dynamics' successor of step 3's observation.
    assert torch.allclose(buf.steps[1]["next_observations"], third["observations"])
    th = torch.atan2(third["next_observations"][0, :, 1], third["next_observations"][0, :, 0])
    assert torch.all(th.abs() <= np.pi)
    # Every other step chains observations to the next step's.
    assert torch.allclose(buf.steps[0]["next_observations"], buf.steps[1]["observations"])
    assert [length for _, length in run.episodes] == [3, 3]
    assert run.timed == 4
    envs.close()


def test_the_final_observation_matches_a_single_env_replay():
    """The real final observation equals what an un-vectorized copy of the env returns at its last step."""
    envs = pendulum(1, max_steps=2)
    obs, _ = envs.reset(seed=5)
    buf = ListBuffer()
    collector = Collector(envs, buf, FakeRun(), obs, obs_fn=lambda o: torch.from_numpy(o).float())
    for _ in range(2):
        collector.step(lambda o: torch.full((1, 1), 0.5))
    single = gym.make("Pendulum-v1", max_episode_steps=2)
    single.reset(seed=5)
    single.step(np.array([0.5], dtype=np.float32))
    last, *_ = single.step(np.array([0.5], dtype=np.float32))
    assert np.allclose(buf.steps[1]["next_observations"][0, 0].numpy(), last, atol=1e-6)
    assert buf.steps[1]["truncated"].item() == 1.0


def test_warm_up_actions_are_uniform_and_act_runs_after_it():
    envs = pendulum(2, max_steps=200)
    obs, _ = envs.reset(seed=0)
    buf, calls = ListBuffer(), []

    def act(o):
        calls.append(o.shape)
        return torch.full((o.shape[0], 1), 0.25)

    collector = Collector(
        envs,
        buf,
        FakeRun(start_step=8),
        obs,
        obs_fn=lambda o: torch.from_numpy(o).float(),
        learning_starts=16,
        world_size=2,
    )
    steps = [collector.step(act) for _ in range(4)]
    assert steps == [12, 16, 20, 24]  # 2 envs x 2 processes per call, from the resumed step
    assert len(calls) == 2
    warm = torch.cat([s["actions"] for s in buf.steps[:2]])
    assert warm.abs().max() <= 2.0 and warm.std() > 0
    assert torch.all(buf.steps[2]["actions"] == 0.25)
    envs.close()


def test_discrete_actions_and_dict_observations_with_a_real_buffer():
    envs = gym.make_vec(
        "CartPole-v1", 3, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}
    )
    envs = RecordEpisodeStatistics(envs)
    obs, _ = envs.reset(seed=1)
    rb = ReplayBuffer(100, 3)
    run = FakeRun()
    collector = Collector(envs, rb, run, obs, obs_fn=lambda o: {"state": torch.from_numpy(o)}, learning_starts=60)
    for _ in range(40):
        collector.step(lambda o: torch.zeros(3, dtype=torch.long))
    assert sorted(rb.keys()) == sorted(["state", "next_state", "actions", "rewards", "terminated", "truncated"])
    assert rb["actions"].dtype == torch.int64 and set(rb["actions"][:20].unique().tolist()) == {0, 1}
    assert torch.all(rb["actions"][20:40] == 0)  # policy steps 63.. act: past learning_starts=60
    # A terminated CartPole step bootstraps nothing, and its next_state is the failing state (out of bounds).
    ends = rb["terminated"][:40].nonzero()
    assert len(ends) > 0 and len(run.episodes) == len(ends)
    t, e = ends[0].tolist()
    s = rb["next_state"][t, e]
    assert abs(s[0]) > 2.4 or abs(s[2]) > 0.2095
    envs.close()


def test_flat_state_concatenates_keys_as_float32():
    fn = flat_state(["a", "b"])
    out = fn({"a": np.ones((2, 3), dtype=np.float64), "b": np.zeros((2, 2, 2), dtype=np.float32)})
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert torch.equal(flat_state(["a"])({"a": np.ones((2, 3))}), obs_to_torch({"a": np.ones((2, 3))})["a"])


def test_infinite_bounds_are_refused_at_start():
    class Inf(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(-np.inf, np.inf, (1,))

    envs = gym.vector.SyncVectorEnv([Inf], autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="finite bounds"):
        Collector(envs, ListBuffer(), FakeRun(), {"x": np.zeros((1, 1))})
