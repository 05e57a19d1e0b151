"""Rainbow's typed arguments. Defaults are the paper's Atari settings (Hessel et al., 2018, Table 1) in policy
steps (one policy step = 4 frames); every component has its own switch, so that the paper's ablations are runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheeprl.algos.dqn.args import validate_value_based
from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, arg
from sheeprl.registry import register_algorithm


def rainbow_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=6.25e-5, eps=1.5e-4)


@dataclass
class RainbowArgs(AlgoConfig):
    name: str = arg("rainbow", "algorithm name")
    total_steps: int = arg(50_000_000, "policy steps to train for (env steps summed over all envs and ranks)")
    batch_size: int = arg(32, "transitions per gradient step, summed over the training ranks (split evenly)")
    replay_ratio: float = arg(0.25, "gradient steps per policy step (fractions accumulate; 0.25 = one every 4 steps)")
    learning_starts: int = arg(20_000, "policy steps of uniform random actions before the first update")
    gamma: float = arg(0.99, "discount factor")
    tau: float = arg(1.0, "target update: 1 = hard copy, < 1 = Polyak target <- (1 - tau) target + tau online")
    target_update_every: int = arg(2_000, "update the target network every this many gradient steps")
    double: bool = arg(True, "double Q-learning: the online network picks the bootstrap action")
    dueling: bool = arg(True, "dueling value and advantage streams")
    n_step: int = arg(3, "multi-step returns over n steps (1 = off)")
    prioritized: bool = arg(True, "prioritized replay (off: uniform sampling)")
    priority_alpha: float = arg(0.5, "prioritization exponent alpha")
    priority_beta: float = arg(0.4, "initial importance-sampling exponent beta, annealed to 1 over total_steps")
    priority_eps: float = arg(1e-6, "added to every priority so that none is 0")
    distributional: bool = arg(True, "distributional C51 head (off: scalar Q with the Huber loss)")
    num_atoms: int = arg(51, "atoms of the return distribution")
    v_min: float = arg(-10.0, "smallest return of the support")
    v_max: float = arg(10.0, "largest return of the support")
    noisy: bool = arg(True, "noisy linear layers in the head (off: epsilon-greedy exploration)")
    noisy_sigma0: float = arg(0.5, "initial noise scale sigma_0 of the noisy layers")
    eps_start: float = arg(1.0, "exploration epsilon at the start (only when noisy is off)")
    eps_end: float = arg(0.01, "exploration epsilon after exploration_steps (only when noisy is off)")
    exploration_steps: int = arg(62_500, "policy steps over which epsilon decays (only when noisy is off)")
    max_grad_norm: float = arg(10.0, "clip the gradient norm to this value (0 = no clipping)")
    dense_units: int = arg(512, "hidden units per layer of the head (each stream when dueling)")
    mlp_layers: int = arg(1, "hidden layers of the head")
    activation: str = arg("relu", "hidden activation: relu, tanh, elu, silu, gelu")
    cnn_features: int = arg(512, "features of the CNN encoder (its last layer) for pixel keys")
    cnn_encoder: str = arg(
        "auto", "pixel encoder: nature (84x84 Atari), minatar (10x10 planes) or auto (nature from 36x36 pixels up)"
    )
    optimizer: OptimizerConfig = arg(help="Adam settings", factory=rainbow_optimizer)


@dataclass
class RainbowConfig(RunConfig):
    algo: RainbowArgs = arg(help="Rainbow settings", factory=RainbowArgs)


@dataclass
class RainbowDecoupledArgs(RainbowArgs):
    name: str = arg("rainbow_decoupled", "algorithm name")
    exchange_every: int = arg(
        16, "env steps the player takes between two exchanges with the trainers (batches out, weights in)"
    )


@dataclass
class RainbowDecoupledConfig(RunConfig):
    algo: RainbowDecoupledArgs = arg(help="Rainbow decoupled settings", factory=RainbowDecoupledArgs)


def validate_rainbow(cfg: Any, trainers: int) -> None:
    validate_value_based(cfg, trainers)
    a = cfg.algo
    if a.n_step < 1:
        raise ConfigError(f"algo.n_step must be >= 1, got {a.n_step}")
    if a.distributional:
        if a.num_atoms < 2:
            raise ConfigError(f"algo.num_atoms must be >= 2, got {a.num_atoms}")
        if not a.v_min < a.v_max:
            raise ConfigError(f"algo.v_min ({a.v_min}) must be below algo.v_max ({a.v_max})")
    if a.priority_alpha < 0 or a.priority_eps <= 0 or not 0.0 <= a.priority_beta <= 1.0:
        raise ConfigError("algo.priority_alpha must be >= 0, algo.priority_eps > 0 and algo.priority_beta in [0, 1]")
    if a.noisy_sigma0 < 0:
        raise ConfigError(f"algo.noisy_sigma0 must be >= 0, got {a.noisy_sigma0}")


def validate(cfg: Any) -> None:
    validate_rainbow(cfg, cfg.fabric.devices * cfg.fabric.num_nodes)


def validate_decoupled(cfg: Any) -> None:
    validate_rainbow(cfg, cfg.fabric.devices * cfg.fabric.num_nodes - 1)
    if cfg.algo.exchange_every < 1:
        raise ConfigError(f"algo.exchange_every must be >= 1, got {cfg.algo.exchange_every}")


register_algorithm(
    "rainbow",
    entry="sheeprl.algos.rainbow.rainbow:main",
    schema=RainbowConfig,
    description="Rainbow: double + dueling + n-step + prioritized replay + C51 + noisy nets, each switchable",
    action_spaces=("Discrete",),
    validate=validate,
)

register_algorithm(
    "rainbow_decoupled",
    entry="sheeprl.algos.rainbow.rainbow_decoupled:main",
    schema=RainbowDecoupledConfig,
    description="Rainbow with a player (rank 0: envs + prioritized buffer) and trainers returning priorities (Ape-X)",
    action_spaces=("Discrete",),
    decoupled=True,
    validate=validate_decoupled,
)
