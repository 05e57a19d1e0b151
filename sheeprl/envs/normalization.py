"""Vector-level observation and reward normalization, and their checkpointable state.

They wrap the whole ``VectorEnv`` so that all sub-envs share one set of statistics and a run has
one state to save. Unlike Gymnasium's wrappers they work on dict observations and also normalize
the per-env dicts in ``infos["final_obs"]`` (needed to bootstrap truncated episodes consistently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

from sheeprl.envs.errors import EnvError

W = TypeVar("W", bound=VectorWrapper)


def _clip_(x: np.ndarray, bound: float) -> np.ndarray:
    """Clip ``x`` to ``[-bound, bound]`` in place (two ufunc calls: ~3x faster than ``np.clip`` on tiny arrays)."""
    np.minimum(x, bound, out=x)
    return np.maximum(x, -bound, out=x)


class RunningMeanStd:
    """Running mean and variance over a batch axis, in float64.

    A batch is folded in with sums taken relative to the current mean (which keeps them small):
    ``mean += s / N`` and ``m2 += q - s**2 / N`` where ``s``, ``q`` are the sum and the sum of squares of
    ``x - mean``, ``N`` the new total count and ``m2 = var * count``; exactly Chan et al.'s parallel update.
    """

    __slots__ = ("count", "mean", "var")

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)  # a tiny prior count avoids dividing by zero before the first update

    def update(self, batch: np.ndarray) -> None:
        """Fold a batch ``(N, *shape)`` into the statistics."""
        # Called every env step on tiny arrays, where each numpy call costs ~1 us: few calls, in place where possible.
        total = self.count + batch.shape[0]
        shifted = batch - self.mean  # float64
        s = np.add.reduce(shifted, axis=0)
        shifted *= shifted
        q = np.add.reduce(shifted, axis=0)
        step = s * (1.0 / total)
        m2 = self.var * self.count
        m2 += q
        s *= step  # s**2 / total
        m2 -= s
        m2 *= 1.0 / total
        self.mean = self.mean + step
        self.var = m2
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values: safe for ``torch.load(weights_only=True)``, YAML and JSON."""
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = np.asarray(state["mean"], dtype=np.float64)
        if mean.shape != self.mean.shape:
            raise EnvError(f"normalization statistics have shape {mean.shape}, the env needs {self.mean.shape}")
        self.mean = mean
        self.var = np.asarray(state["var"], dtype=np.float64).reshape(mean.shape)
        self.count = float(state["count"])


class NormalizeDictObservation(VectorWrapper):
    """Normalize some float keys of dict observations to zero mean, unit variance, clipped to ``+-clip``.

    Statistics update on every ``reset``/``step`` while ``training`` is true. Observations returned by
    ``step``/``reset`` are normalized in place: the wrapped vector env must return fresh arrays
    (Gymnasium's vector envs do with ``copy=True``, their default). ``infos["final_obs"]`` dicts are
    replaced by normalized copies. With ``apply=False`` the statistics still update but the observations come
    back raw: a replay buffer stores them so and normalizes at sampling time (:class:`BatchNormalizer`).
    """

    def __init__(
        self,
        env: VectorEnv,
        keys: Sequence[str],
        clip: float = 10.0,
        epsilon: float = 1e-8,
        training: bool = True,
        apply: bool = True,
    ) -> None:
        super().__init__(env)
        self.apply = bool(apply)
        space = env.single_observation_space
        if not isinstance(space, spaces.Dict):
            raise TypeError("NormalizeDictObservation needs Dict observations")
        self.keys = tuple(keys)
        self.clip = float(clip)
        self.epsilon = float(epsilon)
        self.training = training
        self.rms = {key: RunningMeanStd(space[key].shape) for key in self.keys}
        # 1/std per key, refreshed after each update, so normalizing is a subtract and a multiply.
        self._scales: dict[str, np.ndarray] = {}
        for key in self.keys:
            self._refresh(key)
        normalized = dict(space.spaces)
        for key in self.keys:
            normalized[key] = spaces.Box(-self.clip, self.clip, space[key].shape, np.float32)
        self.single_observation_space = spaces.Dict(normalized)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self._process(obs, infos)
        return obs, infos

    def step(self, actions: Any) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self._process(obs, infos)
        return obs, rewards, terminations, truncations, infos

    def _process(self, obs: dict[str, np.ndarray], infos: dict[str, Any]) -> None:
        for key in self.keys:
            x = obs[key]
            if self.training:
                self.rms[key].update(x)
                self._refresh(key)
            if not self.apply:
                continue
            x -= self.rms[key].mean
            x *= self._scales[key]
            _clip_(x, self.clip)
        final_obs = infos.get("final_obs")
        if final_obs is not None and self.apply:
            # Done steps only, so a Python loop over the finished envs is cheap.
            for i in np.flatnonzero(infos["_final_obs"]):
                final_obs[i] = self.normalize(final_obs[i])

    def _refresh(self, key: str) -> None:
        scale = self.rms[key].var + self.epsilon
        scale **= -0.5
        self._scales[key] = scale

    def normalize(self, obs: dict[str, Any]) -> dict[str, Any]:
        """A normalized copy of ``obs`` (batched or single) with the current statistics; no update."""
        out = dict(obs)
        for key in self.keys:
            if key in out:
                # The same ops as the in-place path, so both give bit-identical results.
                x = np.array(out[key], dtype=np.float32)
                x -= self.rms[key].mean
                x *= self._scales[key]
                out[key] = _clip_(x, self.clip)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {key: rms.state_dict() for key, rms in self.rms.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.keys):
            raise EnvError(f"observation statistics are for keys {sorted(state)}, the env normalizes {list(self.keys)}")
        for key, rms_state in state.items():
            self.rms[key].load_state_dict(rms_state)
            self._refresh(key)


