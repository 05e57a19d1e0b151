"""Soft Actor-Critic, decoupled: rank 0 plays and keeps the replay buffer, ranks 1..N-1 train (DDP among themselves).

    player (rank 0)                                          trainers (ranks 1..N-1)
    for each round of exchange_every env steps:
        a ~ uniform (warm-up) or pi(.|s); step; store in D
        G = gradient steps due (replay_ratio, accumulated)        G computed identically (same Ratio, same steps)
        if G > 0:
            sample G batches from D, split each into
            N-1 chunks  ---------------------------------->      receive a chunk of every batch
                                                                 G SAC gradient steps (sac.py's losses; DDP)
            load the new actor  <--------------------------      trainer 1 sends the actor's weights
        log (the trainers' losses arrive here), checkpoint, evaluate

The update is coupled SAC's (``sac.py``: Haarnoja et al., 2018b, Algorithm 1) with the gradients averaged over
the trainers' own process group; the transfers are ``sheeprl/utils/decoupled.py``. ``policy_step`` counts the
player's env steps, so ``replay_ratio`` means gradient steps per env step here too. Exchanging every
``exchange_every`` steps rather than every step amortizes the collectives (each one waits for every process); the
actor then lags the trainers by at most that many steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from sheeprl.algos.sac.agent import build_agent
from sheeprl.algos.sac.sac import make_buffer, make_optimizers, train
from sheeprl.config import plain
from sheeprl.data.collector import Collector, flat_state
from sheeprl.envs import make_vector_env
from sheeprl.envs.normalization import BatchNormalizer
from sheeprl.utils.decoupled import DecoupledComm, setup_decoupled
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.run import Run
from sheeprl.utils.targets import target_copy

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def round_length(cfg: Any, policy_step: int) -> int:
    """Env steps of the next round: ``exchange_every``, or fewer so that the run ends at ``total_steps``."""
    left = math.ceil((cfg.algo.total_steps - policy_step) / cfg.env.num_envs)
    return max(1, min(cfg.algo.exchange_every, left))


def gradient_steps_due(ratio: Ratio, policy_step: int, steps: int, train_from: int) -> int:
    """The same decision on the player and on every trainer, so that their exchanges line up."""
    return ratio(min(steps, policy_step - train_from)) if policy_step > train_from else 0


def train_from_step(cfg: Any, run: Run) -> int:
    """After a resume without a saved buffer, refill it for learning_starts steps before training again."""
    a = cfg.algo
    if run.state and "buffer" not in run.state:
        return max(a.learning_starts, run.start_step + a.learning_starts)
    return a.learning_starts


def player(fabric: Fabric, cfg: Any, comm: DecoupledComm, run: Run) -> None:
    a = cfg.algo
    device = fabric.device
    num_envs = cfg.env.num_envs
    keys = list(a.mlp_keys.encoder)
    envs = make_vector_env(cfg, seed=cfg.seed, run_dir=str(run.log_dir), apply_normalization=False)
    norm = BatchNormalizer(envs, keys)  # the buffer stores raw values; batches are normalized when sampled
    action_space = envs.single_action_space
    actor, _ = build_agent(envs.single_observation_space, action_space, cfg, run.state)
    actor = actor.to(device).eval()
    comm.sync_weights(actor)  # start from the trainers' weights (identical after a resume)

    ratio = Ratio(a.replay_ratio)
    rb = make_buffer(cfg, run, num_envs, device)
    if run.state:
        ratio.load_state_dict(run.state["ratio"])
        if "buffer" in run.state:
            rb.load_state_dict(run.state["buffer"])
    train_from = train_from_step(cfg, run)
    trainer_state: dict[str, Any] = {}

    def state_fn() -> dict[str, Any]:
        out = {"actor": actor.state_dict(), "ratio": ratio.state_dict(), **trainer_state}
        if cfg.checkpoint.save_buffer:
            out["buffer"] = rb.state_dict()
        return out

    obs = run.reset_envs(envs, cfg.seed)
    collector = Collector(envs, rb, run, obs, obs_fn=flat_state(keys), learning_starts=a.learning_starts)

    def act(obs: Tensor) -> Tensor:
        with torch.no_grad():
            return actor(norm.obs(obs.to(device)))[0]

    policy_step = run.start_step
    while policy_step < a.total_steps:
        round_steps = round_length(cfg, policy_step)

        # ---- act, step, store (as in sac.py)
        for _ in range(round_steps):
            policy_step = collector.step(act)

        # ---- hand G batches to the trainers, wait for the updated actor
        steps = gradient_steps_due(ratio, policy_step, round_steps * num_envs, train_from)
        if steps > 0:
            with run.timer("train"):
                # (batch, G): the first dim is split among the trainers, the second indexes the gradient steps.
                comm.send_batch(norm.batch(rb.sample(a.batch_size, n_samples=steps)).permute(1, 0))
                comm.sync_weights(actor)

        # ---- the collectives every rank runs in the same order: log, checkpoint, Ctrl-C
        run.log(policy_step)
        if run.checkpointer.due(policy_step):
            trainer_state.update(comm.from_first_trainer())  # critics, temperature and optimizers live there
            run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.eval_due(policy_step):
            run.evaluate(actor.greedy, envs, policy_step)
        if run.should_stop():
            break

    trainer_state.update(comm.from_first_trainer())  # for the final checkpoint
    run.finish(policy_step, state_fn, envs, act=actor.greedy)
    envs.close()


def average_gradient(grad: Tensor, comm: DecoupledComm) -> None:
    """Mean of a bare tensor's gradient over the trainers (DDP does this for the networks)."""
    if comm.num_trainers > 1:
        dist.all_reduce(grad, group=comm.trainer_group)
        grad.div_(comm.num_trainers)


