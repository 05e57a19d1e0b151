"""The off-policy collector: act, step the vector envs, store the transition, record finished episodes.

Every off-policy algorithm plays the same way; only its update differs. The collector owns that shared part so
that an algorithm file holds its update:

    obs, _ = envs.reset(seed=env_seed)
    collector = Collector(envs, rb, run, obs, obs_fn=..., learning_starts=a.learning_starts, world_size=world)
    while collector.policy_step < a.total_steps:
        policy_step = collector.step(act)        # one vector step: act, step, store, record episodes
        if policy_step > train_from: ...        # the algorithm's update

API
---
``Collector(envs, buffer, run, obs, *, obs_fn=flat_state, learning_starts=0, world_size=1, policy_step=None)``
    ``envs``: a Gymnasium vector env with ``AutoresetMode.SAME_STEP`` (``sheeprl.envs.make_vector_env``).
    ``buffer``: anything with ``add(step)`` (``ReplayBuffer``, an n-step or prioritized buffer, ...).
    ``run``: the run's :class:`~sheeprl.utils.run.Run` (episode statistics, the "env" timer, the start step).
    ``obs``: the observations ``envs.reset`` returned (numpy dict).
    ``obs_fn``: numpy dict of observations -> what the agent and the buffer take: a ``(n_envs, *)`` tensor
    (e.g. the flat vector of the MLP keys, :func:`flat_state`) or a dict of ``(n_envs, *)`` tensors (e.g.
    ``obs_to_torch``: pixels stay uint8). Applied once per env step; the result is stored as it is.
    ``learning_starts``: while ``policy_step <= learning_starts`` actions are uniform random in the action space
    (Box: uniform between the bounds; Discrete / MultiDiscrete: uniform integers), drawn from torch's generator.
    ``world_size``: processes that each play ``n_envs`` envs; ``policy_step`` counts the env steps of all of them.
    ``policy_step``: where the count starts (default ``run.start_step``, so a resumed run continues its count).

``collector.step(act) -> policy_step``
    ``act(obs) -> actions``: a ``(n_envs, *)`` tensor of actions in env units (CPU or device), called with the
    current ``collector.obs`` after the warm-up (exploration noise, epsilon-greedy, ... belong to ``act``; read
    ``collector.policy_step`` for schedules: it already counts the step being taken). Then the envs step and one
    transition per env is handed to ``buffer.add`` as a dict of ``(1, n_envs, *)`` tensors:

    ====================  ==============================================================================
    ``observations``      ``obs_fn(obs)`` (a dict observation gives one entry per key instead, ``k``)
    ``next_observations`` ``obs_fn(next obs)``; where an episode ended, the REAL final observation
                          (``infos["final_obs"]``), not the next episode's first one (``next_k`` for dicts)
    ``actions``           the actions taken, as ``act`` returned them (float32 for Box, int64 for Discrete)
    ``rewards``           float32 rewards as the envs returned them
    ``terminated``        float32 1.0 where the episode terminated (no bootstrap)
    ``truncated``         float32 1.0 where it was truncated (bootstrap from ``next_observations``)
    ====================  ==============================================================================

    Finished episodes go to ``run.record_episodes`` (``Rewards/rew_avg``, ``Game/ep_len_avg``), and the time
    spent to ``run.timer("env")`` (``Time/sps_env_interaction``).

Build the envs with ``make_vector_env(..., apply_normalization=False)`` so that the buffer stores raw
observations and rewards; normalize what ``act`` sees and what a sampled batch holds with
:class:`sheeprl.envs.normalization.BatchNormalizer` (the statistics of the moment, never stale ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from sheeprl.utils.tensors import final_obs_batch, obs_to_torch

__all__ = ["Collector", "flat_state"]

Obs = Tensor | dict[str, Tensor]


def flat_state(keys: Sequence[str]) -> Callable[[dict[str, np.ndarray]], Tensor]:
    """An ``obs_fn``: the vector observations ``keys`` concatenated into one float32 ``(n_envs, D)`` tensor."""
    keys = list(keys)

    def fn(obs: dict[str, np.ndarray]) -> Tensor:
        t = obs_to_torch(obs)
        x = torch.cat([t[k].flatten(1) for k in keys], dim=-1) if len(keys) > 1 else t[keys[0]].flatten(1)
        return x if x.dtype == torch.float32 else x.float()

    return fn


def random_actions(space: gym.Space, n: int) -> Tensor:
    """``n`` uniform random actions, from torch's generator (so a seeded run repeats them)."""
    if isinstance(space, gym.spaces.Box):
        low = torch.as_tensor(space.low, dtype=torch.float32).flatten()
        high = torch.as_tensor(space.high, dtype=torch.float32).flatten()
        return low + torch.rand(n, low.numel()) * (high - low)
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(int(space.n), (n,)) + int(space.start)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = torch.as_tensor(space.nvec, dtype=torch.float32).flatten()
        return (torch.rand(n, nvec.numel()) * nvec).long()
    raise TypeError(f"no uniform random actions for a {type(space).__name__} action space")


