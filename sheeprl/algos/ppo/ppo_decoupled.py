"""Proximal Policy Optimization, decoupled: rank 0 plays, ranks 1..N-1 train (DDP among themselves).

    player (rank 0)                                   trainers (ranks 1..N-1)
    for iteration = 1, 2, ...:
        run the policy for rollout_steps in num_envs envs
        GAE advantages and returns
        draw the minibatch orders
        send rollout and orders to all  --------->        receive them
                                                          PPO update epochs (PPO's train(), DDP over trainers):
                                                          trainer i computes slice i of every minibatch
        load the new weights  <-----------------------    trainer 1 sends the new weights
        log the trainers' metrics (collective), checkpoint, evaluate

The update is exactly coupled PPO's ``train()`` (``ppo.py``), the losses are ``loss.py``'s and the agent
``agent.py``'s; the process groups and transfers are ``sheeprl/utils/decoupled.py``. ``policy_step`` counts
the player's env steps: with N-1 trainers a run collects as many transitions as one coupled process, and takes
the same gradient steps of ``algo.minibatch_size`` rows (each trainer computes its 1/(N-1) slice of every minibatch,
DDP averages them). The trainers start from the weights the player's seed gives, and the player draws the
minibatch orders where coupled PPO's process draws them, so a run with one trainer repeats coupled PPO's run of the
same seed exactly, and more trainers change only the float rounding of each minibatch's mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sheeprl.algos.ppo.agent import PPOAgent, build_agent
from sheeprl.algos.ppo.loss import clip_at
from sheeprl.algos.ppo.ppo import train
from sheeprl.data import ReplayBuffer
from sheeprl.envs import make_vector_env
from sheeprl.utils.decoupled import DecoupledComm, setup_decoupled
from sheeprl.utils.optim import build_optimizer, build_scheduler, load_scheduler_state
from sheeprl.utils.returns import gae, next_values_from_rollout
from sheeprl.utils.run import Run
from sheeprl.utils.tensors import final_obs_batch, obs_to_torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def num_iterations(cfg: Any) -> int:
    return max(1, cfg.algo.total_steps // (cfg.algo.rollout_steps * cfg.env.num_envs))


def player(fabric: Fabric, cfg: Any, comm: DecoupledComm, run: Run) -> None:
    a = cfg.algo
    num_envs = cfg.env.num_envs
    obs_keys = [*a.cnn_keys.encoder, *a.mlp_keys.encoder]
    envs = make_vector_env(cfg, seed=cfg.seed, run_dir=str(run.log_dir))
    agent: PPOAgent = build_agent(envs.single_observation_space, envs.single_action_space, cfg).to(fabric.device)
    agent.eval()
    if run.state:
        agent.load_state_dict(run.state["agent"])
    comm.sync_weights(agent)  # start from the trainers' weights (identical after a resume)
    trainer_state: dict[str, Any] = {}

    def state_fn() -> dict[str, Any]:
        return {"agent": agent.state_dict(), **trainer_state}

    rb = ReplayBuffer(a.rollout_steps, num_envs, obs_keys=obs_keys, device="cpu")
    steps_per_iter = a.rollout_steps * num_envs
    policy_step = run.start_step
    obs = run.reset_envs(envs, cfg.seed)
    next_obs = obs_to_torch(obs, fabric.device)
    for _ in range(policy_step // steps_per_iter + 1, num_iterations(cfg) + 1):
        # ---- collect a rollout with the current policy (as in ppo.py)
        rb.reset()
        with run.timer("env"):
            for _ in range(a.rollout_steps):
                policy_step += num_envs
                actions, logprobs, values = agent.act(next_obs)
                obs, rewards, terminated, truncated, infos = envs.step(agent.to_env(actions).cpu().numpy())
                # A truncated episode continues in theory: bootstrap it from its real final observation.
                bootstrap = torch.zeros(num_envs)
                cut = truncated & ~terminated
                if cut.any():
                    final = obs_to_torch(final_obs_batch(infos, cut, obs_keys), fabric.device)
                    bootstrap[torch.from_numpy(cut)] = agent.value(final).cpu()
                rb.add(
                    {
                        **{k: v[None] for k, v in next_obs.items()},
                        "actions": actions[None],
                        "logprobs": logprobs[None],
                        "values": values[None],
                        "rewards": torch.as_tensor(rewards, dtype=torch.float32)[None],
                        "terminated": torch.from_numpy(terminated)[None],
                        "dones": torch.from_numpy(terminated | truncated)[None],
                        "bootstrap": bootstrap[None],
                    }
                )
                next_obs = obs_to_torch(obs, fabric.device)
                run.record_episodes(infos)

            # ---- advantages on the player: the trainers get independent, ready-to-use transitions
            data = rb.to_tensordict()
            next_values = next_values_from_rollout(
                data["values"], agent.value(next_obs).cpu(), data["dones"], data["bootstrap"]
            )
            data["advantages"], data["returns"] = gae(
                data["rewards"], data["values"], next_values, data["terminated"], data["dones"], a.gamma, a.gae_lambda
            )

            # The minibatch orders of the update, drawn here as coupled PPO's train() draws them (one randperm per
            # epoch, after the rollout) so that this process's random stream is the coupled process's.
            perms = torch.stack([torch.randperm(steps_per_iter) for _ in range(a.update_epochs)])

        # ---- hand the rollout to every trainer, wait for the updated policy
        comm.broadcast_batch((data.reshape(-1), perms))
        comm.sync_weights(agent)

        # ---- the collectives every rank runs in the same order: log, checkpoint, Ctrl-C
        run.log(policy_step)  # the trainers' losses reach the player here
        if run.checkpointer.due(policy_step):
            trainer_state.update(comm.from_first_trainer())  # the optimizer lives on the trainers
            run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.eval_due(policy_step):
            run.evaluate(agent.greedy, envs, policy_step)
        if run.should_stop():
            break

    trainer_state.update(comm.from_first_trainer())  # for the final checkpoint
    run.finish(policy_step, state_fn, envs, act=agent.greedy)
    envs.close()


def trainer(fabric: Fabric, cfg: Any, comm: DecoupledComm, run: Run) -> None:
    import gymnasium as gym

    from sheeprl.envs import make_env

    a = cfg.algo
    # The trainers never step an env: one throwaway instance gives the spaces the agent is built for.
    env = make_env(cfg, seed=cfg.seed, idx=0)()
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Dict):
        obs_space = gym.spaces.Dict({"state": obs_space})
    # Initialized from the player's seed: the weights coupled PPO starts from (and the player's own first draw).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        agent = build_agent(obs_space, action_space, cfg)
    agent.entropy_grad = a.ent_coef != 0
    optimizer = build_optimizer(agent.parameters(), a.optimizer, "algo.optimizer")
    scheduler = build_scheduler(optimizer, a.optimizer.schedule, num_iterations(cfg))
    if run.state:
        agent.load_state_dict(run.state["agent"])
        optimizer.load_state_dict(run.state["optimizer"])
        load_scheduler_state(optimizer, scheduler, run.state["scheduler"])
    model = comm.wrap_ddp(agent)  # DDP copies trainer 1's weights to the other trainers
    comm.sync_weights(agent)

    def state() -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    steps_per_iter = a.rollout_steps * cfg.env.num_envs
    policy_step = run.start_step
    run.restore_rank_state()
    for iteration in range(policy_step // steps_per_iter + 1, num_iterations(cfg) + 1):
        policy_step += steps_per_iter  # counted like the player's, so that every collective lines up
        data, perms = comm.broadcast_batch()
        with run.timer("train"):
            # Coupled PPO's minibatches, in its order: trainer i computes the i-th slice of each, DDP averages them.
            clip = clip_at(a.clip_coef, a.clip_schedule, iteration, num_iterations(cfg))
            share = (comm.trainer_index, comm.num_trainers)
            train(fabric, model, optimizer, data, cfg, run, comm.trainer_group, clip, perms.cpu(), share)
            run.metrics.update("Info/clip_coef", clip)
            run.metrics.update("Info/learning_rate", optimizer.param_groups[0]["lr"])
            scheduler.step()
        comm.sync_weights(agent)
        if comm.is_first_trainer:
            run.metrics.update("Time/weights_sync_ms", comm.last_sync_s * 1e3)
        run.log(policy_step)
        if run.checkpointer.due(policy_step):
            comm.from_first_trainer(state())
            run.maybe_checkpoint(policy_step, dict)  # only the player writes; every rank joins the collective
        if run.eval_due(policy_step):
            run.evaluate(agent.greedy, None, policy_step)  # every rank plays a share of the episodes
        if run.should_stop():
            break

    comm.from_first_trainer(state())  # for the final checkpoint
    run.finish(policy_step, dict, act=agent.greedy)


def main(fabric: Fabric, cfg: Any) -> None:
    comm = setup_decoupled(fabric, timeout_s=cfg.fabric.timeout_s)
    run = Run(fabric, cfg)
    if comm.is_player:
        player(fabric, cfg, comm, run)
    else:
        trainer(fabric, cfg, comm, run)
