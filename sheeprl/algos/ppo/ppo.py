"""Proximal Policy Optimization, coupled: every rank collects its rollout and trains (DDP).

Algorithm (Schulman et al., 2017, with the CleanRL "37 implementation details"):

    for iteration = 1, 2, ...:
        step the learning-rate and surrogate-clip schedules (both linear annealing by default)
        run the policy for rollout_steps in num_envs envs, storing (o, a, log pi(a|o), V(o), r, done)
        bootstrap truncated episodes from V(real final observation)
        compute advantages with GAE(gamma, lambda) and returns = advantages + values
        for epoch in 1..update_epochs, for each shuffled minibatch:
            minimize  L_clip + vf_coef * L_value - ent_coef * entropy
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sheeprl.algos.ppo.agent import PPOAgent, build_agent
from sheeprl.algos.ppo.loss import approx_kl, clip_at, entropy_loss, policy_loss, value_loss
from sheeprl.data import ReplayBuffer
from sheeprl.envs import make_vector_env
from sheeprl.utils.optim import build_optimizer, build_scheduler, load_scheduler_state
from sheeprl.utils.returns import gae, next_values_from_rollout
from sheeprl.utils.run import Run
from sheeprl.utils.tensors import final_obs_batch, obs_to_torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric


# The per-minibatch statistics train() logs, in the order of its stacked rows.
_TRAIN_STATS = ("Loss/policy_loss", "Loss/value_loss", "Loss/entropy_loss", "Info/clip_frac", "Info/approx_kl")


def train(
    fabric: Fabric,
    agent: Any,
    optimizer: Any,
    data: Any,
    cfg: Any,
    run: Run,
    group: Any = None,
    clip_coef: float | None = None,
    perms: Any = None,
    share: tuple[int, int] = (0, 1),
) -> None:
    """Update epochs over one rollout (``data`` is a flat TensorDict of this rank's transitions).

    ``group`` is the process group of the ranks that train together (None: all ranks; decoupled PPO: the trainers);
    ``clip_coef`` the surrogate clip of this update (default ``algo.clip_coef``; the value clip always uses
    ``algo.clip_coef``). Epoch e visits the rows in the order ``perms[e]`` (default: drawn here, one
    ``torch.randperm`` per epoch), ``algo.minibatch_size`` of them (0: all) per gradient step; ``share = (i, k)``
    makes this rank compute the i-th of k equal slices of every minibatch (decoupled PPO's trainers: DDP averages
    the k slices' gradients into the gradient of the whole minibatch).
    """
    a = cfg.algo
    obs_keys = [*a.cnn_keys.encoder, *a.mlp_keys.encoder]
    # Plain values and tensors for the inner loop: a config lookup or TensorDict index costs more than the
    # arithmetic of a small minibatch.
    vclip, clip_vloss, normalize = float(a.clip_coef), bool(a.clip_vloss), bool(a.normalize_advantages)
    clip_coef = vclip if clip_coef is None else float(clip_coef)
    vf_coef, ent_coef, max_grad_norm = float(a.vf_coef), float(a.ent_coef), float(a.max_grad_norm)
    columns = {k: data[k] for k in (*obs_keys, "actions", "advantages", "logprobs", "values", "returns")}
    n = data.batch_size[0]
    if perms is None:  # all drawn first, so that an early stop (target_kl) leaves the same random stream behind
        perms = [torch.randperm(n) for _ in range(a.update_epochs)]
    minibatch_size = a.minibatch_size or n  # 0: the whole rollout, one gradient step per epoch
    size = minibatch_size // share[1]
    lo, hi = share[0] * size, (share[0] + 1) * size
    epochs = []  # per epoch, one row per minibatch: the logged statistics, read from the device once at the end
    for perm in perms:
        rows = []
        for minibatch in perm.split(minibatch_size):
            idx = minibatch[lo:hi]
            batch = {k: v[idx] for k, v in columns.items()}
            old_logp = batch["logprobs"]
            new_logp, entropy, new_values = agent({k: batch[k] for k in obs_keys}, batch["actions"])
            adv = batch["advantages"]
            if normalize and minibatch.numel() > 1:
                # Statistics of the whole minibatch, not of this rank's slice: a decoupled trainer then scales its
                # slice exactly as coupled PPO scales the minibatch.
                whole = columns["advantages"][minibatch] if share[1] > 1 else adv
                adv = (adv - whole.mean()) / (whole.std() + 1e-8)
            pg = policy_loss(new_logp, old_logp, adv, clip_coef)
            v = value_loss(new_values, batch["values"], batch["returns"], vclip, clip_vloss)
            ent = entropy_loss(entropy)
            loss = pg + vf_coef * v + ent_coef * ent if ent_coef else pg + vf_coef * v

            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if max_grad_norm > 0:
                fabric.clip_gradients(agent, optimizer, max_norm=max_grad_norm)
            optimizer.step()

            with torch.no_grad():
                clip_frac = ((new_logp - old_logp).exp() - 1.0).abs().gt(clip_coef).float().mean()
                rows.append(torch.stack([pg, v, ent, clip_frac, approx_kl(new_logp, old_logp)]))
        epochs.append(torch.stack(rows))
        # Every rank must take the same decision, or DDP's next all-reduce would wait forever.
        if a.target_kl is not None:
            kl = fabric.all_reduce(epochs[-1][:, -1].mean(), group=group, reduce_op="mean")
            if float(kl) > a.target_kl:
                break
    stats = torch.cat(epochs)
    for name, value in zip(_TRAIN_STATS, stats.mean(0).tolist(), strict=True):
        run.metrics.update(name, value, count=stats.shape[0])


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
    agent.entropy_grad = a.ent_coef != 0
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

    obs = run.reset_envs(envs, env_seed)
    next_obs = obs_to_torch(obs, fabric.device)
    gamma = a.gamma
    for iteration in range(start_iter, num_iters + 1):
        # ---- collect a rollout with the current policy
        rb.reset()
        with run.timer("env"):
            for _ in range(a.rollout_steps):
                policy_step += num_envs * world
                actions, logprobs, values = player.act(next_obs)
                obs, rewards, terminated, truncated, infos = envs.step(player.to_env(actions).cpu().numpy())
                dones = terminated | truncated
                # A truncated episode continues in theory: bootstrap it from its real final observation.
                bootstrap = np.zeros(num_envs, dtype=np.float32)
                cut = truncated & ~terminated
                if cut.any():
                    final = obs_to_torch(final_obs_batch(infos, cut, obs_keys), fabric.device)
                    bootstrap[cut] = player.value(final).cpu().numpy()
                rb.add_step(
                    {
                        **next_obs,
                        "actions": actions,
                        "logprobs": logprobs,
                        "values": values,
                        "rewards": rewards.astype(np.float32),
                        "terminated": terminated,
                        "dones": dones,
                        "bootstrap": bootstrap,
                    }
                )
                next_obs = obs_to_torch(obs, fabric.device)
                run.record_episodes(infos)

        # ---- advantages: next_values[t] is V(s_{t+1}) of the same episode (the bootstrap at a cut)
        with run.timer("train"):
            data = rb.to_tensordict()
            values = data["values"]
            next_values = next_values_from_rollout(
                values, player.value(next_obs).cpu(), data["dones"], data["bootstrap"]
            )
            advantages, returns = gae(
                data["rewards"], values, next_values, data["terminated"], data["dones"], gamma, a.gae_lambda
            )
            data["advantages"], data["returns"] = advantages, returns
            clip = clip_at(a.clip_coef, a.clip_schedule, iteration, num_iters)
            train(fabric, agent_ddp, optimizer, data.reshape(-1).to(fabric.device), cfg, run, clip_coef=clip)
            run.metrics.update("Info/clip_coef", clip)
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
