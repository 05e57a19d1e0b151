"""Tests of the env factory: ids, wrappers, vector semantics, normalization, seeding, video."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from omegaconf import DictConfig, OmegaConf

from sheeprl.config import RunConfig
from sheeprl.envs import (
    EnvError,
    check_env_id,
    get_env_state,
    make_env,
    make_vector_env,
    normalize_obs,
    set_env_state,
    set_normalization_training,
)
from sheeprl.envs.normalization import NormalizeDictObservation, RunningMeanStd, find_wrapper
from sheeprl.envs.wrappers import DictObservation


def make_cfg(cnn: list[str] | None = None, mlp: list[str] | None = None, **env: Any) -> DictConfig:
    """A whole run config with ``env.<key>`` overrides and optional encoder keys."""
    cfg = OmegaConf.structured(RunConfig)
    if cnn is not None:
        cfg.algo.cnn_keys.encoder = cnn
    if mlp is not None:
        cfg.algo.mlp_keys.encoder = mlp
    for key, value in env.items():
        cfg.env[key] = value
    return cfg


def run_until_done(envs: gym.vector.VectorEnv, max_steps: int = 500) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Step with random actions until some env finishes; returns (obs, terminated, truncated, infos) of that step."""
    for _ in range(max_steps):
        obs, _, terminated, truncated, infos = envs.step(envs.action_space.sample())
        if (terminated | truncated).any():
            return obs, terminated, truncated, infos
    raise AssertionError("no episode ended")


# --- ids and errors ---------------------------------------------------------------------------------------------


def test_check_env_id_known_and_typo() -> None:
    for known in ("CartPole-v1", "HalfCheetah-v5", "CartPole"):  # unversioned: gymnasium picks the latest
        assert check_env_id(known) is None
    with pytest.raises(EnvError, match=r"unknown env id 'CartPol-v1' \(did you mean 'CartPole-v1'\?\)"):
        check_env_id("CartPol-v1")
    with pytest.raises(EnvError, match="unknown env id 'Qwxz-v9'$"):
        check_env_id("Qwxz-v9")


def test_check_env_id_dmc() -> None:
    pytest.importorskip("dm_control")  # the optional "dmc" extra
    assert check_env_id("dmc/cartpole-balance") is None
    with pytest.raises(EnvError, match="did you mean 'dmc/cartpole-balance'"):
        check_env_id("dmc/cartpole-balanse")
    with pytest.raises(EnvError, match="dmc/<domain>-<task>"):
        check_env_id("dmc/cartpole")


def test_user_errors_are_one_line_env_errors() -> None:
    with pytest.raises(EnvError, match="unknown env id"):
        make_env(make_cfg(id="CartPol-v1"), 0, 0)
    with pytest.raises(EnvError, match="cannot make 'CartPole-v1'") as info:
        make_env(make_cfg(kwargs={"no_such_kwarg": 1}), 0, 0)()
    assert "\n" not in str(info.value)
    with pytest.raises(EnvError, match="mask_velocities is not supported for 'InvertedPendulum-v5'"):
        make_env(make_cfg(id="InvertedPendulum-v5", mask_velocities=True), 0, 0)()
    with pytest.raises(EnvError, match=r"\['rgb'\] not found; available: \['state'\]"):
        make_env(make_cfg(cnn=["rgb"]), 0, 0)()
    with pytest.raises(EnvError, match="no observation key selected"):
        make_env(make_cfg(cnn=[], mlp=[]), 0, 0)()


# --- single envs ------------------------------------------------------------------------------------------------

