"""The typed schema shared by every run: env, fabric, buffer, checkpoint and metric groups.

Each algorithm's ``args.py`` subclasses :class:`AlgoConfig` and :class:`RunConfig`; the CLI
merges Hydra's YAML on top of that schema, so a wrong key or type fails before anything runs.
Every field carries a one-line ``help`` that ``python sheeprl.py <algo> -h`` prints.

This module must stay import-light (no torch): ``--sheeprl_help`` and ``-h`` read it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional


def arg(default: Any = None, help: str = "", *, factory: Any = None, catch_all: bool = False) -> Any:
    """A dataclass field with a help string (``factory`` for mutable defaults).

    ``catch_all`` marks a dict field that receives the keys of its group the schema does not name:
    ``algo.optimizer.alpha=0.99`` is stored as ``algo.optimizer.kwargs.alpha``.
    """
    metadata = {"help": help, "catch_all": catch_all}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class ConfigError(ValueError):
    """A user-caused configuration error: the CLI prints it on one line and exits with code 2."""


@dataclass
class AtariConfig:
    noop_max: int = arg(30, "Atari: up to this many no-op actions after a reset (0 = off)")
    frame_skip: int = arg(4, "Atari: repeat each action for this many frames, max-pooling the last two")
    repeat_action_probability: float = arg(
        0.25, "Atari sticky actions: the chance the emulator repeats the previous action (v5 default 0.25)"
    )
    fire_reset: bool = arg(True, "Atari: press FIRE after a reset in the games that need it to start")
    terminal_on_life_loss: bool = arg(
        False, "Atari, training envs only: a lost life ends the episode for learning (the game goes on)"
    )


@dataclass
class EnvConfig:
    id: str = arg("CartPole-v1", "Gymnasium environment id (e.g. CartPole-v1, Pendulum-v1, HalfCheetah-v5)")
    num_envs: int = arg(4, "parallel environments per rank")
    sync_env: bool = arg(True, "SyncVectorEnv when true, AsyncVectorEnv (one process per env) when false")
    action_repeat: int = arg(1, "repeat every action this many times (rewards are summed)")
    frame_stack: int = arg(1, "stack the last N observations (1 = off)")
    screen_size: int = arg(64, "side of pixel observations after resizing")
    grayscale: bool = arg(False, "convert pixel observations to grayscale")
    from_pixels: bool = arg(False, "add the rendered frame as the 'rgb' observation key")
    clip_actions: bool = arg(True, "clip continuous actions to the action space bounds")
    normalize_observation: bool = arg(False, "normalize MLP observations with running mean/std (saved in checkpoints)")
    normalize_reward: bool = arg(
        False, "scale rewards by the running std of the discounted return (saved in checkpoints)"
    )
    clip_observation: float = arg(10.0, "clip normalized observations to [-x, x]")
    clip_reward: float = arg(10.0, "clip normalized rewards to [-x, x]")
    mask_velocities: bool = arg(False, "hide velocity entries of classic-control observations (a POMDP)")
    max_episode_steps: Optional[int] = arg(None, "override the env's time limit (null = the env's own)")
    capture_video: bool = arg(False, "record videos of the first env of rank 0 into the run folder's videos/")
    video_every: int = arg(50, "with capture_video, record one episode every this many episodes")
    sign_rewards: bool = arg(
        False, "train on the sign of each reward (-1, 0, 1); returns, evaluation and videos keep the game score"
    )
    atari: AtariConfig = arg(help="Atari (ALE/ ids) preprocessing", factory=AtariConfig)
    kwargs: dict[str, Any] = arg(help="extra keyword arguments for gymnasium.make", factory=dict)


@dataclass
class FabricConfig:
    accelerator: str = arg("cpu", "Lightning accelerator: cpu, cuda, gpu, mps or auto")
    devices: int = arg(1, "processes (devices) per node")
    num_nodes: int = arg(1, "number of nodes")
    precision: str = arg("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed, ...")
    strategy: str = arg("auto", "Lightning strategy: auto, ddp, ... (auto picks ddp for several devices)")
    num_threads: Optional[int] = arg(None, "torch threads per process (null = cores available / local processes)")
    flush_denormal: bool = arg(
        True,
        "CPU: flush denormal floats to zero (x86 FTZ/DAZ). Adam's second moments decay into the denormal range, "
        "where CPU arithmetic is ~100x slower; false keeps IEEE gradual underflow",
    )
    cpu_matmul: str = arg(
        "auto",
        "CPU float32 products of large layers (sheeprl.models.gemm; Dreamer V3): onednn, mkl, or auto = oneDNN on "
        "AMD CPUs with AVX-512 (where MKL runs AVX2 kernels at about half the speed), MKL elsewhere",
    )
    heap_cache: bool = arg(
        True,
        "CPU (Linux, glibc): keep freed memory in the process heap for the next step's tensors instead of mapping "
        "fresh pages (sheeprl/utils/memory.py); false keeps glibc's defaults; MALLOC_*_ environment variables win",
    )
    timeout_s: int = arg(600, "seconds a collective may wait for a dead or hung rank before the run fails")


@dataclass
class BufferConfig:
    size: int = arg(1_000_000, "replay buffer capacity in transitions per env (off-policy algorithms)")
    memmap: bool = arg(False, "store the buffer in memory-mapped files inside the run folder")


@dataclass
class CheckpointConfig:
    every: int = arg(50_000, "save a checkpoint every this many policy steps (0 = never, only at the end)")
    keep_last: int = arg(3, "keep only the newest K checkpoints (0 = keep all)")
    save_last: bool = arg(True, "save a checkpoint when training ends")
    save_buffer: bool = arg(False, "include the replay buffer in checkpoints (off-policy algorithms)")
    resume_from: Optional[str] = arg(None, "path of a checkpoint to resume training from")


@dataclass
class MetricConfig:
    log_every: int = arg(5_000, "aggregate and log metrics every this many policy steps")
    log_level: int = arg(1, "0 = log nothing, 1 = log metrics to TensorBoard")
    console_every: float = arg(10.0, "seconds between plain progress lines when stdout is not a terminal")


@dataclass
class KeysConfig:
    encoder: list[str] = arg(help="observation keys fed to this encoder", factory=list)


@dataclass
class ScheduleConfig:
    """A learning-rate schedule over the run's updates (sheeprl/utils/optim.py build_scheduler)."""

    name: str = arg("constant", "learning-rate schedule: constant, linear or cosine (decay to final_lr_ratio * lr)")
    warmup: float = arg(0.0, "fraction of the updates that warm the learning rate up linearly from 0 (0 = none)")
    final_lr_ratio: float = arg(0.0, "linear and cosine schedules end at lr * final_lr_ratio")


