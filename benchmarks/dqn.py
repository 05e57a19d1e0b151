"""DQN whole-run wall time against Stable-Baselines3, and Rainbow gradient steps per second on MinAtar.

    OMP_NUM_THREADS=1 python benchmarks/dqn.py [--steps 20000] [--repeats 2] [--sb3_python ../peers/sb3/bin/python]
    OMP_NUM_THREADS=1 python benchmarks/dqn.py --only rainbow [--grad_steps 300]

1. DQN on CartPole-v1, one env, the same settings on both sides (Stable-Baselines3 zoo's CartPole settings):
   two 256-unit layers, Adam lr 2.3e-3, batch 64, buffer 100k, 1000 warm-up steps, 0.5 gradient steps per env
   step in bursts of 128 every 256 env steps (``--train_every 256``: SB3's train_freq 256 with 128 gradient
   steps), epsilon 1 -> 0.04 over 16% of the run, Huber loss, gradient norm 10, one torch thread, plain (not
   double) DQN targets as SB3 computes them (the preset's ``--double`` is turned off here). Each side runs as its own process, interleaved (ours, SB3, ours, SB3, ...), and reports the
   training loop's wall time (ours: the run's own clock, SB3: ``model.learn``) and the whole process's (imports and
   set-up included). SB3 lives in a scratch venv, never in the project:
   ``python3 -m venv ../peers/sb3 && ../peers/sb3/bin/pip install torch==2.13.0 stable-baselines3``.
2. Rainbow (every component on) gradient steps per second on MinAtar/Breakout-v1 shapes: the MinAtar network,
   batch 32, 51 atoms, n = 3, sampling from a prioritized frame buffer of 20k random transitions included; the
   same for DQN's update for scale.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SB3_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from stable_baselines3 import DQN
steps = int(sys.argv[1])
t0 = time.perf_counter()
model = DQN("MlpPolicy", "CartPole-v1", learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
            learning_starts=1000, gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
            exploration_fraction=0.16, exploration_final_eps=0.04, max_grad_norm=10,
            policy_kwargs=dict(net_arch=[256, 256]), device="cpu", seed=1, verbose=0)
t1 = time.perf_counter()
model.learn(total_timesteps=steps)
print(f"LEARN {time.perf_counter() - t1:.3f}")
"""


def child_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours(steps: int, workdir: Path) -> tuple[float, float, float]:
    cmd = [
        sys.executable,
        str(ROOT / "sheeprl.py"),
        "exp=dqn_cartpole",
        "--num_envs",
        "1",
        "--total_steps",
        str(steps),
        "--buffer.size",
        "100000",
        "--exploration_steps",
        str(int(0.16 * steps)),
        # SB3's schedule: train_freq 256 with 128 gradient steps (the same 0.5 ratio, in bursts).
        "--train_every",
        "256",
        # SB3's DQN has no double-DQN target: the preset's --double would add a third forward pass per update.
        "--double",
        "false",
        "--eval_every",
        "0",
        "--eval_episodes",
        "0",
        "--checkpoint.save_last",
        "false",
        "--metric.log_level",
        "0",
        "--seed",
        "1",
        "--num_threads",
        "1",
        f"log_root={workdir}",
    ]
    t0, c0 = time.perf_counter(), child_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=workdir).stdout
    total, cpu = time.perf_counter() - t0, child_cpu() - c0
    learn = float(re.findall(r"\(([\d.]+) s\)", out)[-1])
    return learn, total, cpu


def run_sb3(python: str, steps: int) -> tuple[float, float, float]:
    t0, c0 = time.perf_counter(), child_cpu()
    out = subprocess.run([python, "-c", SB3_SCRIPT, str(steps)], capture_output=True, text=True, check=True).stdout
    total, cpu = time.perf_counter() - t0, child_cpu() - c0
    return float(re.findall(r"LEARN ([\d.]+)", out)[-1]), total, cpu


def dqn_vs_sb3(steps: int, repeats: int, sb3_python: str) -> None:
    import tempfile

    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            ours.append(run_ours(steps, Path(tmp)))
            if Path(sb3_python).exists():
                theirs.append(run_sb3(sb3_python, steps))
    learn_ours, total_ours, cpu_ours = (statistics.median(o[i] for o in ours) for i in range(3))
    print(f"DQN CartPole-v1, {steps} steps, 1 env, 1 thread, median of {repeats} interleaved runs")
    print("  (wall: training loop and whole process; CPU: whole process, less sensitive to a shared machine's load)")
    print(f"  sheeprl  loop {learn_ours:8.1f} s   whole {total_ours:8.1f} s   CPU {cpu_ours:8.1f} s")
    if theirs:
        learn_sb3, total_sb3, cpu_sb3 = (statistics.median(t[i] for t in theirs) for i in range(3))
        print(f"  SB3      loop {learn_sb3:8.1f} s   whole {total_sb3:8.1f} s   CPU {cpu_sb3:8.1f} s")
        print(
            f"  speed-up (SB3 / sheeprl): loop {learn_sb3 / learn_ours:.2f}x, whole process {total_sb3 / total_ours:.2f}x"
            f" (wall), {cpu_sb3 / cpu_ours:.2f}x (CPU)"
        )
    else:
        print(f"  SB3 not found at {sb3_python}: skipped")


