"""PPO on CartPole-v1: wall time and SPS of a real run against the raw env + policy forward.

    python benchmarks/ppo_cartpole.py [--total_steps 100000] [--num_envs 4] [--threads 1]

Prints, for the same envs (4 x CartPole-v1, 128-step rollouts):
  raw env                  SPS of the bare Gymnasium vector env stepping random actions
  raw env + policy         SPS of that env driven by the PPO agent's batched forward (sample + value)
  sheeprl rollout          SPS of sheeprl's rollout phase (Time/sps_env_interaction, from the run's logs)
  rollout overhead         (raw env + policy time) / (sheeprl rollout time)... shown as a factor >= 1
  sheeprl full run         wall time and overall SPS of `python sheeprl.py ppo ...` (process start included)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def raw_sps(num_envs: int, steps: int, with_policy: bool) -> float:
    import gymnasium as gym
    import torch
    from omegaconf import OmegaConf

    from sheeprl.algos.ppo.agent import build_agent
    from sheeprl.algos.ppo.args import PPOConfig

    envs = gym.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    obs, _ = envs.reset(seed=0)
    cfg = OmegaConf.structured(PPOConfig)
    space = gym.spaces.Dict({"state": envs.single_observation_space})
    agent = build_agent(space, envs.single_action_space, cfg)
    torch.distributions.Distribution.set_default_validate_args(False)
    t0 = time.perf_counter()
    for _ in range(steps):
        if with_policy:
            actions, _, _ = agent.act({"state": torch.from_numpy(obs)})
            actions = actions.numpy()
        else:
            actions = envs.action_space.sample()
        obs, *_ = envs.step(actions)
    dt = time.perf_counter() - t0
    envs.close()
    return steps * num_envs / dt


def sheeprl_run(total_steps: int, num_envs: int, threads: int) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "sheeprl.py"),
            "ppo",
            "--env_id",
            "CartPole-v1",
            "--num_envs",
            str(num_envs),
            "--total_steps",
            str(total_steps),
            "--eval_episodes",
            "0",
            "--num_threads",
            str(threads),
            "--seed",
            "1",
        ]
        t0 = time.perf_counter()
        subprocess.run(
            cmd, cwd=tmp, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
        )
        wall = time.perf_counter() - t0
        (events,) = list(Path(tmp).rglob("events.out.tfevents.*"))
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        mean = lambda tag: sum(e.value for e in acc.Scalars(tag)) / len(acc.Scalars(tag))  # noqa: E731
        returns = acc.Scalars("Rewards/rew_avg")
        return {
            "wall": wall,
            "sps_rollout": mean("Time/sps_env_interaction"),
            "sps_train": mean("Time/sps_train"),
            "final_return": returns[-1].value if returns else float("nan"),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total_steps", type=int, default=100_000)
    p.add_argument("--num_envs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    raw_steps = 5_000
    env_only = raw_sps(args.num_envs, raw_steps, with_policy=False)
    env_policy = raw_sps(args.num_envs, raw_steps, with_policy=True)
    run = sheeprl_run(args.total_steps, args.num_envs, args.threads)
    print(
        f"PPO CartPole-v1, {args.num_envs} envs, 128-step rollouts, {args.total_steps} steps, {args.threads} thread(s)"
    )
    print(f"  raw env                 {env_only:10,.0f} SPS")
    print(f"  raw env + policy        {env_policy:10,.0f} SPS")
    print(f"  sheeprl rollout         {run['sps_rollout']:10,.0f} SPS  (Time/sps_env_interaction)")
    print(f"  rollout overhead        {env_policy / run['sps_rollout']:10.2f} x raw env + policy")
    print(f"  sheeprl train phase     {run['sps_train']:10,.0f} SPS  (Time/sps_train)")
    print(
        f"  sheeprl full run        {run['wall']:10.1f} s wall, {args.total_steps / run['wall']:,.0f} SPS overall "
        f"(process start, eval off; last training return {run['final_return']:.1f})"
    )


if __name__ == "__main__":
    main()