@dataclass
class OptimizerConfig:
    """Any ``torch.optim`` class by name; keys the schema does not name go to ``kwargs`` (checked against the class)."""

    name: str = arg("Adam", "torch.optim class: Adam, AdamW, SGD, RMSprop, ... (its other arguments: <node>.ARG=VALUE)")
    lr: float = arg(3e-4, "learning rate")
    eps: float = arg(1e-8, "epsilon (passed only to optimizers that take one)")
    weight_decay: float = arg(0.0, "weight decay (passed only to optimizers that take it)")
    betas: list[float] = arg(
        help="Adam-style betas (passed only to optimizers that take them)", factory=lambda: [0.9, 0.999]
    )
    kwargs: dict[str, Any] = arg(
        help="other keyword arguments of the class (momentum, alpha, amsgrad, ...); <node>.ARG=V lands here",
        factory=dict,
        catch_all=True,
    )
    schedule: ScheduleConfig = arg(help="learning-rate schedule", factory=ScheduleConfig)


@dataclass
class AlgoConfig:
    """Fields every algorithm has; an algorithm's ``args.py`` subclasses it."""

    name: str = arg("???", "algorithm name")
    total_steps: int = arg(100_000, "policy steps to train for (env steps summed over all envs and ranks)")
    cnn_keys: KeysConfig = arg(help="observation keys for the CNN encoder", factory=KeysConfig)
    mlp_keys: KeysConfig = arg(help="observation keys for the MLP encoder", factory=lambda: KeysConfig(["state"]))


@dataclass
class RunConfig:
    """A whole run. ``algo`` is replaced by the algorithm's own schema in its ``args.py``."""

    algo: AlgoConfig = arg(help="algorithm settings", factory=AlgoConfig)
    env: EnvConfig = arg(help="environment settings", factory=EnvConfig)
    fabric: FabricConfig = arg(help="Lightning Fabric settings", factory=FabricConfig)
    buffer: BufferConfig = arg(help="replay buffer settings", factory=BufferConfig)
    checkpoint: CheckpointConfig = arg(help="checkpoint settings", factory=CheckpointConfig)
    metric: MetricConfig = arg(help="logging settings", factory=MetricConfig)
    seed: int = arg(42, "random seed (rank r uses seed + r)")
    run_name: Optional[str] = arg(None, "name appended to the run folder (default: <algo>_seed<seed>)")
    log_root: str = arg("logs/runs", "root folder of run folders")
    eval_episodes: int = arg(10, "greedy evaluation episodes at the end of training (0 = skip)")
    eval_every: int = arg(0, "also evaluate greedily every this many policy steps (0 = only at the end)")
    torch_deterministic: bool = arg(False, "use deterministic torch algorithms")


def migrate_saved_config(cfg: Any) -> list[str]:
    """Rewrite, in place, the keys an older run's ``config.yaml`` has under names that no longer exist.

    ``eval``/``export`` merge a saved config onto today's schema, which refuses unknown keys; each rule here
    maps one retired key onto its replacement. Returns a line per rewrite (for a note to the user).
    """
    notes = []
    algo = cfg.get("algo") if hasattr(cfg, "get") else None
    if algo is not None and "anneal_lr" in algo:
        # Issue 12 (optimizers by name): PPO's boolean became the optimizer's learning-rate schedule.
        anneal = bool(algo.pop("anneal_lr"))
        optimizer = algo.get("optimizer")
        if optimizer is not None and "schedule" not in optimizer:
            optimizer["schedule"] = {"name": "linear" if anneal else "constant"}
        notes.append(f"algo.anneal_lr={anneal} -> algo.optimizer.schedule.name={'linear' if anneal else 'constant'}")
    return notes


