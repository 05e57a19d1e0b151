"""Dreamer V3, coupled: every rank plays its envs, fills its own sequence buffer and trains (gradients averaged).

Algorithm (Hafner et al., 2023, "Mastering Diverse Domains through World Models"):

    initialize world model (encoder, RSSM, decoder, reward, continue), actor, critic, slow critic, buffer D
    for each policy step:
        a ~ uniform during the first learning_starts steps, else filter obs into (h, z) and a ~ actor([h, z])
        step the envs; store (obs, previous action, reward, terminated, is_first) per env in D
        for replay_ratio gradient steps per policy step:
            sample B sequences of T steps from D
            world model: posterior z_t ~ q(z | h_t, enc(x_t)), prior p(z | h_t), h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})
                minimize  decoder SSE (symlog) + two-hot reward CE + continue BCE
                        + 0.5 max(1, KL(sg(q) || p)) + 0.1 max(1, KL(q || sg(p)))
            imagine H steps from every posterior state with the actor
            R = lambda-returns of imagined rewards, continues and critic values
            S = EMA of (P95 - P5) of R;  actor: REINFORCE (discrete) or backprop through the model (continuous)
                on (R - v) / max(1, S), plus an entropy bonus
            critic: two-hot CE to sg(R) + CE to the slow critic's prediction; slow critic <- EMA of critic
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from sheeprl.algos.dreamer_v3.agent import (
    Agent,
    Player,
    build_agent,
    cached_one_hot_tables,
    fuse_first_layers,
    heads_sparse,
    mlp_sparse,
)
from sheeprl.algos.dreamer_v3.loss import PercentileNormalizer, kl_loss, two_hot_ce, two_hot_loss, two_hot_mean
from sheeprl.data.sequence import EnvSequenceBuffer
from sheeprl.envs import make_vector_env
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.returns import lambda_returns
from sheeprl.utils.run import Run
from sheeprl.utils.tensors import final_obs_batch, obs_to_torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def world_model_loss(agent: Agent, batch: dict[str, Tensor], cfg: Any) -> tuple[Tensor, dict[str, Tensor], tuple]:
    """The world model's loss on a ``(T, B)`` batch; also returns the posterior states for imagination."""
    a = cfg.algo
    wm = agent.world_model
    embed = wm.encoder(batch)
    h, z, post, prior = wm.rssm.observe(embed, batch["actions"], batch["is_first"])
    latent = torch.cat((h, z), -1)
    obs_loss = wm.decoder.loss(wm.decoder(latent), batch)
    reward_loss = two_hot_loss(wm.reward(latent), batch["rewards"], agent.bins)
    cont_target = 1.0 - batch["terminated"]
    cont_loss = F.binary_cross_entropy_with_logits(wm.cont(latent).squeeze(-1), cont_target, reduction="none")
    kl, kl_raw = kl_loss(post, prior, a.free_nats, a.kl_dynamics, a.kl_representation)
    loss = (obs_loss + reward_loss + cont_loss + kl).mean()
    metrics = {
        "Loss/world_model_loss": loss.detach(),
        "Loss/observation_loss": obs_loss.detach().mean(),
        "Loss/reward_loss": reward_loss.detach().mean(),
        "Loss/state_loss": kl_raw.mean(),
        "Loss/continue_loss": cont_loss.detach().mean(),
    }
    return loss, metrics, (h.detach(), z.detach(), cont_target)