class Collector:
    """Plays ``envs`` with an ``act`` callable and writes every transition into ``buffer`` (module docstring)."""

    def __init__(
        self,
        envs: Any,
        buffer: Any,
        run: Any,
        obs: dict[str, np.ndarray],
        *,
        obs_fn: Callable[[dict[str, np.ndarray]], Obs] | None = None,
        learning_starts: int = 0,
        world_size: int = 1,
        policy_step: int | None = None,
    ) -> None:
        self.envs, self.buffer, self.run = envs, buffer, run
        self.num_envs = int(envs.num_envs)
        self.action_space = envs.single_action_space
        self.action_shape = tuple(self.action_space.shape or ())
        self.obs_fn = obs_fn if obs_fn is not None else obs_to_torch
        self.learning_starts = int(learning_starts)
        self.steps_per_call = self.num_envs * int(world_size)
        self.policy_step = int(run.start_step if policy_step is None else policy_step)
        self.obs: Obs = self.obs_fn(obs)
        # ReplayBuffer (and its subclasses) take one step's rows directly; any other buffer gets add() with T = 1.
        self._add_step: Callable[[dict[str, Any]], None] | None = getattr(buffer, "add_step", None)
        space = self.action_space
        if isinstance(space, gym.spaces.Box) and not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            # Checked here so that the run fails at start, not when the warm-up begins.
            raise ValueError("uniform warm-up actions need a Box action space with finite bounds")

    def step(self, act: Callable[[Obs], Tensor]) -> int:
        """One vector step (module docstring); returns the new ``policy_step``."""
        with self.run.timer("env"):
            self.policy_step += self.steps_per_call
            if self.policy_step <= self.learning_starts:
                actions = random_actions(self.action_space, self.num_envs)
            else:
                actions = act(self.obs)
                if actions.device.type != "cpu":
                    actions = actions.cpu()
            next_obs, rewards, terminated, truncated, infos = self.envs.step(
                actions.reshape(self.num_envs, *self.action_shape).numpy()
            )
            next_t = self.obs_fn(next_obs)
            step: dict[str, Any] = self._pair(self.obs, self._real_next(next_t, infos))
            step["actions"] = actions
            step["rewards"] = np.asarray(rewards, dtype=np.float32)
            step["terminated"] = terminated.astype(np.float32)
            step["truncated"] = truncated.astype(np.float32)
            if self._add_step is not None:
                self._add_step(step)  # rows (n_envs, *) written through numpy views (~30 -> ~5 us a step)
            else:
                self.buffer.add({k: torch.as_tensor(v)[None] for k, v in step.items()})
            self.obs = next_t
            self.run.record_episodes(infos)
        return self.policy_step

    @staticmethod
    def _pair(obs: Obs, next_obs: Obs) -> dict[str, Tensor]:
        if isinstance(obs, Tensor):
            return {"observations": obs, "next_observations": next_obs}  # type: ignore[dict-item]
        out = dict(obs)
        out.update({f"next_{k}": v for k, v in next_obs.items()})  # type: ignore[union-attr]
        return out

    def _real_next(self, next_t: Obs, infos: dict[str, Any]) -> Obs:
        """``next_t`` with the real final observation where an episode ended (SAME_STEP autoreset put the next
        episode's first observation there), so that a truncated transition bootstraps from where it really ended."""
        done = infos.get("_final_obs")
        if done is None or not done.any():
            return next_t
        rows = torch.from_numpy(np.flatnonzero(done))
        first = infos["final_obs"][int(rows[0])]
        if isinstance(first, dict):
            final = self.obs_fn(final_obs_batch(infos, done, list(first.keys())))
        else:  # a plain array observation space
            final = self.obs_fn(np.stack([infos["final_obs"][i] for i in rows.tolist()]))
        if isinstance(next_t, Tensor):
            real = next_t.clone()
            real[rows] = final  # type: ignore[assignment]
            return real
        out = {}
        for k, v in next_t.items():
            out[k] = v.clone()
            out[k][rows] = final[k]  # type: ignore[index]
        return out
