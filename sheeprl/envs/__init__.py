"""Environments: the factory every algorithm uses.

Typical use::

    envs = make_vector_env(cfg, seed=cfg.seed + rank, run_dir=run_dir)
    obs, infos = envs.reset(seed=cfg.seed + rank)   # seeds sub-env i with seed + i; call it exactly once
    obs, rewards, terminated, truncated, infos = envs.step(actions)

What callers get:

* ``obs`` is always a dict ``{key: array (num_envs, *shape)}`` holding only the keys of
  ``algo.cnn_keys.encoder`` + ``algo.mlp_keys.encoder``: vector keys (e.g. ``"state"``) are float32,
  pixel keys (e.g. ``"rgb"``) are uint8 ``(C, H, W)``; with ``frame_stack = k`` images are ``(C*k, H, W)``
  and vectors ``(D*k,)``.
* Autoreset is ``SAME_STEP``: where ``terminated | truncated``, ``obs`` is already the first observation of
  the next episode and the real last one is ``infos["final_obs"][i]`` (a per-env dict, valid where
  ``infos["_final_obs"][i]``). Bootstrap truncated episodes from it; it is normalized like ``obs``.
* Finished episodes: ``infos["episode"]["r"][i]`` (return of RAW, unnormalized rewards) and
  ``infos["episode"]["l"][i]`` (length in agent steps, i.e. env steps / action_repeat), valid where
  ``infos["_episode"][i]``. The keys are absent on steps where no episode ended.
* ``rewards`` are normalized when ``env.normalize_reward`` (training envs only).
* ``env.max_episode_steps`` counts env steps before action repeat.
* ``get_env_state(envs)`` / ``set_env_state(envs, state)`` save and restore normalization statistics
  (plain Python values, safe in a checkpoint); ``set_normalization_training`` freezes them.
"""

from sheeprl.envs.errors import EnvError
from sheeprl.envs.factory import check_env_id, make_env, make_vector_env
from sheeprl.envs.normalization import get_env_state, normalize_obs, set_env_state, set_normalization_training

__all__ = [
    "EnvError",
    "check_env_id",
    "get_env_state",
    "make_env",
    "make_vector_env",
    "normalize_obs",
    "set_env_state",
    "set_normalization_training",
]