class NormalizeReward(VectorWrapper):
    """Scale rewards by the running std of each env's discounted return, clipped to ``+-clip``.

    The per-env return ``G <- gamma * G + r`` is reset to 0 when an episode ends (or on ``reset``). With
    ``apply=False`` the statistics still update but the rewards come back raw (see NormalizeDictObservation).
    """

    def __init__(
        self,
        env: VectorEnv,
        gamma: float = 0.99,
        clip: float = 10.0,
        epsilon: float = 1e-8,
        training: bool = True,
        apply: bool = True,
    ) -> None:
        super().__init__(env)
        self.apply = bool(apply)
        self.gamma = float(gamma)
        self.clip = float(clip)
        self.epsilon = float(epsilon)
        self.training = training
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(self.num_envs, dtype=np.float64)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            self.returns[:] = 0.0
        else:
            self.returns[mask] = 0.0
        return obs, infos

    def step(self, actions: Any) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self.returns *= self.gamma
        self.returns += rewards
        if self.training:
            self.rms.update(self.returns)
        if self.apply:
            rewards = _clip_(rewards * self.scale(), self.clip)
        self.returns[terminations | truncations] = 0.0
        return obs, rewards, terminations, truncations, infos

    def scale(self) -> float:
        """The factor rewards are multiplied by (before clipping): 1 / std of the discounted return."""
        return (float(self.rms.var) + self.epsilon) ** -0.5

    def state_dict(self) -> dict[str, Any]:
        return {"return_rms": self.rms.state_dict(), "returns": self.returns.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state["return_rms"])
        returns = np.asarray(state.get("returns", ()), dtype=np.float64)
        # A different number of envs (e.g. resuming with another num_envs) starts fresh returns.
        self.returns = returns if returns.shape == (self.num_envs,) else np.zeros(self.num_envs, dtype=np.float64)


def find_wrapper(envs: VectorEnv, cls: type[W]) -> W | None:
    """The first wrapper of type ``cls`` in the ``VectorWrapper`` chain of ``envs``, or None."""
    env: Any = envs
    while True:
        if isinstance(env, cls):
            return env
        if not isinstance(env, VectorWrapper):
            return None
        env = env.env


def get_env_state(envs: VectorEnv) -> dict[str, Any]:
    """Normalization statistics of ``envs`` for a checkpoint (plain Python values); ``{}`` if none.

    Keys: ``"obs_rms"`` ({key: {"mean", "var", "count"}}) with observation normalization;
    ``"return_rms"`` and ``"returns"`` (per-env discounted return) with reward normalization.
    """
    state: dict[str, Any] = {}
    obs_norm = find_wrapper(envs, NormalizeDictObservation)
    if obs_norm is not None:
        state["obs_rms"] = obs_norm.state_dict()
    rew_norm = find_wrapper(envs, NormalizeReward)
    if rew_norm is not None:
        state.update(rew_norm.state_dict())
    return state


