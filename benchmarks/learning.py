"""Learning benchmark: (algorithm, task, budget) entries over N seeds -> a markdown table and one plot per task.

    python benchmarks/learning.py                                  # the CPU set, seeds 1-5
    python benchmarks/learning.py ppo_cartpole ppo_decoupled_cartpole --seeds 1 2 3 --jobs 2
    python benchmarks/learning.py --list                           # the registry
    python benchmarks/learning.py sac_pendulum --out /tmp/bench    # table + plots written there
    python benchmarks/learning.py ppo_cartpole --runs runs/ppo     # keep the runs' logs
    python benchmarks/learning.py --from runs/ppo runs/ppo_dec     # table + plots of kept runs, no training

Every run is ``python sheeprl.py ...`` as a user types it (the entry's flags plus ``--seed``,
``--total_steps``, ``--log_root``), so the numbers are those of the CLI, defaults included. Runs go in
parallel, as many at once as the cores allow (a decoupled entry counts its processes). For each entry the
table gives, over seeds, the mean, std and min of

* the final greedy return (``Test/rew_avg``, the evaluation that ends every run), and
* the policy step at which the training return (``Rewards/rew_avg``, the stochastic policy's episodes, the
  curve a user watches in TensorBoard) first reaches the entry's threshold ("never" counts as the budget,
  and the table says how many seeds got there), and
* whether it stayed there: the lowest training return from that step to the end of the run, and how many
  seeds never fell below the entry's ``floor`` (a collapse is a fall below the floor),


beside published anchors with their sources. Plots: mean and min..max band of ``Rewards/rew_avg`` per task.
Add an algorithm with one :class:`Entry` in ``REGISTRY``; tests reuse :func:`run_entry` on fewer seeds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Entry:
    """One benchmark line: what to run, for how long, and what counts as solved."""

    algo: str  # the algorithm name or an exp= preset as the first CLI argument(s)
    task: str  # the env id, used to group entries in one plot
    args: tuple[str, ...]  # CLI flags/overrides after the algorithm
    budget: int  # total policy steps
    threshold: float  # training return (Rewards/rew_avg) that counts as solved
    processes: int = 1  # processes one run uses (decoupled: player + trainers)
    log_every: int = 1024  # Rewards/rew_avg resolution in policy steps
    # The criteria read the training return averaged over the last `window` logged points (1: the raw curve). A
    # 1024-step window of 4 CartPole envs may hold a single lucky 500-step episode of a policy that averages 300.
    window: int = 1
    floor: Optional[float] = None  # after reaching the threshold the return must stay >= floor (None: unchecked)
    anchors: tuple[str, ...] = field(default_factory=tuple)  # published figures, with their sources


SB3_ZOO = "SB3 RL Zoo benchmark.md (DLR-RM/rl-baselines3-zoo), one run, deterministic eval"
REGISTRY: dict[str, Entry] = {
    "ppo_cartpole": Entry(
        "ppo",
        "CartPole-v1",
        ("--env_id", "CartPole-v1"),  # the defaults a new user gets, no preset
        100_000,
        475.0,
        window=5,
        floor=400.0,
        anchors=(
            f"SB3 PPO: 500.0 +- 0.0 at 100k ({SB3_ZOO})",
            "SheepRL 0.8.4 defaults: training return 475 at ~15k steps (measured in issue 13, seeds 1-3)",
            "Wall seconds from process start to a training return of 475, own defaults, 4 envs (issue 13, seeds 1-3, "
            "quiet machine): SheepRL 0.8.4 38.7-42.8 s, Stable-Baselines3 46.3-56.3 s",
        ),
    ),
    "ppo_decoupled_cartpole": Entry(
        "ppo_decoupled",
        "CartPole-v1",
        ("--env_id", "CartPole-v1", "--devices", "3"),
        100_000,
        475.0,
        processes=3,
        window=5,
        floor=400.0,
        anchors=("SheepRL 0.8.4 ppo_decoupled: peak 245 at 150k (measured in issue 13)",),
    ),
    "sac_pendulum": Entry(
        "exp=sac_pendulum",
        "Pendulum-v1",
        (),
        15_000,
        -250.0,
        log_every=1000,
        anchors=(f"SB3 SAC: -202.0 +- 60.5 at 20k on Pendulum-v0 ({SB3_ZOO})",),
    ),  # fmt: skip
    "sac_decoupled_pendulum": Entry(
        "exp=sac_decoupled_pendulum", "Pendulum-v1", (), 15_000, -250.0, processes=2, log_every=1000
    ),
    "td3_pendulum": Entry("exp=td3_pendulum", "Pendulum-v1", (), 15_000, -250.0, log_every=1000),
    "droq_pendulum": Entry("exp=droq_pendulum", "Pendulum-v1", (), 15_000, -250.0, log_every=1000),
    # Value-based presets; their tests check the greedy evaluation (Test/rew_avg) instead, see the algorithm READMEs.
    "dqn_cartpole": Entry("exp=dqn_cartpole", "CartPole-v1", (), 50_000, 475.0, log_every=1000),
    "rainbow_cartpole": Entry("exp=rainbow_cartpole", "CartPole-v1", (), 50_000, 475.0, log_every=1000),
    # MinAtar Breakout (issue 9's bar: greedy mean >= 5 within 300k steps; random play ~0.5), greedy every 50k.
    **{
        f"{algo}_minatar": Entry(
            f"exp={algo}_minatar",
            "MinAtar/Breakout-v1",
            ("--eval_every", "50000"),
            300_000,
            5.0,
            log_every=5000,
        )
        for algo in ("dqn", "rainbow", "ppo")
    },
}
CPU_SET = ("ppo_cartpole", "ppo_decoupled_cartpole", "sac_pendulum", "td3_pendulum", "droq_pendulum")


@dataclass
class Result:
    entry: str
    seed: int
    returncode: int
    wall_s: float
    final_greedy: Optional[float]
    first_step: Optional[int]  # first logged step whose windowed training return >= threshold (None: never)
    curve: list[tuple[int, float]]  # (step, Rewards/rew_avg)
    run_dir: Optional[str]
    stderr_tail: str = ""
    min_after: Optional[float] = None  # lowest windowed training return from first_step to the end
    raw_first: Optional[int] = None  # first logged step with the raw Rewards/rew_avg >= threshold
    # Wall seconds from the process's start to the event of raw_first (issue 13's measure: what a user waits).
    raw_first_s: Optional[float] = None

    @property
    def stayed(self) -> bool:
        """Reached the threshold and never fell below the entry's floor afterwards (no floor: reached)."""
        floor = REGISTRY[self.entry].floor
        return self.first_step is not None and (floor is None or self.min_after >= floor)


