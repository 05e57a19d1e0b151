"""``python sheeprl.py <algo> --multirun KEY=A,B ...`` (or ``-m``): every combination, one run folder each.

Sweep values use Hydra's syntax (``seed=1,2,3``, ``seed=range(1,4)``, ``algo.optimizer.lr=1e-4,3e-4``,
``--num_envs 4,8``); keys that are not swept are shared by all runs. Every combination is validated
before the first run starts. The runs are ordinary runs (own process, own folder) grouped under one
sweep folder (``--sweep_dir``, default ``logs/sweeps/<algo>/<env>/<date_time>``); ``--jobs N`` runs N
at a time, each with ``cores / N`` torch threads unless ``fabric.num_threads`` is given. A failed run
is reported and the sweep goes on. At the end a table (one row per combination of the non-seed keys:
mean, std, min and max over seeds of the final ``Test/rew_avg``) is printed and written to
``results.csv``, one row per run to ``runs.csv``; ``python sheeprl.py plot <sweep> --group`` draws one
mean-and-band curve per combination.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from sheeprl.cli import (
    USER_CONFIG_DIRS,
    UsageError,
    _quote,
    _split_algo,
    argv_to_overrides,
    build_config,
    resolve_flag,
    schema_fields,
)

METRIC = "Test/rew_avg"
MULTIRUN_FLAGS = ("--multirun", "-m")
# Each run is one process running the CLI: independent of the folder the sweep is started from.
CHILD = [sys.executable, "-c", "import sys; from sheeprl.cli import run_cli; sys.exit(run_cli())"]


@dataclass
class RunSpec:
    """One run of a sweep or a tune study: the CLI arguments and where it writes."""

    index: int
    algo: str
    args: list[str]  # Hydra overrides (key=value) of this run
    name: str  # run_name
    params: dict[str, str] = field(default_factory=dict)  # swept key -> value
    proc: Optional[subprocess.Popen] = None
    log: Any = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: Optional[int] = None
    run_dir: Optional[Path] = None
    value: float = float("nan")


# --------------------------------------------------------------------------------------------- expanding


def take_option(argv: list[str], name: str, default: Optional[str] = None) -> tuple[Optional[str], list[str]]:
    """Remove ``--name VALUE`` / ``--name=VALUE`` from argv; returns (value, rest)."""
    rest, value, i = [], default, 0
    while i < len(argv):
        tok = argv[i]
        if tok == name:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value")
            value, i = argv[i + 1], i + 2
            continue
        if tok.startswith(name + "="):
            value = tok.split("=", 1)[1]
        else:
            rest.append(tok)
        i += 1
    return value, rest


def _sweep_tokens(rest: Sequence[str], fields: Sequence[Any]) -> list[str]:
    """``--flag a,b`` becomes ``key=a,b`` (a sweep); every other token is left for argv_to_overrides."""
    out: list[str] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("--") and "=" not in tok and i + 1 < len(rest) and "," in rest[i + 1]:
            f = resolve_flag(tok[2:], fields)
            if not f.is_list:
                out.append(f"{f.key}={rest[i + 1]}")
                i += 2
                continue
        if tok.startswith("--") and "=" in tok and "," in tok:
            name, _, value = tok[2:].partition("=")
            f = resolve_flag(name, fields)
            if not f.is_list:
                out.append(f"{f.key}={value}")
                i += 1
                continue
        out.append(tok)
        i += 1
    return out


def expand(algo: str, rest: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(fixed overrides, [(swept key, values)]) of a multirun command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sheeprl.registry import get_algorithm

    spec = get_algorithm(algo)
    if spec is None:
        build_config(algo, [])  # raises the CLI's unknown-algorithm error
    fields = schema_fields(spec.schema)
    overrides = argv_to_overrides(_sweep_tokens(rest, fields), fields)
    parser = OverridesParser.create()
    fixed: list[str] = []
    swept: list[tuple[str, list[str]]] = []
    for text in overrides:
        try:
            (parsed,) = parser.parse_overrides([text])
        except Exception as err:
            raise UsageError(f"cannot parse '{text}': {str(err).strip().splitlines()[0]}") from None
        key = text.split("=", 1)[0]
        if parsed.is_sweep_override():
            values = list(parsed.sweep_string_iterator())
            if not values:
                raise UsageError(f"'{text}' sweeps over no value")
            if key.lstrip("+~") in ("log_root", "run_name"):
                raise UsageError(f"{key} cannot be swept: every run of a sweep gets its own folder in the sweep folder")
            swept.append((key, values))
        else:
            fixed.append(text)
    return fixed, swept


def _leaf(key: str) -> str:
    return key.lstrip("+~").split(".")[-1]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-.=+,_" else "-" for c in text)


def combination_name(params: dict[str, str]) -> str:
    """``{"algo.optimizer.lr": "1e-4", "seed": "2"}`` -> ``lr=1e-4_seed2`` (plot's --group drops the seed part)."""
    parts = [f"{_leaf(k)}={v}" for k, v in params.items() if k.lstrip("+~") != "seed"]
    if "seed" in {k.lstrip("+~") for k in params}:
        parts.append(f"seed{next(v for k, v in params.items() if k.lstrip('+~') == 'seed')}")
    return _safe("_".join(parts)) or "run"


def plan(algo: str, rest: Sequence[str]) -> list[RunSpec]:
    """Every combination as a validated RunSpec (a UsageError names the combination that is wrong)."""
    fixed, swept = expand(algo, rest)
    if not swept:
        raise UsageError("--multirun needs at least one swept key, e.g. seed=1,2,3 or algo.optimizer.lr=1e-4,3e-4")
    keys = [k for k, _ in swept]
    runs = []
    for i, values in enumerate(itertools.product(*[v for _, v in swept])):
        params = dict(zip(keys, values, strict=True))
        args = [*fixed, *(f"{k}={v}" for k, v in params.items())]
        try:
            build_config(algo, args)
        except UsageError as err:
            combo = " ".join(f"{k.lstrip('+~')}={v}" for k, v in params.items())
            raise UsageError(f"combination {combo}: {err}") from None
        runs.append(RunSpec(i, algo, args, f"{algo}_{combination_name(params)}", params))
    return runs


# --------------------------------------------------------------------------------------------- running


def child_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if USER_CONFIG_DIRS:  # --config_dir of the parent: the children find the same presets
        env["SHEEPRL_CONFIG_DIR"] = os.pathsep.join(str(d) for d in reversed(USER_CONFIG_DIRS))
    return env


def threads_for(args: Sequence[str], jobs: int) -> tuple[int, list[str]]:
    """Torch threads per run at ``jobs`` runs at a time, and the override that sets them (unless given)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for a in args:
        if a.split("=", 1)[0].lstrip("+~") == "fabric.num_threads":
            return int(a.split("=", 1)[1]), []
    threads = max(1, cores // max(1, jobs))
    return threads, [f"fabric.num_threads={threads}"]


def start(run: RunSpec, root: Path, jobs: int, extra: Sequence[str] = ()) -> None:
    """Launch one run as its own process, its output into ``<root>/output/<name>.log``."""
    threads, thread_args = threads_for(run.args, jobs)
    (root / "output").mkdir(parents=True, exist_ok=True)
    run.log = open(root / "output" / f"{run.name}.log", "w")  # noqa: SIM115 (closed in finish_run)
    where = [f"log_root={_quote(str(root))}", f"run_name={_quote(run.name)}"]
    cmd = [*CHILD, run.algo, *run.args, *thread_args, *where, *extra]
    run.log.write(" ".join(cmd[3:]) + "\n")
    run.log.flush()
    run.started = time.perf_counter()
    run.proc = subprocess.Popen(cmd, stdout=run.log, stderr=subprocess.STDOUT, env=child_env(threads))


def finish_run(run: RunSpec, root: Path, metric: str) -> None:
    """After the process ended: its folder and its final ``metric``."""
    assert run.proc is not None
    run.returncode = run.proc.returncode
    run.seconds = time.perf_counter() - run.started
    run.log.close()
    run.run_dir = find_run_dir(root, run.name)
    if run.run_dir is not None:
        run.value = final_value(run.run_dir, metric)


def find_run_dir(root: Path, name: str) -> Optional[Path]:
    """The run folder ``<root>/<algo>/<env>/<stamp>_<name>`` (newest if several)."""
    found = [p.parent for p in root.glob("*/*/*/config.yaml") if p.parent.name.endswith("_" + name)]
    return max(found, key=lambda p: p.name) if found else None


def evaluations(run_dir: Path, metric: str = METRIC) -> list[tuple[int, float]]:
    """[(policy step, value)] of ``metric`` in a run folder's TensorBoard events."""
    from sheeprl.plot import PlotError, read_scalars

    try:
        steps, values, _ = read_scalars(run_dir, metric)
    except PlotError:
        return []
    return [(int(s), float(v)) for s, v in zip(steps, values, strict=True)]


def final_value(run_dir: Path, metric: str = METRIC) -> float:
    points = evaluations(run_dir, metric)
    return points[-1][1] if points else float("nan")


def run_all(runs: list[RunSpec], root: Path, jobs: int, metric: str) -> bool:
    """Run everything, ``jobs`` at a time; False when interrupted (Ctrl-C: the running runs save and stop)."""
    pending, running, done = list(runs), [], 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                start(run, root, jobs)
                running.append(run)
                print(f"[{run.index + 1}/{len(runs)}] started {run.name}", flush=True)
            time.sleep(0.2)
            for run in [r for r in running if r.proc is not None and r.proc.poll() is not None]:
                running.remove(run)
                finish_run(run, root, metric)
                done += 1
                status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode}, see output/{run.name}.log)"
                print(
                    f"[{done}/{len(runs)}] {run.name}: {status}, final {metric} {run.value:.2f} ({run.seconds:.0f} s)",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the running runs (each saves a checkpoint)", flush=True)
        for run in running:
            if run.proc is not None and run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
        for run in running:
            try:
                run.proc.wait(timeout=60)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                run.proc.kill()  # type: ignore[union-attr]
                run.proc.wait()  # type: ignore[union-attr]
            finish_run(run, root, metric)
        return False
    return True


# --------------------------------------------------------------------------------------------- results


def summarize(runs: Sequence[RunSpec], metric: str) -> tuple[list[str], list[list[Any]]]:
    """One row per combination of the non-seed keys: the keys' values, seeds ok/total, mean, std, min, max."""
    keys = [k for k in runs[0].params if k.lstrip("+~") != "seed"] if runs else []
    groups: dict[tuple[str, ...], list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(tuple(run.params[k] for k in keys), []).append(run)
    header = [k.lstrip("+~") for k in keys] + ["runs_ok", "runs", f"{metric} mean", "std", "min", "max"]
    rows = []
    for values, members in groups.items():
        ok = [r.value for r in members if r.returncode == 0 and not math.isnan(r.value)]
        n = len(ok)
        mean = sum(ok) / n if n else float("nan")
        std = math.sqrt(sum((v - mean) ** 2 for v in ok) / n) if n else float("nan")
        rows.append([*values, n, len(members), mean, std, min(ok, default=float("nan")), max(ok, default=float("nan"))])
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(header))]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in cells]
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def default_sweep_dir(algo: str, env_id: str) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path("logs") / "sweeps" / algo / env_id.replace("/", "_") / stamp