SINGLE_ENV_CASES = {
    "state": ({}, {"state": ((4,), np.float32)}),
    "pendulum": ({"id": "Pendulum-v1"}, {"state": ((3,), np.float32)}),
    "pixels": ({"from_pixels": True, "cnn": ["rgb"], "mlp": []}, {"rgb": ((3, 64, 64), np.uint8)}),
    "pixels_gray_stack": (
        {"from_pixels": True, "grayscale": True, "screen_size": 32, "frame_stack": 2, "cnn": ["rgb"]},
        {"rgb": ((2, 32, 32), np.uint8), "state": ((8,), np.float32)},
    ),
    "frame_stack": ({"frame_stack": 4}, {"state": ((16,), np.float32)}),
    "action_repeat": ({"action_repeat": 2}, {"state": ((4,), np.float32)}),
    "mask_velocities": ({"mask_velocities": True}, {"state": ((4,), np.float32)}),
}


@pytest.mark.parametrize("case", list(SINGLE_ENV_CASES))
def test_single_env_passes_gymnasium_checker(case: str) -> None:
    overrides, expected = SINGLE_ENV_CASES[case]
    env = make_env(make_cfg(**overrides), seed=0, idx=0)()
    assert isinstance(env.observation_space, spaces.Dict)
    assert {k: (s.shape, s.dtype) for k, s in env.observation_space.spaces.items()} == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker warns about wrappers and infinite bounds
        # The render check rebuilds the env in every render mode, "human" included (a window; and
        # from_pixels needs rgb_array): pixel rendering is covered by the observation checks instead.
        check_env(env, skip_render_check=True)
    env.close()


def test_frame_stack_semantics() -> None:
    env = make_env(make_cfg(frame_stack=3), seed=0, idx=0)()
    obs, _ = env.reset(seed=0)
    first = obs["state"][:4]
    np.testing.assert_array_equal(obs["state"], np.tile(first, 3))  # the first obs fills the stack
    obs2, *_ = env.step(0)
    np.testing.assert_array_equal(obs2["state"][:8], obs["state"][4:])  # oldest frame dropped
    assert not np.array_equal(obs2["state"][8:], first)
    env.close()


def test_action_repeat_sums_rewards() -> None:
    env = make_env(make_cfg(action_repeat=3), seed=0, idx=0)()
    env.reset(seed=0)
    _, reward, *_ = env.step(0)
    assert reward == 3.0
    env.close()


def test_mask_velocities_zeroes_velocity_entries() -> None:
    env = make_env(make_cfg(mask_velocities=True), seed=0, idx=0)()
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(1)
        assert obs["state"][1] == 0 and obs["state"][3] == 0 and obs["state"][0] != 0
    env.close()


def test_clip_actions_keeps_bounds() -> None:
    env = make_env(make_cfg(id="Pendulum-v1"), seed=0, idx=0)()
    np.testing.assert_array_equal(env.action_space.high, [2.0])  # gymnasium's ClipAction would make it inf
    env.reset(seed=0)
    env.step(np.array([100.0], dtype=np.float32))
    assert env.unwrapped.last_u == 2.0
    env.close()


