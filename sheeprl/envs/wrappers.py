"""Single-env wrappers: velocity masking, bounded action clipping, dict/pixel observations, frame stacking.

Every env the factory builds ends with :class:`DictObservation` (and optionally :class:`FrameStack`),
so algorithms only ever see ``gym.spaces.Dict`` observations whose values are numpy arrays:
float32 vectors for MLP keys and channels-first uint8 images for pixel keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space
from PIL import Image

from sheeprl.envs.errors import EnvError

# Indices of velocity entries in classic-control observations (masked to 0 for a POMDP).
VELOCITY_INDICES: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (1, 3),  # x, x_dot, theta, theta_dot
    "Pendulum-v1": (2,),  # cos, sin, theta_dot
    "MountainCar-v0": (1,),  # position, velocity
    "MountainCarContinuous-v0": (1,),
    "Acrobot-v1": (4, 5),  # cos1, sin1, cos2, sin2, dtheta1, dtheta2
    "LunarLander-v3": (2, 3, 5),  # x, y, vx, vy, angle, angular velocity, leg1, leg2
    "LunarLanderContinuous-v3": (2, 3, 5),
}

PIXEL_KEY = "rgb"
STATE_KEY = "state"


def mask_velocity(env: gym.Env, env_id: str) -> gym.Env:
    """Zero the velocity entries of a classic-control observation (``env.mask_velocities``)."""
    indices = VELOCITY_INDICES.get(env_id)
    if indices is None:
        known = ", ".join(VELOCITY_INDICES)
        raise EnvError(f"mask_velocities is not supported for '{env_id}' (supported: {known})")
    space = env.observation_space
    mask = np.ones(space.shape, dtype=space.dtype)
    mask[list(indices)] = 0
    # Multiplying keeps the dtype and the observation space (every velocity range contains 0).
    return gym.wrappers.TransformObservation(env, lambda obs: obs * mask, space)


class BoundedClipAction(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Clip Box actions to the env's bounds.

    Gymnasium's ``ClipAction`` advertises an unbounded action space; algorithms that rescale a
    squashed policy to the action bounds (SAC, continuous PPO) need the real bounds, so keep them.
    """

    def __init__(self, env: gym.Env) -> None:
        if not isinstance(env.action_space, spaces.Box):
            raise TypeError(f"BoundedClipAction needs a Box action space, got {env.action_space}")
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self._low = env.action_space.low
        self._high = env.action_space.high

    def action(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self._low, self._high)


def _image_layout(space: spaces.Space) -> str | None:
    """'hw', 'hwc' or 'chw' for a uint8 image Box (C in 1, 3, 4), None for anything else."""
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8:
        return None
    shape = space.shape
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return "hwc"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return "chw"
    return None


def _flatten_spaces(space: spaces.Space, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], spaces.Space]]:
    """(path, leaf space) pairs of a possibly nested Dict space; a non-Dict space is one leaf at path ()."""
    if not isinstance(space, spaces.Dict):
        return [(prefix, space)]
    leaves: list[tuple[tuple[str, ...], spaces.Space]] = []
    for key, sub in space.spaces.items():
        leaves.extend(_flatten_spaces(sub, prefix + (str(key),)))
    return leaves


class DictObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Turn any supported observation into a flat ``Dict`` of float32 vectors and CHW uint8 images.

    * a Box vector becomes ``{"state": float32 (D,)}`` (multi-dimensional non-image Boxes are flattened);
    * a Discrete observation becomes a one-hot ``"state"``;
    * a uint8 image (HxW, HxWxC or CxHxW) becomes ``"rgb"``, resized to ``screen_size``, optionally grayscale, CHW;
    * a (nested) Dict keeps its keys, nested ones joined with ``"_"``, leaves converted as above;
    * ``from_pixels`` adds the env's ``rgb_array`` render as ``"rgb"`` (ignored if the observation is an image).

    Only ``keys`` are kept; nothing else is converted or rendered.
    """

    def __init__(
        self,
        env: gym.Env,
        keys: Sequence[str] | None = None,
        from_pixels: bool = False,
        screen_size: int = 64,
        grayscale: bool = False,
    ) -> None:
        # Recording the arguments lets ``env.spec.make()`` rebuild the whole wrapped env.
        gym.utils.RecordConstructorArgs.__init__(
            self, keys=keys, from_pixels=from_pixels, screen_size=screen_size, grayscale=grayscale
        )
        gym.ObservationWrapper.__init__(self, env)
        self._size = int(screen_size)
        self._grayscale = bool(grayscale)
        channels = 1 if grayscale else 3
        image_space = spaces.Box(0, 255, (channels, self._size, self._size), np.uint8)

        source = env.observation_space
        leaves = _flatten_spaces(source)
        # One entry per available key: (path into the raw observation, converter, converted space).
        available: dict[str, tuple[tuple[str, ...], Callable[[Any], np.ndarray], spaces.Space]] = {}
        for path, leaf in leaves:
            layout = _image_layout(leaf)
            if layout is not None:
                name = "_".join(path) if path else PIXEL_KEY
                convert = (
                    self._process_frame if layout != "chw" else lambda v: self._process_frame(v.transpose(1, 2, 0))
                )
                entry = (path, convert, image_space)
            elif isinstance(leaf, spaces.Box):
                name = "_".join(path) if path else STATE_KEY
                entry = (path, *_vector_converter(leaf))
            elif isinstance(leaf, spaces.Discrete):
                name = "_".join(path) if path else STATE_KEY
                entry = (path, *_one_hot_converter(leaf))
            else:
                where = f" for key '{'_'.join(path)}'" if path else ""
                raise EnvError(f"unsupported observation space {leaf}{where}")
            if name in available:
                raise EnvError(f"observation key '{name}' appears twice after flattening nested Dict keys")
            available[name] = entry

        self._render = from_pixels and PIXEL_KEY not in available
        if self._render:
            if env.render_mode != "rgb_array":
                raise EnvError(f"from_pixels needs render_mode='rgb_array', the env has {env.render_mode!r}")
            available[PIXEL_KEY] = ((), self._process_frame, image_space)

        selected = list(available) if keys is None else list(dict.fromkeys(keys))
        missing = [k for k in selected if k not in available]
        if missing:
            raise EnvError(f"observation key(s) {missing} not found; available: {sorted(available)}")
        if not selected:
            raise EnvError(f"no observation key selected; available: {sorted(available)}")
        self._render = self._render and PIXEL_KEY in selected  # skip the (expensive) render if unused
        # A plain tuple of (key, path, converter) keeps the per-step loop minimal.
        self._entries = tuple(
            (k, available[k][0], available[k][1]) for k in selected if not (self._render and k == PIXEL_KEY)
        )
        self.observation_space = spaces.Dict({k: available[k][2] for k in selected})

    def observation(self, observation: Any) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for key, path, convert in self._entries:
            value = observation
            for part in path:
                value = value[part]
            out[key] = convert(value)
        if self._render:
            frame = self.env.render()
            if not isinstance(frame, np.ndarray):
                raise EnvError(f"from_pixels: render() returned {type(frame).__name__}, expected an image array")
            out[PIXEL_KEY] = self._process_frame(frame)
        return out

    def _process_frame(self, frame: np.ndarray) -> np.ndarray:
        """HxW(xC) uint8 -> CxSxS uint8, grayscale if asked."""
        if frame.ndim == 3 and frame.shape[-1] == 1:
            frame = frame[..., 0]
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        if image.size != (self._size, self._size):
            # Bilinear widens its support when shrinking, so this is antialiased; reducing_gap first
            # box-reduces by an integer factor, which halves the cost and changes pixels by <1 level on average.
            image = image.resize((self._size, self._size), Image.BILINEAR, reducing_gap=2.0)
        mode = "L" if self._grayscale else "RGB"
        if image.mode != mode:  # after resizing: converting the small image is cheap
            image = image.convert(mode)
        array = np.asarray(image)
        if self._grayscale:
            return array[None].copy()
        return np.ascontiguousarray(array.transpose(2, 0, 1))


def is_plain_vector(space: spaces.Space) -> bool:
    """A Box observation that is not an image: it becomes the single ``"state"`` key."""
    return isinstance(space, spaces.Box) and _image_layout(space) is None


def _flat_float32_box(space: spaces.Box) -> spaces.Box:
    shape = (int(np.prod(space.shape)),)
    with np.errstate(over="ignore"):  # float64 bounds beyond float32 range become +-inf, as intended
        low = space.low.astype(np.float32).reshape(shape)
        high = space.high.astype(np.float32).reshape(shape)
    return spaces.Box(low, high, shape, np.float32)


def _vector_converter(space: spaces.Box) -> tuple[Callable[[Any], np.ndarray], spaces.Box]:
    """A float32 flattening converter and its space. It always copies, so later in-place ops are safe."""
    converted = _flat_float32_box(space)
    shape = converted.shape
    if space.shape == shape:
        return (lambda value: np.array(value, dtype=np.float32)), converted
    return (lambda value: np.array(value, dtype=np.float32).reshape(shape)), converted


def _one_hot_converter(space: spaces.Discrete) -> tuple[Callable[[Any], np.ndarray], spaces.Box]:
    """A one-hot float32 converter for a Discrete observation and its space."""
    n, start = int(space.n), int(space.start)

    def convert(value: Any) -> np.ndarray:
        one_hot = np.zeros(n, dtype=np.float32)
        one_hot[int(value) - start] = 1.0
        return one_hot

    return convert, spaces.Box(0.0, 1.0, (n,), np.float32)


class FrameStack(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Stack the last ``num_stack`` observations of every key along axis 0.

    For CHW images that is the channel axis, ``(C*k, H, W)``; for vectors the last (only) axis, ``(D*k,)``.
    The first observation of an episode fills the whole stack.
    """

    def __init__(self, env: gym.Env, num_stack: int) -> None:
        if not isinstance(env.observation_space, spaces.Dict):
            raise TypeError("FrameStack needs a Dict observation space (wrap with DictObservation first)")
        if num_stack < 1:
            raise ValueError(f"num_stack must be >= 1, got {num_stack}")
        gym.utils.RecordConstructorArgs.__init__(self, num_stack=num_stack)
        gym.Wrapper.__init__(self, env)
        self._num_stack = int(num_stack)
        stacked = {}
        for key, box in env.observation_space.spaces.items():
            low = np.concatenate([box.low] * num_stack, axis=0)
            high = np.concatenate([box.high] * num_stack, axis=0)
            stacked[key] = spaces.Box(low, high, low.shape, box.dtype)
        self.observation_space = spaces.Dict(stacked)
        self._frames = {key: deque(maxlen=num_stack) for key in stacked}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        for key, frames in self._frames.items():
            frames.clear()
            frames.extend([obs[key]] * self._num_stack)
        return self._stacked(), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        for key, frames in self._frames.items():
            frames.append(obs[key])
        return self._stacked(), reward, terminated, truncated, info

    def _stacked(self) -> dict[str, np.ndarray]:
        # concatenate allocates the returned array, so the stored frames are never exposed to callers.
        return {key: np.concatenate(frames, axis=0) for key, frames in self._frames.items()}