def imagine(agent: Agent, h: Tensor, z: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
    """Roll the actor through the prior for ``horizon`` steps from ``(N, *)`` states.

    Returns latents ``(H+1, N, D)`` and actions ``(H, N, A)``. Gradients reach the actor through the dynamics
    when grad mode is on (continuous actions); the world model's weights are frozen by the caller.
    """
    rssm, actor = agent.world_model.rssm, agent.actor
    latents, actions = [torch.cat((h, z), -1)], []
    for _ in range(horizon):
        action = actor.sample(latents[-1] if torch.is_grad_enabled() else latents[-1].detach())
        h, z = rssm.imagine_step(h, z, action)
        latents.append(torch.cat((h, z), -1))
        actions.append(action)
    return torch.stack(latents), torch.stack(actions)


def imagine_sparse(agent: Agent, h: Tensor, idx: Tensor, horizon: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`imagine` for discrete actions (REINFORCE needs no gradient through the model), the latents kept as
    class indices. Returns ``h (H+1, N, deter)``, indices ``(H+1, N, stoch)``, actions ``(H, N, A)`` and the actor's
    log-probabilities ``(H, N, A)``: the only part with a graph (the actor's own layers), so its loss reuses them
    instead of running the actor over the trajectory a second time."""
    rssm, actor = agent.world_model.rssm, agent.actor
    hs, idxs, actions, outs = [h], [idx], [], []
    for _ in range(horizon):
        out = actor.head(mlp_sparse(actor.net, h, idx, rssm.classes))
        with torch.no_grad():
            action = actor.sample_from(out.detach())
            h, idx = rssm.imagine_step_sparse(h, idx, action)
        hs.append(h)
        idxs.append(idx)
        actions.append(action)
        outs.append(out)
    return torch.stack(hs), torch.stack(idxs), torch.stack(actions), torch.stack(outs)


def per_step(
    net: nn.Sequential, hs: Tensor, idx: Tensor, classes: int, fn: Callable[[Tensor], Tensor] = lambda x: x
) -> Tensor:
    """``fn(net([h, one_hot(idx)]))`` over ``(H, N, *)`` imagined states, one step of ``N`` rows at a time, stacked."""
    return torch.stack([fn(mlp_sparse(net, hs[t], idx[t], classes)) for t in range(hs.shape[0])])


@torch.no_grad()
def no_grad_heads(agent: Agent, hs: Tensor, idx: Tensor, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rewards and continue probabilities of imagined states 1..H, slow-critic values of states 0..H-1.

    The three heads read the same ``[h, one_hot(z)]``: their first layers run as one (:func:`heads_sparse`), the
    rest of each head only on the states it is needed for (a median 4% of an update at size S in an interleaved
    A/B on a 2-core AMD machine, about the size of that machine's noise).
    """
    wm, bins = agent.world_model, agent.bins
    nets = (wm.reward, wm.cont, agent.slow_critic)
    fused = fuse_first_layers(nets)
    rewards, cont, slow = [], [], []
    last = hs.shape[0] - 1
    for t in range(last + 1):
        r, c, v = heads_sparse(nets, fused, hs[t], idx[t], classes, keep=(t > 0, t > 0, t < last))
        if t > 0:
            rewards.append(two_hot_mean(r, bins))
            cont.append(torch.sigmoid(c.squeeze(-1)))
        if t < last:
            slow.append(two_hot_mean(v, bins))
    return torch.stack(rewards), torch.stack(cont), torch.stack(slow)


def behaviour_loss(
    agent: Agent, start: tuple, normalizer: PercentileNormalizer, cfg: Any, reduce: Optional[Callable] = None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Actor and critic losses on imagined trajectories from the (detached) posterior states ``start``."""
    a = cfg.algo
    wm = agent.world_model
    classes = wm.rssm.classes
    h, z, cont0 = (x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x.reshape(-1) for x in start)
    if agent.actor.discrete:
        # REINFORCE: the trajectory is data. Heads read [h, one-hot z] as h plus a sum of weight columns.
        hs, idx, actions, out = imagine_sparse(agent, h, z.unflatten(-1, (-1, classes)).argmax(-1), a.horizon)
        # Heads run one imagined step at a time: a step's (N, units) activations stay in the CPU cache between layers
        # and the no-grad heads never hold the whole (H, N, units) (a few % faster on this CPU; matmuls dominate).
        bins = agent.bins
        # With grad on the H states the critic loss reads (it reuses these logits); the last state only bootstraps.
        critic_logits = per_step(agent.critic, hs[:-1], idx[:-1], classes)
        with torch.no_grad():
            rewards, cont, slow = no_grad_heads(agent, hs, idx, classes)
            last = per_step(agent.critic, hs[-1:], idx[-1:], classes, lambda x: two_hot_mean(x, bins))
            values = torch.cat((two_hot_mean(critic_logits.detach(), bins), last))
            returns = lambda_returns(rewards, values[1:], 1.0 - cont, torch.zeros_like(cont), a.gamma, a.lmbda)
        logp, entropy = agent.actor.log_prob_entropy(None, actions, out)  # type: ignore[arg-type]
    else:
        # Dynamics backpropagation: the actor's gradient flows through imagined states, rewards and values.
        latents, actions = imagine(agent, h, z, a.horizon)
        rewards = agent.value(wm.reward, latents[1:])
        cont = torch.sigmoid(wm.cont(latents[1:]).squeeze(-1))
        values = agent.value(agent.critic, latents)
        returns = lambda_returns(
            rewards, values[1:], 1.0 - cont, torch.zeros_like(cont), a.gamma, a.lmbda, differentiable=True
        )
        latents_sg = latents.detach()
        logp, entropy = agent.actor.log_prob_entropy(latents_sg[:-1], actions.detach())
        critic_logits = agent.critic(latents_sg[:-1])
        with torch.no_grad():
            slow = agent.value(agent.slow_critic, latents_sg[:-1])
    # The start state's real continue flag, then the model's: weight_t = P(the imagined episode is alive at t).
    weight = torch.cumprod(torch.cat((cont0.unsqueeze(0), cont[:-1].detach())), 0)
    normalizer.update(returns, reduce)
    scale = normalizer.scale()
    if agent.actor.discrete:
        objective = logp * ((returns - values[:-1]) / scale).detach()
    else:
        objective = (returns - values[:-1].detach()) / scale
    policy_loss = -(weight * (objective + a.ent_coef * entropy)).mean()

    critic_logp = F.log_softmax(critic_logits, -1)
    value_loss = two_hot_ce(critic_logp, returns.detach(), agent.bins)
    value_loss = value_loss + a.slow_critic_reg * two_hot_ce(critic_logp, slow, agent.bins)
    value_loss = (weight * value_loss).mean()
    metrics = {
        "Loss/policy_loss": policy_loss.detach(),
        "Loss/value_loss": value_loss.detach(),
        "Info/policy_entropy": entropy.detach().mean(),
        "Info/return_scale": scale.detach(),
    }
    return policy_loss, value_loss, metrics


def average_gradients(fabric: Fabric, params: list[nn.Parameter]) -> None:
    """Mean of every rank's gradients in one flat all-reduce (the modules are not DDP-wrapped: the RSSM runs many
    forward calls per backward, which DDP's hooks do not expect)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = fabric.all_reduce(parameters_to_vector(grads), reduce_op="mean")
    vector_to_parameters(flat, grads)
    for p, g in zip(params, grads, strict=True):
        p.grad = g


def step(fabric: Fabric, loss: Tensor, params: list[nn.Parameter], opt: Any, clip: float) -> Tensor:
    """Backward, average over ranks, clip the norm (no host sync) and step."""
    opt.zero_grad(set_to_none=True)
    fabric.backward(loss)
    if fabric.world_size > 1:
        average_gradients(fabric, params)
    norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    opt.step()
    return norm


def train(
    fabric: Fabric,
    agent: Agent,
    optimizers: tuple[Any, Any, Any],
    param_groups: tuple[list, list, list],
    normalizer: PercentileNormalizer,
    batch: dict[str, Tensor],
    cfg: Any,
) -> dict[str, Tensor]:
    """One gradient step of world model, actor and critic on a ``(T, B)`` batch; returns detached metrics."""
    a = cfg.algo
    wm_opt, actor_opt, critic_opt = optimizers
    wm_params, actor_params, critic_params = param_groups
    reduce = (lambda q: fabric.all_reduce(q, reduce_op="mean")) if fabric.world_size > 1 else None

    with fabric.autocast():
        wm_loss, metrics, start = world_model_loss(agent, batch, cfg)
    step(fabric, wm_loss, wm_params, wm_opt, a.world_model_clip)

    agent.world_model.requires_grad_(False)  # imagination must not train the model
    try:
        with fabric.autocast(), cached_one_hot_tables():
            policy_loss, value_loss, b_metrics = behaviour_loss(agent, start, normalizer, cfg, reduce)
        step(fabric, policy_loss, actor_params, actor_opt, a.actor_clip)
    finally:
        agent.world_model.requires_grad_(True)
    step(fabric, value_loss, critic_params, critic_opt, a.critic_clip)
    with torch.no_grad():
        torch._foreach_lerp_(
            list(agent.slow_critic.parameters()), list(agent.critic.parameters()), a.slow_critic_fraction
        )
    metrics.update(b_metrics)
    return metrics


@torch.no_grad()
def reconstruction_image(agent: Agent, batch: dict[str, Tensor], key: str, frames: int = 16) -> Tensor:
    """Real frames (top) over the model's reconstructions (bottom) of the batch's first sequence, ``(C, 2H, W*n)``."""
    wm = agent.world_model
    seq = {k: v[:frames, :1] for k, v in batch.items()}
    h, z, _, _ = wm.rssm.observe(wm.encoder(seq), seq["actions"], seq["is_first"])
    recon = (wm.decoder(torch.cat((h, z), -1))[key][:, 0] + 0.5).clamp(0, 1)
    real = seq[key][:, 0].float() / 255.0
    row = lambda x: torch.cat(list(x[:, :3]), -1)  # noqa: E731  (T, C, H, W) -> (C, H, T*W)
    return torch.cat((row(real), row(recon)), -2).cpu()


def broadcast_parameters(fabric: Fabric, module: nn.Module) -> None:
    """Every rank starts from rank 0's weights (ranks are seeded differently)."""
    if fabric.world_size > 1:
        import torch.distributed as dist

        params = list(module.parameters())
        flat = parameters_to_vector([p.detach() for p in params]).contiguous()
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            vector_to_parameters(flat, params)


def one_hot_or_box(action: np.ndarray, player: Player) -> Tensor:
    """Env action (random phase) -> the networks' action space (one-hot, or [-1, 1])."""
    if player.discrete:
        return F.one_hot(torch.as_tensor(action, dtype=torch.long), player.action_dim).float()
    a = torch.as_tensor(action, dtype=torch.float32).view(player.num_envs, -1)
    return (a - player.low) / (player.high - player.low) * 2.0 - 1.0


def main(fabric: Fabric, cfg: Any) -> None:
    run = Run(fabric, cfg)
    a = cfg.algo
    world, rank, device = fabric.world_size, fabric.global_rank, fabric.device
    num_envs = cfg.env.num_envs
    keys = list(dict.fromkeys([*a.cnn_keys.encoder, *a.mlp_keys.encoder]))
    batch_per_rank = a.batch_size // world

    env_seed = cfg.seed + rank * num_envs
    envs = make_vector_env(
        cfg, seed=env_seed, run_dir=str(run.log_dir), capture_video=cfg.env.capture_video and rank == 0
    )
    action_space = envs.single_action_space
    state: Optional[dict[str, Any]] = run.state
    agent = build_agent(envs.single_observation_space, action_space, cfg, state).to(device)
    if not state:
        broadcast_parameters(fabric, agent)
    param_groups = (
        list(agent.world_model.parameters()),
        list(agent.actor.parameters()),
        list(agent.critic.parameters()),
    )
    optimizers = tuple(
        torch.optim.Adam(p, lr=o.lr, eps=o.eps, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=True)
        for p, o in zip(param_groups, (a.world_model_optimizer, a.actor_optimizer, a.critic_optimizer), strict=True)
    )
    if a.compile:
        rssm = agent.world_model.rssm
        rssm.step = torch.compile(rssm.step, dynamic=False)  # type: ignore[method-assign]
    normalizer = PercentileNormalizer(a.return_decay)
    ratio = Ratio(a.replay_ratio)
    memmap_dir = run.log_dir / "memmap_buffer" / f"rank_{rank}" if cfg.buffer.memmap else None
    rb = EnvSequenceBuffer(
        cfg.buffer.size, num_envs, memmap=cfg.buffer.memmap, memmap_dir=memmap_dir,
        device="cpu" if cfg.buffer.memmap else device,
    )  # fmt: skip
    player = Player(agent, num_envs, action_space, device)
    train_from = a.learning_starts
    if state:
        for opt, name in zip(optimizers, ("world_model_optimizer", "actor_optimizer", "critic_optimizer"), strict=True):
            opt.load_state_dict(state[name])
        ratio.load_state_dict(state["ratio"])
        normalizer.load_state_dict(state["normalizer"])
        if "buffer" in state:
            # Multi-rank runs save rank 0's buffer only; every rank continues from a copy of it.
            rb.load_state_dict(state["buffer"])
        else:
            train_from = max(a.learning_starts, run.start_step + a.learning_starts)

    def state_fn() -> dict[str, Any]:
        out = {
            "agent": agent.state_dict(),
            "world_model_optimizer": optimizers[0].state_dict(),
            "actor_optimizer": optimizers[1].state_dict(),
            "critic_optimizer": optimizers[2].state_dict(),
            "ratio": ratio.state_dict(),
            "normalizer": normalizer.state_dict(),
            "player": player.state_dict(),  # rank 0's recurrent state (h, z, previous action) per env
        }
        if cfg.checkpoint.save_buffer:
            out["buffer"] = rb.state_dict()
        return out

    def store(obs: dict[str, Tensor], actions: Tensor, rewards: Tensor, term: Tensor, first: Tensor, ids=None) -> None:
        n = actions.shape[0]
        row = {k: obs[k].view(1, n, *obs[k].shape[1:]) for k in keys}
        row.update(
            actions=actions[None], rewards=rewards.view(1, n), terminated=term.view(1, n), is_first=first.view(1, n)
        )
        rb.add(row, ids)

    # Envs restart their episodes on a resume (as in every algorithm): the recurrent state restarts with them and
    # the first row is marked is_first, so no training window crosses from the old episode into the new one.
    obs = run.reset_envs(envs, env_seed)
    obs_t = obs_to_torch(obs)
    zeros = torch.zeros(num_envs)
    store(obs_t, torch.zeros(num_envs, player.action_dim), zeros, zeros, torch.ones(num_envs))
    player.reset()
    # Training also waits until every env holds a sequence. len(rb) is equal on every rank here (a loaded buffer is
    # rank 0's copy everywhere) and then grows by at least one row per env step, so the first step from which that
    # holds is known now and is the same on every rank. (Gating on len(rb) itself, which an episode's end moves by
    # two rows, let ranks whose episodes ended differently start training apart and wait on each other forever.)
    train_from = max(train_from, run.start_step + (a.sequence_length - len(rb)) * num_envs * world - 1)
    policy_step = run.start_step
    image_key = a.cnn_keys.encoder[0] if a.cnn_keys.encoder else None
    next_image = (policy_step // a.image_every + 1) * a.image_every if a.image_every and image_key else None

    while policy_step < a.total_steps:
        policy_step += num_envs * world

        # ---- act, step, store
        with run.timer("env"):
            if policy_step <= train_from:
                env_actions = envs.action_space.sample()
                actions = one_hot_or_box(env_actions, player)
            else:
                actions = player.act(obs_t).cpu()
                env_actions = player.to_env(actions)
            next_obs, rewards, terminated, truncated, infos = envs.step(env_actions)
            rew = torch.as_tensor(rewards, dtype=torch.float32)
            term = torch.as_tensor(terminated, dtype=torch.float32)
            done = np.logical_or(terminated, truncated)
            next_t = obs_to_torch(next_obs)
            if done.any():
                # The real last observation of each finished episode, with its reward and terminal flag ...
                idx = np.flatnonzero(done)
                final = obs_to_torch(final_obs_batch(infos, done, keys))
                store(final, actions[idx], rew[idx], term[idx], torch.zeros(len(idx)), idx)
                # ... then the next episode's first one (no action led to it), on the same row as the others.
                d = torch.from_numpy(done)
                keep = (~d).float()
                store(next_t, actions * keep[:, None], rew * keep, term * keep, d.float())
                player.reset(done)
            else:
                store(next_t, actions, rew, term, zeros)
            obs_t = next_t
            run.record_episodes(infos)

        # ---- learn: replay_ratio gradient steps per policy step, one batch sampled at a time
        if policy_step > train_from:
            steps = ratio(num_envs * world)
            if steps > 0:
                with run.timer("train"):
                    for _ in range(steps):
                        sample = rb.sample(batch_per_rank, a.sequence_length)[0]
                        batch = {k: v.to(device, non_blocking=True).float() if k not in a.cnn_keys.encoder
                                 else v.to(device, non_blocking=True) for k, v in sample.items()}  # fmt: skip
                        metrics = train(fabric, agent, optimizers, param_groups, normalizer, batch, cfg)
                    for name, value in metrics.items():  # the last step stands for the window (no per-step sync)
                        run.metrics.update(name, value)
                if next_image is not None and policy_step >= next_image and run.is_logger:
                    run.logger.log_image("Images/real_vs_reconstructed", reconstruction_image(agent, batch, image_key),
                                         policy_step)  # fmt: skip
                    next_image = (policy_step // a.image_every + 1) * a.image_every

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(eval_policy(agent, action_space, device), envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=eval_policy(agent, action_space, device))
    envs.close()


def eval_policy(agent: Agent, action_space: Any, device: Any) -> Callable:
    from sheeprl.algos.dreamer_v3.agent import greedy_policy

    return greedy_policy(agent, action_space, device)
