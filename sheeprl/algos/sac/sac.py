"""Soft Actor-Critic, coupled: every rank plays its envs, fills its own buffer and trains (DDP).

Algorithm (Haarnoja et al., 2018a, "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement Learning
with a Stochastic Actor"; 2018b, "Soft Actor-Critic Algorithms and Applications", Algorithm 1):

    initialize actor pi, critics Q_1..Q_N, targets Q'_i <- Q_i, temperature alpha, replay buffer D
    for each policy step:
        a ~ uniform(action space) during the first learning_starts steps, else a ~ pi(.|s)
        step the envs; store (s, a, r, s', terminated) in D, s' being the real final observation at an episode end
        for replay_ratio gradient steps per policy step (fractions accumulate):
            sample a batch from D
            y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),  a' ~ pi(.|s')
            minimize sum_i (Q_i(s, a) - y)^2                                   (critics)
            minimize alpha * log pi(a~|s) - min_i Q_i(s, a~),  a~ ~ pi(.|s)    (actor, reparameterized)
            minimize -log alpha * (log pi(a~|s) + target_entropy)              (temperature)
            Q'_i <- (1 - tau) Q'_i + tau Q_i                                    (every target_update_every steps)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from sheeprl.algos.sac.agent import QEnsemble, SACActor, build_agent, polyak_update
from sheeprl.algos.sac.loss import actor_loss, critic_loss, critic_target, entropy_loss
from sheeprl.config import plain
from sheeprl.data import ReplayBuffer
from sheeprl.data.collector import Collector, flat_state
from sheeprl.envs import make_vector_env
from sheeprl.envs.normalization import BatchNormalizer
from sheeprl.utils.optim import build_optimizer
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.run import Run
from sheeprl.utils.targets import target_copy

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def train(
    fabric: Fabric,
    actor: Any,
    critic: Any,
    target_critic: QEnsemble,
    log_alpha: Tensor,
    optimizers: tuple[Any, Any, Any],
    batch: dict[str, Tensor],
    cfg: Any,
    target_entropy: float,
    update_target: bool,
    average_grad: Callable[[Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """One gradient step of critics, actor and temperature on ``batch``; returns the detached losses.

    DDP averages the networks' gradients over the training ranks; the temperature is a bare tensor, so
    ``average_grad(log_alpha.grad)`` (in place) averages it over the same ranks when there are several.
    """
    a = cfg.algo
    actor_opt, critic_opt, alpha_opt = optimizers
    obs, actions = batch["observations"], batch["actions"]
    alpha = log_alpha.detach().exp()

    # ---- critics: regress every Q_i on the soft TD target built from the target critics
    with torch.no_grad():
        next_actions, next_log_prob = actor.module(batch["next_observations"])
        next_q = target_critic(batch["next_observations"], next_actions)
        target = critic_target(batch["rewards"], next_q, next_log_prob, batch["terminated"], a.gamma, alpha)
    q_loss = critic_loss(critic(obs, actions), target)
    critic_opt.zero_grad(set_to_none=True)
    fabric.backward(q_loss)
    critic_opt.step()

    # ---- actor and temperature: the critics are constants here, so their weights get no gradient at all
    new_actions, log_prob = actor(obs)
    q_new = critic.module(obs, new_actions, detach_params=True)
    pi_loss = actor_loss(log_prob, q_new, alpha)
    alpha_loss = entropy_loss(log_alpha, log_prob, target_entropy)
    actor_opt.zero_grad(set_to_none=True)
    fabric.backward(pi_loss + alpha_loss) if a.autotune else fabric.backward(pi_loss)
    actor_opt.step()
    if a.autotune:
        if average_grad is not None:
            average_grad(log_alpha.grad)
        alpha_opt.step()
        alpha_opt.zero_grad(set_to_none=True)

    if update_target:
        polyak_update(critic.module.parameters(), target_critic.parameters(), a.tau)
    return {
        "Loss/value_loss": q_loss.detach(),
        "Loss/policy_loss": pi_loss.detach(),
        "Loss/alpha_loss": alpha_loss.detach(),
    }


def make_optimizers(actor: SACActor, critic: QEnsemble, log_alpha: Tensor, cfg: Any) -> tuple[Any, Any, Any]:
    """The optimizers of the actor, the critics and the temperature, each with its own settings (fused Adam by default)."""
    a = cfg.algo
    return (
        build_optimizer(actor.parameters(), a.actor_optimizer, "algo.actor_optimizer"),
        build_optimizer(critic.parameters(), a.critic_optimizer, "algo.critic_optimizer"),
        build_optimizer([log_alpha], a.alpha_optimizer, "algo.alpha_optimizer"),
    )


def make_buffer(cfg: Any, run: Run, num_envs: int, device: torch.device) -> ReplayBuffer:
    """This rank's replay buffer: memory-mapped under the run folder when ``buffer.memmap``, else on ``device``."""
    memmap_dir = run.log_dir / "memmap_buffer" / f"rank_{run.rank}" if cfg.buffer.memmap else None
    return ReplayBuffer(
        cfg.buffer.size,
        num_envs,
        memmap=cfg.buffer.memmap,
        memmap_dir=memmap_dir,
        obs_keys=("observations",),
        device="cpu" if cfg.buffer.memmap else device,
    )


