"""Atari (``ALE/<Game>-v5`` through ale-py) and MinAtar (``MinAtar/<Game>-v1``) backends.

Atari gets the DeepMind preprocessing from Gymnasium's own wrappers: the base env is made with
``frameskip=1`` and ``repeat_action_probability`` (sticky actions, v5 default 0.25), then
:class:`~gymnasium.wrappers.AtariPreprocessing` (up to ``noop_max`` no-op starts, ``frame_skip`` with a max over
the last two frames, ``screen_size`` grayscale), :class:`FireReset` for games that need FIRE to start, and
:class:`~gymnasium.wrappers.FrameStackObservation`. The observation is ``{"rgb": uint8 (stack * C, H, W)}``.

Two Atari conventions act on the vector env of training runs only (:mod:`sheeprl.envs.factory`), after the
episode statistics, so that returns, evaluation and videos keep the real game score: :class:`SignReward`
(rewards clipped to their sign) and :class:`LifeLossTerminal` (a lost life ends the training episode).

MinAtar's observation is its ``10 x 10 x C`` boolean planes as ``{"planes": bool (C, 10, 10)}`` (stacked like
Atari when ``frame_stack > 1``); the buffer bit-packs them and the encoder makes them float.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper

from sheeprl.envs.errors import EnvError

ATARI_PREFIX = "ALE/"
MINATAR_PREFIX = "MinAtar/"
ATARI_KEY = "rgb"
MINATAR_KEY = "planes"


# --- registration and id checks -----------------------------------------------------------------------------------


def register_ale() -> None:
    try:
        import ale_py
    except ImportError as err:
        raise EnvError("ALE/ (Atari) ids need ale-py: pip install 'sheeprl[atari]'") from err
    gym.register_envs(ale_py)


def register_minatar() -> None:
    # Gymnasium 1.x does not load MinAtar's plugin: its ids exist only after register_envs().
    if any(env_id.startswith(MINATAR_PREFIX) for env_id in gym.registry):
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # minatar.gym logs a warning when seaborn (used by its own renderer) is missing
    try:
        from minatar.gym import register_envs
    except ImportError as err:
        raise EnvError("MinAtar/ ids need MinAtar: pip install 'sheeprl[minatar]'") from err
    finally:
        root.setLevel(level)
    register_envs()


def _check_family(env_id: str, prefix: str) -> None:
    if env_id in gym.registry:
        return
    known = sorted(k for k in gym.registry if k.startswith(prefix))
    matches = difflib.get_close_matches(env_id, known, n=1, cutoff=0.5)
    hint = f" (did you mean '{matches[0]}'?)" if matches else ""
    raise EnvError(f"unknown env id '{env_id}'{hint}")


def check_atari(env_id: str) -> None:
    register_ale()
    _check_family(env_id, ATARI_PREFIX)


def check_minatar(env_id: str) -> None:
    register_minatar()
    _check_family(env_id, MINATAR_PREFIX)


# --- single-env wrappers ------------------------------------------------------------------------------------------


class FireReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Press FIRE (then action 2) after every reset, for games that wait for FIRE to start (Breakout, ...).

    The two steps are the usual ``FireResetEnv`` of the DQN baselines; a game that ends during them is reset again.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    @staticmethod
    def needed(env: gym.Env) -> bool:
        meanings = env.unwrapped.get_action_meanings()
        return len(meanings) >= 3 and meanings[1] == "FIRE"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        for action in (1, 2):
            obs, _, terminated, truncated, step_info = self.env.step(action)
            info = {**info, **step_info}
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


class ScreenSpace(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Advertise the ALE screen as the observation space of an env made with ``obs_type="ram"``, and step the
    emulator directly.

    AtariPreprocessing sizes its pooling buffers from the inner observation space but reads the screens from the
    ALE directly; the observations passing through (RAM) are never used. It steps this wrapper once per emulator
    frame (4 times per agent step), so when nothing but Gymnasium's order and API checkers lies between this
    wrapper and the ALE env, ``step`` does what ``AtariEnv.step`` does with ``frameskip=1`` itself (one
    ``ale.act``, sticky actions included, the game-over and truncation flags, the same info keys) without the
    Python layers in between. A ``TimeLimit`` (``env.max_episode_steps``) or any other wrapper below keeps the
    ordinary path.
    """

    def __init__(self, env: gym.Env, grayscale: bool) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, grayscale=grayscale)
        gym.Wrapper.__init__(self, env)
        height, width = env.unwrapped.ale.getScreenDims()
        shape = (height, width) if grayscale else (height, width, 3)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self._ale: Any = self._direct_ale(env)
        self._actions = env.unwrapped._action_set if self._ale is not None else None

    @staticmethod
    def _direct_ale(env: gym.Env) -> Any:
        """The ALE interface when stepping it directly is what the wrapped env would do, else None."""
        inner = env
        while isinstance(inner, (gym.wrappers.OrderEnforcing, gym.wrappers.PassiveEnvChecker)):
            inner = inner.env
        raw = env.unwrapped
        direct = inner is raw and raw._frameskip == 1 and not raw.continuous and not getattr(raw, "sound_obs", False)
        return raw.ale if direct else None

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        ale = self._ale
        if ale is None:
            return self.env.step(action)
        reward = 0.0 + ale.act(self._actions[action], 1.0)
        info = {
            "lives": ale.lives(),
            "episode_frame_number": ale.getEpisodeFrameNumber(),
            "frame_number": ale.getFrameNumber(),
        }
        return ale.getRAM(), reward, ale.game_over(with_truncation=False), ale.game_truncated(), info


