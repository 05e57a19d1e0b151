"""``python sheeprl.py plot``: learning curves from TensorBoard event files, as a PNG.

Each argument is a run folder or any folder above run folders (every folder holding event files
is one run). x is the policy step TensorBoard logged the value at, y the chosen tag. Runs are
drawn one curve each, labelled by their run name; with ``--group`` the runs that differ only in
their seed become one curve: the mean over seeds with a shaded band (std, or min..max).
Rendering is headless (matplotlib's Agg backend).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np

EXIT_USAGE = 2
_STAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_")
_SEED_RE = re.compile(r"_?seed-?\d+")
# Keys that differ between seeds of one setting (or between copies of one run) without changing the setting.
_NOT_SETTING = {"seed", "run_name", "log_root"}


class PlotError(Exception):
    """A user-caused error: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PlotError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python sheeprl.py plot",
        description="Plot learning curves (x: policy steps, y: a TensorBoard tag) of one or more runs into a PNG.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding run folders")
    p.add_argument("--tag", default="Rewards/rew_avg", help="scalar tag to plot (default: Rewards/rew_avg)")
    p.add_argument("--out", default="curves.png", help="PNG file to write (default: curves.png)")
    p.add_argument("--group", action="store_true", help="average runs that differ only in their seed, with a band")
    p.add_argument("--band", choices=("std", "minmax"), default="std", help="band of a group: mean +- std or min..max")
    p.add_argument("--labels", nargs="+", default=None, help="legend labels, one per curve, in the order drawn")
    p.add_argument("--smooth", type=float, default=0.0, help="exponential smoothing weight in [0, 1), as TensorBoard")
    p.add_argument("--title", default=None, help="plot title (default: the tag)")
    p.add_argument("--width", type=float, default=8.0, help="figure width in inches (default: 8)")
    p.add_argument("--height", type=float, default=5.0, help="figure height in inches (default: 5)")
    p.add_argument("--dpi", type=int, default=100, help="pixels per inch (default: 100: an 800x500 PNG)")
    return p


# --------------------------------------------------------------------------------------------- reading


@dataclass
class Curve:
    run: Path
    name: str  # the run's name (run folder without its timestamp)
    group: str  # runs with equal group keys are seeds of one setting
    steps: np.ndarray
    values: np.ndarray


def find_runs(paths: Sequence[str]) -> list[Path]:
    """Every folder under ``paths`` (included) that holds TensorBoard event files, in a stable order."""
    runs: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise PlotError(f"no such folder: {p}")
        if p.is_file():
            raise PlotError(f"{p} is a file; pass the run folder that holds it")
        found = sorted({e.parent for e in p.rglob("events.out.tfevents.*")})
        if not found:
            raise PlotError(f"no TensorBoard event files under {p}")
        runs.extend(r for r in found if r not in runs)
    return runs


def read_scalars(run: Path, tag: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(steps, values) of ``tag`` in a run folder's event files, plus every scalar tag it has.

    A resumed run appends to its folder; a step logged twice keeps its last value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    try:
        acc.Reload()
    except Exception as err:  # a truncated or foreign file
        raise PlotError(f"cannot read the event files of {run}: {type(err).__name__}: {err}") from None
    tags = sorted(acc.Tags().get("scalars", []))
    if tag not in tags:
        return np.empty(0), np.empty(0), tags
    by_step: dict[int, float] = {}
    for event in acc.Scalars(tag):
        by_step[int(event.step)] = float(event.value)
    steps = np.array(sorted(by_step), dtype=np.float64)
    return steps, np.array([by_step[int(s)] for s in steps], dtype=np.float64), tags


def run_name(run: Path) -> str:
    """``2026-01-02_03-04-05_ppo_seed1`` -> ``ppo_seed1``."""
    return _STAMP_RE.sub("", run.name) or run.name


def group_key(run: Path) -> str:
    """What identifies the setting of a run: its config without seed/run name, else its name without the seed."""
    cfg_file = run / "config.yaml"
    if cfg_file.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_file.read_text()) or {}
        except yaml.YAMLError:
            cfg = None
        if isinstance(cfg, dict):
            setting = {k: v for k, v in cfg.items() if k not in _NOT_SETTING}
            return repr(sorted(setting.items(), key=lambda kv: kv[0]))
    return _SEED_RE.sub("", run_name(run))


