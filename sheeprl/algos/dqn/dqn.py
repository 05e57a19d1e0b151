"""Deep Q-Network, coupled: every rank plays its envs, fills its own buffer and trains (DDP).

Algorithm (Mnih et al., 2015, "Human-level control through deep reinforcement learning", Algorithm 1; double
DQN: van Hasselt et al., 2016; dueling: Wang et al., 2016):

    initialize Q, target Q' <- Q, replay buffer D
    for each policy step:
        epsilon = linear decay from eps_start to eps_end over exploration_steps
        a = uniform random with probability epsilon (always during learning_starts), else argmax_a Q(s, a)
        step the envs; store (s, a, r, s', terminated) in D, s' being the real final observation at an episode end
                                                           (the shared off-policy collector, data/collector.py)
        every train_every rounds, for the replay_ratio gradient steps per policy step accumulated since:
            sample a batch from D
            y = r + gamma * (1 - terminated) * Q'(s', argmax_a Q'(s', a))     (double: argmax_a Q(s', a))
            minimize Huber(Q(s, a) - y), gradient norm clipped to max_grad_norm
            every target_update_every gradient steps: Q' <- Q (tau = 1) or Q' <- (1 - tau) Q' + tau Q
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from sheeprl.algos.dqn.agent import QNetwork, build_agent
from sheeprl.algos.dqn.loss import q_loss, td_target
from sheeprl.data import ReplayBuffer
from sheeprl.data.collector import Collector
from sheeprl.data.frames import FrameReplayBuffer
from sheeprl.envs import make_vector_env
from sheeprl.utils.optim import GradientStep, build_optimizer
from sheeprl.utils.ratio import Ratio
from sheeprl.utils.run import Run
from sheeprl.utils.schedules import linear_schedule
from sheeprl.utils.targets import make_target, update_target
from sheeprl.utils.tensors import obs_to_torch

if TYPE_CHECKING:
    from lightning.fabric import Fabric


def train(
    update: GradientStep,
    target_q: QNetwork,
    batch: dict[str, Tensor],
    gamma: float,
    double: bool = False,
    next_q_target: Optional[Tensor] = None,
    target: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """One gradient step on ``batch``; returns the detached loss and mean Q.

    ``update`` holds the online network, its optimizer and the gradient clip. ``next_q_target``: Q'(s') of the
    batch, and ``target``: its TD target y, when the caller computed them already (see :func:`burst_targets`).
    Plain Python hyperparameters, not ``cfg.algo``: an OmegaConf lookup costs microseconds, paid on every step.
    """
    keys = target_q.encoder.keys
    if target is None:
        next_obs = {k: batch[f"next_{k}"] for k in keys}
        with torch.no_grad():
            next_q_online = update.plain(next_obs) if double else None
            if next_q_target is None:
                next_q_target = target_q(next_obs)
            target = td_target(batch["rewards"], gamma * (1.0 - batch["terminated"]), next_q_target, next_q_online)
    q_values = update.forward({k: batch[k] for k in keys})
    loss, _ = q_loss(q_values, batch["actions"], target)
    update(loss)
    return {"Loss/q_loss": loss.detach(), "Info/q_mean": q_values.detach().mean()}


# Rows of one batched target-network pass: enough to amortize per-op dispatch, small enough for its activations.
TARGET_MAX_ROWS = 8192
TARGET_MAX_INPUTS = 1 << 20  # input elements (an Atari stack is 28,224: one batch at a time there)


@torch.no_grad()
def target_values(target_q: QNetwork, data: dict[str, Tensor], start: int, count: int) -> Tensor:
    """Q'(s') of batches ``start .. start + count`` of a burst's samples ``(steps, B, ...)``, in one pass.

    The target network is fixed between its updates, so the batches of a burst that fall before the next update
    need no pass each: one matrix product per layer over all their rows costs about what two batches did.
    """
    next_obs = {k: data[f"next_{k}"][start : start + count].flatten(0, 1) for k in target_q.encoder.keys}
    values = target_q(next_obs)
    return values.view(count, -1, values.shape[-1])


@torch.no_grad()
def burst_targets(next_q: Tensor, data: dict[str, Tensor], start: int, gamma: float) -> Tensor:
    """Plain DQN's TD targets ``(count, B)`` of the batches whose Q'(s') ``next_q`` ``(count, B, A)`` holds.

    They depend on the target network alone (double DQN's argmax reads the online network, which changes every
    step: it computes its targets in :func:`train`). The same operations as one batch at a time, on more rows.
    """
    rows = slice(start, start + next_q.shape[0])
    return td_target(data["rewards"][rows], gamma * (1.0 - data["terminated"][rows]), next_q, None)


def target_chunk(data: dict[str, Tensor], keys: list[str], batch: int) -> int:
    """How many batches :func:`target_values` takes at once within the row and input-size caps (at least one)."""
    inputs_per_row = sum(int(data[f"next_{k}"][0, 0].numel()) for k in keys)
    return max(1, min(TARGET_MAX_ROWS // batch, TARGET_MAX_INPUTS // max(1, batch * inputs_per_row)))


def make_optimizer(q: QNetwork, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer of ``algo.optimizer`` (Adam by default; any torch.optim class by name) over the network."""
    return build_optimizer(q.parameters(), cfg.algo.optimizer, "algo.optimizer")


def make_buffer(cfg: Any, run: Run, num_envs: int, device: torch.device) -> ReplayBuffer | FrameReplayBuffer:
    """This rank's replay buffer (memory-mapped under the run folder when ``buffer.memmap``, else on ``device``).

    With pixel keys a :class:`FrameReplayBuffer`, which stores every frame once (not once per stacked copy, not
    again as the next observation); with vector keys only a :class:`ReplayBuffer` of (s, a, r, s') rows.
    """
    a = cfg.algo
    memmap_dir = run.log_dir / "memmap_buffer" / f"rank_{run.rank}" if cfg.buffer.memmap else None
    where = dict(memmap=cfg.buffer.memmap, memmap_dir=memmap_dir, device="cpu" if cfg.buffer.memmap else device)
    if a.cnn_keys.encoder:
        return FrameReplayBuffer(
            cfg.buffer.size, num_envs, frame_keys=tuple(a.cnn_keys.encoder), stack=cfg.env.frame_stack, **where
        )
    return ReplayBuffer(cfg.buffer.size, num_envs, obs_keys=tuple(a.mlp_keys.encoder), **where)


def encoder_obs(keys: list[str]) -> Callable[[dict[str, np.ndarray]], dict[str, Tensor]]:
    """The collector's ``obs_fn``: the encoder's keys as tensors (pixels stay uint8 / bool)."""

    def fn(obs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        return obs_to_torch({k: obs[k] for k in keys})

    return fn


def epsilon_greedy(q: QNetwork, obs: dict[str, Tensor], epsilon: float, num_actions: int) -> Tensor:
    """argmax_a Q(s, a), replaced by a uniform action with probability ``epsilon`` in each env.

    The coin flips come first, so the network runs only when some env exploits (with one env and epsilon 0.5,
    half the steps need no forward pass).
    """
    n = next(iter(obs.values())).shape[0]
    random_actions = torch.randint(num_actions, (n,))
    if epsilon >= 1.0:
        return random_actions
    # The same torch draws as ever (seeded runs and resumes unchanged), combined in numpy: a torch op on a few rows
    # is dispatch (~5-10 us each in the loop), the numpy equivalent ~1 us.
    explore = torch.rand(n).numpy() < epsilon
    if explore.all():
        return random_actions
    with torch.no_grad():
        greedy = q.greedy(obs).cpu()
    return torch.from_numpy(np.where(explore, random_actions.numpy(), greedy.numpy()))


def main(fabric: Fabric, cfg: Any) -> None:
    run = Run(fabric, cfg)
    a = cfg.algo
    world, rank, device = fabric.world_size, fabric.global_rank, fabric.device
    num_envs = cfg.env.num_envs
    keys = list(a.cnn_keys.encoder) + list(a.mlp_keys.encoder)
    batch_per_rank = a.batch_size // world

    # Distinct env seeds on every rank: rank r owns seeds [seed + r * num_envs, seed + (r + 1) * num_envs).
    env_seed = cfg.seed + rank * num_envs
    envs = make_vector_env(cfg, seed=env_seed, run_dir=str(run.log_dir))
    num_actions = int(envs.single_action_space.n)

    state: Optional[dict[str, Any]] = run.state
    q_raw = build_agent(envs.single_observation_space, envs.single_action_space, cfg, state)
    q = fabric.setup_module(q_raw)
    target_q = make_target(fabric, q)  # after DDP set-up: identical on every rank (checked)
    if state:
        target_q.load_state_dict(state["target_q"])
    optimizer = make_optimizer(q_raw, cfg)
    ratio = Ratio(a.replay_ratio)
    rb = make_buffer(cfg, run, num_envs, device)
    train_from = a.learning_starts
    gradient_steps = 0
    pending, rounds = 0, 0  # gradient steps accumulated for the next burst; training rounds so far
    if state:
        optimizer.load_state_dict(state["optimizer"])
        ratio.load_state_dict(state["ratio"])
        gradient_steps = int(state["gradient_steps"])
        pending, rounds = int(state.get("pending_gradient_steps", 0)), int(state.get("train_rounds", 0))
        if "buffer" in state:
            rb.load_state_dict(state["buffer"])  # multi-rank runs save rank 0's buffer; every rank continues from it
        else:
            train_from = max(a.learning_starts, run.start_step + a.learning_starts)  # refill before training again
    optimizer = fabric.setup_optimizers(optimizer)
    update = GradientStep(fabric, q, optimizer, float(a.max_grad_norm))

    def state_fn() -> dict[str, Any]:
        out = {
            "q": q_raw.state_dict(),
            "target_q": target_q.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ratio": ratio.state_dict(),
            "gradient_steps": gradient_steps,
            "pending_gradient_steps": pending,
            "train_rounds": rounds,
        }
        if cfg.checkpoint.save_buffer:
            out["buffer"] = rb.state_dict()
        return out

    obs, _ = envs.reset(seed=env_seed)
    run.restore_rank_state(envs)
    collector = Collector(
        envs, rb, run, obs, obs_fn=encoder_obs(keys), learning_starts=a.learning_starts, world_size=world
    )

    # The loop reads plain Python numbers: an OmegaConf lookup costs microseconds, paid on every step.
    eps_start, eps_end, exploration_steps = float(a.eps_start), float(a.eps_end), int(a.exploration_steps)
    gamma, double = float(a.gamma), bool(a.double)
    total_steps, target_every, tau = int(a.total_steps), int(a.target_update_every), float(a.tau)
    train_every = int(a.train_every)
    on_cpu = device.type == "cpu"

    def epsilon() -> float:
        return linear_schedule(eps_start, eps_end, exploration_steps, collector.policy_step)

    def act(obs: dict[str, Tensor]) -> Tensor:
        if not on_cpu:
            obs = {k: v.to(device, non_blocking=True) for k, v in obs.items()}
        return epsilon_greedy(q_raw, obs, epsilon(), num_actions)

    policy_step = run.start_step
    frames = isinstance(rb, FrameReplayBuffer)
    while policy_step < total_steps:
        # ---- act (uniform during the warm-up, then epsilon-greedy), step, store
        policy_step = collector.step(act)

        # ---- learn: replay_ratio gradient steps per policy step, in bursts every train_every rounds
        if policy_step > train_from:
            pending += ratio(num_envs * world)
            rounds += 1
            if pending > 0 and rounds % train_every == 0:
                steps, pending = pending, 0
                with run.timer("train"):
                    # All batches drawn at once. A frame buffer rebuilds the next stacks from its frames; a
                    # ReplayBuffer stored next_<key> rows.
                    sample = rb.sample(batch_per_rank, sample_next_obs=frames, n_samples=steps)
                    data = {k: v.to(device, non_blocking=True) for k, v in sample.items()}
                    chunk, i = target_chunk(data, keys, batch_per_rank), 0
                    while i < steps:
                        # Q' stays fixed until its next update: its values for the batches before then in one pass.
                        n = min(steps - i, target_every - gradient_steps % target_every, chunk)
                        next_q = target_values(target_q, data, i, n)
                        targets = None if double else burst_targets(next_q, data, i, gamma)
                        for j in range(n):
                            batch = {k: v[i + j] for k, v in data.items()}
                            y = None if targets is None else targets[j]
                            losses = train(update, target_q, batch, gamma, double, next_q[j], y)
                            gradient_steps += 1
                        if gradient_steps % target_every == 0:
                            update_target(q, target_q, tau)
                        i += n
                    # The last step's losses stand for the window: reading every step's would sync a GPU each time.
                    for name, value in losses.items():
                        run.metrics.update(name, value)
            run.metrics.update("Info/epsilon", epsilon())

        run.log(policy_step)
        if run.eval_due(policy_step):
            run.evaluate(q_raw.greedy, envs, policy_step)
        run.maybe_checkpoint(policy_step, state_fn, envs)
        if run.should_stop():
            break

    run.finish(policy_step, state_fn, envs, act=q_raw.greedy)
    envs.close()