def criteria(
    curve: list[tuple[int, float]], threshold: float, window: int = 1
) -> tuple[Optional[int], Optional[float], Optional[int]]:
    """(first step at which the mean of the last ``window`` points >= threshold, the lowest such mean from there to
    the end, first step at which a single point >= threshold); None where the threshold is never reached."""
    values = np.asarray([v for _, v in curve], dtype=np.float64)
    smooth = np.asarray([values[max(0, i - window + 1) : i + 1].mean() for i in range(len(values))])
    raw_first = next((s for s, v in curve if v >= threshold), None)
    hits = np.flatnonzero(smooth >= threshold)
    if not hits.size:
        return None, None, raw_first
    return curve[hits[0]][0], float(smooth[hits[0] :].min()), raw_first


def _scalar_events(run_dir: Path) -> dict[str, list]:
    """Every scalar event of a run (step, value, wall_time), by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def run_entry(
    name: str,
    seed: int,
    log_root: Path,
    extra: tuple[str, ...] = (),
    budget: Optional[int] = None,
    timeout: float = 3600,
) -> Result:
    """One seed of one entry, as a user runs it; ``budget`` replaces the entry's, ``extra`` flags are appended."""
    e = REGISTRY[name]
    cmd = [sys.executable, str(ROOT / "sheeprl.py"), e.algo, *e.args, "--seed", str(seed)]
    cmd += ["--total_steps", str(budget or e.budget), "--metric.log_every", str(e.log_every), "--eval_episodes", "10"]
    cmd += ["--num_threads", "1", "--checkpoint_every", "0", "--log_root", str(log_root), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.time()
    (log_root / "started.txt").write_text(f"{started:.3f}\n")  # for --from: seconds to threshold from this start
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=log_root)
    wall = time.perf_counter() - t0
    runs = sorted(p.parent for p in log_root.rglob("config.yaml"))
    if proc.returncode != 0 or not runs:
        return Result(name, seed, proc.returncode, wall, None, None, [], None, proc.stderr[-2000:])
    return read_run(name, seed, runs[-1], wall, started)


