"""DroQ's networks: SAC's tanh-Gaussian actor and a Q ensemble whose hidden layers are
Linear -> Dropout -> LayerNorm -> ReLU (Hiraoka et al., 2022, Fig. 1).

The batched :class:`~sheeprl.algos.sac.agent.QEnsemble` already implements that layer; DroQ only insists on
dropout and layer norm being switched on, which is what its ``build_agent`` checks.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from sheeprl.algos.sac.agent import QEnsemble, SACActor
from sheeprl.algos.sac.agent import build_agent as build_sac_agent


def build_agent(
    obs_space: gym.spaces.Dict, action_space: gym.spaces.Box, cfg: Any, state: dict[str, Any] | None = None
) -> tuple[SACActor, QEnsemble]:
    """The actor and the dropout + layer-norm critic ensemble from ``cfg.algo``."""
    actor, critic = build_sac_agent(obs_space, action_space, cfg, state)
    if not critic.layer_norm or critic.dropout <= 0:
        raise ValueError("DroQ's critics need algo.critic_dropout > 0 and algo.critic_layer_norm=true")
    return actor, critic