def set_env_state(envs: VectorEnv, state: dict[str, Any]) -> None:
    """Load what :func:`get_env_state` saved; parts for wrappers ``envs`` does not have are ignored.

    That lets an evaluation env (no reward normalization) take a training env's state.
    """
    obs_norm = find_wrapper(envs, NormalizeDictObservation)
    if obs_norm is not None and "obs_rms" in state:
        obs_norm.load_state_dict(state["obs_rms"])
    rew_norm = find_wrapper(envs, NormalizeReward)
    if rew_norm is not None and "return_rms" in state:
        rew_norm.load_state_dict(state)


def set_normalization_training(envs: VectorEnv, training: bool) -> None:
    """Freeze (False) or resume (True) updates of every normalization statistic of ``envs``."""
    for cls in (NormalizeDictObservation, NormalizeReward):
        wrapper = find_wrapper(envs, cls)
        if wrapper is not None:
            wrapper.training = training


def normalize_obs(envs: VectorEnv, obs: dict[str, Any]) -> dict[str, Any]:
    """``obs`` normalized with the current statistics of ``envs`` (a copy); ``obs`` itself if none."""
    obs_norm = find_wrapper(envs, NormalizeDictObservation)
    return obs if obs_norm is None else obs_norm.normalize(obs)


class BatchNormalizer:
    """Normalizes flat observation vectors and rewards with the CURRENT statistics of ``envs``' wrappers.

    Off-policy buffers store raw observations and rewards (``make_vector_env(..., apply_normalization=False)``);
    what the agent sees, when acting and in every sampled batch, is normalized here with the statistics of the
    moment, as Stable-Baselines3's ``VecNormalize`` does, so old transitions never keep a stale scaling. ``keys``
    are the observation keys in the order they are concatenated into the flat vector; the keys that the
    observation wrapper normalizes are normalized (and clipped) exactly as it would, the others pass through.
    Without normalization wrappers every method returns its input unchanged.
    """

    def __init__(
        self, envs: VectorEnv, keys: Sequence[str], obs_keys: Sequence[str] = ("observations", "next_observations")
    ) -> None:
        self._obs = find_wrapper(envs, NormalizeDictObservation)
        self._rew = find_wrapper(envs, NormalizeReward)
        self.obs_keys = tuple(obs_keys)
        self.enabled = self._obs is not None or self._rew is not None
        space = envs.single_observation_space
        self._slices: list[tuple[str, int, int]] = []
        start = 0
        for key in keys:
            size = int(np.prod(space[key].shape))
            if self._obs is not None and key in self._obs.keys:
                self._slices.append((key, start, start + size))
            start += size
        self._dim = start

    def _obs_stats(self) -> tuple[Any, Any, Any]:
        import torch

        assert self._obs is not None
        mean = torch.zeros(self._dim, dtype=torch.float64)
        scale = torch.ones(self._dim, dtype=torch.float64)
        bound = torch.full((self._dim,), float("inf"), dtype=torch.float64)
        for key, a, b in self._slices:
            mean[a:b] = torch.from_numpy(np.asarray(self._obs.rms[key].mean, dtype=np.float64).reshape(-1))
            scale[a:b] = torch.from_numpy(np.asarray(self._obs._scales[key], dtype=np.float64).reshape(-1))
            bound[a:b] = self._obs.clip
        return mean, scale, bound

    def obs(self, x: Any) -> Any:
        """``(..., D)`` flat observations (a tensor) normalized with the current statistics."""
        if self._obs is None:
            return x
        mean, scale, bound = (t.to(x.device, x.dtype) for t in self._obs_stats())
        return ((x - mean) * scale).clamp(-bound, bound)

    def rewards(self, r: Any) -> Any:
        """Rewards scaled by the current 1 / std of the discounted return and clipped, as the wrapper would."""
        if self._rew is None:
            return r
        return (r * self._rew.scale()).clamp(-self._rew.clip, self._rew.clip)

    def batch(self, batch: Any) -> Any:
        """A copy of a sampled batch (dict or TensorDict) with its observation keys and rewards normalized."""
        if not self.enabled:
            return batch
        out = batch.copy()
        if self._obs is not None:
            for key in self.obs_keys:
                if key in out.keys():
                    out[key] = self.obs(out[key])
        if self._rew is not None and "rewards" in out.keys():
            out["rewards"] = self.rewards(out["rewards"])
        return out
