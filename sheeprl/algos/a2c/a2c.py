"""Advantage Actor-Critic (A2C), coupled: every rank collects its rollout and trains (DDP).

Algorithm (Mnih et al., 2016, synchronous form, as in Stable-Baselines3 and SheepRL):

    for iteration = 1, 2, ...:
        run the policy for rollout_steps (n) in num_envs envs, storing (o, a, V(o), r, done)
        bootstrap truncated episodes from V(real final observation) and the rollout from V(o_n)
        advantages with GAE(gamma, lambda); lambda = 1 gives the n-step returns R_t, A_t = R_t - V(o_t)
        one gradient step on  -E[log pi(a|o) A] + vf_coef * E[(V(o) - R)^2] - ent_coef * entropy
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from sheeprl.algos.a2c.loss import policy_loss, value_loss
from sheeprl.algos.ppo.agent import PPOAgent, build_agent
from sheeprl.algos.ppo.loss import entropy_loss
from sheeprl.data import ReplayBuffer
from sheeprl.envs import make_vector_env
from sheeprl.utils.optim import build_optimizer, build_scheduler, load_scheduler_state
from sheeprl.utils.returns import gae, next_values_from_rollout
from sheeprl.utils.run import Run
from sheeprl.utils.tensors import final_obs_batch, obs_to_torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric


class Hyper(NamedTuple):
    """The hyperparameters train() reads, as plain Python values: an OmegaConf lookup costs ~30 us, and A2C makes
    one gradient step per 5-step rollout (a dozen lookups per step were ~5% of a CartPole run)."""

    obs_keys: tuple[str, ...]
    normalize_advantages: bool
    vf_coef: float
    ent_coef: float
    max_grad_norm: float

    @classmethod
    def of(cls, a: Any) -> Hyper:
        keys = (*a.cnn_keys.encoder, *a.mlp_keys.encoder)
        return cls(keys, bool(a.normalize_advantages), float(a.vf_coef), float(a.ent_coef), float(a.max_grad_norm))


def train(fabric: Fabric, agent: Any, optimizer: Any, data: Any, h: Hyper, run: Run) -> None:
    """One gradient step on the whole rollout (``data``: this rank's transitions, ``{key: (T * N, *)}``)."""
    logprobs, entropy, values = agent({k: data[k] for k in h.obs_keys}, data["actions"])
    adv = data["advantages"]
    if h.normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg = policy_loss(logprobs, adv)
    v = value_loss(values, data["returns"])
    ent = entropy_loss(entropy)
    loss = pg + h.vf_coef * v + h.ent_coef * ent if h.ent_coef else pg + h.vf_coef * v

    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    if h.max_grad_norm > 0:
        fabric.clip_gradients(agent, optimizer, max_norm=h.max_grad_norm)
    optimizer.step()

    # One read of the three statistics instead of three.
    stats = torch.stack([pg, v, ent]).detach().tolist()
    for name, value in zip(("Loss/policy_loss", "Loss/value_loss", "Loss/entropy_loss"), stats, strict=True):
        run.metrics.update(name, value)


def main(fabric: Fabric, cfg: Any) -> None:
    run = Run(fabric, cfg)
    a = cfg.algo
    world = fabric.world_size
    num_envs = cfg.env.num_envs
    obs_keys = [*a.cnn_keys.encoder, *a.mlp_keys.encoder]

    # Distinct env seeds on every rank: rank r owns seeds [seed + r * num_envs, seed + (r + 1) * num_envs).
    env_seed = cfg.seed + fabric.global_rank * num_envs
    envs = make_vector_env(cfg, seed=env_seed, run_dir=str(run.log_dir))

    agent: PPOAgent = build_agent(envs.single_observation_space, envs.single_action_space, cfg)
    agent.entropy_grad = a.ent_coef != 0  # no bonus: the entropy is only logged
    optimizer = build_optimizer(agent.parameters(), a.optimizer, "algo.optimizer")
    steps_per_iter = a.rollout_steps * num_envs * world
    num_iters = max(1, a.total_steps // steps_per_iter)
    scheduler = build_scheduler(optimizer, a.optimizer.schedule, num_iters)
    if run.state:
        agent.load_state_dict(run.state["agent"])
        optimizer.load_state_dict(run.state["optimizer"])
        load_scheduler_state(optimizer, scheduler, run.state["scheduler"])
    agent_ddp, optimizer = fabric.setup(agent, optimizer)
    player = agent  # the raw module: rollouts need no DDP hooks
    player.to(fabric.device)

    rb = ReplayBuffer(a.rollout_steps, num_envs, obs_keys=obs_keys, device="cpu")
    policy_step = run.start_step
    start_iter = policy_step // steps_per_iter + 1

    def state_fn() -> dict[str, Any]:
        return {"agent": player.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    hyper = Hyper.of(a)
    device = fabric.device
    rollout_steps, gamma, gae_lambda = int(a.rollout_steps), float(a.gamma), float(a.gae_lambda)
    obs = run.reset_envs(envs, env_seed)
    next_obs = obs_to_torch(obs, device)
    for _iteration in range(start_iter, num_iters + 1):
        # ---- an n-step rollout with the current policy
        rb.reset()
        with run.timer("env"):
            for _ in range(rollout_steps):
                policy_step += num_envs * world
                actions, _, values = player.act(next_obs)
                obs, rewards, terminated, truncated, infos = envs.step(player.to_env(actions).cpu().numpy())
                dones = terminated | truncated
                # A truncated episode continues in theory: bootstrap it from its real final observation.
                bootstrap = np.zeros(num_envs, dtype=np.float32)
                cut = truncated & ~terminated
                if cut.any():
                    final = obs_to_torch(final_obs_batch(infos, cut, obs_keys), device)
                    bootstrap[cut] = player.value(final).cpu().numpy()
                rb.add_step(
                    {
                        **next_obs,
                        "actions": actions,
                        "values": values,
                        "rewards": rewards.astype(np.float32),
                        "terminated": terminated,
                        "dones": dones,
                        "bootstrap": bootstrap,
                    }
                )
                next_obs = obs_to_torch(obs, device)
                run.record_episodes(infos)

        # ---- n-step (GAE) returns, then one gradient step
        with run.timer("train"):
            data = rb.to_dict()
            values = data["values"]
            next_values = next_values_from_rollout(
                values, player.value(next_obs).cpu(), data["dones"], data["bootstrap"]
            )
            advantages, returns = gae(
                data["rewards"], values, next_values, data["terminated"], data["dones"], gamma, gae_lambda
            )
            data["advantages"], data["returns"] = advantages, returns
            flat = {k: v.reshape(-1, *v.shape[2:]).to(device) for k, v in data.items()}  # (T * N, *)
            train(fabric, agent_ddp, optimizer, flat, hyper, run)
            run.metrics.update("Info/learning_rate", optimizer.param_groups[0]["lr"])
            scheduler.step()

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(player.greedy, envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=player.greedy)
    envs.close()