def rainbow_grad_steps(grad_steps: int) -> None:
    import torch
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf

    from sheeprl.algos.dqn import dqn as dqn_loop
    from sheeprl.algos.dqn.agent import build_agent as build_dqn
    from sheeprl.algos.dqn.args import DQNConfig
    from sheeprl.algos.rainbow import rainbow
    from sheeprl.algos.rainbow.agent import build_agent
    from sheeprl.algos.rainbow.args import RainbowConfig
    from sheeprl.data.frames import FrameReplayBuffer
    from sheeprl.data.prioritized import PrioritizedSampler
    from sheeprl.envs import make_vector_env
    from sheeprl.utils.optim import GradientStep
    from sheeprl.utils.targets import make_target

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=1)
    cfg = OmegaConf.merge(
        OmegaConf.structured(RainbowConfig),
        OmegaConf.load(ROOT / "configs" / "env" / "minatar.yaml"),
        {"algo": {"cnn_encoder": "minatar", "cnn_features": 128, "mlp_layers": 0, "total_steps": 300_000}},
    )
    envs = make_vector_env(cfg, seed=0, num_envs=1)
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    key = cfg.algo.cnn_keys.encoder[0]
    shape = obs_space[key].shape
    envs.close()

    n = 20_000
    rb = FrameReplayBuffer(n, 1, frame_keys=(key,), stack=1)
    sampler = PrioritizedSampler(n, 0.5)
    store = rainbow.PrioritizedStore(rb, sampler)
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        step = {
            key: torch.rand(1, 1, *shape, generator=g) < 0.1,
            f"next_{key}": torch.rand(1, 1, *shape, generator=g) < 0.1,
            "actions": torch.randint(int(action_space.n), (1, 1), generator=g),
            "rewards": (torch.rand(1, 1, generator=g) < 0.05).float(),
            "terminated": (torch.rand(1, 1, generator=g) < 0.01).float(),
            "truncated": torch.zeros(1, 1),
        }
        store.add(step)

    def measure(label: str, step_fn) -> float:
        for _ in range(10):
            step_fn()
        t0 = time.perf_counter()
        for _ in range(grad_steps):
            step_fn()
        rate = grad_steps / (time.perf_counter() - t0)
        print(f"  {label:<44} {rate:8.1f} grad steps/s")
        return rate

    q_raw = build_agent(obs_space, action_space, cfg)
    q = fabric.setup_module(q_raw)
    target = make_target(fabric, q)
    opt = fabric.setup_optimizers(rainbow.make_optimizer(q_raw, cfg))
    update = GradientStep(fabric, q, opt, cfg.algo.max_grad_norm)

    def rainbow_step() -> None:
        rows, w, batch = rainbow.sample_batch(rb, sampler, cfg, 32, 100_000, [key], fabric.device)
        _, prio = rainbow.train(update, target, batch, w, cfg)
        sampler.update(rows, prio)

    dcfg = OmegaConf.merge(
        OmegaConf.structured(DQNConfig),
        OmegaConf.load(ROOT / "configs" / "env" / "minatar.yaml"),
        {"algo": {"cnn_encoder": "minatar", "cnn_features": 128, "mlp_layers": 0}},
    )
    dq_raw = build_dqn(obs_space, action_space, dcfg)
    dq = fabric.setup_module(dq_raw)
    dtarget = make_target(fabric, dq)
    dopt = fabric.setup_optimizers(dqn_loop.make_optimizer(dq_raw, dcfg))
    dupdate = GradientStep(fabric, dq, dopt, dcfg.algo.max_grad_norm)

    def dqn_step() -> None:
        batch = rb.sample(32, sample_next_obs=True)[0]
        dqn_loop.train(dupdate, dtarget, dict(batch.items()), dcfg.algo.gamma, dcfg.algo.double)

    print(f"MinAtar/Breakout-v1 shapes {tuple(shape)}, batch 32, 1 thread, prioritized frame buffer of {n}")
    r = measure("rainbow (all components, sampling included)", rainbow_step)
    d = measure("dqn (uniform sampling included)", dqn_step)
    print(f"  rainbow / dqn: {r / d:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grad_steps", type=int, default=300)
    parser.add_argument("--sb3_python", default="../peers/sb3/bin/python")
    parser.add_argument("--only", choices=("dqn", "rainbow"), default=None)
    args = parser.parse_args()
    if args.only in (None, "dqn"):
        dqn_vs_sb3(args.steps, args.repeats, args.sb3_python)
    if args.only in (None, "rainbow"):
        rainbow_grad_steps(args.grad_steps)


if __name__ == "__main__":
    main()
