"""The plumbing around every algorithm's loop, so that an algorithm file holds its algorithm.

``Run(fabric, cfg)`` sets torch threads and seeds, creates the run folder on rank 0 (or reuses
the folder of the checkpoint being resumed), writes ``config.yaml``, and owns the TensorBoard
logger, the metric aggregator, the checkpointer, the console progress and Ctrl-C handling:

    run = Run(fabric, cfg)
    ...                                         # build envs, agent, optimizer
    if run.state: load models/optimizers from run.state; run.restore_rank_state(envs)
    while policy_step < total:
        ...                                     # act, step, record: run.record_episodes(infos)
        run.log(policy_step)                    # at metric.log_every
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop(): break             # Ctrl-C: save and leave cleanly
    run.finish(policy_step, state_fn, envs, act_fn)   # final checkpoint, greedy evaluation, close
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from sheeprl.utils.checkpoint import Checkpointer, capture_rng, load_checkpoint, restore_rng
from sheeprl.utils.metrics import MetricAggregator, TensorBoardLogger
from sheeprl.utils.progress import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def threads_per_process(cfg: Any, world_size: int, num_nodes: int) -> int:
    """``fabric.num_threads`` or the cores available to this process divided among the node's processes."""
    if cfg.fabric.num_threads:
        return int(cfg.fabric.num_threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", max(1, world_size // max(1, num_nodes))))
    return max(1, cores // local)


class Run:
    """Run folder, logging, checkpoints, evaluation and interruption for one training run."""

    def __init__(self, fabric: Any, cfg: Any, logger_rank: int = 0) -> None:
        self.fabric = fabric
        self.cfg = cfg
        self.rank = fabric.global_rank
        self.world_size = fabric.world_size
        self.is_logger = self.rank == logger_rank
        torch.set_num_threads(threads_per_process(cfg, self.world_size, cfg.fabric.num_nodes))
        # Argument validation of torch.distributions costs ~30% of a small policy's forward pass.
        torch.distributions.Distribution.set_default_validate_args(False)
        if cfg.torch_deterministic:
            torch.use_deterministic_algorithms(True)
        self.seed = int(cfg.seed) + self.rank
        seed_everything(self.seed)

        self.state: Optional[dict[str, Any]] = None
        self.start_step = 0
        resume = cfg.checkpoint.resume_from
        if resume:
            self.state = load_checkpoint(resume)
            self.start_step = int(self.state["policy_step"])
        self.log_dir = self._make_log_dir(resume)

        self.logger = TensorBoardLogger(str(self.log_dir), enabled=self.is_logger and cfg.metric.log_level > 0)
        self.metrics = MetricAggregator()
        self.checkpointer = Checkpointer(
            self.log_dir / "checkpoint", cfg.checkpoint.every, cfg.checkpoint.keep_last, is_writer=self.is_logger
        )
        self.checkpointer.start_from(self.start_step)
        self.progress = Progress(
            cfg.algo.total_steps, self.start_step, enabled=self.is_logger, plain_every=cfg.metric.console_every
        )
        self._log_every = int(cfg.metric.log_every)
        self._next_log = (self.start_step // self._log_every + 1) * self._log_every if self._log_every else None
        self._eval_every = int(cfg.eval_every)
        self._next_eval = (self.start_step // self._eval_every + 1) * self._eval_every if self._eval_every else None
        self._last_eval_step: Optional[int] = None
        self._timers: dict[str, float] = {}
        self._window_start_step = self.start_step
        self._interrupted = False
        self._install_sigint()
        if self.is_logger:
            where = f"resuming from step {self.start_step}" if resume else "logging"
            self.progress.print(f"{cfg.algo.name} on {cfg.env.id}: {where} to {self.log_dir}")

    # ----------------------------------------------------------------------------------- folder

    def _make_log_dir(self, resume: Optional[str]) -> Path:
        from omegaconf import OmegaConf

        if resume and Path(resume).resolve().parent.name == "checkpoint":
            # Continue in the resumed run's folder so its TensorBoard curves continue too.
            log_dir = Path(resume).resolve().parent.parent
        else:
            name = self.cfg.run_name or f"{self.cfg.algo.name}_seed{self.cfg.seed}"
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            env_dir = str(self.cfg.env.id).replace("/", "_")
            log_dir = Path(self.cfg.log_root) / self.cfg.algo.name / env_dir / f"{stamp}_{name}"
        # Every rank must agree on one folder (timestamps could differ between processes).
        log_dir = Path(self.fabric.broadcast(str(log_dir.resolve()), src=0))
        if self.is_logger:
            if not resume:
                base, i = log_dir, 1
                while log_dir.exists():  # never write into an earlier run's folder
                    log_dir, i = base.with_name(f"{base.name}_{i}"), i + 1
            log_dir.mkdir(parents=True, exist_ok=True)
            cfg_file = log_dir / (
                "config.yaml" if not (log_dir / "config.yaml").exists() else f"config_resume_{self.start_step}.yaml"
            )
            OmegaConf.save(self.cfg, cfg_file, resolve=True)
        return Path(self.fabric.broadcast(str(log_dir), src=0))

    # ----------------------------------------------------------------------------------- timing & metrics

    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Accumulate wall time under ``name`` ("env" and "train" feed Time/sps_env_interaction and Time/sps_train)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._timers[name] = self._timers.get(name, 0.0) + time.perf_counter() - t0

    def record_episodes(self, infos: dict[str, Any]) -> None:
        """Episode returns and lengths from the envs' episode statistics, for logging and the progress line."""
        if "_episode" not in infos:
            return
        done = np.flatnonzero(infos["_episode"])
        if done.size:
            returns = infos["episode"]["r"][done]
            lengths = infos["episode"]["l"][done]
            self.metrics.update("Rewards/rew_avg", float(returns.mean()), count=int(done.size))
            self.metrics.update("Game/ep_len_avg", float(lengths.mean()), count=int(done.size))
            self.progress.add_returns(returns)

    def log(self, policy_step: int, force: bool = False) -> None:
        """Log the window's metrics when ``metric.log_every`` policy steps have passed (collective then)."""
        self.progress.update(policy_step)
        if self._next_log is None or (policy_step < self._next_log and not force):
            return
        steps = policy_step - self._window_start_step
        for name, tag in (("env", "Time/sps_env_interaction"), ("train", "Time/sps_train")):
            if self._timers.get(name, 0.0) > 0 and steps > 0:
                self.metrics.update(tag, steps / self._timers[name])
        values = self.metrics.compute()
        if self.is_logger:
            self.logger.log_metrics(values, policy_step)
        self.metrics.reset()
        self._timers.clear()
        self._window_start_step = policy_step
        self._next_log = (policy_step // self._log_every + 1) * self._log_every

    # ----------------------------------------------------------------------------------- checkpoints

    def rank_state(self, envs: Any = None) -> dict[str, Any]:
        from sheeprl.envs import get_env_state

        return {"rng": capture_rng(), "env": get_env_state(envs) if envs is not None else {}}

    def restore_rank_state(self, envs: Any = None) -> None:
        """After a resume: this rank's RNG streams and env normalization statistics come back."""
        if not self.state:
            return
        from sheeprl.envs import set_env_state

        ranks = self.state.get("ranks", [])
        if self.rank < len(ranks):
            restore_rng(ranks[self.rank]["rng"])
            if envs is not None and ranks[self.rank].get("env"):
                set_env_state(envs, ranks[self.rank]["env"])
        elif self.is_logger:
            self.progress.print(f"warning: the checkpoint has no state for rank {self.rank}; using fresh seeds")

    def maybe_checkpoint(
        self, policy_step: int, state_fn: Callable[[], dict[str, Any]], envs: Any = None, force: bool = False
    ) -> None:
        """Collective when due: every rank must call it with the same ``policy_step``."""
        if force or self.checkpointer.due(policy_step):
            state = state_fn() if self.is_logger else {}
            self.checkpointer.save(policy_step, state, self.rank_state(envs))

    # ----------------------------------------------------------------------------------- evaluation

    def eval_due(self, policy_step: int) -> bool:
        if self._next_eval is None or policy_step < self._next_eval:
            return False
        self._next_eval = (policy_step // self._eval_every + 1) * self._eval_every
        return True

    def evaluate(self, act: Callable[[dict[str, torch.Tensor]], torch.Tensor], envs: Any, policy_step: int) -> None:
        """Greedy episodes on a fresh env (rank 0 only), logged as Test/* and printed."""
        if not self.is_logger or self.cfg.eval_episodes <= 0:
            return
        self._last_eval_step = policy_step
        from sheeprl.envs import get_env_state
        from sheeprl.utils.evaluation import run_episodes, summarize

        result = run_episodes(
            self.cfg,
            act,
            self.cfg.eval_episodes,
            seed=self.seed + 10_000,
            device=self.fabric.device,
            env_state=get_env_state(envs) if envs is not None else None,
        )
        ret, length = summarize(result["returns"]), summarize(result["lengths"])
        self.logger.log_metrics(
            {"Test/rew_avg": ret["mean"], "Test/rew_std": ret["std"], "Test/ep_len_avg": length["mean"]}, policy_step
        )
        self.logger.flush()  # now, not in two minutes: `sheeprl.py tune` prunes from these points while the run goes on
        self.progress.print(
            f"evaluation at step {policy_step}: return {ret['mean']:.2f} +- {ret['std']:.2f} "
            f"over {len(result['returns'])} episodes (length {length['mean']:.1f})"
        )

    # ----------------------------------------------------------------------------------- interruption & end

    def _install_sigint(self) -> None:
        try:
            previous = signal.getsignal(signal.SIGINT)

            def handler(signum: int, frame: Any) -> None:
                if self._interrupted:  # a second Ctrl-C stops at once
                    signal.signal(signal.SIGINT, previous)
                    raise KeyboardInterrupt
                self._interrupted = True
                if self.is_logger:
                    print("\ninterrupted: saving a checkpoint and stopping (Ctrl-C again to abort)", flush=True)

            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Python's default behaviour
            pass

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank was interrupted (collective in a distributed run)."""
        if dist.is_available() and dist.is_initialized() and self.world_size > 1:
            flag = torch.tensor([1.0 if self._interrupted else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self._interrupted = bool(flag.item())
        return self._interrupted

    def finish(
        self,
        policy_step: int,
        state_fn: Callable[[], dict[str, Any]],
        envs: Any = None,
        act: Optional[Callable[[dict[str, torch.Tensor]], torch.Tensor]] = None,
    ) -> None:
        """Final log, final checkpoint, greedy evaluation (skipped when interrupted) and cleanup."""
        self.log(policy_step, force=True)
        if self.cfg.checkpoint.save_last or self._interrupted:
            self.maybe_checkpoint(policy_step, state_fn, envs, force=True)
        # An eval_every evaluation may have just run at this very step: one point per step on the curve.
        if act is not None and not self._interrupted and self._last_eval_step != policy_step:
            self.evaluate(act, envs, policy_step)
        self.progress.close(policy_step)
        self.logger.close()