class _NestedDictEnv(gym.Env):
    """A tiny env with a nested Dict observation: an HWC image, a Discrete and a float64 Box."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "camera": spaces.Box(0, 255, (48, 40, 3), np.uint8),
                "robot": spaces.Dict({"mode": spaces.Discrete(3), "joints": spaces.Box(-1, 1, (2, 2), np.float64)}),
            }
        )
        self.action_space = spaces.Discrete(2)

    def _obs(self) -> dict:
        return self.observation_space.sample()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        return self._obs(), 0.0, False, False, {}


def test_dict_observation_flattens_nested_keys() -> None:
    env = DictObservation(_NestedDictEnv(), screen_size=16)
    assert {k: s.shape for k, s in env.observation_space.spaces.items()} == {
        "camera": (3, 16, 16),
        "robot_mode": (3,),
        "robot_joints": (4,),
    }
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    assert obs["robot_mode"].sum() == 1.0
    selected = DictObservation(_NestedDictEnv(), keys=["robot_joints"])
    assert list(selected.observation_space.spaces) == ["robot_joints"]


# --- vector envs ------------------------------------------------------------------------------------------------


def test_vector_env_dict_shapes() -> None:
    envs = make_vector_env(make_cfg(from_pixels=True, cnn=["rgb"], num_envs=3, screen_size=32), seed=0)
    obs, _ = envs.reset(seed=0)
    assert obs["rgb"].shape == (3, 3, 32, 32) and obs["rgb"].dtype == np.uint8
    assert obs["state"].shape == (3, 4) and obs["state"].dtype == np.float32
    obs, rewards, terminated, truncated, _ = envs.step(envs.action_space.sample())
    assert obs["rgb"].shape == (3, 3, 32, 32) and rewards.shape == terminated.shape == truncated.shape == (3,)
    envs.close()


@pytest.mark.parametrize(("sync", "frame_stack"), [(True, 1), (False, 1), (True, 2)])
def test_same_step_autoreset_final_obs(sync: bool, frame_stack: int) -> None:
    # frame_stack=2 goes through the per-env dict path, 1 through the vector-level "state" dict.
    envs = make_vector_env(make_cfg(num_envs=2, sync_env=sync, frame_stack=frame_stack), seed=3)
    envs.reset(seed=3)
    envs.action_space.seed(3)
    obs, terminated, truncated, infos = run_until_done(envs)
    done = terminated | truncated
    np.testing.assert_array_equal(infos["_final_obs"], done)
    np.testing.assert_array_equal(infos["_episode"], done)
    for i in np.flatnonzero(done):
        final = infos["final_obs"][i]["state"]
        assert final.shape == (4 * frame_stack,) and final.dtype == np.float32
        assert abs(final[-2]) > 0.2 or abs(final[-4]) > 2.4  # CartPole fell: a real terminal state
        assert not np.array_equal(final, obs["state"][i])  # obs is already the next episode's first one
        assert np.all(np.abs(obs["state"][i]) <= 0.05)  # CartPole resets near 0
        assert infos["episode"]["l"][i] > 0 and infos["episode"]["r"][i] == infos["episode"]["l"][i]
    envs.close()


def test_truncation_by_max_episode_steps() -> None:
    envs = make_vector_env(make_cfg(num_envs=2, max_episode_steps=5), seed=0)
    envs.reset(seed=0)
    for step in range(1, 6):
        _, _, terminated, truncated, infos = envs.step(np.zeros(2, dtype=np.int64))
        if step < 5:
            assert not truncated.any()
    assert truncated.all() and not terminated.any()
    assert infos["_final_obs"].all()
    np.testing.assert_array_equal(infos["episode"]["l"], [5, 5])
    envs.close()


def test_seeding_gives_identical_trajectories() -> None:
    def rollout() -> np.ndarray:
        envs = make_vector_env(make_cfg(num_envs=2), seed=7)
        obs, _ = envs.reset(seed=7)
        actions = np.random.default_rng(0).integers(0, 2, size=(60, 2))
        trajectory = [obs["state"]]
        for action in actions:
            obs, *_ = envs.step(action)
            trajectory.append(obs["state"])
        envs.close()
        return np.stack(trajectory)

    first, second = rollout(), rollout()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first[:, 0], first[:, 1])  # env i is seeded with seed + i


def test_mujoco_v5_env_builds_and_steps() -> None:
    envs = make_vector_env(make_cfg(id="InvertedPendulum-v5", num_envs=2, normalize_observation=True), seed=0)
    obs, _ = envs.reset(seed=0)
    assert obs["state"].shape == (2, 4) and obs["state"].dtype == np.float32  # MuJoCo's float64 cast
    assert envs.single_observation_space["state"].dtype == np.float32
    for _ in range(10):
        obs, rewards, *_ = envs.step(np.full((2, 1), 5.0, dtype=np.float32))  # out of bounds: clipped
    assert np.isfinite(obs["state"]).all() and rewards.shape == (2,)
    envs.close()


def test_dmc_env_builds_and_steps() -> None:
    pytest.importorskip("dm_control")  # the optional "dmc" extra
    env = make_env(make_cfg(id="dmc/cartpole-balance", max_episode_steps=3), seed=0, idx=0)()
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (5,) and obs["state"].dtype == np.float32
    assert env.action_space.shape == (1,) and env.action_space.high[0] == 1.0
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert truncated and not terminated and 0.0 <= reward <= 1.0
    again, _ = env.reset(seed=0)
    first, _ = make_env(make_cfg(id="dmc/cartpole-balance"), seed=0, idx=0)().reset(seed=0)
    np.testing.assert_array_equal(again["state"], first["state"])  # seeded resets are reproducible
    env.close()


def test_dmc_from_pixels() -> None:
    pytest.importorskip("dm_control")  # the optional "dmc" extra
    env = make_env(make_cfg(id="dmc/cartpole-balance", from_pixels=True, screen_size=32, cnn=["rgb"]), 0, 0)()
    try:
        obs, _ = env.reset(seed=0)
    except Exception as err:  # noqa: BLE001 - any OpenGL failure means this machine cannot render
        pytest.skip(f"no OpenGL rendering here: {err}")
    assert obs["rgb"].shape == (3, 32, 32) and obs["rgb"].dtype == np.uint8 and obs["rgb"].max() > 0
    assert obs["state"].shape == (5,)
    env.close()


def test_atari_ids_need_ale_py() -> None:
    try:
        import ale_py  # noqa: F401
    except ImportError:
        with pytest.raises(EnvError, match="ale-py"):
            check_env_id("ALE/Pong-v5")
    else:
        assert check_env_id("ALE/Pong-v5") is None  # known once ale-py registered its ids
        with pytest.raises(EnvError, match="did you mean 'ALE/Pong-v5'"):
            check_env_id("ALE/Pongg-v5")
        env = make_env(
            make_cfg(id="ALE/Pong-v5", from_pixels=True, screen_size=32, cnn=["rgb"], mlp=[]), seed=0, idx=0
        )()
        obs, _ = env.reset(seed=0)
        assert obs["rgb"].shape == (3, 32, 32) and obs["rgb"].dtype == np.uint8
        env.close()


# --- normalization ----------------------------------------------------------------------------------------------


def test_running_mean_std_matches_numpy() -> None:
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(400, 3))
    rms = RunningMeanStd((3,), epsilon=0.0)
    for chunk in np.split(data, 100):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0))
    np.testing.assert_allclose(rms.var, data.var(0))


def test_observation_normalization_and_final_obs() -> None:
    cfg = make_cfg(id="Pendulum-v1", num_envs=4, normalize_observation=True, max_episode_steps=50)
    envs = make_vector_env(cfg, seed=0)
    raw_envs = make_vector_env(make_cfg(id="Pendulum-v1", num_envs=4, max_episode_steps=50), seed=0)
    obs, _ = envs.reset(seed=0)
    raw_envs.reset(seed=0)
    seen, checked = [], False
    for _ in range(200):
        actions = envs.action_space.sample()
        obs, _, _, _, infos = envs.step(actions)
        _, _, _, _, raw_infos = raw_envs.step(actions)
        seen.append(obs["state"])
        if "final_obs" in infos:  # final observations are normalized with the same statistics
            for i in np.flatnonzero(infos["_final_obs"]):
                expected = normalize_obs(envs, raw_infos["final_obs"][i])["state"]
                np.testing.assert_allclose(infos["final_obs"][i]["state"], expected, rtol=1e-5, atol=1e-5)
                assert not np.allclose(infos["final_obs"][i]["state"], raw_infos["final_obs"][i]["state"])
                checked = True
    assert checked
    seen = np.concatenate(seen[50:])
    assert np.all(np.abs(seen.mean(0)) < 0.3) and np.all(np.abs(seen.std(0) - 1.0) < 0.3)
    assert np.abs(seen).max() <= cfg.env.clip_observation
    envs.close()
    raw_envs.close()


def test_env_state_round_trip_and_freeze() -> None:
    cfg = make_cfg(num_envs=2, normalize_observation=True, normalize_reward=True)
    envs = make_vector_env(cfg, seed=0)
    envs.reset(seed=0)
    for _ in range(50):
        envs.step(envs.action_space.sample())
    state = get_env_state(envs)
    assert set(state) == {"obs_rms", "return_rms", "returns"}
    state = json.loads(json.dumps(state))  # plain Python values: safe in any checkpoint format

    restored = make_vector_env(cfg, seed=1)
    restored.reset(seed=1)
    set_env_state(restored, state)
    probe = {"state": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)}
    np.testing.assert_array_equal(normalize_obs(restored, probe)["state"], normalize_obs(envs, probe)["state"])
    assert get_env_state(restored) == state

    set_normalization_training(restored, False)
    for _ in range(10):
        restored.step(restored.action_space.sample())
    assert get_env_state(restored)["obs_rms"] == state["obs_rms"]
    assert get_env_state(restored)["return_rms"] == state["return_rms"]
    set_normalization_training(restored, True)
    restored.step(restored.action_space.sample())
    assert get_env_state(restored)["obs_rms"] != state["obs_rms"]

    # An evaluation env takes the training statistics, never updates them and has raw rewards.
    eval_envs = make_vector_env(cfg, seed=2, num_envs=1, training=False)
    eval_envs.reset(seed=2)
    set_env_state(eval_envs, state)
    assert set(get_env_state(eval_envs)) == {"obs_rms"}
    for _ in range(10):
        _, rewards, *_ = eval_envs.step(eval_envs.action_space.sample())
        assert rewards[0] == 1.0
    assert get_env_state(eval_envs)["obs_rms"] == state["obs_rms"]
    for env in (envs, restored, eval_envs):
        env.close()


def test_reward_normalization_scales() -> None:
    envs = make_vector_env(make_cfg(num_envs=2, normalize_reward=True), seed=0)
    envs.reset(seed=0)
    for _ in range(100):
        _, rewards, *_ = envs.step(envs.action_space.sample())
    state = get_env_state(envs)
    expected = 1.0 / np.sqrt(state["return_rms"]["var"] + 1e-8)  # CartPole's raw reward is 1
    np.testing.assert_allclose(rewards, [expected, expected], rtol=1e-6)
    assert rewards[0] < 0.5
    envs.close()


def test_without_normalization_state_is_empty_and_obs_untouched() -> None:
    envs = make_vector_env(make_cfg(num_envs=1), seed=0)
    obs, _ = envs.reset(seed=0)
    assert get_env_state(envs) == {}
    assert normalize_obs(envs, obs) is obs
    assert find_wrapper(envs, NormalizeDictObservation) is None
    set_env_state(envs, {})  # loading nothing into an env without normalization is a no-op ...
    set_normalization_training(envs, False)
    assert get_env_state(envs) == {}
    again, _ = envs.reset(seed=0)
    np.testing.assert_array_equal(again["state"], obs["state"])  # ... and observations stay raw
    raw = gym.make("CartPole-v1")
    first, _ = raw.reset(seed=0)
    np.testing.assert_allclose(obs["state"][0], first)
    raw.close()
    envs.close()


# --- video ------------------------------------------------------------------------------------------------------


def test_capture_video_writes_mp4(tmp_path: Path) -> None:
    envs = make_vector_env(make_cfg(num_envs=2, capture_video=True, video_every=1), seed=0, run_dir=str(tmp_path))
    envs.reset(seed=0)
    run_until_done(envs)  # SAME_STEP: the finishing step resets env 0, which closes its video
    for _ in range(100):
        _, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
        if terminated[0] or truncated[0]:
            break
    envs.close()
    videos = list((tmp_path / "videos").glob("train-episode-*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos)
