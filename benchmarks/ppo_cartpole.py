"""PPO on CartPole-v1: wall time and SPS of a real run against the raw env + policy forward, and against
Stable-Baselines3 at the same settings (whole process, start-up included, runs interleaved).

    python benchmarks/ppo_cartpole.py [--total_steps 50000] [--num_envs 4] [--threads 1] [--repeats 2]
    [--sb3_python ../peers/sb3/bin/python]

Settings of both (issue 13): 4 envs x 128-step rollouts, 4 epochs, 4 minibatches of 128, 2x64 tanh actor and
critic, lr 2.5e-4, evaluation off. SB3 comes from a scratch venv (never the project's):
``python3 -m venv ../peers/sb3 && ../peers/sb3/bin/pip install torch==2.13.0 stable-baselines3``.

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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _timing import run_timed  # noqa: E402


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


# The benchmark's settings, pinned so that a change of defaults does not change what is measured.
PINNED = [
    "--rollout_steps",
    "128",
    "--update_epochs",
    "4",
    "--minibatch_size",
    "128",
    "--lr",
    "2.5e-4",
    "--clip_schedule",
    "constant",
    # SB3's PPO defaults where ours differ (normalized advantages, gradient norm 0.5 and vf_coef 0.5 are both's)
    "--gamma",
    "0.99",
    "--gae_lambda",
    "0.95",
    "--normalize_advantages",
    "true",
    "--max_grad_norm",
    "0.5",
    "--vf_coef",
    "0.5",
]
PINNED += ["--checkpoint_every", "0", "--checkpoint.save_last", "false"]

SB3_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
torch.set_num_threads(int(sys.argv[3]))
env = make_vec_env("CartPole-v1", n_envs=int(sys.argv[2]), seed=1)
model = PPO("MlpPolicy", env, n_steps=128, batch_size=128, n_epochs=4, learning_rate=2.5e-4, seed=1, device="cpu")
model.learn(total_timesteps=int(sys.argv[1]))
"""


def sb3_run(python: str, total_steps: int, num_envs: int, threads: int) -> dict:
    """Whole-process wall and CPU seconds of SB3's PPO at the same settings."""
    wall, cpu = run_timed(
        [python, "-c", SB3_SCRIPT, str(total_steps), str(num_envs), str(threads)],
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    return {"wall": wall, "cpu": cpu}


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
            *PINNED,
        ]
        wall, cpu = run_timed(cmd, cwd=tmp, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        (events,) = list(Path(tmp).rglob("events.out.tfevents.*"))
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        mean = lambda tag: sum(e.value for e in acc.Scalars(tag)) / len(acc.Scalars(tag))  # noqa: E731
        returns = acc.Scalars("Rewards/rew_avg")
        return {
            "wall": wall,
            "cpu": cpu,
            "sps_rollout": mean("Time/sps_env_interaction"),
            "sps_train": mean("Time/sps_train"),
            "final_return": returns[-1].value if returns else float("nan"),
        }


def _times(runs: list[dict]) -> str:
    walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
    cpus = ", ".join(f"{r['cpu']:.1f}" for r in runs)
    best = min(runs, key=lambda r: r["wall"])
    return f"{best['wall']:10.1f} s wall, {min(r['cpu'] for r in runs):.1f} s CPU  (all wall: {walls}; CPU: {cpus})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total_steps", type=int, default=50_000)
    p.add_argument("--num_envs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="interleaved sheeprl / SB3 pairs (the best of each)")
    p.add_argument("--sb3_python", default="../peers/sb3/bin/python", help="a Python with stable-baselines3")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    raw_steps = 5_000
    env_only = raw_sps(args.num_envs, raw_steps, with_policy=False)
    env_policy = raw_sps(args.num_envs, raw_steps, with_policy=True)
    runs, sb3 = [], []
    for _ in range(args.repeats):
        runs.append(sheeprl_run(args.total_steps, args.num_envs, args.threads))
        if Path(args.sb3_python).exists():
            sb3.append(sb3_run(args.sb3_python, args.total_steps, args.num_envs, args.threads))
    run = min(runs, key=lambda r: r["wall"])
    print(
        f"PPO CartPole-v1, {args.num_envs} envs x 128 steps, 4 epochs x 4 minibatches, {args.total_steps} steps, "
        f"{args.threads} thread(s), best of {args.repeats}"
    )
    print(f"  raw env                 {env_only:10,.0f} SPS")
    print(f"  raw env + policy        {env_policy:10,.0f} SPS")
    print(f"  sheeprl rollout         {run['sps_rollout']:10,.0f} SPS  (Time/sps_env_interaction)")
    print(f"  rollout overhead        {env_policy / run['sps_rollout']:10.2f} x raw env + policy")
    print(f"  sheeprl train phase     {run['sps_train']:10,.0f} SPS  (Time/sps_train)")
    print(f"  sheeprl whole process   {_times(runs)}")
    if sb3:
        print(f"  SB3 whole process       {_times(sb3)}")
        wall, cpu = (min(r[k] for r in sb3) / min(r[k] for r in runs) for k in ("wall", "cpu"))
        print(f"  speed-up vs SB3         {wall:10.2f} x wall, {cpu:.2f} x CPU time")
    else:
        print(f"  SB3: no {args.sb3_python}; create the scratch venv (see the docstring) for the comparison")


if __name__ == "__main__":
    main()
