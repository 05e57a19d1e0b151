"""DroQ, coupled: SAC whose Q-functions use dropout and layer norm, trained at a high replay ratio.

Algorithm (Hiraoka et al., 2022, "Dropout Q-Functions for Doubly Efficient Reinforcement Learning", Algorithm 2):

    initialize actor pi, dropout Q-functions Q_1..Q_M, targets Q'_i <- Q_i, temperature alpha, replay buffer D
    for each policy step:
        a ~ uniform during the first learning_starts steps, else a ~ pi(.|s); step; store (s, a, r, s', terminated)
        repeat G = replay_ratio times per policy step:
            sample a batch from D
            y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),  a' ~ pi(.|s')
            minimize sum_i (Q_i(s, a) - y)^2 (dropout active);  Q'_i <- (1 - tau) Q'_i + tau Q_i
        once (actor_replay_ratio) per policy step:
            minimize alpha * log pi(a~|s) - mean_i Q_i(s, a~)   and   -log alpha * (log pi(a~|s) + target_entropy)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from sheeprl.algos.droq.agent import build_agent
from sheeprl.algos.droq.loss import actor_loss, critic_loss, critic_target, entropy_loss
from sheeprl.algos.sac.agent import QEnsemble, polyak_update
from sheeprl.algos.sac.sac import make_buffer, make_optimizers
from sheeprl.config import plain
from sheeprl.data.collector import Collector, flat_state
from sheeprl.envs import make_vector_env
from sheeprl.envs.normalization import BatchNormalizer
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.run import Run
from sheeprl.utils.targets import target_copy

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def train_critic(
    fabric: Fabric,
    actor: Any,
    critic: Any,
    target_critic: QEnsemble,
    log_alpha: Tensor,
    critic_opt: Any,
    batch: dict[str, Tensor],
    cfg: Any,
    update_target: bool,
) -> Tensor:
    """One critic gradient step (and the Polyak update of the targets); returns the detached loss."""
    a = cfg.algo
    with torch.no_grad():
        next_actions, next_log_prob = actor.module(batch["next_observations"])
        next_q = target_critic(batch["next_observations"], next_actions)
        alpha = log_alpha.exp()
        target = critic_target(batch["rewards"], next_q, next_log_prob, batch["terminated"], a.gamma, alpha)
    q_loss = critic_loss(critic(batch["observations"], batch["actions"]), target)
    critic_opt.zero_grad(set_to_none=True)
    fabric.backward(q_loss)
    critic_opt.step()
    if update_target:
        polyak_update(critic.module.parameters(), target_critic.parameters(), a.tau)
    return q_loss.detach()


def train_actor(
    fabric: Fabric,
    actor: Any,
    critic: Any,
    log_alpha: Tensor,
    actor_opt: Any,
    alpha_opt: Any,
    obs: Tensor,
    cfg: Any,
    target_entropy: float,
    world_size: int,
) -> tuple[Tensor, Tensor]:
    """One actor (and temperature) gradient step; the critics are constants. Returns the detached losses."""
    a = cfg.algo
    alpha = log_alpha.detach().exp()
    new_actions, log_prob = actor(obs)
    pi_loss = actor_loss(log_prob, critic.module(obs, new_actions, detach_params=True), alpha)
    alpha_loss = entropy_loss(log_alpha, log_prob, target_entropy)
    actor_opt.zero_grad(set_to_none=True)
    fabric.backward(pi_loss + alpha_loss) if a.autotune else fabric.backward(pi_loss)
    actor_opt.step()
    if a.autotune:
        if world_size > 1:  # DDP averages the networks' gradients; the temperature is a bare tensor
            log_alpha.grad = fabric.all_reduce(log_alpha.grad, reduce_op="mean")
        alpha_opt.step()
        alpha_opt.zero_grad(set_to_none=True)
    return pi_loss.detach(), alpha_loss.detach()


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

    env_seed = cfg.seed + rank * num_envs
    envs = make_vector_env(cfg, seed=env_seed, run_dir=str(run.log_dir), apply_normalization=False)
    norm = BatchNormalizer(envs, keys)  # the buffer stores raw values; batches are normalized when sampled
    action_space = envs.single_action_space
    action_dim = int(np.prod(action_space.shape))
    target_entropy = float(a.target_entropy) if a.target_entropy is not None else -float(action_dim)

    state: Optional[dict[str, Any]] = run.state
    actor_raw, critic_raw = build_agent(envs.single_observation_space, action_space, cfg, state)
    actor, critic = fabric.setup_module(actor_raw), fabric.setup_module(critic_raw)
    target_critic = target_copy(critic, state["target_critic"] if state else None)  # after the broadcast
    log_alpha = torch.tensor(math.log(a.alpha), device=device, requires_grad=True)
    optimizers = make_optimizers(actor_raw, critic_raw, log_alpha, cfg)
    critic_ratio, actor_ratio = Ratio(a.replay_ratio), Ratio(a.actor_replay_ratio)
    rb = make_buffer(cfg, run, num_envs, device)
    train_from = a.learning_starts
    critic_steps = 0  # saved: target_update_every keeps its rhythm across a resume
    if state:
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        for opt, name in zip(optimizers, ("actor_optimizer", "critic_optimizer", "alpha_optimizer"), strict=True):
            opt.load_state_dict(state[name])
        critic_ratio.load_state_dict(state["ratio"])
        actor_ratio.load_state_dict(state["actor_ratio"])
        critic_steps = int(state["critic_steps"])
        if "buffer" in state:
            rb.load_state_dict(state["buffer"])
        else:
            train_from = max(a.learning_starts, run.start_step + a.learning_starts)
    actor_opt, critic_opt, alpha_opt = optimizers = fabric.setup_optimizers(*optimizers)

    def state_fn() -> dict[str, Any]:
        out = {
            "actor": actor_raw.state_dict(),
            "critic": critic_raw.state_dict(),
            "target_critic": target_critic.state_dict(),
            "log_alpha": log_alpha.detach().cpu(),
            "actor_optimizer": actor_opt.state_dict(),
            "critic_optimizer": critic_opt.state_dict(),
            "alpha_optimizer": alpha_opt.state_dict(),
            "ratio": critic_ratio.state_dict(),
            "actor_ratio": actor_ratio.state_dict(),
            "critic_steps": critic_steps,
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

    policy_step = run.start_step
    while policy_step < a.total_steps:
        # ---- act, step, store (a ~ uniform during the warm-up, then a ~ pi(.|s))
        policy_step = collector.step(act)

        # ---- learn: G critic steps per policy step, then the actor
        if policy_step > train_from:
            n_critic, n_actor = critic_ratio(num_envs * world), actor_ratio(num_envs * world)
            with run.timer("train"):
                if n_critic > 0:
                    sample = rb.sample(batch_per_rank, n_samples=n_critic)
                    data = norm.batch({k: v.to(device, non_blocking=True) for k, v in sample.items()})
                    for i in range(n_critic):
                        critic_steps += 1
                        q_loss = train_critic(
                            fabric,
                            actor,
                            critic,
                            target_critic,
                            log_alpha,
                            critic_opt,
                            {k: v[i] for k, v in data.items()},
                            hot_cfg,
                            critic_steps % a.target_update_every == 0,
                        )
                    run.metrics.update("Loss/value_loss", q_loss)
                if n_actor > 0:
                    obs_batches = norm.obs(rb.sample(batch_per_rank, n_samples=n_actor)["observations"].to(device))
                    for i in range(n_actor):
                        pi_loss, alpha_loss = train_actor(
                            fabric,
                            actor,
                            critic,
                            log_alpha,
                            actor_opt,
                            alpha_opt,
                            obs_batches[i],
                            hot_cfg,
                            target_entropy,
                            world,
                        )
                    run.metrics.update("Loss/policy_loss", pi_loss)
                    run.metrics.update("Loss/alpha_loss", alpha_loss)
                    run.metrics.update("Info/alpha", log_alpha.detach().exp())

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(actor_raw.greedy, envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=actor_raw.greedy)
    envs.close()
