"""DeepMind Control Suite tasks as Gymnasium envs: ids ``dmc/<domain>-<task>`` (e.g. ``dmc/walker-walk``).

The observation dict is flattened (in the suite's key order) into one float32 vector, which the
factory exposes as ``"state"``; ``render_mode="rgb_array"`` renders ``physics.render`` frames.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sheeprl.envs.errors import EnvError

PREFIX = "dmc/"


def prepare_mujoco_gl() -> None:
    """Default to headless EGL rendering when no display is available and the user chose no backend.

    MuJoCo and dm_control pick their OpenGL backend when first imported, so this must run before.
    PyOpenGL needs the matching platform or EGL contexts fail to initialise.
    """
    if "MUJOCO_GL" in os.environ or os.environ.get("DISPLAY"):
        return
    import ctypes.util

    # Without libEGL, forcing egl would make importing dm_control fail even for state-only tasks.
    if ctypes.util.find_library("EGL") is not None:
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def _import_suite() -> Any:
    prepare_mujoco_gl()
    try:
        from dm_control import suite
    except (ImportError, RuntimeError) as err:
        if importlib.util.find_spec("dm_control") is None:
            raise EnvError("dmc/ ids need dm_control: pip install dm-control") from err
        # Installed, so the OpenGL backend chosen by MUJOCO_GL failed to load.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        gl = os.environ.get("MUJOCO_GL")
        raise EnvError(f"dm_control could not load MUJOCO_GL={gl} (try egl, osmesa or glfw): {reason}") from err
    return suite


def _parse(env_id: str) -> tuple[str, str]:
    domain, sep, task = env_id[len(PREFIX) :].partition("-")
    if not sep or not domain or not task:
        raise EnvError(f"DeepMind Control ids look like 'dmc/<domain>-<task>' (e.g. dmc/walker-walk), got '{env_id}'")
    return domain, task


def all_ids() -> list[str]:
    """Every ``dmc/<domain>-<task>`` id of the installed suite."""
    return [f"{PREFIX}{domain}-{task}" for domain, task in _import_suite().ALL_TASKS]


def check_id(env_id: str) -> None:
    """Raise EnvError (with a suggestion) unless ``env_id`` names a suite task."""
    import difflib

    _parse(env_id)
    known = all_ids()
    if env_id not in known:
        matches = difflib.get_close_matches(env_id, known, n=1)
        hint = f" (did you mean '{matches[0]}'?)" if matches else ""
        raise EnvError(f"unknown env id '{env_id}'{hint}")


class DMCEnv(gym.Env):
    """A dm_control suite task behind the Gymnasium API.

    ``terminated`` is true only when the task ends with discount 0; the suite's time limit is a truncation.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        domain: str,
        task: str,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
        camera_id: int = 0,
        task_kwargs: dict[str, Any] | None = None,
        environment_kwargs: dict[str, Any] | None = None,
    ) -> None:
        suite = _import_suite()
        if render_mode not in (None, "rgb_array"):
            raise EnvError(f"DeepMind Control envs render only 'rgb_array', got {render_mode!r}")
        self._env = suite.load(domain, task, task_kwargs=task_kwargs, environment_kwargs=environment_kwargs)
        self.render_mode = render_mode
        self._size = (int(height), int(width))
        self._camera_id = camera_id
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self._env.control_timestep())}

        dim = sum(int(np.prod(spec.shape)) for spec in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        action_spec = self._env.action_spec()
        self.action_space = spaces.Box(
            action_spec.minimum.astype(np.float32),
            action_spec.maximum.astype(np.float32),
            action_spec.shape,
            np.float32,
        )

    @staticmethod
    def _flatten(observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(value, dtype=np.float32).reshape(-1) for value in observation.values()])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            # The suite draws initial states from the task's RandomState; reseeding it makes resets reproducible.
            self._env.task._random = np.random.RandomState(seed)
        time_step = self._env.reset()
        return self._flatten(time_step.observation), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        time_step = self._env.step(action)
        reward = float(time_step.reward or 0.0)
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0.0)
        truncated = bool(last and not terminated)
        return self._flatten(time_step.observation), reward, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        height, width = self._size
        return self._env.physics.render(height=height, width=width, camera_id=self._camera_id)

    def close(self) -> None:
        self._env.close()


def build(env_id: str, kwargs: dict[str, Any], render_mode: str | None, max_episode_steps: int | None) -> gym.Env:
    """Build ``dmc/<domain>-<task>``; ``kwargs`` go to :class:`DMCEnv` (width, height, camera_id, ...)."""
    domain, task = _parse(env_id)
    try:
        env: gym.Env = DMCEnv(domain, task, render_mode=render_mode, **kwargs)
    except TypeError as err:
        raise EnvError(f"cannot make '{env_id}': {err}") from err
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return env
