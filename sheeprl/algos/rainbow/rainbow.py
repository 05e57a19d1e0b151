"""Rainbow, coupled: every rank plays its envs, fills its own (prioritized) buffer and trains (DDP).

Algorithm (Hessel et al., 2018, "Rainbow: Combining Improvements in Deep Reinforcement Learning"), every
component behind its own switch (algo.double, dueling, n_step, prioritized, distributional, noisy):

    initialize Q (dueling, noisy head over a C51 support z), target Q' <- Q, prioritized buffer D
    for each policy step:
        a = argmax_a E[Z(s, a)] under fresh noise (noisy nets; epsilon-greedy when noisy is off)
        step the envs; store (s, a, r, s', terminated, done) in D at the max priority
        for replay_ratio gradient steps per policy step:
            sample i ~ P(i) = p_i^alpha / sum p^alpha, weights w_i = (N P(i))^-beta / max w   (beta -> 1)
            n-step transition from i: R = sum_k gamma^k r_{t+k}, s_{t+m}, gamma^m (1 - terminated) (data/nstep.py)
            a* = argmax_a E[Z(s_{t+m}, a)] with the online net (double), evaluated with the target net Z'
            m = Phi(R + gamma^m z, Z'(s_{t+m}, a*))      projection onto the support (C51)
            minimize sum_i w_i * CE(m_i, Z(s_i, a_i)); new priorities p_i = CE_i
            every target_update_every gradient steps: Q' <- Q
With distributional off the head is scalar and the loss is the Huber TD error, |delta| being the priority.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from sheeprl.algos.dqn.dqn import encoder_obs, epsilon_greedy
from sheeprl.algos.dqn.dqn import make_buffer as make_storage
from sheeprl.algos.rainbow.agent import RainbowNetwork, build_agent
from sheeprl.algos.rainbow.loss import distributional_loss, project_distribution, q_loss, td_target
from sheeprl.data import ReplayBuffer
from sheeprl.data.collector import Collector
from sheeprl.data.frames import FrameReplayBuffer
from sheeprl.data.nstep import nstep_batch, uniform_rows
from sheeprl.data.prioritized import PrioritizedSampler, beta_schedule, last_rows
from sheeprl.envs import make_vector_env
from sheeprl.utils.optim import GradientStep, build_optimizer
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.run import Run
from sheeprl.utils.schedules import linear_schedule
from sheeprl.utils.targets import make_target, update_target

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def train(
    update: GradientStep,
    target_q: RainbowNetwork,
    batch: dict[str, Tensor],
    weights: Optional[Tensor],
    cfg: Any,
) -> tuple[dict[str, Tensor], Tensor]:
    """One gradient step on an n-step ``batch``; returns the detached losses and the new priorities (B,).

    ``update`` holds the online network, its optimizer and the gradient clip (``algo.max_grad_norm``).
    """
    a = cfg.algo
    online: RainbowNetwork = update.plain  # type: ignore[assignment]
    keys = target_q.encoder.keys
    obs = {k: batch[k] for k in keys}
    next_obs = {k: batch[f"next_{k}"] for k in keys}
    # Fresh noise for this step: the online net's serves both s and s', the target net draws its own.
    online.reset_noise()
    target_q.reset_noise()
    with torch.no_grad():
        next_q_target, next_log_probs = target_q(next_obs)
        next_q_online = online(next_obs)[0] if a.double else None
        if online.distributional:
            best = (next_q_online if next_q_online is not None else next_q_target).argmax(dim=-1)
            next_probs = next_log_probs[torch.arange(best.numel(), device=best.device), best].exp()
            target = project_distribution(next_probs, batch["rewards"], batch["discounts"], target_q.support)
        else:
            target = td_target(batch["rewards"], batch["discounts"], next_q_target, next_q_online)
    q_values, log_probs = update.forward(obs)
    if online.distributional:
        loss, priorities = distributional_loss(log_probs, batch["actions"], target, weights)
    else:
        loss, td = q_loss(q_values, batch["actions"], target, weights)
        priorities = td.abs()
    update(loss)
    return {"Loss/q_loss": loss.detach(), "Info/q_mean": q_values.detach().mean()}, priorities


def make_optimizer(q: RainbowNetwork, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer of ``algo.optimizer`` (Adam by default; any torch.optim class by name) over the network."""
    return build_optimizer(q.parameters(), cfg.algo.optimizer, "algo.optimizer")


def make_buffer(
    cfg: Any, run: Run, num_envs: int, device: torch.device
) -> tuple[ReplayBuffer | FrameReplayBuffer, Optional[PrioritizedSampler]]:
    """This rank's storage of one-step transitions (frames stored once for pixel keys, as in dqn.py) and, with
    prioritized replay, the priorities of its rows."""
    a = cfg.algo
    rb = make_storage(cfg, run, num_envs, device)
    sampler = (
        PrioritizedSampler(cfg.buffer.size * num_envs, a.priority_alpha, a.priority_eps) if a.prioritized else None
    )
    return rb, sampler


class PrioritizedStore:
    """What the collector writes into: the storage, whose new rows enter the priorities at the max priority."""

    def __init__(self, rb: ReplayBuffer | FrameReplayBuffer, sampler: Optional[PrioritizedSampler]) -> None:
        self.rb, self.sampler = rb, sampler

    def add(self, step: dict[str, Tensor]) -> None:
        rows = self.rb.add(step)
        if self.sampler is not None:
            self.sampler.on_add(rows if rows is not None else last_rows(self.rb))