def run_sweep(argv: Sequence[str]) -> int:
    """Entry of ``--multirun``; UsageError before anything runs, then exit 0 (all ok) or 1 (some failed)."""
    argv = [a for a in argv if a not in MULTIRUN_FLAGS]
    jobs_text, argv = take_option(argv, "--jobs", "1")
    sweep_dir, argv = take_option(argv, "--sweep_dir")
    metric, argv = take_option(argv, "--sweep_metric", METRIC)
    try:
        jobs = int(jobs_text or "1")
    except ValueError:
        raise UsageError(f"--jobs needs a whole number, got '{jobs_text}'") from None
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    algo, rest = _split_algo(argv)
    if algo is None:
        raise UsageError("no algorithm given; run 'python sheeprl.py --sheeprl_help' to list them")
    runs = plan(algo, rest)
    _, cfg = build_config(algo, runs[0].args)
    root = Path(sweep_dir) if sweep_dir else default_sweep_dir(algo, str(cfg.env.id))
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"sweep folder {root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.txt").write_text(
        "python sheeprl.py " + " ".join(argv) + "\n" + "".join(f"{r.name}: {' '.join(r.args)}\n" for r in runs)
    )
    print(f"sweep of {len(runs)} runs, {jobs} at a time, into {root}", flush=True)
    t0 = time.perf_counter()
    completed = run_all(runs, root, jobs, metric)
    wall = time.perf_counter() - t0
    finished = [r for r in runs if r.returncode is not None]
    header, rows = summarize(finished, metric)
    write_csv(root / "results.csv", header, rows)
    write_csv(
        root / "runs.csv",
        ["run", *[k.lstrip("+~") for k in runs[0].params], "exit_code", "seconds", metric, "run_dir"],
        [[r.name, *r.params.values(), r.returncode, round(r.seconds, 1), r.value, r.run_dir] for r in finished],
    )
    failed = [r for r in finished if r.returncode != 0]
    print(f"\n{len(finished)} runs in {wall:.0f} s ({len(failed)} failed), final {metric} over seeds:")
    print(format_table(header, rows))
    print(f"\ntable: {root / 'results.csv'}\ncurves: python sheeprl.py plot {root} --group --tag {metric}")
    if not completed:
        return 130
    return 1 if failed else 0
