"""Atari and MinAtar envs: DeepMind preprocessing, reward sign for learning only, life loss, FIRE reset, encoders."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics
from omegaconf import DictConfig, OmegaConf

from sheeprl.config import RunConfig
from sheeprl.envs import EnvError, check_env_id, make_env, make_vector_env
from sheeprl.envs.atari import FireReset, LifeLossTerminal, ScreenSpace
from sheeprl.models import CNNEncoder, MinAtarCNN, NatureCNN

pytest.importorskip("ale_py")
pytest.importorskip("minatar")
pytest.importorskip("cv2")


def atari_cfg(**env: Any) -> DictConfig:
    """The env=atari preset's settings on the structured schema."""
    cfg = OmegaConf.structured(RunConfig)
    cfg.algo.cnn_keys.encoder, cfg.algo.mlp_keys.encoder = ["rgb"], []
    settings = {"id": "ALE/Breakout-v5", "num_envs": 2, "screen_size": 84, "grayscale": True, "frame_stack": 4}
    for key, value in {**settings, "sign_rewards": True, **env}.items():
        OmegaConf.update(cfg, f"env.{key}", value)
    return cfg


def minatar_cfg(**env: Any) -> DictConfig:
    cfg = OmegaConf.structured(RunConfig)
    cfg.algo.cnn_keys.encoder, cfg.algo.mlp_keys.encoder = ["planes"], []
    for key, value in {"id": "MinAtar/Breakout-v1", "num_envs": 2, **env}.items():
        OmegaConf.update(cfg, f"env.{key}", value)
    return cfg


def wrappers(env: gym.Env) -> list[str]:
    names = []
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        env = env.env
    return names


# --- ids ----------------------------------------------------------------------------------------------------------


def test_unknown_game_ids_get_a_did_you_mean() -> None:
    check_env_id("ALE/Breakout-v5")
    check_env_id("MinAtar/SpaceInvaders-v1")
    with pytest.raises(EnvError, match=r"unknown env id 'MinAtar/Breakot-v1' \(did you mean 'MinAtar/Breakout-v1'\?\)"):
        check_env_id("MinAtar/Breakot-v1")
    with pytest.raises(EnvError, match=r"did you mean 'ALE/Breakout-v5'"):
        check_env_id("ALE/Breakot-v5")


# --- Atari --------------------------------------------------------------------------------------------------------


def test_atari_preprocessing_shapes_sticky_actions_and_fire_reset() -> None:
    env = make_env(atari_cfg(**{"atari.repeat_action_probability": 0.0}), seed=0, idx=0)()
    assert env.observation_space["rgb"] == spaces.Box(0, 255, (4, 84, 84), np.uint8)
    chain = wrappers(env)
    assert {"AtariPreprocessing", "FireReset", "FrameStackObservation", "PixelDict"} <= set(chain)
    # frame skip by the preprocessing, so the emulator itself steps one frame at a time
    assert env.unwrapped._frameskip == 1
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    obs, info = env.reset(seed=0)
    assert obs["rgb"].dtype == np.uint8
    # after a reset the stack is the first frame repeated: nothing from a previous episode
    assert all(np.array_equal(obs["rgb"][i], obs["rgb"][-1]) for i in range(4))
    env.close()
    sticky = make_env(atari_cfg(**{"atari.repeat_action_probability": 0.5}), seed=0, idx=0)()
    assert sticky.unwrapped.ale.getFloat("repeat_action_probability") == 0.5
    assert "FireReset" not in wrappers(make_env(atari_cfg(id="ALE/Freeway-v5"), seed=0, idx=0)())
    assert "FireReset" not in wrappers(make_env(atari_cfg(**{"atari.fire_reset": False}), seed=0, idx=0)())