def sample_batch(
    rb: ReplayBuffer | FrameReplayBuffer,
    sampler: Optional[PrioritizedSampler],
    cfg: Any,
    batch_size: int,
    policy_step: int,
    keys: list[str],
    device: torch.device,
) -> tuple[Tensor, Optional[Tensor], dict[str, Tensor]]:
    """Rows drawn by priority (or uniformly), their importance weights, and their n-step transitions on ``device``."""
    a = cfg.algo
    weights = None
    if sampler is not None:
        rows, weights = sampler.sample(batch_size, beta_schedule(a.priority_beta, policy_step, a.total_steps))
        if isinstance(rb, FrameReplayBuffer):
            # A frame buffer may drop its oldest rows before overwriting them: take them out and draw again.
            while not bool((ok := rb.valid(rows)).all()):
                sampler.remove(rows[~ok])
                rows, weights = sampler.sample(batch_size, beta_schedule(a.priority_beta, policy_step, a.total_steps))
        weights = weights.to(device)
    elif isinstance(rb, FrameReplayBuffer):
        rows = rb.sample_indices(batch_size)
    else:
        rows = uniform_rows(rb, batch_size)
    batch = nstep_batch(rb, rows, a.n_step, a.gamma, obs_keys=keys)
    return rows, weights, {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def buffer_state(rb: ReplayBuffer | FrameReplayBuffer, sampler: Optional[PrioritizedSampler]) -> dict[str, Any]:
    return {"storage": rb.state_dict(), **({"sampler": sampler.state_dict()} if sampler is not None else {})}


def load_buffer_state(
    rb: ReplayBuffer | FrameReplayBuffer, sampler: Optional[PrioritizedSampler], state: dict[str, Any]
) -> None:
    rb.load_state_dict(state["storage"])
    if sampler is not None:
        sampler.load_state_dict(state["sampler"])


def act(q: RainbowNetwork, obs: dict[str, Tensor], cfg: Any, policy_step: int) -> Tensor:
    """Noisy greedy actions (fresh noise every step), or epsilon-greedy when noisy is off."""
    a = cfg.algo
    n = int(q.num_actions)
    if a.noisy:
        q.reset_noise()
        return q.act(obs).cpu()
    return epsilon_greedy(q, obs, linear_schedule(a.eps_start, a.eps_end, a.exploration_steps, policy_step), n)


def main(fabric: Fabric, cfg: Any) -> None:
    run = Run(fabric, cfg)
    a = cfg.algo
    world, rank, device = fabric.world_size, fabric.global_rank, fabric.device
    num_envs = cfg.env.num_envs
    keys = list(a.cnn_keys.encoder) + list(a.mlp_keys.encoder)
    batch_per_rank = a.batch_size // world

    env_seed = cfg.seed + rank * num_envs
    envs = make_vector_env(cfg, seed=env_seed, run_dir=str(run.log_dir))

    state: Optional[dict[str, Any]] = run.state
    q_raw = build_agent(envs.single_observation_space, envs.single_action_space, cfg, state)
    q = fabric.setup_module(q_raw)
    target_q = make_target(fabric, q)  # after DDP set-up: identical on every rank (checked)
    if state:
        target_q.load_state_dict(state["target_q"])
    optimizer = make_optimizer(q_raw, cfg)
    ratio = Ratio(a.replay_ratio)
    rb, sampler = make_buffer(cfg, run, num_envs, device)
    train_from = a.learning_starts
    gradient_steps = 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        ratio.load_state_dict(state["ratio"])
        gradient_steps = int(state["gradient_steps"])
        if "buffer" in state:
            load_buffer_state(rb, sampler, state["buffer"])
        else:
            train_from = max(a.learning_starts, run.start_step + a.learning_starts)
    optimizer = fabric.setup_optimizers(optimizer)
    update = GradientStep(fabric, q, optimizer, float(a.max_grad_norm))

    def state_fn() -> dict[str, Any]:
        out = {
            "q": q_raw.state_dict(),
            "target_q": target_q.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ratio": ratio.state_dict(),
            "gradient_steps": gradient_steps,
        }
        if cfg.checkpoint.save_buffer:
            out["buffer"] = buffer_state(rb, sampler)
        return out

    obs, _ = envs.reset(seed=env_seed)
    run.restore_rank_state(envs)
    collector = Collector(
        envs,
        PrioritizedStore(rb, sampler),
        run,
        obs,
        obs_fn=encoder_obs(keys),
        learning_starts=a.learning_starts,
        world_size=world,
    )

    def policy(obs: dict[str, Tensor]) -> Tensor:
        return act(q_raw, {k: v.to(device) for k, v in obs.items()}, cfg, collector.policy_step)

    policy_step = run.start_step
    while policy_step < a.total_steps:
        # ---- act (uniform during the warm-up, then noisy / epsilon-greedy), step, store at the max priority
        policy_step = collector.step(policy)

        # ---- learn: each gradient step samples with the priorities the previous one left
        if policy_step > train_from:
            steps = ratio(num_envs * world)
            if steps > 0:
                with run.timer("train"):
                    for _ in range(steps):
                        rows, weights, batch = sample_batch(rb, sampler, cfg, batch_per_rank, policy_step, keys, device)
                        losses, priorities = train(update, target_q, batch, weights, cfg)
                        if sampler is not None:
                            sampler.update(rows, priorities)
                        gradient_steps += 1
                        if gradient_steps % a.target_update_every == 0:
                            update_target(q, target_q, a.tau)
                    for name, value in losses.items():
                        run.metrics.update(name, value)

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(q_raw.greedy, envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=q_raw.greedy)
    envs.close()