def main(fabric: Fabric, cfg: Any) -> None:
    run = Run(fabric, cfg)
    hot_cfg = plain(cfg)  # what the update reads every gradient step: plain attributes, not OmegaConf nodes
    a = cfg.algo
    world, rank, device = fabric.world_size, fabric.global_rank, fabric.device
    num_envs = cfg.env.num_envs
    keys = list(a.mlp_keys.encoder)
    if a.batch_size % world != 0:
        raise ValueError(f"algo.batch_size={a.batch_size} is not divisible by the {world} processes")
    batch_per_rank = a.batch_size // world

    # Distinct env seeds on every rank: rank r owns seeds [seed + r * num_envs, seed + (r + 1) * num_envs).
    env_seed = cfg.seed + rank * num_envs
    # The buffer stores raw observations and rewards; `norm` normalizes what the agent sees with today's statistics.
    envs = make_vector_env(cfg, seed=env_seed, run_dir=str(run.log_dir), apply_normalization=False)
    norm = BatchNormalizer(envs, keys)
    action_space = envs.single_action_space
    action_dim = int(np.prod(action_space.shape))
    target_entropy = float(a.target_entropy) if a.target_entropy is not None else -float(action_dim)

    state: Optional[dict[str, Any]] = run.state
    actor_raw, critic_raw = build_agent(envs.single_observation_space, action_space, cfg, state)
    actor, critic = fabric.setup_module(actor_raw), fabric.setup_module(critic_raw)
    # After the set-up: the target starts from rank 0's broadcast weights on every rank.
    target_critic = target_copy(critic, state["target_critic"] if state else None)
    log_alpha = torch.tensor(math.log(a.alpha), device=device, requires_grad=True)
    optimizers = make_optimizers(actor_raw, critic_raw, log_alpha, cfg)
    ratio = Ratio(a.replay_ratio)
    rb = make_buffer(cfg, run, num_envs, device)
    train_from = a.learning_starts
    gradient_steps = 0  # saved: target_update_every keeps its rhythm across a resume
    if state:
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        for opt, name in zip(optimizers, ("actor_optimizer", "critic_optimizer", "alpha_optimizer"), strict=True):
            opt.load_state_dict(state[name])
        ratio.load_state_dict(state["ratio"])
        gradient_steps = int(state["gradient_steps"])
        if "buffer" in state:
            # Multi-rank runs save rank 0's buffer only; every rank continues from a copy of it (README).
            rb.load_state_dict(state["buffer"])
        else:
            # Resumed without data: refill the buffer with the current policy before training again.
            train_from = max(a.learning_starts, run.start_step + a.learning_starts)
    optimizers = fabric.setup_optimizers(*optimizers)

    def state_fn() -> dict[str, Any]:
        out = {
            "actor": actor_raw.state_dict(),
            "critic": critic_raw.state_dict(),
            "target_critic": target_critic.state_dict(),
            "log_alpha": log_alpha.detach().cpu(),
            "actor_optimizer": optimizers[0].state_dict(),
            "critic_optimizer": optimizers[1].state_dict(),
            "alpha_optimizer": optimizers[2].state_dict(),
            "ratio": ratio.state_dict(),
            "gradient_steps": gradient_steps,
        }
        if cfg.checkpoint.save_buffer:
            out["buffer"] = rb.state_dict()
        return out

    obs = run.reset_envs(envs, env_seed)
    collector = Collector(
        envs, rb, run, obs, obs_fn=flat_state(keys), learning_starts=a.learning_starts, world_size=world
    )

    def act(obs: Tensor) -> Tensor:
        with torch.no_grad():
            return actor_raw(norm.obs(obs.to(device)))[0]

    def average_alpha_grad(grad: Tensor) -> None:
        grad.copy_(fabric.all_reduce(grad, reduce_op="mean"))

    policy_step = run.start_step
    while policy_step < a.total_steps:
        # ---- act, step, store (a ~ uniform during the warm-up, then a ~ pi(.|s))
        policy_step = collector.step(act)

        # ---- learn: replay_ratio gradient steps per policy step, all batches drawn at once
        if policy_step > train_from:
            steps = ratio(num_envs * world)
            if steps > 0:
                with run.timer("train"):
                    sample = rb.sample(batch_per_rank, n_samples=steps)
                    data = norm.batch({k: v.to(device, non_blocking=True) for k, v in sample.items()})
                    for i in range(steps):
                        gradient_steps += 1
                        losses = train(
                            fabric,
                            actor,
                            critic,
                            target_critic,
                            log_alpha,
                            optimizers,
                            {k: v[i] for k, v in data.items()},
                            hot_cfg,
                            target_entropy,
                            gradient_steps % a.target_update_every == 0,
                            average_alpha_grad if world > 1 else None,
                        )
                    # The last step's losses stand for the window: reading every step's would sync a GPU each time.
                    for name, value in losses.items():
                        run.metrics.update(name, value)
                    run.metrics.update("Info/alpha", log_alpha.detach().exp())

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(actor_raw.greedy, envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=actor_raw.greedy)
    envs.close()