def read_run(name: str, seed: int, run_dir: Path, wall: float, started: Optional[float] = None) -> Result:
    """The criteria of one finished run, from its TensorBoard logs (``started``: the process's start, epoch s)."""
    e = REGISTRY[name]
    events = _scalar_events(run_dir)
    train = events.get("Rewards/rew_avg", [])
    curve = [(int(ev.step), float(ev.value)) for ev in train]
    first, min_after, raw_first = criteria(curve, e.threshold, e.window)
    greedy = events.get("Test/rew_avg", [])
    final = float(greedy[-1].value) if greedy else None
    reached_at = next((ev.wall_time for ev in train if ev.value >= e.threshold), None)
    raw_first_s = reached_at - started if reached_at is not None and started is not None else None
    return Result(name, seed, 0, wall, final, first, curve, str(run_dir), "", min_after, raw_first, raw_first_s)


def read_kept(folder: Path) -> list[Result]:
    """The finished runs a ``--runs`` folder holds (ENTRY/seedN/...); wall time from the files' timestamps."""
    out = []
    for name in REGISTRY:
        for seed_dir in sorted((folder / name).glob("seed*"), key=lambda d: int(d.name[4:])):
            configs = sorted(seed_dir.rglob("config.yaml"))
            events = sorted(seed_dir.rglob("events.out.tfevents.*"))
            if configs and events:
                saved = seed_dir / "wall_s.txt"  # written by run_many; else the files' timestamps
                wall = (
                    float(saved.read_text())
                    if saved.exists()
                    else events[-1].stat().st_mtime - configs[-1].stat().st_mtime
                )
                start_file = seed_dir / "started.txt"
                started = float(start_file.read_text()) if start_file.exists() else None
                res = read_run(name, int(seed_dir.name[4:]), configs[-1].parent, wall, started)
                if res.final_greedy is not None:  # an interrupted run has no final evaluation
                    out.append(res)
    return out


def run_many(
    names: list[str],
    seeds: list[int],
    root: Path,
    jobs: int,
    extra: tuple[str, ...] = (),
    budget: Optional[int] = None,
) -> list[Result]:
    """Every (entry, seed), ``jobs`` cores' worth at a time (a run of P processes takes P slots)."""
    import threading

    free = [jobs]  # cores not taken; a run takes all its slots at once (one at a time could deadlock two runs)
    cond = threading.Condition()

    def one(name: str, seed: int) -> Result:
        need = min(REGISTRY[name].processes, jobs)
        with cond:
            cond.wait_for(lambda: free[0] >= need)
            free[0] -= need
        try:
            folder = root / name / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            res = run_entry(name, seed, folder, extra, budget)
            (folder / "wall_s.txt").write_text(f"{res.wall_s:.1f}\n")  # for --from
            status = "ok" if res.returncode == 0 else f"FAILED rc={res.returncode}"
            print(f"{name} seed {seed}: {status}, greedy {res.final_greedy}, threshold at {res.first_step}, "
                  f"lowest after {res.min_after}, {res.wall_s:.0f} s", flush=True)  # fmt: skip
            return res
        finally:
            with cond:
                free[0] += need
                cond.notify_all()

    with ThreadPoolExecutor(max_workers=max(1, len(names) * len(seeds))) as pool:
        futures = [pool.submit(one, n, s) for n in names for s in seeds]
        return [f.result() for f in futures]