def validate_common(cfg: Any) -> None:
    """Checks every algorithm shares; raises ConfigError with a one-line message."""
    positive = {
        "env.num_envs": cfg.env.num_envs,
        "env.action_repeat": cfg.env.action_repeat,
        "env.frame_stack": cfg.env.frame_stack,
        "fabric.devices": cfg.fabric.devices,
        "fabric.num_nodes": cfg.fabric.num_nodes,
        "fabric.timeout_s": cfg.fabric.timeout_s,
        "algo.total_steps": cfg.algo.total_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key in ("checkpoint.every", "checkpoint.keep_last", "metric.log_every", "eval_episodes", "eval_every"):
        group, _, leaf = key.rpartition(".")
        value = cfg[group][leaf] if group else cfg[leaf]
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if cfg.env.atari.frame_skip < 1 or cfg.env.atari.noop_max < 0:
        raise ConfigError("env.atari.frame_skip must be >= 1 and env.atari.noop_max >= 0")
    if not 0.0 <= cfg.env.atari.repeat_action_probability <= 1.0:
        raise ConfigError("env.atari.repeat_action_probability must lie in [0, 1]")
    if cfg.fabric.num_threads is not None and cfg.fabric.num_threads < 1:
        raise ConfigError(f"fabric.num_threads must be >= 1, got {cfg.fabric.num_threads}")
    if cfg.fabric.cpu_matmul not in ("auto", "onednn", "mkl"):
        raise ConfigError(f"fabric.cpu_matmul must be auto, onednn or mkl, got {cfg.fabric.cpu_matmul!r}")
    if not cfg.algo.cnn_keys.encoder and not cfg.algo.mlp_keys.encoder:
        raise ConfigError("select at least one observation key: algo.cnn_keys.encoder or algo.mlp_keys.encoder")


def world_size(cfg: Any) -> int:
    """Processes of the run: ``fabric run``'s flags when it launched us, else fabric.devices * fabric.num_nodes."""
    if int(os.environ.get("LT_CLI_USED", "0")):
        devices = os.environ.get("LT_DEVICES", "1")
        nodes = int(os.environ.get("LT_NUM_NODES", "1"))
        return (int(devices) if devices.isdigit() else 1) * nodes
    return cfg.fabric.devices * cfg.fabric.num_nodes


def warn(message: str) -> None:
    """One line on stderr, from the launching process only (Fabric's child processes re-run the CLI)."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    if rank == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(f"sheeprl: warning: {message}", file=sys.stderr)


def check_budget(cfg: Any, trained_steps: int, unit: str, learning_starts: Optional[int] = None) -> None:
    """Warn when the run will train for more than 1% more or fewer policy steps than asked, or never trains.

    ``trained_steps``: the policy steps the loop really takes; ``unit``: what the budget is rounded to.
    """
    total = cfg.algo.total_steps
    # A rounding of at most 1% (e.g. 100,000 -> 99,840 for PPO's defaults) is what whole rollouts mean, not news.
    if abs(trained_steps - total) > 0.01 * total:
        warn(f"algo.total_steps={total} is rounded to {trained_steps} policy steps ({unit})")
    if learning_starts is not None and trained_steps <= learning_starts:
        warn(
            f"algo.total_steps={total} ends before algo.learning_starts={learning_starts}: "
            "the run would never train; lower --learning_starts or raise --total_steps"
        )


def round_up(total: int, step: int) -> int:
    """``total`` rounded up to a whole number of ``step`` (a loop ``while s < total: s += step`` ends there)."""
    return math.ceil(total / step) * step


def bounded_actions(cfg: Any, env: Any) -> None:
    """For algorithms that sample or squash actions inside the bounds (uniform warm-up, tanh scaling)."""
    import numpy as np

    space = env.action_space
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or (np.isfinite(low).all() and np.isfinite(high).all()):
        return
    raise ConfigError(
        f"{cfg.algo.name} needs finite action bounds, but {cfg.env.id} allows actions in "
        f"[{np.min(low)}, {np.max(high)}]; wrap the env to rescale its actions to a finite box"
    )


def plain(cfg: Any) -> Any:
    """A read-only snapshot of a config as nested namespaces, for code that runs every gradient step.

    Reading ``cfg.algo.gamma`` from an OmegaConf node costs tens of microseconds (type checks, interpolation);
    from a namespace, tens of nanoseconds. Take the snapshot after the config is final (it does not follow edits).
    """
    from types import SimpleNamespace

    from omegaconf import DictConfig, ListConfig, OmegaConf

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            return SimpleNamespace(**{str(k): convert(v) for k, v in node.items()})
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return convert(cfg)
