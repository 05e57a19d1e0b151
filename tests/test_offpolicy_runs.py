"""Off-policy correctness across ranks, resumes and normalization (issue 8, items 2, 9 and 11).

- Coupled sac, droq, td3 and ddpg on 2 ranks: every rank's target networks are identical (copied after DDP's
  broadcast of rank 0's weights, not before).
- sac, droq and sac_decoupled save their gradient-step counter, so target_update_every keeps its rhythm on resume.
- The replay buffer stores RAW observations and rewards; normalization happens when a batch is sampled.
"""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT
from gymnasium.vector import AutoresetMode
from helpers import run_dirs

from sheeprl.envs.normalization import BatchNormalizer, NormalizeDictObservation, NormalizeReward
from sheeprl.envs.wrappers import VectorStateDict

TINY = [
    "--env_id",
    "Pendulum-v1",
    "--num_envs",
    "1",
    "--learning_starts",
    "60",
    "--batch_size",
    "16",
    "--dense_units",
    "16",
    "--buffer.size",
    "400",
    "--eval_episodes",
    "0",
    "--metric.log_every",
    "100",
    "--num_threads",
    "1",
]


@pytest.mark.distributed
@pytest.mark.parametrize("algo", ["sac", "droq", "td3", "ddpg"])
def test_target_networks_are_identical_on_every_rank(tmp_path, algo):
    out = tmp_path / "targets.pt"
    extra = ["--replay_ratio", "1"] if algo == "droq" else []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "rank_targets.py"), algo, *TINY, *extra, "--total_steps", "100",
         "--devices", "2", "--checkpoint.save_last", "false"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TARGETS_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(out, weights_only=False)
    assert set(rank0) == ({"target_actor", "target_critic"} if algo in ("td3", "ddpg") else {"target_critic"})
    for net, params in rank0.items():
        for name, value in params.items():
            assert torch.equal(value, rank1[net][name]), f"{net}.{name} differs between ranks"