def _stats(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std()), float(a.min())


def summarize(results: list[Result]) -> dict[str, dict]:
    """Per entry: greedy (mean, std, min), steps to threshold (mean, std, min; never = budget), reached k/N."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r.entry for r in results):
        rs = [r for r in results if r.entry == name]
        ok = [r for r in rs if r.returncode == 0 and r.final_greedy is not None]
        e = REGISTRY[name]
        steps = [r.first_step if r.first_step is not None else e.budget for r in ok]
        out[name] = {
            "seeds": len(rs),
            "per_seed": [
                f"seed {r.seed}: "
                + (
                    f"FAILED rc={r.returncode}"
                    if r not in ok
                    else f"{r.first_step or 'never'}, "
                    f"{'-' if r.min_after is None else f'{r.min_after:.0f}'}, {r.final_greedy:.0f}"
                )
                for r in rs
            ],  # fmt: skip
            "failed": len(rs) - len(ok),
            "greedy": _stats([r.final_greedy for r in ok]) if ok else None,
            "steps": _stats(steps) if ok else None,
            "steps_max": float(max(steps)) if ok else float("nan"),
            "reached": sum(r.first_step is not None for r in ok),
            "stayed": sum(r.stayed for r in ok),
            "min_after": _stats([r.min_after for r in ok if r.min_after is not None])
            if any(r.min_after is not None for r in ok)
            else None,
            "raw_first": float(np.mean([r.raw_first if r.raw_first is not None else e.budget for r in ok]))
            if ok
            else None,
            "wall": float(np.mean([r.wall_s for r in ok])) if ok else None,
            # Seconds from process start to the first raw point >= threshold, over the seeds that got there.
            "raw_first_s": [r.raw_first_s for r in ok if r.raw_first_s is not None],
        }
    return out


def markdown(summary: dict[str, dict], seeds: list[int]) -> str:
    """The results table: one row per entry, the criteria spelled out above it."""
    lines = [
        f"Seeds {', '.join(map(str, seeds))}. Greedy: final `Test/rew_avg` (10 episodes). The criteria read the "
        "training return `Rewards/rew_avg` (the stochastic policy's episodes, logged every 1,024 steps) averaged over "
        "the last `window` logged points. Steps: first policy step at which that average >= threshold (a seed that "
        "never gets there counts as the budget; `raw` is the first single point >= threshold, the measure used "
        "before). Lowest after: the lowest average from that step to the end of the run; stayed: seeds whose lowest "
        "average after reaching the threshold is >= floor (no collapse). Mean, std, min over seeds.",
        "",
        "| entry | task | budget | threshold | window | greedy mean | greedy std | greedy min | steps mean | steps std "
        "| steps min | steps max | raw steps mean | reached | floor | lowest after: mean | lowest after: min | stayed "
        "| wall s/run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        e = REGISTRY[name]
        n = s["seeds"] - s["failed"]
        g = s["greedy"] or (float("nan"),) * 3
        st = s["steps"] or (float("nan"),) * 3
        lo = s["min_after"] or (float("nan"),) * 3
        floor = f"{e.floor:g}" if e.floor is not None else "-"
        stayed = f"{s['stayed']}/{n}" if e.floor is not None else "-"
        lines.append(
            f"| {name} | {e.task} | {e.budget:,} | {e.threshold:g} | {e.window} | {g[0]:.1f} | {g[1]:.1f} | {g[2]:.1f} "
            f"| {st[0]:,.0f} | {st[1]:,.0f} | {st[2]:,.0f} | {s['steps_max']:,.0f} | {s['raw_first'] or float('nan'):,.0f} "
            f"| {s['reached']}/{n} | {floor} | {lo[0]:.1f} | {lo[2]:.1f} | {stayed} | {s['wall'] or float('nan'):.0f} |"
        )
    lines += ["", "Per seed (steps to threshold, lowest after, greedy):", ""]
    for name, s in summary.items():
        lines.append(f"- {name}: " + "; ".join(s["per_seed"]))
    timed = {n: s["raw_first_s"] for n, s in summary.items() if s.get("raw_first_s")}
    if timed:
        lines += ["", "Wall seconds from process start to the first raw training return >= threshold (seeds that got "
                  "there; what a user waits, start-up included):", ""]  # fmt: skip
        for name, secs in timed.items():
            lines.append(
                f"- {name}: mean {np.mean(secs):.1f} s, max {max(secs):.1f} s ({', '.join(f'{x:.1f}' for x in secs)})"
            )
    anchors = [(n, a) for n in summary for a in REGISTRY[n].anchors]
    if anchors:
        lines += ["", "Published anchors:", ""] + [f"- {n}: {a}" for n, a in anchors]
    return "\n".join(lines) + "\n"


def plot(results: list[Result], out: Path) -> list[Path]:
    """One PNG per task: per entry, the mean of Rewards/rew_avg over seeds and its min..max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tasks = dict.fromkeys(REGISTRY[r.entry].task for r in results)
    for task in tasks:
        fig, ax = plt.subplots(figsize=(7, 4))
        thresholds, floors = set(), set()
        for name in dict.fromkeys(r.entry for r in results if REGISTRY[r.entry].task == task):
            curves = [r.curve for r in results if r.entry == name and r.curve]
            if not curves:
                continue
            e = REGISTRY[name]
            grid = np.arange(e.log_every, e.budget + 1, e.log_every)
            ys = np.stack([np.interp(grid, [s for s, _ in c], [v for _, v in c]) for c in curves])
            ax.plot(grid, ys.mean(0), label=f"{name} ({len(curves)} seeds)")
            ax.fill_between(grid, ys.min(0), ys.max(0), alpha=0.2)
            thresholds.add(e.threshold)
            if e.floor is not None:
                floors.add(e.floor)
        for t in thresholds:
            ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
        for f in floors:  # a fall below it after reaching the threshold is a collapse
            ax.axhline(f, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("policy steps")
        ax.set_ylabel("training return (Rewards/rew_avg)")
        ax.set_title(f"{task}: mean and min..max over seeds")
        ax.legend(fontsize=8)
        path = out / f"learning_{task.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("entries", nargs="*", help=f"registry names (default: the CPU set {', '.join(CPU_SET)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="cores to fill (default: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the table and plots")
    p.add_argument("--list", action="store_true", help="print the registry and exit")
    p.add_argument(
        "--runs", help="keep the runs' logs (TensorBoard, configs) in this folder (default: a temporary one)"
    )
    p.add_argument("--from", dest="kept", nargs="+", metavar="DIR", help="no training: the table and plots of the "
                   "finished runs that earlier --runs folders hold (e.g. entries run on different seeds)")  # fmt: skip
    args = p.parse_args(argv)
    if args.list:
        for name, e in REGISTRY.items():
            print(f"{name:24s} {e.algo} {' '.join(e.args)}  budget {e.budget:,}  threshold {e.threshold:g}")
        return 0
    if args.kept:
        results = [r for d in args.kept for r in read_kept(Path(d))]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table = markdown(summarize(results), sorted({r.seed for r in results}))
        (out / "learning.md").write_text(table)
        print(table)
        print("written:", out / "learning.md", *plot(results, out))
        return 0
    names = args.entries or list(CPU_SET)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        print(f"learning.py: error: unknown entries {unknown}; see --list", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sheeprl_learning_") as tmp:
        results = run_many(names, args.seeds, Path(args.runs or tmp), args.jobs)
        table = markdown(summarize(results), args.seeds)
        pngs = plot(results, out)
    (out / "learning.md").write_text(table)
    print(table)
    print("written:", out / "learning.md", *pngs)
    failed = [r for r in results if r.returncode != 0]
    for r in failed:
        print(f"{r.entry} seed {r.seed} failed:\n{r.stderr_tail}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