def test_direct_emulator_steps_match_gymnasiums_atari_env() -> None:
    """ScreenSpace steps the ALE itself (one Python layer per emulator frame instead of four): observations,
    rewards, flags and infos equal those of the ordinary AtariEnv.step path, sticky actions and episode ends
    included; a TimeLimit below it keeps the ordinary path."""

    def rollout(direct: bool) -> list[Any]:
        env = make_env(atari_cfg(**{"atari.repeat_action_probability": 0.25}), seed=3, idx=0)()
        screen = env
        while not isinstance(screen, ScreenSpace):
            screen = screen.env
        assert screen._ale is not None  # the preset's chain takes the direct path
        if not direct:
            screen._ale = None
        rng, out = np.random.default_rng(0), []
        obs, _ = env.reset(seed=3)
        for _ in range(400):
            obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
            out.append((obs["rgb"].copy(), reward, terminated, truncated, info))
            if terminated or truncated:
                obs, _ = env.reset()
        env.close()
        return out

    fast, ordinary = rollout(True), rollout(False)
    assert any(step[2] for step in ordinary), "the rollout should cover an episode end"
    for (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) in zip(fast, ordinary, strict=True):
        assert np.array_equal(o1, o2) and r1 == r2 and te1 == te2 and tr1 == tr2 and i1 == i2
    limited = make_env(atari_cfg(max_episode_steps=1000), seed=0, idx=0)()
    while not isinstance(limited, ScreenSpace):
        limited = limited.env
    assert limited._ale is None


class RecordingEnv(gym.Env):
    """Records the actions it gets; its action 1 is FIRE."""

    observation_space = spaces.Box(0, 255, (2,), np.uint8)
    action_space = spaces.Discrete(4)

    def __init__(self) -> None:
        self.actions: list[int] = []

    def get_action_meanings(self) -> list[str]:
        return ["NOOP", "FIRE", "RIGHT", "LEFT"]

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        self.actions.clear()
        return np.zeros(2, np.uint8), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.actions.append(int(action))
        return np.full(2, len(self.actions), np.uint8), 0.0, False, False, {}


def test_fire_reset_presses_fire_after_reset() -> None:
    inner = RecordingEnv()
    assert FireReset.needed(inner)
    obs, _ = FireReset(inner).reset()
    assert inner.actions == [1, 2] and obs[0] == 2


class ScoreEnv(gym.Env):
    """Scores +5, -3, 0, 7 in turn; a game lasts 4 steps."""

    observation_space = spaces.Box(0, 1, (1,), np.float32)
    action_space = spaces.Discrete(2)
    SCORES = (5.0, -3.0, 0.0, 7.0)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.zeros(1, np.float32), self.SCORES[self.t - 1], self.t == 4, False, {}


gym.register("SheeprlTest/Score-v0", entry_point=ScoreEnv)


def test_rewards_are_signs_for_learning_and_scores_for_logging() -> None:
    cfg = OmegaConf.structured(RunConfig)
    cfg.env.id, cfg.env.num_envs, cfg.env.sign_rewards = "SheeprlTest/Score-v0", 1, True
    for training, expected in ((True, [1.0, -1.0, 0.0, 1.0]), (False, [5.0, -3.0, 0.0, 7.0])):
        envs = make_vector_env(cfg, seed=0, training=training)
        envs.reset(seed=0)
        rewards = [float(envs.step(np.zeros(1, np.int64))[1][0]) for _ in range(3)]
        _, last, _, _, infos = envs.step(np.zeros(1, np.int64))
        assert rewards + [float(last[0])] == expected
        assert infos["episode"]["r"][0] == 9.0  # the game score, also for training envs


def test_atari_training_rewards_are_clipped() -> None:
    envs = make_vector_env(atari_cfg(max_episode_steps=400), seed=0)
    envs.reset(seed=0)
    for _ in range(40):
        rewards = envs.step(envs.action_space.sample())[1]
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
    assert "SignReward" in repr(envs)
    assert "SignReward" not in repr(make_vector_env(atari_cfg(), seed=0, training=False))


