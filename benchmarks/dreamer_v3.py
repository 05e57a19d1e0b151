"""Dreamer V3 update throughput against SheepRL 0.8.4, at equal model sizes, batch and sequence length.

    OMP_NUM_THREADS=1 python benchmarks/dreamer_v3.py [--steps 5] [--sizes XS S] [--rounds 3] [--threads 1]
        [--cpu_matmul auto|onednn|mkl] [--profile] [--sheeprl_python ../peers/sheeprl084/bin/python]

One gradient step = world model + imagination (horizon 15) + actor + critic + slow critic, on a CartPole-v1-shaped
vector batch (4 observations, 2 discrete actions), batch 16 x sequence 64 (the paper's), on a buffer of random
rows. Prints gradient steps/s for this project and, when the SheepRL 0.8.4 interpreter exists, for SheepRL's
``train()`` on the same sizes (run in that interpreter by ``benchmarks/_sheeprl084_dreamer_v3.py``), and the ratio.
``--cpu_matmul`` is the run flag ``fabric.cpu_matmul`` (which library computes the large float32 products,
:mod:`sheeprl.models.gemm`); ``--profile`` prints where this project's time goes (torch.profiler, top ops).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

from sheeprl.models import gemm  # noqa: E402
from sheeprl.utils.memory import keep_freed_memory  # noqa: E402

PEER = Path(__file__).with_name("_sheeprl084_dreamer_v3.py")


def make(size: str, batch: int, seq: int, compile_: bool = False):
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf

    from sheeprl.algos.dreamer_v3.agent import build_agent
    from sheeprl.algos.dreamer_v3.args import DreamerV3Config
    from sheeprl.algos.dreamer_v3.dreamer_v3 import train
    from sheeprl.algos.dreamer_v3.loss import PercentileNormalizer

    cfg = OmegaConf.structured(DreamerV3Config)
    cfg.algo.size = size
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))})
    fabric = Fabric(accelerator="cpu", devices=1)
    agent = build_agent(obs_space, gym.spaces.Discrete(2), cfg)
    groups = (
        list(agent.world_model.parameters()),
        list(agent.actor.parameters()),
        list(agent.critic.parameters()),
    )
    opts = tuple(torch.optim.Adam(p, lr=1e-4, fused=True) for p in groups)
    norm = PercentileNormalizer()
    if compile_:
        agent.world_model.rssm.step = torch.compile(agent.world_model.rssm.step, dynamic=False)
    first = torch.zeros(seq, batch)
    first[0] = 1
    batch_ = {
        "state": torch.randn(seq, batch, 4),
        "actions": torch.nn.functional.one_hot(torch.randint(2, (seq, batch)), 2).float(),
        "rewards": torch.ones(seq, batch),
        "terminated": torch.zeros(seq, batch),
        "is_first": first,
    }
    return lambda: train(fabric, agent, opts, groups, norm, batch_, cfg)


def ours(size: str, batch: int, seq: int, steps: int, compile_: bool = False) -> dict[str, float]:
    fn = make(size, batch, seq, compile_)
    fn()  # warm-up (allocations, compile)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return {"grad_steps_per_s": steps / (time.perf_counter() - t0), "per_cpu_s": steps / (time.process_time() - c0)}


def sheeprl(python: str, size: str, batch: int, seq: int, steps: int, threads: int = 1) -> dict[str, float] | None:
    if not Path(python).exists():
        return None
    proc = subprocess.run(
        [python, str(PEER), size, str(batch), str(seq), str(steps), str(threads)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  SheepRL 0.8.4 failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


def profile(size: str, batch: int, seq: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    fn = make(size, batch, seq)
    fn()
    with prof(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(2):
            fn()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["XS", "S"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per size; medians when > 1")
    parser.add_argument("--compile", action="store_true", help="also time --algo.compile")
    parser.add_argument("--cpu_matmul", default="auto", choices=["auto", "onednn", "mkl"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sheeprl_python", default="../peers/sheeprl084/bin/python")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # What a run's set-up does (sheeprl/utils/run.py): denormals flushed, freed memory kept for the next step.
    torch.set_flush_denormal(True)
    keep_freed_memory()
    gemm.set_backend(args.cpu_matmul)
    print(f"Dreamer V3 gradient steps/s, batch {args.batch} x sequence {args.seq}, {args.threads} thread(s), CPU")
    print(f"  large float32 products: {'oneDNN' if gemm.use_onednn() else 'MKL'} (--cpu_matmul {args.cpu_matmul})")
    print("  (wall: gradient steps per second; cpu: per CPU-second of the process, robust on a shared machine)")
    for size in args.sizes:
        ratios: list[tuple[float, float]] = []
        for r in range(args.rounds):
            # Interleaved rounds, the order alternating (SheepRL first, then ours first, ...), so that both sides
            # see the same machine: on a shared 2-core VM one side's speed moved by up to 25% between minutes.
            if r % 2 == 0:
                peer = sheeprl(args.sheeprl_python, size, args.batch, args.seq, args.steps, args.threads)
                mine = ours(size, args.batch, args.seq, args.steps)
            else:
                mine = ours(size, args.batch, args.seq, args.steps)
                peer = sheeprl(args.sheeprl_python, size, args.batch, args.seq, args.steps, args.threads)
            line = f"  {size:>3}: this project wall {mine['grad_steps_per_s']:7.3f} cpu {mine['per_cpu_s']:7.3f}"
            if args.compile:
                comp = ours(size, args.batch, args.seq, args.steps, True)
                line += f" | compiled wall {comp['grad_steps_per_s']:7.3f} cpu {comp['per_cpu_s']:7.3f}"
            if peer:
                wall = mine["grad_steps_per_s"] / peer["grad_steps_per_s"]
                cpu = mine["per_cpu_s"] / peer["per_cpu_s"]
                ratios.append((wall, cpu))
                line += (
                    f" | SheepRL 0.8.4 wall {peer['grad_steps_per_s']:7.3f} cpu {peer['per_cpu_s']:7.3f}"
                    f" | ratio wall {wall:5.2f}x cpu {cpu:5.2f}x"
                )
            print(line, flush=True)
        if len(ratios) > 1:
            wall_m = statistics.median(w for w, _ in ratios)
            cpu_m = statistics.median(c for _, c in ratios)
            print(
                f"  {size:>3}: median of {len(ratios)} rounds: ratio wall {wall_m:5.2f}x cpu {cpu_m:5.2f}x", flush=True
            )
    if args.profile:
        profile(args.sizes[0], args.batch, args.seq)


if __name__ == "__main__":
    main()
