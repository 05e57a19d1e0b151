"""Twin Delayed DDPG (TD3), coupled; DDPG is the same loop with one critic, no smoothing and no delay.

Algorithm (Fujimoto et al., 2018, "Addressing Function Approximation Error in Actor-Critic Methods", Algorithm 1;
DDPG: Lillicrap et al., 2016):

    initialize actor mu, critics Q_1..Q_N, targets mu' <- mu, Q'_i <- Q_i, replay buffer D
    for each policy step:
        a = uniform during the first learning_starts steps, else clip(mu(s) + N(0, exploration_noise), low, high)
        step the envs; store (s, a, r, s', terminated), s' being the real final observation at an episode end
        for replay_ratio gradient steps per policy step (fractions accumulate), t = 1, 2, ...:
            sample a batch from D
            a' = clip(mu'(s') + clip(N(0, policy_noise), -noise_clip, noise_clip), low, high)   (target smoothing)
            y = r + gamma * (1 - terminated) * min_i Q'_i(s', a')                               (clipped double Q)
            minimize sum_i (Q_i(s, a) - y)^2
            if t mod policy_delay == 0:                                                     (delayed updates)
                minimize -Q_1(s, mu(s));  mu' <- (1 - tau) mu' + tau mu;  Q'_i <- (1 - tau) Q'_i + tau Q_i
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from sheeprl.algos.sac.agent import QEnsemble, polyak_update
from sheeprl.algos.sac.sac import make_buffer
from sheeprl.algos.td3.agent import TD3Actor, build_agent
from sheeprl.algos.td3.loss import actor_loss, critic_loss, critic_target, smoothed_target_actions
from sheeprl.config import plain
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
    target_actor: TD3Actor,
    target_critic: QEnsemble,
    actor_opt: Any,
    critic_opt: Any,
    batch: dict[str, Tensor],
    cfg: Any,
    update_actor: bool,
) -> dict[str, Tensor]:
    """One critic gradient step, and the delayed actor step with the target updates; returns the detached losses."""
    a = cfg.algo
    scale, bias = target_actor.scale, target_actor.bias
    with torch.no_grad():
        next_actions = target_actor(batch["next_observations"])
        noise = torch.randn_like(next_actions) * (a.policy_noise * scale)
        next_actions = smoothed_target_actions(next_actions, noise, a.noise_clip * scale, bias - scale, bias + scale)
        next_q = target_critic(batch["next_observations"], next_actions)
        target = critic_target(batch["rewards"], next_q, batch["terminated"], a.gamma)
    q_loss = critic_loss(critic(batch["observations"], batch["actions"]), target)
    critic_opt.zero_grad(set_to_none=True)
    fabric.backward(q_loss)
    critic_opt.step()
    losses = {"Loss/value_loss": q_loss.detach()}

    if update_actor:
        obs = batch["observations"]
        # The critics are constants here: their weights get no gradient, only the actions do.
        pi_loss = actor_loss(critic.module(obs, actor(obs), detach_params=True))
        actor_opt.zero_grad(set_to_none=True)
        fabric.backward(pi_loss)
        actor_opt.step()
        polyak_update(actor.module.parameters(), target_actor.parameters(), a.tau)
        polyak_update(critic.module.parameters(), target_critic.parameters(), a.tau)
        losses["Loss/policy_loss"] = pi_loss.detach()
    return losses


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

    state: Optional[dict[str, Any]] = run.state
    actor_raw, critic_raw = build_agent(envs.single_observation_space, action_space, cfg, state)
    actor, critic = fabric.setup_module(actor_raw), fabric.setup_module(critic_raw)
    # After the set-up: the targets start from rank 0's broadcast weights on every rank.
    target_actor = target_copy(actor, state["target_actor"] if state else None)
    target_critic = target_copy(critic, state["target_critic"] if state else None)

    actor_opt = build_optimizer(actor_raw.parameters(), a.actor_optimizer, "algo.actor_optimizer")
    critic_opt = build_optimizer(critic_raw.parameters(), a.critic_optimizer, "algo.critic_optimizer")
    ratio = Ratio(a.replay_ratio)
    rb = make_buffer(cfg, run, num_envs, device)
    train_from = a.learning_starts
    gradient_steps = 0
    if state:
        actor_opt.load_state_dict(state["actor_optimizer"])
        critic_opt.load_state_dict(state["critic_optimizer"])
        ratio.load_state_dict(state["ratio"])
        gradient_steps = int(state["gradient_steps"])
        if "buffer" in state:
            rb.load_state_dict(state["buffer"])
        else:
            train_from = max(a.learning_starts, run.start_step + a.learning_starts)
    actor_opt, critic_opt = fabric.setup_optimizers(actor_opt, critic_opt)

    def state_fn() -> dict[str, Any]:
        out = {
            "actor": actor_raw.state_dict(),
            "critic": critic_raw.state_dict(),
            "target_actor": target_actor.state_dict(),
            "target_critic": target_critic.state_dict(),
            "actor_optimizer": actor_opt.state_dict(),
            "critic_optimizer": critic_opt.state_dict(),
            "ratio": ratio.state_dict(),
            "gradient_steps": gradient_steps,
        }
        if cfg.checkpoint.save_buffer:
            out["buffer"] = rb.state_dict()
        return out

    low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten().to(device)
    high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten().to(device)
    exploration_std = a.exploration_noise * (high - low) / 2.0
    obs = run.reset_envs(envs, env_seed)
    collector = Collector(
        envs, rb, run, obs, obs_fn=flat_state(keys), learning_starts=a.learning_starts, world_size=world
    )

    def act(obs: Tensor) -> Tensor:
        """mu(s) plus Gaussian exploration noise, clipped to the action bounds."""
        with torch.no_grad():
            actions = actor_raw(norm.obs(obs.to(device)))
        return torch.maximum(torch.minimum(actions + torch.randn_like(actions) * exploration_std, high), low)

    policy_step = run.start_step
    while policy_step < a.total_steps:
        # ---- act (uniform during the warm-up), step, store
        policy_step = collector.step(act)

        # ---- learn
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
                            target_actor,
                            target_critic,
                            actor_opt,
                            critic_opt,
                            {k: v[i] for k, v in data.items()},
                            hot_cfg,
                            gradient_steps % a.policy_delay == 0,
                        )
                        for name, value in losses.items():
                            if name == "Loss/policy_loss" or i == steps - 1:
                                run.metrics.update(name, value)

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(actor_raw.greedy, envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=actor_raw.greedy)
    envs.close()
