"""PPO's typed arguments.

Defaults learn classic-control tasks without a preset: RL Zoo's CartPole-v1 PPO settings (20 epochs over one
minibatch of the whole rollout, gamma 0.98, GAE lambda 0.8, normalized advantages, gradient norm 0.5, vf_coef 0.5, lr
1e-3 and the surrogate clip both annealed to 0) on the 4 envs every algorithm defaults to, so 64 steps per env make
RL Zoo's 256-transition rollout. CartPole-v1's training return reaches 475 on seeds 1-10 within 39k policy steps
(decoupled, 3 processes: 45k); seeds 1-5 of both stay above 400 to 100k, 9 and 10 of 10 seeds do (benchmarks/learning.py,
README: PPO on CartPole still collapses now and then after solving it, on every setting measured).
``exp=ppo_cartpole`` holds CleanRL's "37 implementation details" settings, ``exp=ppo_halfcheetah`` CleanRL's MuJoCo ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sheeprl.config import (
    AlgoConfig,
    ConfigError,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    arg,
    bounded_actions,
    check_budget,
    world_size,
)
from sheeprl.registry import register_algorithm


@dataclass
class PPOArgs(AlgoConfig):
    name: str = arg("ppo", "algorithm name")
    total_steps: int = arg(100_000, "policy steps to train for (env steps summed over all envs and ranks)")
    rollout_steps: int = arg(64, "steps per env in each rollout")
    update_epochs: int = arg(20, "passes over each rollout")
    minibatch_size: int = arg(
        0, "transitions per gradient step, per rank (must divide rollout_steps * num_envs; 0 = the whole rollout)"
    )
    gamma: float = arg(0.98, "discount factor")
    gae_lambda: float = arg(0.8, "GAE lambda")
    clip_coef: float = arg(0.2, "surrogate clipping coefficient")
    clip_schedule: str = arg(
        "linear", "schedule of the surrogate clip over the run: constant, linear (to 0, SB3's lin_0.2) or cosine"
    )
    clip_vloss: bool = arg(False, "clip the value loss around the old value estimate")
    ent_coef: float = arg(0.0, "entropy bonus coefficient")
    vf_coef: float = arg(0.5, "value loss coefficient")
    max_grad_norm: float = arg(0.5, "gradient norm clipping (0 = off)")
    normalize_advantages: bool = arg(True, "normalize advantages per minibatch")
    target_kl: Optional[float] = arg(None, "stop the update epochs early when the approx KL exceeds this")
    optimizer: OptimizerConfig = arg(
        help="optimizer and learning-rate schedule (linear annealing to 0 by default)",
        factory=lambda: OptimizerConfig(lr=1e-3, eps=1e-5, schedule=ScheduleConfig("linear")),
    )
    dense_units: int = arg(64, "hidden units per layer of actor and critic")
    mlp_layers: int = arg(2, "hidden layers of actor and critic (0: linear heads on the encoder features)")
    activation: str = arg("tanh", "hidden activation: tanh, relu, elu, silu, gelu")
    ortho_init: bool = arg(True, "orthogonal weight initialization")
    cnn_features_dim: int = arg(512, "features of the CNN encoder (pixel observations)")
    cnn_encoder: str = arg(
        "auto", "pixel encoder: nature (84x84 Atari), minatar (10x10 planes) or auto (nature from 36x36 pixels up)"
    )
    log_std_init: float = arg(0.0, "initial log standard deviation of continuous actions")
    action_squash: str = arg("clip", "continuous actions: 'clip' samples to the bounds, 'tanh' squashes them")


@dataclass
class PPOConfig(RunConfig):
    algo: PPOArgs = arg(help="PPO settings", factory=PPOArgs)


CLIP_SCHEDULES = ("constant", "linear", "cosine")  # sheeprl/utils/optim.py SCHEDULES, without importing torch here


def check_clip_schedule(a: Any) -> None:
    if a.clip_schedule not in CLIP_SCHEDULES:
        raise ConfigError(f"algo.clip_schedule must be one of {', '.join(CLIP_SCHEDULES)}, got '{a.clip_schedule}'")


def validate(cfg: Any) -> None:
    """PPO-specific checks, run by the CLI before anything is written."""
    a = cfg.algo
    for key in ("rollout_steps", "update_epochs", "dense_units"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.minibatch_size < 0:
        raise ConfigError(f"algo.minibatch_size must be >= 0 (0: the whole rollout), got {a.minibatch_size}")
    if a.mlp_layers < 0:
        raise ConfigError(f"algo.mlp_layers must be >= 0 (0: linear heads on the encoder), got {a.mlp_layers}")
    batch = a.rollout_steps * cfg.env.num_envs
    if a.minibatch_size and batch % a.minibatch_size != 0:
        raise ConfigError(
            f"algo.minibatch_size={a.minibatch_size} does not divide the rollout of "
            f"rollout_steps * num_envs = {a.rollout_steps} * {cfg.env.num_envs} = {batch} transitions per rank"
        )
    check_clip_schedule(a)
    if a.action_squash not in ("clip", "tanh"):
        raise ConfigError(f"algo.action_squash must be 'clip' or 'tanh', got '{a.action_squash}'")
    if a.cnn_encoder not in ("auto", "nature", "minatar"):
        raise ConfigError(f"algo.cnn_encoder must be 'auto', 'nature' or 'minatar', got '{a.cnn_encoder}'")
    if not 0.0 <= a.gamma <= 1.0 or not 0.0 <= a.gae_lambda <= 1.0:
        raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")
    per_iter = batch * world_size(cfg)
    check_budget(cfg, max(1, a.total_steps // per_iter) * per_iter, f"whole rollouts of {per_iter} steps")


def check_env(cfg: Any, env: Any) -> None:
    """tanh squashing scales actions into the bounds: they must be finite (clipping works with any bounds)."""
    if cfg.algo.action_squash == "tanh":
        bounded_actions(cfg, env)


register_algorithm(
    "ppo",
    entry="sheeprl.algos.ppo.ppo:main",
    schema=PPOConfig,
    description="Proximal Policy Optimization with GAE, clipped surrogate and value losses",
    action_spaces=("Discrete", "MultiDiscrete", "Box"),
    validate=validate,
    check_env=check_env,
)


@dataclass
class PPODecoupledArgs(PPOArgs):
    name: str = arg("ppo_decoupled", "algorithm name")
    minibatch_size: int = arg(
        0,
        "transitions per gradient step over all trainers, as in coupled PPO (each trainer takes its share; "
        "0 = the whole rollout)",
    )


@dataclass
class PPODecoupledConfig(RunConfig):
    algo: PPODecoupledArgs = arg(help="decoupled PPO settings", factory=PPODecoupledArgs)


def validate_decoupled(cfg: Any) -> None:
    """PPO's checks, with the rollout split over the trainers (every process but the player)."""
    a = cfg.algo
    for key in ("rollout_steps", "update_epochs", "dense_units"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.minibatch_size < 0:
        raise ConfigError(f"algo.minibatch_size must be >= 0 (0: the whole rollout), got {a.minibatch_size}")
    if a.mlp_layers < 0:
        raise ConfigError(f"algo.mlp_layers must be >= 0 (0: linear heads on the encoder), got {a.mlp_layers}")
    trainers = world_size(cfg) - 1
    batch = a.rollout_steps * cfg.env.num_envs
    minibatch = a.minibatch_size or batch
    if trainers >= 1 and (batch % minibatch != 0 or minibatch % trainers != 0):
        raise ConfigError(
            f"algo.minibatch_size={minibatch} must divide the rollout of rollout_steps * num_envs = {batch} "
            f"transitions and split into {trainers} equal trainer shares"
        )
    check_clip_schedule(a)
    if a.action_squash not in ("clip", "tanh"):
        raise ConfigError(f"algo.action_squash must be 'clip' or 'tanh', got '{a.action_squash}'")
    if a.cnn_encoder not in ("auto", "nature", "minatar"):
        raise ConfigError(f"algo.cnn_encoder must be 'auto', 'nature' or 'minatar', got '{a.cnn_encoder}'")
    if not 0.0 <= a.gamma <= 1.0 or not 0.0 <= a.gae_lambda <= 1.0:
        raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")
    check_budget(cfg, max(1, a.total_steps // batch) * batch, f"whole rollouts of {batch} steps")


register_algorithm(
    "ppo_decoupled",
    entry="sheeprl.algos.ppo.ppo_decoupled:main",
    schema=PPODecoupledConfig,
    description="PPO with one player process collecting rollouts and N-1 trainer processes updating with DDP",
    action_spaces=("Discrete", "MultiDiscrete", "Box"),
    decoupled=True,
    validate=validate_decoupled,
    check_env=check_env,
)
