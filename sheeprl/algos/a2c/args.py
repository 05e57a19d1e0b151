"""A2C's typed arguments: defaults follow Stable-Baselines3's A2C (RMSprop, 5-step rollouts, lambda = 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, arg
from sheeprl.registry import register_algorithm


@dataclass
class A2CArgs(AlgoConfig):
    name: str = arg("a2c", "algorithm name")
    total_steps: int = arg(500_000, "policy steps to train for (env steps summed over all envs and ranks)")
    rollout_steps: int = arg(5, "steps per env in each rollout (n of the n-step returns); one gradient step each")
    gamma: float = arg(0.99, "discount factor")
    gae_lambda: float = arg(1.0, "GAE lambda (1.0 = the classic n-step returns)")
    ent_coef: float = arg(0.0, "entropy bonus coefficient")
    vf_coef: float = arg(0.5, "value loss coefficient")
    max_grad_norm: float = arg(0.5, "gradient norm clipping (0 = off)")
    normalize_advantages: bool = arg(False, "normalize advantages over each rollout")
    optimizer: OptimizerConfig = arg(
        help="optimizer (Stable-Baselines3's RMSprop: alpha 0.99, eps 1e-5) and learning-rate schedule",
        factory=lambda: OptimizerConfig(name="RMSprop", lr=7e-4, eps=1e-5),  # torch's RMSprop alpha is 0.99
    )
    dense_units: int = arg(64, "hidden units per layer of actor and critic")
    mlp_layers: int = arg(2, "hidden layers of actor and critic")
    activation: str = arg("tanh", "hidden activation: tanh, relu, elu, silu, gelu")
    ortho_init: bool = arg(True, "orthogonal weight initialization")
    cnn_features_dim: int = arg(512, "features of the CNN encoder (pixel observations)")
    log_std_init: float = arg(0.0, "initial log standard deviation of continuous actions")
    action_squash: str = arg("clip", "continuous actions: 'clip' samples to the bounds, 'tanh' squashes them")


@dataclass
class A2CConfig(RunConfig):
    algo: A2CArgs = arg(help="A2C settings", factory=A2CArgs)


def validate(cfg: Any) -> None:
    """A2C-specific checks, run by the CLI before anything is written."""
    a = cfg.algo
    for key in ("rollout_steps", "mlp_layers", "dense_units"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.action_squash not in ("clip", "tanh"):
        raise ConfigError(f"algo.action_squash must be 'clip' or 'tanh', got '{a.action_squash}'")
    if not 0.0 <= a.gamma <= 1.0 or not 0.0 <= a.gae_lambda <= 1.0:
        raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")


register_algorithm(
    "a2c",
    entry="sheeprl.algos.a2c.a2c:main",
    schema=A2CConfig,
    description="Synchronous advantage actor-critic: n-step (GAE) returns, one gradient step per rollout",
    action_spaces=("Discrete", "MultiDiscrete", "Box"),
    validate=validate,
)
