"""SAC update throughput against Stable-Baselines3, on Pendulum-v1 and HalfCheetah-v5.

    OMP_NUM_THREADS=1 python benchmarks/sac.py [--grad_steps 300] [--env_steps 300] [--threads 1] [--device cpu]

Same settings on both sides: batch 256, two 256-unit hidden layers for actor and twin critics, replay ratio 1,
automatic entropy tuning, Adam. Prints per environment:
  grad steps/s     SAC gradient steps per second on a buffer of random transitions (critics + actor + alpha + targets)
  SPS (ratio 1)    env steps per second of the whole loop: act, step, store, sample, one gradient step
  sample (us)      time of one 256-transition uniform sample from a 100k-transition buffer
and the same for Stable-Baselines3 when it is installed (``pip install stable-baselines3``; not a dependency).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

BATCH = 256


def sheeprl_numbers(env_id: str, grad_steps: int, env_steps: int, device: str) -> dict[str, float]:
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf

    from sheeprl.algos.sac.agent import build_agent, flat_obs
    from sheeprl.algos.sac.args import SACConfig
    from sheeprl.algos.sac.sac import make_optimizers, train
    from sheeprl.data import ReplayBuffer
    from sheeprl.utils.tensors import obs_to_torch

    cfg = OmegaConf.structured(SACConfig)
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    obs_space = gym.spaces.Dict({"state": env.observation_space})
    fabric = Fabric(accelerator=device, devices=1)
    actor_raw, critic_raw = build_agent(obs_space, env.action_space, cfg)
    target = copy.deepcopy(critic_raw).requires_grad_(False)
    actor, critic = fabric.setup_module(actor_raw), fabric.setup_module(critic_raw)
    target.to(fabric.device)
    log_alpha = torch.zeros((), device=fabric.device, requires_grad=True)
    opts = fabric.setup_optimizers(*make_optimizers(actor_raw, critic_raw, log_alpha, cfg))

    rb = ReplayBuffer(100_000, 1, obs_keys=("observations",), device=fabric.device)
    n = 100_000
    rb.add(
        {
            "observations": torch.randn(n, 1, obs_dim),
            "next_observations": torch.randn(n, 1, obs_dim),
            "actions": torch.rand(n, 1, act_dim) * 2 - 1,
            "rewards": torch.randn(n, 1),
            "terminated": torch.zeros(n, 1),
        }
    )

    def step(batch: dict) -> None:
        train(fabric, actor, critic, target, log_alpha, opts, batch, cfg, -float(act_dim), True, 1)

    # sample time
    for _ in range(20):
        rb.sample(BATCH)
    t0 = time.perf_counter()
    for _ in range(500):
        rb.sample(BATCH)
    sample_us = (time.perf_counter() - t0) / 500 * 1e6

    # gradient steps per second (the batches drawn at once, as sac.py does)
    data = {k: v for k, v in rb.sample(BATCH, n_samples=grad_steps).items()}
    for i in range(10):
        step({k: v[i] for k, v in data.items()})
    t0 = time.perf_counter()
    for i in range(grad_steps):
        step({k: v[i] for k, v in data.items()})
    grad_sps = grad_steps / (time.perf_counter() - t0)

    # the whole loop at replay ratio 1
    envs = gym.make_vec(env_id, 1, vectorization_mode="sync")
    obs, _ = envs.reset(seed=0)
    obs_t = flat_obs(obs_to_torch({"state": obs}), ["state"])
    t0 = time.perf_counter()
    for _ in range(env_steps):
        with torch.no_grad():
            actions = actor_raw(obs_t.to(fabric.device))[0].cpu()
        obs, rew, term, trunc, _ = envs.step(actions.numpy())
        next_t = flat_obs(obs_to_torch({"state": obs}), ["state"])
        rb.add(
            {
                "observations": obs_t[None],
                "next_observations": next_t[None],
                "actions": actions[None],
                "rewards": torch.from_numpy(np.asarray(rew, dtype=np.float32))[None],
                "terminated": torch.from_numpy(term.astype(np.float32))[None],
            }
        )
        obs_t = next_t
        sample = rb.sample(BATCH)
        step({k: v[0] for k, v in sample.items()})
    sps = env_steps / (time.perf_counter() - t0)
    envs.close()
    return {"grad steps/s": grad_sps, "SPS (ratio 1)": sps, "sample (us)": sample_us}


def sb3_numbers(env_id: str, grad_steps: int, env_steps: int, device: str) -> dict[str, float] | None:
    try:
        from stable_baselines3 import SAC
    except ImportError:
        return None
    model = SAC(
        "MlpPolicy",
        gym.make(env_id),
        batch_size=BATCH,
        learning_starts=1000,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs={"net_arch": [256, 256]},
        buffer_size=100_000,
        device=device,
        verbose=0,
        seed=0,
    )
    model.learn(total_timesteps=1000)  # fills the buffer with random actions, no updates
    buf = model.replay_buffer
    for _ in range(20):
        buf.sample(BATCH)
    t0 = time.perf_counter()
    for _ in range(500):
        buf.sample(BATCH)
    sample_us = (time.perf_counter() - t0) / 500 * 1e6
    model.train(gradient_steps=10, batch_size=BATCH)
    t0 = time.perf_counter()
    model.train(gradient_steps=grad_steps, batch_size=BATCH)
    grad_sps = grad_steps / (time.perf_counter() - t0)
    model.learning_starts = 0
    t0 = time.perf_counter()
    model.learn(total_timesteps=env_steps, reset_num_timesteps=False)
    sps = env_steps / (time.perf_counter() - t0)
    return {"grad steps/s": grad_sps, "SPS (ratio 1)": sps, "sample (us)": sample_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grad_steps", type=int, default=300)
    parser.add_argument("--env_steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(False)
    print(f"batch {BATCH}, 2x256 nets, replay ratio 1, {args.threads} thread(s), device {args.device}")
    for env_id in args.envs:
        torch.manual_seed(0)
        ours = sheeprl_numbers(env_id, args.grad_steps, args.env_steps, args.device)
        theirs = sb3_numbers(env_id, args.grad_steps, args.env_steps, args.device)
        print(f"\n{env_id}")
        print(f"  {'':16}{'sheeprl':>10}{'SB3':>10}{'ratio':>8}")
        for key, value in ours.items():
            if theirs is None:
                print(f"  {key:16}{value:10.1f}{'n/a':>10}")
                continue
            other = theirs[key]
            # For times (us) lower is better: the ratio is always "how many times better sheeprl is".
            factor = other / value if key.endswith("(us)") else value / other
            print(f"  {key:16}{value:10.1f}{other:10.1f}{factor:7.2f}x")


if __name__ == "__main__":
    main()