def group_label(runs: Sequence[Path]) -> str:
    """A readable label of a group: the algorithm and env from the config, and the run name without seed."""
    name = _SEED_RE.sub("", run_name(runs[0])) or run_name(runs[0])
    cfg_file = runs[0] / "config.yaml"
    if cfg_file.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_file.read_text()) or {}
            algo, env = cfg["algo"]["name"], cfg["env"]["id"]
            name = f"{algo} {env}" if name == algo else f"{name} ({algo} {env})"
        except (yaml.YAMLError, KeyError, TypeError):
            pass
    return f"{name} (n={len(runs)})"


def load_curves(paths: Sequence[str], tag: str) -> list[Curve]:
    curves, all_tags = [], set()
    for run in find_runs(paths):
        steps, values, tags = read_scalars(run, tag)
        all_tags.update(tags)
        if steps.size:
            curves.append(Curve(run, run_name(run), group_key(run), steps, values))
    if not curves:
        known = ", ".join(sorted(all_tags)) or "none"
        raise PlotError(f"no run has the tag '{tag}' (tags found: {known})")
    return curves


# --------------------------------------------------------------------------------------------- drawing


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (weight 0 = raw values)."""
    if weight <= 0 or values.size == 0:
        return values
    out, last = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        last = last * weight + (1 - weight) * v
        out[i] = last / (1 - weight ** (i + 1))
    return out


def aggregate(curves: Sequence[Curve], band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and band of several seeds on the union of their steps, up to the step every seed reached.

    Seeds log at slightly different steps (rollout boundaries, resumes), so each is interpolated
    linearly onto the common grid; beyond the shortest run the mean would mix different seed counts.
    """
    end = min(c.steps[-1] for c in curves)
    start = max(c.steps[0] for c in curves)
    grid = np.unique(np.concatenate([c.steps for c in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    if grid.size == 0:
        grid = np.array([end])
    ys = np.stack([np.interp(grid, c.steps, c.values) for c in curves])
    mean = ys.mean(axis=0)
    if band == "minmax":
        return grid, mean, ys.min(axis=0), ys.max(axis=0)
    std = ys.std(axis=0)
    return grid, mean, mean - std, mean + std


def plot(curves: Sequence[Curve], args: argparse.Namespace) -> Path:
    """Draw the curves (or their seed groups) and save the PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(args.width, args.height), dpi=args.dpi)
    drawn: list[tuple[str, Any]] = []
    if args.group:
        by_group: dict[str, list[Curve]] = {}  # insertion order = the order runs were given
        for c in curves:
            by_group.setdefault(c.group, []).append(c)
        for members in by_group.values():
            x, mean, lo, hi = aggregate(members, args.band)
            (line,) = ax.plot(x, smooth(mean, args.smooth), linewidth=1.8)
            if len(members) > 1:
                ax.fill_between(x, smooth(lo, args.smooth), smooth(hi, args.smooth), color=line.get_color(), alpha=0.2)
            drawn.append((group_label([m.run for m in members]), line))
    else:
        for c in curves:
            marker = "o" if c.steps.size == 1 else None  # a single point would draw nothing
            (line,) = ax.plot(c.steps, smooth(c.values, args.smooth), linewidth=1.5, marker=marker)
            drawn.append((c.name, line))
    if args.labels is not None:
        if len(args.labels) != len(drawn):
            plt.close(fig)
            raise PlotError(f"--labels got {len(args.labels)} labels for {len(drawn)} curves")
        drawn = [(label, line) for label, (_, line) in zip(args.labels, drawn, strict=True)]
    for label, line in drawn:
        line.set_label(label)
    ax.set_xlabel("policy steps")
    ax.set_ylabel(args.tag)
    ax.set_title(args.title if args.title is not None else args.tag)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)  # fixed figsize * dpi, no bbox cropping: the PNG has a predictable size
    except OSError as err:
        raise PlotError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``python sheeprl.py plot``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if not 0.0 <= args.smooth < 1.0:
            raise PlotError(f"--smooth must lie in [0, 1), got {args.smooth}")
        if args.width <= 0 or args.height <= 0 or args.dpi <= 0:
            raise PlotError("--width, --height and --dpi must be positive")
        curves = load_curves(args.runs, args.tag)
        out = plot(curves, args)
    except PlotError as err:
        print(f"sheeprl plot: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # -h / --help
        return int(exit_.code or 0)
    n = len({c.group for c in curves}) if args.group else len(curves)
    print(f"wrote {out} ({n} curve{'s' if n != 1 else ''} of {args.tag} from {len(curves)} runs)")
    return 0
