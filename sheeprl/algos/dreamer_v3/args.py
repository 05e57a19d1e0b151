"""Dreamer V3's typed arguments: defaults follow Hafner et al. (2023), "Mastering Diverse Domains through World
Models" (hyperparameter table); sizes come from ``size`` unless a dimension is set explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, arg
from sheeprl.registry import register_algorithm

SIZE_NAMES = ("XXS", "XS", "S", "M", "L", "XL")


def _opt(lr: float, eps: float) -> Any:
    return lambda: OptimizerConfig(lr=lr, eps=eps)


@dataclass
class DreamerV3Args(AlgoConfig):
    name: str = arg("dreamer_v3", "algorithm name")
    total_steps: int = arg(1_000_000, "policy steps to train for (env steps summed over all envs and ranks)")
    size: str = arg("S", "model size preset: XXS (CPU tests), XS, S, M, L, XL (the paper's table)")
    recurrent_state_size: Optional[int] = arg(None, "GRU units (null = from size)")
    dense_units: Optional[int] = arg(None, "hidden units of every MLP (null = from size)")
    mlp_layers: Optional[int] = arg(None, "hidden layers of every MLP (null = from size)")
    cnn_multiplier: Optional[int] = arg(None, "channels of the first conv layer; doubled per stage (null = from size)")
    stochastic_size: int = arg(32, "categorical latent variables")
    discrete_size: int = arg(32, "classes per latent variable")
    unimix: float = arg(0.01, "uniform mixture of latent and actor categoricals")
    bins: int = arg(255, "two-hot bins of the reward and critic heads")
    batch_size: int = arg(16, "sequences per gradient step, summed over the training ranks (split evenly)")
    sequence_length: int = arg(64, "time steps per training sequence")
    replay_ratio: float = arg(0.5, "gradient steps per policy step (fractions accumulate; same at any envs/ranks)")
    learning_starts: int = arg(1024, "policy steps of uniform random actions before the first update")
    horizon: int = arg(15, "imagination horizon")
    gamma: float = arg(0.997, "discount factor (the paper's horizon of 333 steps)")
    lmbda: float = arg(0.95, "lambda of the lambda-returns")
    free_nats: float = arg(1.0, "free bits: KL terms below this many nats get no gradient")
    kl_dynamics: float = arg(0.5, "weight of the dynamics KL (trains the prior)")
    kl_representation: float = arg(0.1, "weight of the representation KL (trains the posterior)")
    ent_coef: float = arg(3e-4, "actor entropy regularizer")
    return_decay: float = arg(0.99, "EMA decay of the return percentiles (5th, 95th)")
    slow_critic_fraction: float = arg(0.02, "slow critic EMA: slow <- (1 - f) slow + f critic, every update")
    slow_critic_reg: float = arg(1.0, "weight of the critic's regularizer towards the slow critic")
    world_model_clip: float = arg(1000.0, "gradient norm clip of the world model")
    actor_clip: float = arg(100.0, "gradient norm clip of the actor")
    critic_clip: float = arg(100.0, "gradient norm clip of the critic")
    world_model_optimizer: OptimizerConfig = arg(help="Adam of the world model", factory=_opt(1e-4, 1e-8))
    actor_optimizer: OptimizerConfig = arg(help="Adam of the actor", factory=_opt(3e-5, 1e-5))
    critic_optimizer: OptimizerConfig = arg(help="Adam of the critic", factory=_opt(3e-5, 1e-5))
    image_every: int = arg(
        10_000, "log reconstructed vs real frames every this many policy steps (pixel runs; 0 = off)"
    )
    compile: bool = arg(False, "torch.compile the RSSM step (no gain measured on a CPU; untested on GPUs)")


@dataclass
class DreamerV3Config(RunConfig):
    algo: DreamerV3Args = arg(help="Dreamer V3 settings", factory=DreamerV3Args)


def validate(cfg: Any) -> None:
    """Dreamer-V3-specific checks, run by the CLI before anything is written."""
    from sheeprl.utils.optim import require_constant_schedule

    require_constant_schedule(cfg, "algo.world_model_optimizer", "algo.actor_optimizer", "algo.critic_optimizer")
    a = cfg.algo
    if a.size not in SIZE_NAMES:
        raise ConfigError(f"algo.size must be one of {', '.join(SIZE_NAMES)}, got {a.size!r}")
    for key in ("batch_size", "sequence_length", "horizon", "stochastic_size", "discrete_size", "bins"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    for key in ("recurrent_state_size", "dense_units", "cnn_multiplier"):
        if a[key] is not None and a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.mlp_layers is not None and a.mlp_layers < 0:
        raise ConfigError(f"algo.mlp_layers must be >= 0, got {a.mlp_layers}")
    if a.bins < 2:
        raise ConfigError(f"algo.bins must be >= 2, got {a.bins}")
    if a.replay_ratio <= 0:
        raise ConfigError(f"algo.replay_ratio must be > 0, got {a.replay_ratio}")
    if a.learning_starts < 0 or a.image_every < 0:
        raise ConfigError("algo.learning_starts and algo.image_every must be >= 0")
    for key in ("gamma", "lmbda", "unimix", "return_decay", "slow_critic_fraction"):
        if not 0.0 <= a[key] <= 1.0:
            raise ConfigError(f"algo.{key} must lie in [0, 1], got {a[key]}")
    if cfg.buffer.size < a.sequence_length:
        raise ConfigError(f"buffer.size ({cfg.buffer.size}) must be >= algo.sequence_length ({a.sequence_length})")
    if a.cnn_keys.encoder and cfg.env.screen_size != 64:
        raise ConfigError(f"Dreamer V3's CNN takes 64x64 frames: set env.screen_size=64 (got {cfg.env.screen_size})")
    trainers = cfg.fabric.devices * cfg.fabric.num_nodes
    if a.batch_size % trainers != 0:
        raise ConfigError(f"algo.batch_size={a.batch_size} must be divisible by the {trainers} processes that split it")


register_algorithm(
    "dreamer_v3",
    entry="sheeprl.algos.dreamer_v3.dreamer_v3:main",
    schema=DreamerV3Config,
    description="Dreamer V3: RSSM world model with discrete latents, actor-critic learned in imagination",
    action_spaces=("Discrete", "Box"),
    validate=validate,
)
