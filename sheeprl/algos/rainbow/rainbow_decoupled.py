"""Rainbow, decoupled (Ape-X style: Horgan et al., 2018): rank 0 plays and owns the prioritized buffer, ranks 1..N-1
train (DDP among themselves) and send back the new priorities.

    player (rank 0)                                          trainers (ranks 1..N-1)
    for each round of exchange_every env steps:
        act with the latest weights (noisy / epsilon-greedy); step; store in D at the max priority
        G = gradient steps due (replay_ratio, accumulated)       G computed identically (same Ratio, same steps)
        if G > 0:
            draw G prioritized batches (rows, importance weights),
            build their n-step transitions, split each into
            N-1 chunks  ---------------------------------->      receive a chunk of every batch
                                                                 G Rainbow gradient steps (rainbow.py's train; DDP)
            update the priorities of the G batches  <------      every trainer's per-sample losses
            load the new weights  <------------------------      trainer 1 sends the weights
        log (the trainers' losses arrive here), checkpoint, evaluate

The update is coupled Rainbow's (``rainbow.py``); the transfers are ``sheeprl/utils/decoupled.py``. The G batches of
a round are drawn before any of their updates, so their priorities lag by at most one round, as in Ape-X where
learners and actors run concurrently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from tensordict import TensorDict
from torch import Tensor

from sheeprl.algos.dqn.dqn import encoder_obs
from sheeprl.algos.rainbow.agent import build_agent
from sheeprl.algos.rainbow.rainbow import (
    PrioritizedStore,
    act,
    buffer_state,
    load_buffer_state,
    make_buffer,
    make_optimizer,
    sample_batch,
    train,
)
from sheeprl.algos.sac.sac_decoupled import gradient_steps_due, round_length, train_from_step
from sheeprl.data.collector import Collector
from sheeprl.envs import make_vector_env
from sheeprl.utils.decoupled import DecoupledComm, setup_decoupled
from sheeprl.utils.optim import GradientStep
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.run import Run
from sheeprl.utils.targets import make_target, update_target

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def player(fabric: Fabric, cfg: Any, comm: DecoupledComm, run: Run) -> None:
    a = cfg.algo
    device = fabric.device
    num_envs = cfg.env.num_envs
    keys = list(a.cnn_keys.encoder) + list(a.mlp_keys.encoder)
    envs = make_vector_env(cfg, seed=cfg.seed, run_dir=str(run.log_dir))
    q = build_agent(envs.single_observation_space, envs.single_action_space, cfg, run.state).to(device)
    comm.sync_weights(q)  # start from the trainers' weights (identical after a resume)

    ratio = Ratio(a.replay_ratio)
    rb, sampler = make_buffer(cfg, run, num_envs, device)
    if run.state:
        ratio.load_state_dict(run.state["ratio"])
        if "buffer" in run.state:
            load_buffer_state(rb, sampler, run.state["buffer"])
    train_from = train_from_step(cfg, run)
    trainer_state: dict[str, Any] = {}

    def state_fn() -> dict[str, Any]:
        out = {"q": q.state_dict(), "ratio": ratio.state_dict(), **trainer_state}
        if cfg.checkpoint.save_buffer:
            out["buffer"] = buffer_state(rb, sampler)
        return out

    obs, _ = envs.reset(seed=cfg.seed)
    run.restore_rank_state(envs)
    collector = Collector(
        envs, PrioritizedStore(rb, sampler), run, obs, obs_fn=encoder_obs(keys), learning_starts=a.learning_starts
    )

    def policy(obs: dict[str, Tensor]) -> Tensor:
        return act(q, {k: v.to(device) for k, v in obs.items()}, cfg, collector.policy_step)

    policy_step = run.start_step
    while policy_step < a.total_steps:
        round_steps = round_length(cfg, policy_step)

        # ---- act, step, store (as in rainbow.py)
        for _ in range(round_steps):
            policy_step = collector.step(policy)

        # ---- hand G batches to the trainers; take back their priorities and the new weights
        steps = gradient_steps_due(ratio, policy_step, round_steps * num_envs, train_from)
        if steps > 0:
            with run.timer("train"):
                rows, batches = [], []
                for _ in range(steps):
                    idx, weights, batch = sample_batch(rb, sampler, cfg, a.batch_size, policy_step, keys, device)
                    batch["weights"] = weights if weights is not None else torch.ones(a.batch_size, device=device)
                    rows.append(idx)
                    batches.append(batch)
                # (batch, G): the first dim is split among the trainers, the second indexes the gradient steps.
                stacked = {k: torch.stack([b[k] for b in batches], dim=1) for k in batches[0]}
                comm.send_batch(TensorDict(stacked, batch_size=(a.batch_size, steps)))
                priorities = torch.cat(comm.gather_from_trainers(), dim=0)  # (batch, G), trainer chunks in order
                if sampler is not None:
                    sampler.update(torch.stack(rows, dim=1).reshape(-1), priorities.reshape(-1))
                comm.sync_weights(q)

        # ---- the collectives every rank runs in the same order: log, checkpoint, Ctrl-C
        run.log(policy_step)
        if run.checkpointer.due(policy_step):
            trainer_state.update(comm.from_first_trainer())  # target network and optimizer live there
            run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.eval_due(policy_step):
            run.evaluate(q.greedy, envs, policy_step)
        if run.should_stop():
            break

    trainer_state.update(comm.from_first_trainer())  # for the final checkpoint
    run.finish(policy_step, state_fn, envs, act=q.greedy)
    envs.close()


def trainer(fabric: Fabric, cfg: Any, comm: DecoupledComm, run: Run) -> None:
    import gymnasium as gym

    from sheeprl.envs import make_env

    a = cfg.algo
    # The trainers never step an env: one throwaway instance gives the spaces the network is built for.
    env = make_env(cfg, seed=cfg.seed, idx=0)()
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Dict):
        obs_space = gym.spaces.Dict({"state": obs_space})

    q_raw = build_agent(obs_space, action_space, cfg, run.state)
    q = comm.wrap_ddp(q_raw)  # DDP copies trainer 1's weights
    target_q = make_target(fabric, q, group=comm.trainer_group)  # after DDP: the same on every trainer (checked)
    optimizer = make_optimizer(q_raw, cfg)
    update = GradientStep(fabric, q, optimizer, float(a.max_grad_norm))
    ratio = Ratio(a.replay_ratio)
    gradient_steps = 0
    if run.state:
        target_q.load_state_dict(run.state["target_q"])
        optimizer.load_state_dict(run.state["optimizer"])
        ratio.load_state_dict(run.state["ratio"])
        gradient_steps = int(run.state["gradient_steps"])
    train_from = train_from_step(cfg, run)
    comm.sync_weights(q_raw)

    def state() -> dict[str, Any]:
        return {
            "target_q": target_q.state_dict(),
            "optimizer": optimizer.state_dict(),
            "gradient_steps": gradient_steps,
        }

    policy_step = run.start_step
    run.restore_rank_state()
    while policy_step < a.total_steps:
        round_steps = round_length(cfg, policy_step)
        policy_step += round_steps * cfg.env.num_envs  # counted like the player's, so that every collective lines up
        steps = gradient_steps_due(ratio, policy_step, round_steps * cfg.env.num_envs, train_from)
        if steps > 0:
            data = comm.recv_batch()
            priorities = []
            with run.timer("train"):
                for i in range(steps):
                    batch = {k: v[:, i] for k, v in data.items()}
                    weights = batch.pop("weights")  # all ones without prioritized replay
                    weights = weights if a.prioritized else None
                    losses, prio = train(update, target_q, batch, weights, cfg)
                    priorities.append(prio)
                    gradient_steps += 1
                    if gradient_steps % a.target_update_every == 0:
                        update_target(q, target_q, a.tau)
                for name, value in losses.items():
                    run.metrics.update(name, value)
            comm.gather_from_trainers(torch.stack(priorities, dim=1).cpu())
            comm.sync_weights(q_raw)
        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(q_raw.greedy, None, policy_step)  # every rank plays a share of the episodes
        if run.checkpointer.due(policy_step):
            comm.from_first_trainer(state())
            run.maybe_checkpoint(policy_step, dict)  # only the player writes; every rank joins the collective
        if run.should_stop():
            break

    comm.from_first_trainer(state())  # for the final checkpoint
    run.finish(policy_step, dict, act=q_raw.greedy)  # the final evaluation is collective too


def main(fabric: Fabric, cfg: Any) -> None:
    comm = setup_decoupled(fabric, timeout_s=cfg.fabric.timeout_s)
    run = Run(fabric, cfg)
    if comm.is_player:
        player(fabric, cfg, comm, run)
    else:
        trainer(fabric, cfg, comm, run)
