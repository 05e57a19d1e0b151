"""SAC speed against Stable-Baselines3: whole process (default) and per-component throughput (--parts).

    python benchmarks/sac.py [--rounds 3] [--threads 1] [--sb3_python ../peers/sb3/bin/python] [--repo DIR]
    OMP_NUM_THREADS=1 python benchmarks/sac.py --parts [--grad_steps 300] [--env_steps 300] [--device cpu]

Whole process (issue 13's measurement): wall seconds from process start to exit of SAC on Pendulum-v1, 5k env steps
of which the first 1k are random warm-up, so 4k gradient steps at replay ratio 1, batch 256, 2x256 actor and twin
critics, Adam, automatic entropy tuning; ours is ``python sheeprl.py sac ...`` as a user types it (no evaluation,
no checkpoint), SB3's the equivalent ``SAC("MlpPolicy", ...).learn(5000)`` script, run with the Python of a
scratch venv that has stable-baselines3 (``--sb3_python``). The two alternate (``--rounds`` times) so that a busy
machine slows both alike; the ratios of the medians are printed, of wall seconds and of CPU seconds (user +
system, which grow far less than wall time when other processes share the cores). ``--repo DIR`` times another checkout of sheeprl
(e.g. the previous commit) as a third column.

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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sheeprl.utils.memory import keep_freed_memory  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _timing import run_timed  # noqa: E402

BATCH = 256


def sheeprl_numbers(env_id: str, grad_steps: int, env_steps: int, device: str) -> dict[str, float]:
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf

    from sheeprl.algos.sac.agent import build_agent, flat_obs
    from sheeprl.algos.sac.args import SACConfig
    from sheeprl.algos.sac.sac import make_optimizers, train
    from sheeprl.config import plain
    from sheeprl.data import ReplayBuffer
    from sheeprl.utils.tensors import obs_to_torch

    cfg = OmegaConf.structured(SACConfig)
    hot_cfg = plain(cfg)  # as sac.py passes it
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
        train(fabric, actor, critic, target, log_alpha, opts, batch, hot_cfg, -float(act_dim), True, None)

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


WHOLE_STEPS, WARM_UP = 5000, 1000

SB3_SCRIPT = f"""
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from stable_baselines3 import SAC
SAC("MlpPolicy", "Pendulum-v1", batch_size=256, learning_starts={WARM_UP}, train_freq=1, gradient_steps=1,
    policy_kwargs={{"net_arch": [256, 256]}}, buffer_size=100_000, learning_rate=1e-3, device="cpu", seed=0,
    verbose=0).learn({WHOLE_STEPS})
"""


def timed(cmd: list[str], threads: int, cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one process, from start to exit (it must succeed)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    try:
        return run_timed(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"benchmark run failed: {' '.join(cmd)}\n{e.stderr[-2000:]}") from None


def ours_cmd(repo: Path, log_root: str, threads: int) -> list[str]:
    return [
        sys.executable,
        str(repo / "sheeprl.py"),
        "sac",
        "--env_id", "Pendulum-v1",
        "--total_steps", str(WHOLE_STEPS),
        "--learning_starts", str(WARM_UP),
        "--batch_size", "256",
        "--dense_units", "256",
        "--mlp_layers", "2",
        "--replay_ratio", "1",
        "--num_threads", str(threads),
        "--eval_episodes", "0",
        "--checkpoint.every", "0",
        "--checkpoint.save_last", "false",
        "--log_root", log_root,
    ]  # fmt: skip


def whole_process(args: argparse.Namespace) -> None:
    print(
        f"SAC Pendulum-v1, whole process: {WHOLE_STEPS} env steps, {WHOLE_STEPS - WARM_UP} gradient steps, batch 256, "
        f"2x256, {args.threads} thread(s); {args.rounds} interleaved rounds; seconds (lower is better)"
    )
    have_sb3 = Path(args.sb3_python).exists()
    times: dict[str, list[float]] = {"sheeprl": [], "SB3": [], "other": []}
    cpus: dict[str, list[float]] = {"sheeprl": [], "SB3": [], "other": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            cmds = {"sheeprl": ours_cmd(ROOT, tmp, args.threads)}
            if have_sb3:
                cmds["SB3"] = [args.sb3_python, "-c", SB3_SCRIPT, str(args.threads)]
            if args.repo:
                cmds["other"] = ours_cmd(Path(args.repo), tmp, args.threads)
            for k, cmd in cmds.items():
                wall, cpu = timed(cmd, args.threads)
                times[k].append(wall)
                cpus[k].append(cpu)
                print(f"  round {r + 1}: {k} {wall:6.1f}s wall {cpu:6.1f}s CPU", flush=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items() if v}
    print("  median wall: " + "  ".join(f"{k} {v:6.1f}s" for k, v in med.items()))
    print("  median CPU:  " + "  ".join(f"{k} {v:6.1f}s" for k, v in med_cpu.items()))
    if "SB3" in med:
        ratios = [b / a for a, b in zip(times["sheeprl"], times["SB3"], strict=True)]
        print(
            f"  sheeprl is {med['SB3'] / med['sheeprl']:.2f}x SB3's speed in wall time (per round: "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + f"), {med_cpu['SB3'] / med_cpu['sheeprl']:.2f}x in CPU seconds"
        )
    else:
        print(f"  SB3 not found at {args.sb3_python} (python3 -m venv DIR; DIR/bin/pip install stable-baselines3)")
    if "other" in med:
        print(f"  sheeprl is {med['other'] / med['sheeprl']:.2f}x the speed of {args.repo} (wall), "
              f"{med_cpu['other'] / med_cpu['sheeprl']:.2f}x (CPU)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grad_steps", type=int, default=300)
    parser.add_argument("--env_steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    parser.add_argument("--parts", action="store_true", help="per-component throughput instead of whole process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sb3_python", default="../peers/sb3/bin/python")
    parser.add_argument("--repo", default=None, help="another sheeprl checkout to time as well")
    args = parser.parse_args()
    if not args.parts:
        whole_process(args)
        return
    torch.set_num_threads(args.threads)
    # What a run's set-up does (sheeprl/utils/run.py): denormals flushed, freed memory kept for the next step.
    torch.set_flush_denormal(True)
    keep_freed_memory()
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