class PixelDict(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """``{key: (stack * C, H, W)}`` from frames ``(H, W)``, ``(H, W, C)`` or stacked ``(stack, H, W[, C])``.

    ``keys`` are the ones the algorithm asked for: anything but ``key`` is a one-line error.
    """

    def __init__(self, env: gym.Env, key: str, keys: tuple[str, ...], stacked: bool) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, key=key, keys=keys, stacked=stacked)
        gym.ObservationWrapper.__init__(self, env)
        missing = [k for k in keys if k != key]
        if missing:
            raise EnvError(f"observation key(s) {missing} not found; available: ['{key}']")
        box = env.observation_space
        shape = box.shape if stacked else (1, *box.shape)  # (stack, H, W[, C])
        self._channels_last = len(shape) == 4
        if self._channels_last:
            stack, height, width, channels = shape
            self._order = (0, 3, 1, 2)
        else:
            (stack, height, width), channels = shape, 1
        self._shape = (stack * channels, height, width)
        self._key = key
        self._dtype = box.dtype
        high = 1 if box.dtype == np.bool_ else 255
        self.observation_space = spaces.Dict({key: spaces.Box(0, high, self._shape, box.dtype)})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        frames = np.asarray(observation)
        if self._channels_last:
            frames = frames.reshape(-1, *frames.shape[-3:]).transpose(self._order)
        # reshape of a transposed array copies; ascontiguousarray also copies the plain case's view.
        return {self._key: np.ascontiguousarray(frames.reshape(self._shape), dtype=self._dtype)}


class MinAtarRender(gym.Wrapper):
    """``render()`` as a uint8 RGB image (one color per plane, 16x upscaled), without MinAtar's seaborn palette."""

    def __init__(self, env: gym.Env, scale: int = 16) -> None:
        super().__init__(env)
        channels = env.observation_space.shape[-1]
        rng = np.random.default_rng(0)
        palette = rng.integers(64, 256, (channels + 1, 3)).astype(np.uint8)
        palette[0] = 0  # background
        self._palette, self._scale = palette, scale

    @property
    def render_mode(self) -> str | None:
        return "rgb_array"

    def render(self) -> np.ndarray:
        state = self.env.unwrapped.game.state()
        index = np.amax(state * np.arange(1, state.shape[-1] + 1), axis=-1)
        image = self._palette[index]
        return np.repeat(np.repeat(image, self._scale, axis=0), self._scale, axis=1)


# --- builders -----------------------------------------------------------------------------------------------------


