"""Recurrent PPO, coupled: every rank collects its rollout and trains on sequences (DDP).

Algorithm (PPO of Schulman et al., 2017, with a recurrent core as in CleanRL's ppo_atari_lstm and
sb3-contrib's RecurrentPPO):

    for iteration = 1, 2, ...:
        anneal the learning rate (and the surrogate clip, with algo.clip_schedule)
        run the policy for rollout_steps in num_envs envs, carrying each env's recurrent state h and
            zeroing it where an episode starts; store (o, is_first, h_before, a, log pi, V, r, done)
        bootstrap truncated episodes from V(real final observation, h)
        advantages with GAE(gamma, lambda); returns = advantages + values
        cut every env's rollout into sequences of sequence_length steps (padding the last one, masked)
        for epoch in 1..update_epochs, for each shuffled minibatch of whole sequences:
            unroll the core from each sequence's stored first state (resetting at episode starts)
            minimize  L_clip + vf_coef * L_value - ent_coef * entropy   over the real (unpadded) steps
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sheeprl.algos.ppo.loss import approx_kl, clip_at, entropy_loss, masked_mean, policy_loss, value_loss
from sheeprl.algos.ppo_recurrent.agent import RecurrentPolicy, RecurrentPPOAgent, build_agent
from sheeprl.algos.ppo_recurrent.utils import split_into_sequences
from sheeprl.data import ReplayBuffer
from sheeprl.envs import make_vector_env
from sheeprl.utils.optim import build_optimizer, build_scheduler, load_scheduler_state
from sheeprl.utils.returns import gae, next_values_from_rollout
from sheeprl.utils.run import Run
from sheeprl.utils.tensors import final_obs_batch, obs_to_torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def train(
    fabric: Fabric, agent: Any, optimizer: Any, seqs: Any, cfg: Any, run: Run, clip_coef: float | None = None
) -> None:
    """Update epochs over one rollout cut into sequences (``seqs``: a ``(L, S)`` TensorDict with a ``mask``);
    ``clip_coef``: this update's surrogate clip (default ``algo.clip_coef``, which the value clip always uses)."""
    a = cfg.algo
    clip = float(a.clip_coef) if clip_coef is None else float(clip_coef)
    obs_keys = [*a.cnn_keys.encoder, *a.mlp_keys.encoder]
    for _ in range(a.update_epochs):
        kls = []
        for idx in torch.randperm(seqs.batch_size[1]).split(a.minibatch_size):
            batch = seqs[:, idx]
            mask = batch["mask"]
            new_logp, entropy, new_values = agent(
                {k: batch[k] for k in obs_keys}, batch["actions"], batch["rnn_states"][0], batch["is_first"]
            )
            adv = batch["advantages"]
            if a.normalize_advantages and mask.sum() > 1:
                mean = masked_mean(adv, mask)
                adv = (adv - mean) / (masked_mean((adv - mean).pow(2), mask).sqrt() + 1e-8)
            pg = policy_loss(new_logp, batch["logprobs"], adv, clip, mask)
            v = value_loss(new_values, batch["values"], batch["returns"], a.clip_coef, a.clip_vloss, mask)
            ent = entropy_loss(entropy, mask)
            loss = pg + a.vf_coef * v + a.ent_coef * ent

            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if a.max_grad_norm > 0:
                fabric.clip_gradients(agent, optimizer, max_norm=a.max_grad_norm)
            optimizer.step()

            with torch.no_grad():
                kls.append(approx_kl(new_logp, batch["logprobs"], mask))
                run.metrics.update("Loss/policy_loss", pg.detach())
                run.metrics.update("Loss/value_loss", v.detach())
                run.metrics.update("Loss/entropy_loss", ent.detach())
                clipped = ((new_logp - batch["logprobs"]).exp() - 1.0).abs().gt(clip)
                run.metrics.update("Info/clip_frac", masked_mean(clipped.float(), mask))
        kl = torch.stack(kls).mean()
        run.metrics.update("Info/approx_kl", kl)
        # Every rank must take the same decision, or DDP's next all-reduce would wait forever.
        if a.target_kl is not None and float(fabric.all_reduce(kl, reduce_op="mean")) > a.target_kl:
            break


