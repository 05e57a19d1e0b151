"""Build single and vectorized envs from a run config; one small builder per id prefix (backend)."""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import find_highest_version, parse_env_id
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics
from omegaconf import DictConfig, OmegaConf

from sheeprl.envs import atari, dmc
from sheeprl.envs.errors import EnvError
from sheeprl.envs.normalization import NormalizeDictObservation, NormalizeReward
from sheeprl.envs.wrappers import (
    STATE_KEY,
    BoundedClipAction,
    DictObservation,
    FrameStack,
    VectorStateDict,
    is_plain_vector,
    mask_velocity,
)

BuildFn = Callable[[str, dict[str, Any], str | None, int | None], gym.Env]


class Backend(NamedTuple):
    """How to validate and build the ids of one family (e.g. every ``dmc/...`` id)."""

    check: Callable[[str], None]  # raise EnvError unless the id exists; must not build an env
    build: BuildFn  # (id, kwargs, render_mode, max_episode_steps) -> raw gym.Env
    uses_mujoco: Callable[[str], bool]  # whether rendering goes through MuJoCo's OpenGL context
    # Games with their own pixel pipeline (Atari, MinAtar): (id, kwargs, render_mode, max_episode_steps, settings)
    # -> (raw env, function wrapping it into the final dict observation). Replaces build and the generic wrappers.
    game: Callable[..., tuple[gym.Env, Callable[[gym.Env], gym.Env]]] | None = None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --- Gymnasium registry -------------------------------------------------------------------------------------------


def _check_gymnasium(env_id: str) -> None:
    if ":" in env_id:  # "package.module:EnvName-v0": gymnasium imports the module, which registers the env
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise EnvError(f"cannot import module '{module}' for env id '{env_id}': {_one_line(err)}") from err
    if env_id in gym.registry:
        return
    try:
        namespace, name, version = parse_env_id(env_id)
    except gym.error.Error as err:
        raise EnvError(f"malformed env id '{env_id}': {_one_line(err)}") from err
    if version is None and find_highest_version(namespace, name) is not None:
        return  # an unversioned id: gymnasium picks the latest version
    matches = difflib.get_close_matches(env_id, list(gym.registry), n=1)
    hint = f" (did you mean '{matches[0]}'?)" if matches else ""
    raise EnvError(f"unknown env id '{env_id}'{hint}")


def _build_gymnasium(
    env_id: str, kwargs: dict[str, Any], render_mode: str | None, max_episode_steps: int | None
) -> gym.Env:
    if render_mode is not None:
        kwargs = {**kwargs, "render_mode": render_mode}
    if max_episode_steps is not None:
        kwargs = {**kwargs, "max_episode_steps": max_episode_steps}
    try:
        return gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError, TypeError) as err:  # missing dependency, bad kwargs, ...
        raise EnvError(f"cannot make '{env_id}': {_one_line(err)}") from err


def _gymnasium_uses_mujoco(env_id: str) -> bool:
    try:
        entry_point = gym.spec(env_id.partition(":")[2] or env_id).entry_point
    except gym.error.Error:
        return False
    return "mujoco" in str(entry_point).lower()


GYMNASIUM = Backend(_check_gymnasium, _build_gymnasium, _gymnasium_uses_mujoco)
# Prefix -> backend; ids matching no prefix go to the Gymnasium registry. Add new backends here.
BACKENDS: dict[str, Backend] = {
    dmc.PREFIX: Backend(dmc.check_id, dmc.build, lambda env_id: True),
    atari.ATARI_PREFIX: Backend(atari.check_atari, _build_gymnasium, lambda env_id: False, atari.build_atari),
    atari.MINATAR_PREFIX: Backend(atari.check_minatar, _build_gymnasium, lambda env_id: False, atari.build_minatar),
}