def build_atari(
    env_id: str,
    kwargs: dict[str, Any],
    render_mode: str | None,
    max_episode_steps: int | None,
    settings: Any,
) -> tuple[gym.Env, Any]:
    """The raw ALE env (``frameskip=1``) and a function applying the preprocessing to it (after a video wrapper)."""
    register_ale()
    kwargs = dict(kwargs)
    kwargs.setdefault("repeat_action_probability", float(settings.repeat_action_probability))
    frame_skip = int(settings.frame_skip)
    kwargs.setdefault("frameskip", 1)
    # AtariPreprocessing reads the two screens it pools from the ALE itself and ignores what step() returns, so the
    # emulator returns its 128-byte RAM instead of copying a screen on each of the skipped frames (~10% faster).
    kwargs.setdefault("obs_type", "ram")
    if kwargs["frameskip"] != 1:
        raise EnvError("Atari preprocessing skips frames itself: set env.frame_skip instead of env.kwargs.frameskip")
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, TypeError) as err:
        raise EnvError(f"cannot make '{env_id}': {str(err).strip().splitlines()[0]}") from err

    def preprocess(env: gym.Env) -> gym.Env:
        try:
            import cv2  # AtariPreprocessing resizes with OpenCV
        except ImportError as err:
            raise EnvError("Atari preprocessing needs OpenCV: pip install 'sheeprl[atari]'") from err
        # One small resize per step: OpenCV's thread pool only competes with the other envs and torch for cores.
        cv2.setNumThreads(1)
        if env.unwrapped._obs_type == "ram":
            env = ScreenSpace(env, bool(settings.grayscale))
        env = gym.wrappers.AtariPreprocessing(
            env,
            noop_max=int(settings.noop_max),
            frame_skip=frame_skip,
            screen_size=int(settings.screen_size),
            terminal_on_life_loss=False,  # done by LifeLossTerminal on training vector envs: the game goes on
            grayscale_obs=bool(settings.grayscale),
        )
        if settings.fire_reset and FireReset.needed(env):
            env = FireReset(env)
        if settings.frame_stack > 1:
            env = gym.wrappers.FrameStackObservation(env, int(settings.frame_stack))
        return PixelDict(env, ATARI_KEY, settings.keys, stacked=settings.frame_stack > 1)

    return env, preprocess


def build_minatar(
    env_id: str,
    kwargs: dict[str, Any],
    render_mode: str | None,
    max_episode_steps: int | None,
    settings: Any,
) -> tuple[gym.Env, Any]:
    """The MinAtar env (rendering through :class:`MinAtarRender`) and its observation wrapping."""
    register_minatar()
    kwargs = dict(kwargs)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, TypeError) as err:
        raise EnvError(f"cannot make '{env_id}': {str(err).strip().splitlines()[0]}") from err
    if render_mode is not None:
        env = MinAtarRender(env)

    def preprocess(env: gym.Env) -> gym.Env:
        if settings.frame_stack > 1:
            env = gym.wrappers.FrameStackObservation(env, int(settings.frame_stack))
        return PixelDict(env, MINATAR_KEY, settings.keys, stacked=settings.frame_stack > 1)

    return env, preprocess


# --- vector wrappers (training envs) ------------------------------------------------------------------------------


class SignReward(VectorWrapper):
    """Rewards clipped to their sign (-1, 0, 1), as the DQN papers train on Atari.

    Put it after ``RecordEpisodeStatistics``: episode returns keep the game score.
    """

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        return obs, np.sign(rewards), terminated, truncated, infos


class LifeLossTerminal(VectorWrapper):
    """A lost life ends the training episode (``terminated``) while the game itself goes on.

    The ALE reports ``lives`` in its infos. Unlike ``AtariPreprocessing(terminal_on_life_loss=True)``, the game is
    not reset, so the agent still plays whole games and ``RecordEpisodeStatistics`` (placed before this wrapper)
    reports whole-game scores; the value target is simply not bootstrapped across a lost life.
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self._lives: np.ndarray | None = None

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self._lives = self._read(infos)
        return obs, infos

    def _read(self, infos: dict[str, Any]) -> np.ndarray:
        if "lives" not in infos:
            raise EnvError("terminal_on_life_loss needs an env that reports 'lives' in its infos (ALE/ ids)")
        return np.asarray(infos["lives"]).copy()

    def step(self, actions: Any) -> tuple[Any, SupportsFloat, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        lives = self._read(infos)
        if self._lives is not None:
            # At an episode end the infos already hold the next game's lives (SAME_STEP autoreset).
            lost = (lives < self._lives) & ~(terminated | truncated)
            if lost.any():
                terminated = terminated | lost
        self._lives = lives
        return obs, rewards, terminated, truncated, infos
