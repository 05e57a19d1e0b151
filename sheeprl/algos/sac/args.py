"""SAC's typed arguments: defaults follow Haarnoja et al. (2018b) and Stable-Baselines3 on MuJoCo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, arg
from sheeprl.registry import register_algorithm


@dataclass
class SACArgs(AlgoConfig):
    name: str = arg("sac", "algorithm name")
    total_steps: int = arg(1_000_000, "policy steps to train for (env steps summed over all envs and ranks)")
    batch_size: int = arg(256, "transitions per gradient step, summed over the training ranks (split evenly)")
    replay_ratio: float = arg(1.0, "gradient steps per policy step (fractions accumulate; same at any envs/ranks)")
    learning_starts: int = arg(5000, "policy steps of uniform random actions before the first update")
    gamma: float = arg(0.99, "discount factor")
    tau: float = arg(0.005, "Polyak coefficient of the target critics: target <- (1 - tau) target + tau online")
    target_update_every: int = arg(1, "update the target critics every this many gradient steps")
    alpha: float = arg(1.0, "initial entropy temperature (fixed when autotune is false)")
    autotune: bool = arg(True, "learn the entropy temperature to reach target_entropy")
    target_entropy: Optional[float] = arg(None, "entropy target of the temperature update (null = -action_dim)")
    num_critics: int = arg(2, "Q-functions in the critic ensemble; the target takes their minimum")
    dense_units: int = arg(256, "hidden units per layer of actor and critics")
    mlp_layers: int = arg(2, "hidden layers of actor and critics")
    activation: str = arg("relu", "hidden activation: relu, tanh, elu, silu, gelu")
    critic_dropout: float = arg(0.0, "dropout in the critics' hidden layers (DroQ uses 0.01)")
    critic_layer_norm: bool = arg(False, "layer norm in the critics' hidden layers (DroQ)")
    log_std_min: float = arg(-5.0, "lower bound of the actor's log standard deviation")
    log_std_max: float = arg(2.0, "upper bound of the actor's log standard deviation")
    actor_optimizer: OptimizerConfig = arg(help="optimizer of the actor (Adam by default)", factory=OptimizerConfig)
    critic_optimizer: OptimizerConfig = arg(help="optimizer of the critics (Adam by default)", factory=OptimizerConfig)
    alpha_optimizer: OptimizerConfig = arg(
        help="optimizer of the temperature (Adam by default)", factory=OptimizerConfig
    )


@dataclass
class SACConfig(RunConfig):
    algo: SACArgs = arg(help="SAC settings", factory=SACArgs)


def validate_offpolicy(cfg: Any, trainers: int) -> None:
    """Checks shared by SAC, SAC decoupled and DroQ (``trainers``: ranks that split each batch)."""
    from sheeprl.utils.optim import require_constant_schedule

    require_constant_schedule(cfg, "algo.actor_optimizer", "algo.critic_optimizer", "algo.alpha_optimizer")
    a = cfg.algo
    for key in ("batch_size", "num_critics", "dense_units", "mlp_layers", "target_update_every"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.replay_ratio <= 0:
        raise ConfigError(f"algo.replay_ratio must be > 0, got {a.replay_ratio}")
    if a.learning_starts < 0:
        raise ConfigError(f"algo.learning_starts must be >= 0, got {a.learning_starts}")
    if not 0.0 <= a.gamma <= 1.0:
        raise ConfigError(f"algo.gamma must lie in [0, 1], got {a.gamma}")
    if not 0.0 < a.tau <= 1.0:
        raise ConfigError(f"algo.tau must lie in (0, 1], got {a.tau}")
    if a.alpha <= 0:
        raise ConfigError(f"algo.alpha must be > 0, got {a.alpha}")
    if not a.log_std_min < a.log_std_max:
        raise ConfigError(f"algo.log_std_min ({a.log_std_min}) must be below algo.log_std_max ({a.log_std_max})")
    if not 0.0 <= a.critic_dropout < 1.0:
        raise ConfigError(f"algo.critic_dropout must lie in [0, 1), got {a.critic_dropout}")
    if a.cnn_keys.encoder:
        raise ConfigError(f"{a.name} learns from vector observations only: set algo.cnn_keys.encoder=[]")
    if cfg.buffer.size < 2:
        raise ConfigError(f"buffer.size must be >= 2, got {cfg.buffer.size}")
    if trainers > 0 and a.batch_size % trainers != 0:
        raise ConfigError(
            f"algo.batch_size={a.batch_size} must be divisible by the {trainers} training processes that split it"
        )


def validate(cfg: Any) -> None:
    """SAC-specific checks, run by the CLI before anything is written."""
    validate_offpolicy(cfg, cfg.fabric.devices * cfg.fabric.num_nodes)


def validate_decoupled(cfg: Any) -> None:
    """Rank 0 plays, the other ranks train on equal shares of each batch."""
    validate_offpolicy(cfg, cfg.fabric.devices * cfg.fabric.num_nodes - 1)
    if cfg.algo.exchange_every < 1:
        raise ConfigError(f"algo.exchange_every must be >= 1, got {cfg.algo.exchange_every}")


@dataclass
class SACDecoupledArgs(SACArgs):
    name: str = arg("sac_decoupled", "algorithm name")
    exchange_every: int = arg(
        16, "env steps the player takes between two exchanges with the trainers (batches out, actor in)"
    )


@dataclass
class SACDecoupledConfig(RunConfig):
    algo: SACDecoupledArgs = arg(help="SAC decoupled settings", factory=SACDecoupledArgs)


register_algorithm(
    "sac",
    entry="sheeprl.algos.sac.sac:main",
    schema=SACConfig,
    description="Soft Actor-Critic: twin Q critics, tanh-Gaussian actor, automatic entropy tuning",
    action_spaces=("Box",),
    validate=validate,
)

register_algorithm(
    "sac_decoupled",
    entry="sheeprl.algos.sac.sac_decoupled:main",
    schema=SACDecoupledConfig,
    description="Soft Actor-Critic with a player (rank 0: envs + buffer) and trainers (ranks >= 1)",
    action_spaces=("Box",),
    decoupled=True,
    validate=validate_decoupled,
)