class VectorStateDict(VectorWrapper):
    """``{"state": float32 (num_envs, D)}`` from a vector env with plain Box observations.

    The same result as :class:`DictObservation` on every sub-env, but a vector env batches a Box
    much faster than a Dict, so the factory uses this when ``"state"`` is the only key.
    ``infos["final_obs"]`` entries become ``{"state": ...}`` dicts too.
    """

    def __init__(self, env: VectorEnv) -> None:
        if not is_plain_vector(env.single_observation_space):
            raise TypeError(f"VectorStateDict needs plain Box observations, got {env.single_observation_space}")
        super().__init__(env)
        box = _flat_float32_box(env.single_observation_space)
        self._shape = (self.num_envs, *box.shape)
        self.single_observation_space = spaces.Dict({STATE_KEY: box})
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._convert(obs), infos

    def step(self, actions: Any) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        final_obs = infos.get("final_obs")
        if final_obs is not None:  # done steps only
            for i in np.flatnonzero(infos["_final_obs"]):
                final_obs[i] = {STATE_KEY: np.array(final_obs[i], dtype=np.float32).reshape(-1)}
        return self._convert(obs), rewards, terminations, truncations, infos

    def _convert(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        # The vector env returns a fresh copy (copy=True), so a float32 batch is used as is, without copying.
        return {STATE_KEY: obs.astype(np.float32, copy=False).reshape(self._shape)}