@pytest.mark.parametrize(
    ("algo", "counter", "extra"),
    [
        ("sac", "gradient_steps", ["--target_update_every", "3"]),
        ("droq", "critic_steps", ["--replay_ratio", "1", "--target_update_every", "3"]),
        ("sac_decoupled", "gradient_steps", ["--target_update_every", "3", "--devices", "2", "--exchange_every", "1"]),
    ],
)
def test_resume_continues_the_gradient_step_count(cli, tmp_path, algo, counter, extra):
    """60 warm-up steps, then one gradient step per policy step: 40 steps by 100, 100 more by the resumed 200."""
    args = [*TINY, *extra, "--checkpoint.every", "100", "--keep_last", "0", "--checkpoint.save_buffer"]
    proc = cli(algo, *args, "--total_steps", "100", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    first = torch.load(run / "checkpoint" / "ckpt_100_0.ckpt", weights_only=False)
    assert first[counter] == 40
    ckpt = str(run / "checkpoint" / "ckpt_100_0.ckpt")
    proc = cli(algo, *args, "--total_steps", "200", "--resume_from", ckpt, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = torch.load(run / "checkpoint" / "ckpt_200_0.ckpt", weights_only=False)
    # The count continues (140, not 100), so the next target update falls on step 141 as it would have.
    assert second[counter] == 140


def pendulum_cost(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1's reward from the observation before the step and the (clipped) torque."""
    th = torch.atan2(obs[..., 1], obs[..., 0])
    return -(th**2 + 0.1 * obs[..., 2] ** 2 + 0.001 * actions[..., 0].clamp(-2, 2) ** 2)


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_the_buffer_stores_raw_observations_and_rewards(cli, tmp_path, algo):
    norm = ["--env.normalize_observation", "true", "--env.normalize_reward", "true"]
    args = [*TINY, *norm, "--total_steps", "120", "--checkpoint.save_buffer"]
    proc = cli(algo, *args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    (ckpt,) = (run / "checkpoint").glob("ckpt_120_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    data = state["buffer"]["data"]
    obs, nxt, rew, act = data["observations"], data["next_observations"], data["rewards"], data["actions"]
    # Raw Pendulum observations: (cos, sin, velocity) on the unit circle, and the env's own reward.
    assert torch.allclose(obs[..., 0] ** 2 + obs[..., 1] ** 2, torch.ones(()), atol=1e-5)
    assert torch.allclose(nxt[..., 0] ** 2 + nxt[..., 1] ** 2, torch.ones(()), atol=1e-5)
    assert torch.allclose(rew, pendulum_cost(obs, act), atol=1e-4)
    # The statistics were still collected (and saved) for normalizing batches and evaluation.
    env_state = state["ranks"][0]["env"]
    assert env_state["obs_rms"]["state"]["count"] > 100 and env_state["return_rms"]["count"] > 100


def vector_pendulum(n: int = 2):
    envs = gym.make_vec(
        "Pendulum-v1", n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}
    )
    return VectorStateDict(envs)


def test_batch_normalizer_uses_the_current_statistics_like_the_wrappers():
    applied = NormalizeReward(NormalizeDictObservation(vector_pendulum(), ["state"], clip=2.0), clip=0.5)
    raw = NormalizeReward(
        NormalizeDictObservation(vector_pendulum(), ["state"], clip=2.0, apply=False), clip=0.5, apply=False
    )
    norm = BatchNormalizer(raw, ["state"])
    obs_a, _ = applied.reset(seed=3)
    obs_r, _ = raw.reset(seed=3)
    for _ in range(30):
        act = np.full((2, 1), 1.5, dtype=np.float32)
        obs_a, rew_a, *_ = applied.step(act)
        obs_r, rew_r, *_ = raw.step(act)
        x = torch.from_numpy(obs_r["state"])
        # Raw out of the raw env; what the BatchNormalizer makes of it equals what the applying env returned.
        assert np.allclose(x[:, 0] ** 2 + x[:, 1] ** 2, 1.0, atol=1e-5)
        assert torch.allclose(norm.obs(x), torch.from_numpy(obs_a["state"]), atol=1e-5)
        assert torch.allclose(norm.rewards(torch.from_numpy(rew_r)).float(), torch.from_numpy(rew_a).float(), atol=1e-5)
    # A transition stored earlier is normalized with today's statistics, not the ones of its time.
    before = norm.obs(x.clone())
    for _ in range(30):
        raw.step(np.full((2, 1), -2.0, dtype=np.float32))
    assert not torch.allclose(norm.obs(x), before)
    batch = norm.batch({"observations": x, "next_observations": x, "rewards": torch.ones(2), "actions": x})
    assert torch.equal(batch["observations"], norm.obs(x)) and torch.equal(batch["actions"], x)
    assert torch.allclose(batch["rewards"], torch.full((2,), min(raw.scale(), 0.5)))


def test_batch_normalizer_is_the_identity_without_normalization_and_skips_other_keys():
    envs = vector_pendulum()
    x = torch.randn(4, 3)
    assert BatchNormalizer(envs, ["state"]).obs(x) is x
    partial = NormalizeDictObservation(gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.TransformObservation(
            gym.make("Pendulum-v1"),
            lambda o: {"a": o, "b": o[:2]},
            gym.spaces.Dict({"a": gym.make("Pendulum-v1").observation_space, "b": gym.spaces.Box(-1, 1, (2,))}),
        )], autoreset_mode=AutoresetMode.SAME_STEP), ["a"], clip=10.0)  # fmt: skip
    partial.reset(seed=0)
    partial.step(np.ones((1, 1), dtype=np.float32))
    z = torch.randn(5, 5) * 20
    y = BatchNormalizer(partial, ["a", "b"]).obs(z)
    assert torch.equal(y[:, 3:], z[:, 3:])  # "b" is not normalized (nor clipped)
    assert torch.allclose(y[:, :3], torch.from_numpy(partial.normalize({"a": z[:, :3].numpy()})["a"]), atol=1e-5)
