"""Recurrent PPO's typed arguments: PPO's, plus the recurrent core and the sequence length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheeprl.algos.ppo.args import PPOArgs, check_clip_schedule
from sheeprl.config import ConfigError, OptimizerConfig, RunConfig, ScheduleConfig, arg
from sheeprl.registry import register_algorithm


@dataclass
class PPORecurrentArgs(PPOArgs):
    name: str = arg("ppo_recurrent", "algorithm name")
    rollout_steps: int = arg(128, "steps per env in each rollout")
    sequence_length: int = arg(16, "steps per training sequence (truncated backpropagation through time)")
    minibatch_size: int = arg(
        8, "sequences per gradient step, per rank (must divide num_envs * ceil(rollout_steps / sequence_length))"
    )
    rnn_type: str = arg("lstm", "recurrent core: lstm, gru, or ln_gru (layer-norm GRU)")
    rnn_hidden_size: int = arg(64, "units of the recurrent core")
    critic_rnn: bool = arg(False, "give the critic its own recurrent core (sb3-contrib's default) instead of sharing")
    mlp_layers: int = arg(1, "hidden layers of the actor and critic heads after the core")
    # CleanRL / sb3-contrib style values (feed-forward PPO's own defaults are tuned for fully observed CartPole).
    update_epochs: int = arg(4, "passes over each rollout")
    gamma: float = arg(0.99, "discount factor")
    gae_lambda: float = arg(0.95, "GAE lambda")
    clip_vloss: bool = arg(True, "clip the value loss around the old value estimate")
    clip_schedule: str = arg(
        "constant", "schedule of the surrogate clip over the run: constant, linear (to 0) or cosine"
    )
    ent_coef: float = arg(0.01, "entropy bonus coefficient")
    vf_coef: float = arg(0.5, "value loss coefficient")
    max_grad_norm: float = arg(0.5, "gradient norm clipping (0 = off)")
    normalize_advantages: bool = arg(True, "normalize advantages per minibatch")
    optimizer: OptimizerConfig = arg(
        help="optimizer and learning-rate schedule (linear annealing to 0 by default)",
        factory=lambda: OptimizerConfig(lr=2.5e-4, eps=1e-5, schedule=ScheduleConfig("linear")),
    )


@dataclass
class PPORecurrentConfig(RunConfig):
    algo: PPORecurrentArgs = arg(help="recurrent PPO settings", factory=PPORecurrentArgs)


def num_sequences(cfg: Any) -> int:
    """Sequences per rank and rollout: every env's rollout cut into ceil(rollout_steps / sequence_length)."""
    a = cfg.algo
    return cfg.env.num_envs * -(-a.rollout_steps // a.sequence_length)


def validate(cfg: Any) -> None:
    """Checks run by the CLI before anything is written."""
    a = cfg.algo
    for key in (
        "rollout_steps",
        "update_epochs",
        "minibatch_size",
        "dense_units",
        "sequence_length",
        "rnn_hidden_size",
    ):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.mlp_layers < 0:
        raise ConfigError(f"algo.mlp_layers must be >= 0, got {a.mlp_layers}")
    check_clip_schedule(a)
    if a.rnn_type not in ("lstm", "gru", "ln_gru"):
        raise ConfigError(f"algo.rnn_type must be lstm, gru or ln_gru, got '{a.rnn_type}'")
    n = num_sequences(cfg)
    if n % a.minibatch_size != 0:
        raise ConfigError(
            f"algo.minibatch_size={a.minibatch_size} sequences does not divide the num_envs * "
            f"ceil(rollout_steps / sequence_length) = {cfg.env.num_envs} * "
            f"ceil({a.rollout_steps} / {a.sequence_length}) = {n} sequences per rank"
        )
    if a.action_squash not in ("clip", "tanh"):
        raise ConfigError(f"algo.action_squash must be 'clip' or 'tanh', got '{a.action_squash}'")
    if not 0.0 <= a.gamma <= 1.0 or not 0.0 <= a.gae_lambda <= 1.0:
        raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")


register_algorithm(
    "ppo_recurrent",
    entry="sheeprl.algos.ppo_recurrent.ppo_recurrent:main",
    schema=PPORecurrentConfig,
    description="PPO with an LSTM/GRU core trained on sequences (truncated BPTT), for partially observed tasks",
    action_spaces=("Discrete", "MultiDiscrete", "Box"),
    validate=validate,
)
