"""Wall time of a 3-seed sweep at --jobs 1 and --jobs 2 (interleaved, so both see the same machine load).

    python benchmarks/sweep_walltime.py [--total_steps 8192] [--repeats 2]

Each sweep is `python sheeprl.py ppo --env_id CartPole-v1 --total_steps N --multirun seed=1,2,3 --jobs J`
(process start, 3 runs with their final evaluation, the table); prints every sweep's wall time, the medians
and the ratio jobs1 / jobs2 (about 2 on 2 idle cores when the runs dominate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total_steps", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep_walltime_"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"3-seed PPO CartPole-v1 sweep, {args.total_steps} steps per run, {cores} cores available")
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.repeats):
        for jobs in (1, 2):
            cmd = [sys.executable, str(ROOT / "sheeprl.py"), "ppo", "--env_id", "CartPole-v1",
                   "--total_steps", str(args.total_steps), "--eval_episodes", "5", "--multirun", "seed=1,2,3",
                   "--jobs", str(jobs), "--sweep_dir", str(tmp / f"r{r}_j{jobs}")]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[jobs].append(time.perf_counter() - t0)
            print(f"  round {r}: --jobs {jobs}: {times[jobs][-1]:.1f} s", flush=True)
    m1, m2 = statistics.median(times[1]), statistics.median(times[2])
    print(f"--jobs 1: {m1:.1f} s, --jobs 2: {m2:.1f} s (medians); jobs1 / jobs2 = {m1 / m2:.2f}x")


if __name__ == "__main__":
    main()