def main(fabric: Fabric, cfg: Any) -> None:
    run = Run(fabric, cfg)
    a = cfg.algo
    world = fabric.world_size
    num_envs = cfg.env.num_envs
    obs_keys = [*a.cnn_keys.encoder, *a.mlp_keys.encoder]

    # Distinct env seeds on every rank: rank r owns seeds [seed + r * num_envs, seed + (r + 1) * num_envs).
    env_seed = cfg.seed + fabric.global_rank * num_envs
    envs = make_vector_env(cfg, seed=env_seed, run_dir=str(run.log_dir))

    agent: RecurrentPPOAgent = build_agent(envs.single_observation_space, envs.single_action_space, cfg)
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

    # The recurrent state of this rank's envs and whether their next step starts an episode: saved per rank.
    carry = {"rnn_state": player.initial_state(num_envs, fabric.device), "is_first": torch.ones(num_envs, dtype=bool)}
    run.extra_rank_state = lambda: {k: v.cpu().clone() for k, v in carry.items()}
    saved = run.saved_rank_state()
    if saved.get("rnn_state") is not None and saved["rnn_state"].shape == carry["rnn_state"].shape:
        carry["rnn_state"] = saved["rnn_state"].to(fabric.device)

    obs = run.reset_envs(envs, env_seed)
    # The envs were just reset, so every env starts an episode: a restored state is zeroed at its first step.
    carry["is_first"] = torch.ones(num_envs, dtype=bool)
    next_obs = obs_to_torch(obs, fabric.device)
    for iteration in range(start_iter, num_iters + 1):
        # ---- collect a rollout with the current policy, carrying the recurrent state
        rb.reset()
        with run.timer("env"):
            for _ in range(a.rollout_steps):
                policy_step += num_envs * world
                state, is_first = carry["rnn_state"], carry["is_first"]
                actions, logprobs, values, new_state = player.act(next_obs, state, is_first.to(fabric.device))
                obs, rewards, terminated, truncated, infos = envs.step(player.to_env(actions).cpu().numpy())
                dones = terminated | truncated
                # A truncated episode continues in theory: bootstrap it from its real final observation.
                bootstrap = torch.zeros(num_envs)
                cut = truncated & ~terminated
                if cut.any():
                    final = obs_to_torch(final_obs_batch(infos, cut, obs_keys), fabric.device)
                    cut_t = torch.from_numpy(cut)
                    bootstrap[cut_t] = player.value(final, new_state[cut_t.to(fabric.device)]).cpu()
                rb.add(
                    {
                        **{k: v[None] for k, v in next_obs.items()},
                        "is_first": is_first[None],
                        "rnn_states": state[None],
                        "actions": actions[None],
                        "logprobs": logprobs[None],
                        "values": values[None],
                        "rewards": torch.as_tensor(rewards, dtype=torch.float32)[None],
                        "terminated": torch.from_numpy(terminated)[None],
                        "dones": torch.from_numpy(dones)[None],
                        "bootstrap": bootstrap[None],
                    }
                )
                carry["rnn_state"], carry["is_first"] = new_state, torch.from_numpy(dones)
                next_obs = obs_to_torch(obs, fabric.device)
                run.record_episodes(infos)

        # ---- advantages, then sequences of whole steps for truncated BPTT
        with run.timer("train"):
            data = rb.to_tensordict()
            values = data["values"]
            last_value = player.value(next_obs, carry["rnn_state"], carry["is_first"].to(fabric.device)).cpu()
            next_values = next_values_from_rollout(values, last_value, data["dones"], data["bootstrap"])
            advantages, returns = gae(
                data["rewards"], values, next_values, data["terminated"], data["dones"], a.gamma, a.gae_lambda
            )
            data["advantages"], data["returns"] = advantages, returns
            seqs = split_into_sequences(data, a.sequence_length)
            clip = clip_at(a.clip_coef, a.clip_schedule, iteration, num_iters)
            train(fabric, agent_ddp, optimizer, seqs.to(fabric.device), cfg, run, clip_coef=clip)
            run.metrics.update("Info/clip_coef", clip)
            run.metrics.update("Info/learning_rate", optimizer.param_groups[0]["lr"])
            scheduler.step()

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(RecurrentPolicy(player), envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=RecurrentPolicy(player))
    envs.close()
