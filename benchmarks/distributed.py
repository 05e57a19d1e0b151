"""Distributed PPO on CartPole-v1: SPS of coupled PPO (1 and 2 processes), decoupled PPO (2 and 3), and the
cost of the per-update weight broadcast (first trainer -> player) as a function of the model size.

    python benchmarks/distributed.py [--total_steps 20480] [--threads 1] [--skip_runs] [--skip_broadcast]

Every configuration collects 512 transitions per update (coupled 2 processes: 2 envs per rank) so the
numbers compare the same learning problem. Columns:
  loop SPS       policy steps / seconds of the training loop (the progress line: process start excluded)
  rollout SPS    Time/sps_env_interaction (the player's / each rank's rollout phase)
  train SPS      Time/sps_train (the update phase, per trainer)
  sync ms        Time/weights_sync_ms, the weight broadcast measured on the sending trainer (decoupled only)
On a machine with fewer cores than processes this measures overhead, not scaling (see howto/run_distributed.md).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [
    ("ppo, 1 process", ["ppo", "--devices", "1", "--num_envs", "4"]),
    ("ppo, 2 processes", ["ppo", "--devices", "2", "--num_envs", "2", "--minibatch_size", "64"]),
    ("ppo_decoupled, 2 processes", ["ppo_decoupled", "--devices", "2", "--num_envs", "4"]),
    ("ppo_decoupled, 3 processes", ["ppo_decoupled", "--devices", "3", "--num_envs", "4", "--minibatch_size", "64"]),
]
PROGRESS_RE = re.compile(r"step (\d+)/\d+\s+([\d,]+) SPS.*\(([\d.]+) s\)")


def run_config(args: list[str], total_steps: int, threads: int) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "sheeprl.py"),
            *args,
            "--env_id",
            "CartPole-v1",
            "--seed",
            "1",
            "--total_steps",
            str(total_steps),
            "--eval_episodes",
            "0",
            "--num_threads",
            str(threads),
            "--checkpoint.every",
            "0",
            "--save_last",
            "false",
            "--metric.log_every",
            "2048",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        match = PROGRESS_RE.findall(proc.stdout)[-1]
        (events,) = list(Path(tmp).rglob("events.out.tfevents.*"))
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()

        def mean(tag: str) -> float:
            if tag not in acc.Tags()["scalars"]:
                return float("nan")
            values = [e.value for e in acc.Scalars(tag)]
            return sum(values) / len(values)

        return {
            "wall": wall,
            "loop_s": float(match[2]),
            "loop_sps": int(match[0]) / float(match[2]),
            "rollout": mean("Time/sps_env_interaction"),
            "train": mean("Time/sps_train"),
            "sync_ms": mean("Time/weights_sync_ms"),
        }


def _broadcast_worker(rank: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    lines = []
    for numel in sizes:
        flat = torch.randn(numel)
        dist.broadcast(flat, src=1)  # warm-up: connection set-up and buffers
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dist.broadcast(flat, src=1)
        dist.barrier()
        lines.append(f"{numel} {(time.perf_counter() - t0) / repeats}")
    if rank == 0:
        Path(out).write_text("\n".join(lines))
    dist.destroy_process_group()


def broadcast_cost(sizes: list[int], repeats: int) -> dict[int, float]:
    """Seconds per float32 broadcast of ``numel`` parameters between two local gloo processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.txt")
        mp.spawn(_broadcast_worker, args=(port, sizes, repeats, out), nprocs=2, join=True)
        return {int(n): float(t) for n, t in (line.split() for line in Path(out).read_text().splitlines())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total_steps", type=int, default=20_480)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip_runs", action="store_true", help="only measure the broadcast")
    p.add_argument("--skip_broadcast", action="store_true", help="only measure the runs")
    args = p.parse_args()

    if not args.skip_runs:
        print(
            f"PPO CartPole-v1, 512 transitions per update, {args.total_steps} steps, {args.threads} thread(s) per "
            f"process, {os.cpu_count()} cores"
        )
        print(f"  {'':28}{'loop SPS':>10}{'rollout SPS':>13}{'train SPS':>11}{'sync ms':>9}{'wall s':>8}")
        for name, cfg in CONFIGS:
            r = run_config(cfg, args.total_steps, args.threads)
            print(
                f"  {name:28}{r['loop_sps']:10,.0f}{r['rollout']:13,.0f}{r['train']:11,.0f}"
                f"{r['sync_ms']:9.2f}{r['wall']:8.1f}",
                flush=True,
            )

    if not args.skip_broadcast:
        # 9,155 = PPO's CartPole actor-critic (2 x 64 tanh MLPs); the larger sizes stand for CNN/large MLP agents.
        sizes = [9_155, 100_000, 1_000_000, 10_000_000]
        times = broadcast_cost(sizes, repeats=20)
        print("weight broadcast, first trainer -> player (gloo, loopback, float32)")
        for numel, t in times.items():
            mb = numel * 4 / 1e6
            print(f"  {numel:>12,} params {mb:9.3f} MB {t * 1e3:9.3f} ms  {mb / t / 1e3:7.2f} GB/s")


if __name__ == "__main__":
    main()