def trainer(fabric: Fabric, cfg: Any, comm: DecoupledComm, run: Run) -> None:
    import gymnasium as gym

    from sheeprl.envs import make_env

    a = cfg.algo
    hot_cfg = plain(cfg)  # what the update reads every gradient step: plain attributes, not OmegaConf nodes
    device = fabric.device
    # The trainers never step an env: one throwaway instance gives the spaces the agent is built for.
    env = make_env(cfg, seed=cfg.seed, idx=0)()
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Dict):
        obs_space = gym.spaces.Dict({"state": obs_space})
    target_entropy = float(a.target_entropy) if a.target_entropy is not None else -float(np.prod(action_space.shape))

    actor_raw, critic_raw = build_agent(obs_space, action_space, cfg, run.state)
    actor, critic = comm.wrap_ddp(actor_raw), comm.wrap_ddp(critic_raw)  # DDP copies trainer 1's weights
    target_critic = target_copy(critic, run.state["target_critic"] if run.state else None)  # after DDP's broadcast
    log_alpha = torch.tensor(math.log(a.alpha), device=device, requires_grad=True)
    optimizers = make_optimizers(actor_raw, critic_raw, log_alpha, cfg)
    ratio = Ratio(a.replay_ratio)
    gradient_steps = 0  # saved: target_update_every keeps its rhythm across a resume
    if run.state:
        gradient_steps = int(run.state["gradient_steps"])
        with torch.no_grad():
            log_alpha.copy_(run.state["log_alpha"])
        for opt, name in zip(optimizers, ("actor_optimizer", "critic_optimizer", "alpha_optimizer"), strict=True):
            opt.load_state_dict(run.state[name])
        ratio.load_state_dict(run.state["ratio"])
    train_from = train_from_step(cfg, run)
    comm.sync_weights(actor_raw)

    def state() -> dict[str, Any]:
        return {
            "critic": critic_raw.state_dict(),
            "target_critic": target_critic.state_dict(),
            "log_alpha": log_alpha.detach().cpu(),
            "actor_optimizer": optimizers[0].state_dict(),
            "critic_optimizer": optimizers[1].state_dict(),
            "alpha_optimizer": optimizers[2].state_dict(),
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
            with run.timer("train"):
                for i in range(steps):
                    gradient_steps += 1
                    losses = train(
                        fabric,
                        actor,
                        critic,
                        target_critic,
                        log_alpha,
                        optimizers,
                        {k: v[:, i] for k, v in data.items()},
                        hot_cfg,
                        target_entropy,
                        gradient_steps % a.target_update_every == 0,
                        lambda grad: average_gradient(grad, comm),
                    )
                for name, value in losses.items():
                    run.metrics.update(name, value)
                run.metrics.update("Info/alpha", log_alpha.detach().exp())
            comm.sync_weights(actor_raw)
        run.log(policy_step)
        if run.checkpointer.due(policy_step):
            comm.from_first_trainer(state())
            run.maybe_checkpoint(policy_step, dict)  # only the player writes; every rank joins the collective
        if run.eval_due(policy_step):
            run.evaluate(actor_raw.greedy, None, policy_step)  # every rank plays a share of the episodes
        if run.should_stop():
            break

    comm.from_first_trainer(state())  # for the final checkpoint
    run.finish(policy_step, dict, act=actor_raw.greedy)


def main(fabric: Fabric, cfg: Any) -> None:
    comm = setup_decoupled(fabric, timeout_s=cfg.fabric.timeout_s)
    run = Run(fabric, cfg)
    if comm.is_player:
        player(fabric, cfg, comm, run)
    else:
        trainer(fabric, cfg, comm, run)