class LivesEnv(gym.Env):
    """Three lives, one lost every 4 steps, reward 1 per step; the game ends with the last life."""

    observation_space = spaces.Box(0, 1, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        self.t = 0
        return np.zeros(1, np.float32), {"lives": 3}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        lives = 3 - self.t // 4
        return np.full(1, self.t, np.float32), 1.0, lives == 0, False, {"lives": lives}


def test_life_loss_ends_training_episode_but_scores_whole_games() -> None:
    envs = LifeLossTerminal(RecordEpisodeStatistics(SyncVectorEnv([LivesEnv], autoreset_mode=AutoresetMode.SAME_STEP)))
    envs.reset(seed=0)
    terminals, game_returns = [], []
    for t in range(1, 25):
        obs, _, terminated, _, infos = envs.step(np.zeros(1, np.int64))
        if terminated[0]:
            terminals.append(t)
        if "_episode" in infos and infos["_episode"][0]:
            game_returns.append(float(infos["episode"]["r"][0]))
        if terminated[0] and t % 12:
            assert obs[0, 0] == t % 12, "a lost life does not reset the game"
    assert terminals == [4, 8, 12, 16, 20, 24]
    assert game_returns == [12.0, 12.0]


def test_life_loss_needs_an_atari_id() -> None:
    cfg = minatar_cfg(**{"atari.terminal_on_life_loss": True})
    with pytest.raises(EnvError, match="needs an Atari"):
        make_vector_env(cfg, seed=0)


def test_atari_stack_starts_over_after_an_episode_end() -> None:
    envs = make_vector_env(atari_cfg(num_envs=1, max_episode_steps=200), seed=0)
    envs.reset(seed=0)
    for _ in range(60):
        obs, _, terminated, truncated, infos = envs.step(envs.action_space.sample())
        if terminated[0] or truncated[0]:
            break
    assert truncated[0]
    first = obs["rgb"][0]
    assert all(np.array_equal(first[i], first[-1]) for i in range(4))
    final = infos["final_obs"][0]["rgb"]
    assert not all(np.array_equal(final[i], final[-1]) for i in range(4)), "the final stack is a moving game"


# --- MinAtar ------------------------------------------------------------------------------------------------------


def test_minatar_planes_are_compact_bool_chw() -> None:
    envs = make_vector_env(minatar_cfg(), seed=0)
    obs, _ = envs.reset(seed=0)
    assert obs["planes"].shape == (2, 4, 10, 10) and obs["planes"].dtype == np.bool_
    assert envs.single_action_space == spaces.Discrete(3)
    obs, *_ = envs.step(envs.action_space.sample())
    assert obs["planes"].any()
    cfg = minatar_cfg()
    cfg.algo.cnn_keys.encoder, cfg.algo.mlp_keys.encoder = [], ["state"]
    with pytest.raises(EnvError, match=r"\['state'\] not found; available: \['planes'\]"):
        make_env(cfg, seed=0, idx=0)()


def test_minatar_video_renders_rgb(tmp_path) -> None:
    env = make_env(
        minatar_cfg(capture_video=True, video_every=1), seed=0, idx=0, run_dir=str(tmp_path), capture_video=True
    )()
    env.reset(seed=0)
    for _ in range(200):
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    env.close()
    assert list((tmp_path / "videos").glob("*.mp4"))


# --- encoders -----------------------------------------------------------------------------------------------------


def test_encoders_take_pixels_as_stored() -> None:
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    nature = CNNEncoder(["rgb"], [4], screen_size=84, features_dim=32)
    assert isinstance(nature.model, NatureCNN)
    torch.testing.assert_close(nature({"rgb": frames}), nature({"rgb": frames.float() / 255.0}))
    planes = torch.rand(2, 3, 5, 10, 10) > 0.5  # (T, B, C, H, W) bool
    small = CNNEncoder(["planes"], [5], screen_size=10, features_dim=16)
    assert isinstance(small.model, MinAtarCNN)
    out = small({"planes": planes})
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out, small({"planes": planes.float()}))
    assert isinstance(CNNEncoder(["rgb"], [4], screen_size=84, kind="minatar").model, MinAtarCNN)
    with pytest.raises(ValueError, match="unknown CNN encoder"):
        CNNEncoder(["rgb"], [4], screen_size=84, kind="resnet")
