"""The plumbing around every algorithm's loop, so that an algorithm file holds its algorithm.

``Run(fabric, cfg)`` sets torch threads and seeds, creates the run folder on rank 0 (or reuses
the folder of the checkpoint being resumed), writes ``config.yaml``, and owns the TensorBoard
logger, the metric aggregator, the checkpointer, the console progress and Ctrl-C handling:

    run = Run(fabric, cfg)
    ...                                         # build envs, agent, optimizer
    if run.state: load models/optimizers from run.state
    obs = run.reset_envs(envs, env_seed)        # restores RNG and normalization statistics first on a resume
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

from sheeprl.models import gemm
from sheeprl.utils.checkpoint import Checkpointer, capture_rng, list_checkpoints, load_checkpoint, restore_rng
from sheeprl.utils.distributed import all_gather_object, all_reduce_cpu, broadcast_object, host_group, is_distributed
from sheeprl.utils.memory import keep_freed_memory
from sheeprl.utils.metrics import MetricAggregator, TensorBoardLogger
from sheeprl.utils.progress import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def nonfinite_entry(state: Any, prefix: str = "") -> Optional[str]:
    """The first floating-point tensor in a (nested) state dict holding NaN or inf, as ``"key is nan"``; None if none.

    The replay buffer is skipped: it is data, and large.
    """
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            bad = state[~torch.isfinite(state)].flatten()[0].item()
            return f"{prefix or 'a tensor'} is {bad}"
        return None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        if key == "buffer":
            continue
        found = nonfinite_entry(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def resumed_env_seed(env_seed: int, policy_step: int) -> int:
    """The env seed of a run resumed at ``policy_step``: deterministic, distinct per step and per original seed."""
    return int(np.random.SeedSequence([int(env_seed) % 2**32, int(policy_step)]).generate_state(1)[0]) % 2**31


def threads_per_process(cfg: Any, world_size: int, num_nodes: int) -> int:
    """``fabric.num_threads``, else ``$OMP_NUM_THREADS`` when set (the user or a scheduler already chose), else
    the cores available to this process divided among the node's processes."""
    if cfg.fabric.num_threads:
        return int(cfg.fabric.num_threads)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", max(1, world_size // max(1, num_nodes))))
    return max(1, cores // local)


class RunError(RuntimeError):
    """A failure during a run (divergence, an unwritable checkpoint): the CLI prints it on one line and exits 1.

    ``report`` is false on the ranks that must stay quiet (every rank raises it; the logger rank prints it).
    """

    def __init__(self, message: str, report: bool = True) -> None:
        super().__init__(message)
        self.report = report


class Run:
    """Run folder, logging, checkpoints, evaluation and interruption for one training run."""

    def __init__(self, fabric: Any, cfg: Any, logger_rank: int = 0) -> None:
        self.fabric = fabric
        self.cfg = cfg
        self.rank = fabric.global_rank
        self.world_size = fabric.world_size
        self.logger_rank = logger_rank
        self.is_logger = self.rank == logger_rank
        if is_distributed():
            host_group(cfg.fabric.timeout_s)  # collective the first time: every rank creates it here, first
        torch.set_num_threads(threads_per_process(cfg, self.world_size, cfg.fabric.num_nodes))
        # Values below ~1e-38 (e.g. Adam's exp_avg_sq of a weight whose gradients have faded) take a microcode path
        # on x86 CPUs: with them, a DQN CartPole run spent 21% longer in its loop (same returns either way).
        torch.set_flush_denormal(bool(cfg.fabric.flush_denormal))
        gemm.set_backend(str(cfg.fabric.cpu_matmul))
        if cfg.fabric.heap_cache:
            # Every step frees and re-allocates the same tensors: reuse their pages rather than fault in new ones.
            keep_freed_memory()
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
        self._last_step = self.start_step  # the step should_stop reports (every loop calls log first)
        # Per-rank state an algorithm adds to every checkpoint (e.g. the recurrent state of its envs).
        self.extra_rank_state: Optional[Callable[[], dict[str, Any]]] = None
        self._install_signal_handlers()
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
        log_dir = Path(broadcast_object(str(log_dir.resolve()), src=0))
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
        return Path(broadcast_object(str(log_dir), src=0))

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
        self._last_step = policy_step
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

        state = {"rng": capture_rng(), "env": get_env_state(envs) if envs is not None else {}}
        if self.extra_rank_state is not None:
            state["extra"] = self.extra_rank_state()
        return state

    def saved_rank_state(self) -> dict[str, Any]:
        """What :attr:`extra_rank_state` returned on this rank when the resumed checkpoint was saved ({} if none)."""
        ranks = self.state.get("ranks", []) if self.state else []
        return dict(ranks[self.rank].get("extra", {})) if self.rank < len(ranks) else {}

    def reset_envs(self, envs: Any, env_seed: int) -> dict[str, Any]:
        """First observations of a run: after a resume this rank's RNG and normalization statistics come back
        first (so the first observation is normalized with them), and the envs are reseeded with a seed derived
        from ``env_seed`` and the resume step, so that a resumed run does not replay the run's first episodes."""
        self.restore_rank_state(envs)
        seed = resumed_env_seed(env_seed, self.start_step) if self.state else env_seed
        envs.action_space.seed(seed)
        obs, _ = envs.reset(seed=seed)
        return obs

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

    def checkpoint_meta(self, envs: Any = None) -> dict[str, Any]:
        """What a resume checks before anything is written: the algorithm, the env and its spaces."""
        from sheeprl.utils.checkpoint import space_signature

        meta = {"algo": str(self.cfg.algo.name), "env_id": str(self.cfg.env.id)}
        if envs is not None:
            meta["observation_space"] = space_signature(envs.single_observation_space)
            meta["action_space"] = space_signature(envs.single_action_space)
        return meta

    def maybe_checkpoint(
        self, policy_step: int, state_fn: Callable[[], dict[str, Any]], envs: Any = None, force: bool = False
    ) -> None:
        """Collective when due: every rank must call it with the same ``policy_step``."""
        if force or self.checkpointer.due(policy_step):
            state = {**state_fn(), "meta": self.checkpoint_meta(envs)} if self.is_logger else {}
            # Never a NaN checkpoint: keep_last would then delete the good ones.
            self._check_finite(policy_step, nonfinite_entry(state))
            try:
                self.checkpointer.save(policy_step, state, self.rank_state(envs))
            except (OSError, RuntimeError) as err:
                if not isinstance(err, OSError) and "PytorchStreamWriter" not in str(err):
                    raise  # not a write error (e.g. a collective that failed)
                cause = err.strerror if isinstance(err, OSError) and err.strerror else "write failed (disk full?)"
                raise RunError(f"cannot write a checkpoint to {self.checkpointer.folder}: {cause}") from None

    # ----------------------------------------------------------------------------------- divergence

    def _check_finite(
        self, policy_step: int, problem: Optional[str] = None, flags: Optional[list[float]] = None
    ) -> bool:
        """Collective: raise RunError on every rank when any rank saw a non-finite loss (or ``problem``).

        ``flags`` ride along in the same all-reduce (max over ranks); returns whether the first one is set anywhere.
        """
        if problem is None and self.metrics.nonfinite is not None:
            name, value = self.metrics.nonfinite
            problem = f"{name} is {value}"
        elif problem is not None and self.metrics.last_losses:
            # The parameters went bad in the last update: name the losses that update saw.
            losses = ", ".join(f"{k} = {v:.4g}" for k, v in sorted(self.metrics.last_losses.items()))
            problem = f"{problem} after an update with {losses}"
        values = [1.0 if problem else 0.0, *(flags or [0.0])]
        if is_distributed():  # one process: plain floats, no tensor on every call of should_stop()
            from torch.distributed import ReduceOp

            reduced = torch.tensor(values)
            all_reduce_cpu(reduced, op=ReduceOp.MAX)
            values = reduced.tolist()
        if values[0] > 0:
            problems = [f"{p} (rank {r})" for r, p in enumerate(all_gather_object(problem)) if p]
            good = list_checkpoints(self.checkpointer.folder)
            kept = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written"
            raise RunError(
                f"{self.cfg.algo.name} diverged at step {policy_step}: {'; '.join(problems)}; {kept}",
                report=self.is_logger,
            )
        return bool(values[1] > 0)

    # ----------------------------------------------------------------------------------- evaluation

    def eval_due(self, policy_step: int) -> bool:
        if self._next_eval is None or policy_step < self._next_eval:
            return False
        self._next_eval = (policy_step // self._eval_every + 1) * self._eval_every
        return True

    def evaluate(self, act: Callable[[dict[str, torch.Tensor]], torch.Tensor], envs: Any, policy_step: int) -> None:
        """Greedy episodes on fresh envs, split over the ranks, logged as Test/* and printed by the logger.

        Collective: every rank calls it (a decoupled trainer with ``envs=None``). Each rank plays its share
        with its own seed and the logger rank's normalization statistics; the results are gathered, so no
        rank waits idle in a collective (and its timeout) while another one plays.
        """
        if self.cfg.eval_episodes <= 0:
            return
        self._last_eval_step = policy_step
        self._check_finite(policy_step)  # a diverged policy has nothing to evaluate
        from sheeprl.envs import get_env_state
        from sheeprl.utils.evaluation import run_episodes, summarize

        env_state = get_env_state(envs) if self.is_logger and envs is not None else None
        env_state = broadcast_object(env_state, src=self.logger_rank)
        total, world = int(self.cfg.eval_episodes), self.world_size
        share = total // world + (1 if self.rank < total % world else 0)
        mine: dict[str, list[float]] = {"returns": [], "lengths": []}
        if share > 0:
            mine = run_episodes(
                self.cfg, act, share, seed=self.seed + 10_000, device=self.fabric.device, env_state=env_state
            )
        results = all_gather_object(mine)
        if not self.is_logger:
            return
        returns = [r for res in results for r in res["returns"]]
        lengths = [r for res in results for r in res["lengths"]]
        ret, length = summarize(returns), summarize(lengths)
        self.logger.log_metrics(
            {"Test/rew_avg": ret["mean"], "Test/rew_std": ret["std"], "Test/ep_len_avg": length["mean"]}, policy_step
        )
        self.logger.flush()  # now, not in two minutes: `sheeprl.py tune` prunes from these points while the run goes on
        self.progress.print(
            f"evaluation at step {policy_step}: return {ret['mean']:.2f} +- {ret['std']:.2f} "
            f"over {len(returns)} episodes (length {length['mean']:.1f})"
        )

    # ----------------------------------------------------------------------------------- interruption & end

    def _install_signal_handlers(self) -> None:
        """Ctrl-C and SIGTERM (what job schedulers send) ask for a checkpoint and a clean stop; a second one aborts."""
        try:
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

            def handler(signum: int, frame: Any) -> None:
                if self._interrupted:  # a second signal stops at once (the CLI exits 130)
                    for sig, prev in previous.items():
                        signal.signal(sig, prev)
                    raise KeyboardInterrupt
                self._interrupted = True
                if self.is_logger:
                    name = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
                    print(f"\n{name}: saving a checkpoint and stopping (Ctrl-C again to abort)", flush=True)

            for sig in previous:
                signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave Python's default behaviour
            pass

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank was interrupted; raises RunError when any rank diverged.

        Collective in a distributed run: one all-reduce carries both flags (the losses' finiteness is known on
        the host already, so this adds no device synchronization).
        """
        self._interrupted = self._check_finite(self._last_step, flags=[1.0 if self._interrupted else 0.0])
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
        # Every rank must agree on "interrupted" (a signal may have come after the loop's last check): the
        # checkpoint and the evaluation below are collectives. This also checks for divergence one last time.
        self.should_stop()
        if self.cfg.checkpoint.save_last or self._interrupted:
            self.maybe_checkpoint(policy_step, state_fn, envs, force=True)
        # An eval_every evaluation may have just run at this very step: one point per step on the curve.
        if act is not None and not self._interrupted and self._last_eval_step != policy_step:
            self.evaluate(act, envs, policy_step)
        self.progress.close(policy_step)
        self.logger.close()