def _backend(env_id: str) -> Backend:
    for prefix, backend in BACKENDS.items():
        if env_id.startswith(prefix):
            return backend
    return GYMNASIUM


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` (with a did-you-mean) unless ``env_id`` is known; builds no env."""
    _backend(env_id).check(env_id)


# --- single env -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvSettings:
    """The plain (picklable) values of a run config that building one env needs."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ("state",)
    max_episode_steps: int | None = None
    action_repeat: int = 1
    mask_velocities: bool = False
    clip_actions: bool = True
    from_pixels: bool = False
    screen_size: int = 64
    grayscale: bool = False
    frame_stack: int = 1
    video_every: int = 50
    # Atari (ALE/ ids) only
    noop_max: int = 30
    frame_skip: int = 4
    repeat_action_probability: float = 0.25
    fire_reset: bool = True

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> EnvSettings:
        env = cfg.env
        kwargs = OmegaConf.to_container(env.kwargs, resolve=True) if isinstance(env.kwargs, DictConfig) else env.kwargs
        keys = tuple(dict.fromkeys([*cfg.algo.cnn_keys.encoder, *cfg.algo.mlp_keys.encoder]))
        return cls(
            id=str(env.id),
            kwargs=dict(kwargs or {}),
            keys=keys,
            max_episode_steps=env.max_episode_steps,
            action_repeat=int(env.action_repeat),
            mask_velocities=bool(env.mask_velocities),
            clip_actions=bool(env.clip_actions),
            from_pixels=bool(env.from_pixels),
            screen_size=int(env.screen_size),
            grayscale=bool(env.grayscale),
            frame_stack=int(env.frame_stack),
            video_every=max(1, int(env.video_every)),
            noop_max=int(env.atari.noop_max),
            frame_skip=int(env.atari.frame_skip),
            repeat_action_probability=float(env.atari.repeat_action_probability),
            fire_reset=bool(env.atari.fire_reset),
        )


def build_env(
    settings: EnvSettings,
    seed: int | None = None,
    video_folder: str | None = None,
    video_prefix: str = "train",
    state_only_as_box: bool = False,
) -> gym.Env:
    """Build one fully wrapped env; records every ``video_every``-th episode into ``video_folder`` if given.

    With ``state_only_as_box``, an env whose only observation key would be ``"state"`` keeps its Box
    observation: the vector env then adds the dict with :class:`VectorStateDict` (much cheaper).
    """
    backend = _backend(settings.id)
    if backend.game is not None:
        return _build_game(backend, settings, seed, video_folder, video_prefix)
    render_mode = "rgb_array" if settings.from_pixels or video_folder is not None else None
    kwargs = dict(settings.kwargs)
    if render_mode is not None and backend.uses_mujoco(settings.id):
        dmc.prepare_mujoco_gl()
        if settings.from_pixels:  # render straight at the observation size instead of resizing 480x480 frames
            kwargs.setdefault("width", settings.screen_size)
            kwargs.setdefault("height", settings.screen_size)
    env = backend.build(settings.id, kwargs, render_mode, settings.max_episode_steps)

    # Innermost first: the video sees every frame (also the repeated ones), clipping happens once per action.
    if video_folder is not None:
        env = _record_video(env, settings, video_folder, video_prefix)
    if settings.action_repeat > 1:
        env = gym.wrappers.RepeatAction(env, settings.action_repeat)
    if settings.mask_velocities:
        env = mask_velocity(env, settings.id)
    if settings.clip_actions and isinstance(env.action_space, spaces.Box):
        env = BoundedClipAction(env)
    box_only = settings.keys == (STATE_KEY,) and settings.frame_stack == 1 and is_plain_vector(env.observation_space)
    if not (state_only_as_box and box_only):
        env = DictObservation(env, settings.keys, settings.from_pixels, settings.screen_size, settings.grayscale)
        if settings.frame_stack > 1:
            env = FrameStack(env, settings.frame_stack)
    if seed is not None:
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env


def _record_video(env: gym.Env, settings: EnvSettings, video_folder: str, video_prefix: str) -> gym.Env:
    every = settings.video_every
    with warnings.catch_warnings():  # train and eval videos share one folder on purpose
        warnings.filterwarnings("ignore", message=".*Overwriting existing videos.*")
        return gym.wrappers.RecordVideo(
            env, video_folder, episode_trigger=lambda episode: episode % every == 0, name_prefix=video_prefix
        )


def _build_game(
    backend: Backend, settings: EnvSettings, seed: int | None, video_folder: str | None, video_prefix: str
) -> gym.Env:
    """Atari / MinAtar: the game's own preprocessing; videos record every raw frame of the real game."""
    assert backend.game is not None
    if settings.action_repeat != 1:
        raise EnvError(f"'{settings.id}' skips frames itself: use env.atari.frame_skip, not env.action_repeat")
    render_mode = "rgb_array" if video_folder is not None else None
    env, preprocess = backend.game(
        settings.id, dict(settings.kwargs), render_mode, settings.max_episode_steps, settings
    )
    if video_folder is not None:
        env = _record_video(env, settings, video_folder, video_prefix)
    env = preprocess(env)
    if seed is not None:
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env


def make_env(
    cfg: DictConfig,
    seed: int,
    idx: int,
    run_dir: str | None = None,
    capture_video: bool = False,
    video_prefix: str = "train",
) -> Callable[[], gym.Env]:
    """A thunk building env number ``idx``: its spaces are seeded with ``seed + idx``.

    The env itself is seeded by its first ``reset(seed=seed + idx)``, which the caller does (a vector
    env does it for every sub-env on ``envs.reset(seed=seed)``). With ``capture_video`` it records
    into ``<run_dir>/videos``. The id is checked now, so a typo fails here and not in a worker process.
    """
    settings = EnvSettings.from_cfg(cfg)
    check_env_id(settings.id)
    return partial(build_env, settings, seed + idx, _video_folder(run_dir, capture_video), video_prefix)


def _video_folder(run_dir: str | None, capture_video: bool) -> str | None:
    if not capture_video:
        return None
    if run_dir is None:
        raise EnvError("capture_video needs a run folder to write videos into")
    return os.path.join(run_dir, "videos")


# --- vector env -----------------------------------------------------------------------------------------------


def _float_keys(space: spaces.Dict, keys: list[str]) -> list[str]:
    return [k for k in keys if k in space.spaces and np.issubdtype(space[k].dtype, np.floating)]


def make_vector_env(
    cfg: DictConfig,
    seed: int,
    num_envs: int | None = None,
    run_dir: str | None = None,
    capture_video: bool | None = None,
    training: bool = True,
) -> VectorEnv:
    """The vectorized env of a run (see the :mod:`sheeprl.envs` docstring for what step returns).

    Call ``envs.reset(seed=seed)`` once first: sub-env ``i`` is then seeded with ``seed + i``.
    ``training=False`` (evaluation envs) freezes observation statistics and turns reward normalization off;
    load the training statistics with ``set_env_state``. With ``capture_video`` (default ``env.capture_video``;
    pass False on ranks > 0) sub-env 0 records into ``<run_dir>/videos/{train|eval}-episode-<n>.mp4``.
    """
    num_envs = int(cfg.env.num_envs if num_envs is None else num_envs)
    if num_envs < 1:
        raise EnvError(f"num_envs must be >= 1, got {num_envs}")
    capture = bool(cfg.env.capture_video if capture_video is None else capture_video)
    prefix = "train" if training else "eval"
    settings = EnvSettings.from_cfg(cfg)
    check_env_id(settings.id)
    video_folder = _video_folder(run_dir, capture)
    env_fns = [
        partial(build_env, settings, seed + i, video_folder if i == 0 else None, prefix, state_only_as_box=True)
        for i in range(num_envs)
    ]
    vector_cls = SyncVectorEnv if cfg.env.sync_env else AsyncVectorEnv
    # copy=True (the default) returns fresh observation arrays: the wrappers below work in place on them.
    envs: VectorEnv = vector_cls(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
    envs.action_space.seed(seed)
    if not isinstance(envs.single_observation_space, spaces.Dict):
        envs = VectorStateDict(envs)

    # Episode statistics first, so they see the raw rewards and whole games.
    envs = RecordEpisodeStatistics(envs)
    if training and cfg.env.atari.terminal_on_life_loss:
        if not settings.id.startswith(atari.ATARI_PREFIX):
            raise EnvError(f"env.atari.terminal_on_life_loss needs an Atari (ALE/) id, got '{settings.id}'")
        envs = atari.LifeLossTerminal(envs)
    if training and cfg.env.sign_rewards:
        envs = atari.SignReward(envs)
    if cfg.env.normalize_observation:
        keys = _float_keys(envs.single_observation_space, list(cfg.algo.mlp_keys.encoder))
        if keys:
            envs = NormalizeDictObservation(envs, keys, clip=cfg.env.clip_observation, training=training)
    if cfg.env.normalize_reward and training:
        envs = NormalizeReward(envs, gamma=float(cfg.algo.get("gamma", 0.99)), clip=cfg.env.clip_reward)
    return envs
