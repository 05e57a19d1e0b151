"""``python sheeprl.py tune ALGO [run arguments] --trials N --param KEY=DIST ...``: hyperparameter search with Optuna.

Each trial is an ordinary run (own process, own folder under ``--tune_dir``, default
``logs/tune/<study>``) of the run arguments plus the trial's sampled values. The objective is the
run's final greedy evaluation (``Test/rew_avg``, maximized). While a trial runs, its periodic
evaluations (``--eval_every``) are read from its TensorBoard events and reported to Optuna; the
median pruner stops a trial whose evaluation is worse than the median of earlier trials at the same
step (the run receives Ctrl-C: it saves a checkpoint and exits). A trial whose run fails, or whose
objective is NaN (diverged), is recorded as failed and the study goes on.

The study lives in a database (``--storage``, default ``sqlite:///tune.db``), so ``optuna-dashboard
sqlite:///tune.db`` can open it and the same command resumes an interrupted study: trials that were
running when it was interrupted are re-queued with the same values, and the study runs until
``--trials`` trials have finished. At the end the best values are written as a preset:
``python sheeprl.py --config_dir <tune_dir> exp=<study>_best``.

Distributions: ``log(a,b)`` (float, log scale), ``float(a,b)``, ``int(a,b)``, ``logint(a,b)``,
``choice(v1,v2,...)``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

from sheeprl.cli import UsageError, _quote, _split_algo, _take_config_dirs, argv_to_overrides, build_config
from sheeprl.sweep import RunSpec, evaluations, find_run_dir, finish_run, start

EXIT_USAGE = 2
_PARAM_RE = re.compile(r"^\s*([\w.+~-]+)\s*=\s*(log|float|int|logint|choice)\((.*)\)\s*$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        allow_abbrev=False,  # an abbreviation could swallow a run flag
        prog="python sheeprl.py tune ALGO",
        description="Search hyperparameters with Optuna (TPE + median pruning); every other argument is a run "
        "argument (--env_id, --total_steps, --eval_every, key=value, exp=...) shared by all trials.",
    )
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should have")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=DIST",
        help="a searched key: log(a,b), float(a,b), int(a,b), logint(a,b) or choice(v1,v2,...); repeatable",
    )
    p.add_argument("--storage", default="sqlite:///tune.db", help="Optuna storage URL (default: sqlite:///tune.db)")
    p.add_argument("--study_name", default=None, help="study name (default: <algo>_<env id>)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="tpe (default) or random")
    p.add_argument("--pruner", choices=("median", "none"), default="median", help="median (default) or none")
    p.add_argument("--startup_trials", type=int, default=5, help="trials finished before pruning starts (default 5)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default="maximize")
    p.add_argument("--metric", default="Test/rew_avg", help="TensorBoard tag of the objective (default Test/rew_avg)")
    p.add_argument("--sampler_seed", type=int, default=None, help="seed of the sampler (default: random)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at a time (default 1)")
    p.add_argument("--tune_dir", default=None, help="folder of the trials' runs (default: logs/tune/<study>)")
    return p


# --------------------------------------------------------------------------------------------- parameters


def _value(text: str) -> Any:
    import yaml

    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()
    return v if isinstance(v, (int, float, str, bool)) or v is None else text.strip()


def parse_param(text: str) -> tuple[str, Any]:
    """``"algo.optimizer.lr=log(1e-5,1e-2)"`` -> ("algo.optimizer.lr", FloatDistribution(1e-5, 1e-2, log=True))."""
    import optuna.distributions as d

    m = _PARAM_RE.match(text)
    if m is None:
        raise UsageError(f"--param '{text}': expected KEY=log(a,b), float(a,b), int(a,b), logint(a,b) or choice(...)")
    key, kind, inner = m.group(1), m.group(2), m.group(3)
    values = [_value(v) for v in inner.split(",")] if inner.strip() else []
    try:
        if kind == "choice":
            if not values:
                raise ValueError("choice needs at least one value")
            return key, d.CategoricalDistribution(values)
        if len(values) != 2:
            raise ValueError(f"{kind}(low, high) takes two numbers")
        low, high = values
        if kind in ("int", "logint"):
            return key, d.IntDistribution(int(low), int(high), log=kind == "logint")
        return key, d.FloatDistribution(float(low), float(high), log=kind == "log")
    except (ValueError, TypeError) as err:
        raise UsageError(f"--param '{text}': {err}") from None


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return _quote(str(value)) if isinstance(value, str) else str(value)


def trial_args(base: Sequence[str], params: dict[str, Any]) -> list[str]:
    return [*base, *(f"{k}={_format(v)}" for k, v in params.items())]


def first_value(dist: Any) -> Any:
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


# --------------------------------------------------------------------------------------------- the study


def _alive(attrs: dict[str, Any]) -> bool:
    """Whether the tuner process that started a RUNNING trial still exists (same host only)."""
    if attrs.get("host") != socket.gethostname():
        return True  # another machine's worker: not ours to judge
    try:
        os.kill(int(attrs.get("pid", -1)), 0)
    except (OSError, ValueError):
        return False
    return True


def requeue_orphans(study: Any) -> int:
    """RUNNING trials of a tuner that no longer exists: failed (interrupted) and re-queued with their values."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _alive(t.user_attrs):
            optuna.trial.Trial(study, t._trial_id).set_user_attr("interrupted", True)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=False)
            n += 1
    return n


def finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("interrupted"))


class Trial:
    """A running trial: the Optuna trial, its run, the evaluations already reported."""

    def __init__(self, trial: Any, run: RunSpec) -> None:
        self.trial, self.run = trial, run
        self.reported = -1
        self.pruned = False


def poll(t: Trial, root: Path, metric: str) -> None:
    """Report the run's new periodic evaluations; stop the run (Ctrl-C) when the pruner says so."""
    if t.run.run_dir is None:
        t.run.run_dir = find_run_dir(root, t.run.name)
        if t.run.run_dir is None:
            return
    for step, value in evaluations(t.run.run_dir, metric):
        if step > t.reported and not t.pruned:
            t.reported = step
            if math.isnan(value):
                continue
            t.trial.report(value, step)
            if t.trial.should_prune():
                t.pruned = True
                if t.run.proc is not None and t.run.proc.poll() is None:
                    t.run.proc.send_signal(signal.SIGINT)


def conclude(study: Any, t: Trial, root: Path, metric: str) -> str:
    """Tell Optuna how the trial ended; returns a one-word status."""
    import optuna

    finish_run(t.run, root, metric)
    if t.run.run_dir is not None:
        t.trial.set_user_attr("run_dir", str(t.run.run_dir))
    if t.pruned:
        study.tell(t.trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    if t.run.returncode != 0:
        t.trial.set_user_attr("error", f"exit code {t.run.returncode}; see output/{t.run.name}.log")
        study.tell(t.trial, state=optuna.trial.TrialState.FAIL)
        return f"FAILED (exit {t.run.returncode}, see output/{t.run.name}.log)"
    if math.isnan(t.run.value):
        t.trial.set_user_attr("error", f"no finite {metric} (diverged, or no evaluation)")
        study.tell(t.trial, state=optuna.trial.TrialState.FAIL)
        return f"FAILED (no finite {metric})"
    study.tell(t.trial, t.run.value)
    return f"{metric} {t.run.value:.2f}"


def write_preset(study: Any, algo: str, base: Sequence[str], root: Path, name: str) -> Optional[Path]:
    """The best trial's settings (everything that differs from the algorithm's defaults) as an exp= preset."""
    import yaml
    from omegaconf import OmegaConf

    try:
        best = study.best_trial
    except ValueError:
        return None
    _, default = build_config(algo, [])
    _, cfg = build_config(algo, trial_args(base, best.params))
    skip = {"seed", "log_root", "run_name", "checkpoint.resume_from", "fabric.num_threads"}
    d, c = OmegaConf.to_container(default, resolve=True), OmegaConf.to_container(cfg, resolve=True)

    def diff(a: Any, b: Any, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in b.items():
            key = f"{prefix}{k}"
            if key in skip:
                continue
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                sub = diff(a[k], v, key + ".")
                if sub:
                    out[k] = sub
            elif a.get(k) != v:
                out[k] = v
        return out

    body = diff(d, c, "")
    path = root / "exp" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        "# @package _global_\n"
        f"# Best trial {best.number} of study '{study.study_name}': {study.direction.name.lower()} "
        f"objective {best.value:.4g}.\n"
        f"# python sheeprl.py --config_dir {root} exp={name}\n"
    )
    defaults = yaml.safe_dump({"defaults": [{"override /algo": algo}, "_self_"]}, sort_keys=False)
    path.write_text(head + defaults + "\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def tune(argv: Sequence[str]) -> int:
    import optuna

    argv = _take_config_dirs(list(argv))
    algo, rest = _split_algo(argv)
    if algo is None or algo.startswith("-"):
        raise UsageError("usage: python sheeprl.py tune ALGO [run arguments] --trials N --param KEY=DIST ...")
    opts, run_argv = build_parser().parse_known_args(rest)
    if opts.trials < 1 or opts.jobs < 1:
        raise UsageError("--trials and --jobs must be >= 1")
    if not opts.param:
        raise UsageError("give at least one --param KEY=DIST, e.g. --param 'algo.optimizer.lr=log(1e-5,1e-2)'")
    spec, cfg = build_config(algo, run_argv)  # the shared run arguments, checked like a run's
    if opts.pruner == "median" and (cfg.eval_every <= 0 or cfg.eval_episodes <= 0):
        raise UsageError("the median pruner reads the periodic evaluation: set --eval_every N (or --pruner none)")
    from sheeprl.cli import schema_fields

    fields = schema_fields(spec.schema)
    base = argv_to_overrides(run_argv, fields)
    dists: dict[str, Any] = {}
    for text in opts.param:
        key, dist = parse_param(text)
        try:  # the key and its type, with the first value of the distribution
            (override,) = argv_to_overrides([f"{key}={_format(first_value(dist))}"], fields)
            build_config(algo, [*base, override])
        except UsageError as err:
            raise UsageError(f"--param {key}: {err}") from None
        dists[override.split("=", 1)[0]] = dist

    study_name = opts.study_name or f"{algo}_{str(cfg.env.id).replace('/', '_')}"
    root = Path(opts.tune_dir) if opts.tune_dir else Path("logs") / "tune" / study_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.TPESampler(seed=opts.sampler_seed)
        if opts.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=opts.sampler_seed)
    )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=opts.startup_trials, n_warmup_steps=0)
        if opts.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=opts.storage,
            sampler=sampler,
            pruner=pruner,
            direction=opts.direction,
            load_if_exists=True,
        )
    except Exception as err:  # bad URL, unreachable database, direction differs from the stored study
        raise UsageError(f"cannot open study '{study_name}' at {opts.storage}: {str(err).splitlines()[0]}") from None
    requeued = requeue_orphans(study)
    done = finished(study)
    print(
        f"study '{study_name}' at {opts.storage}: {done}/{opts.trials} trials finished"
        + (f", {requeued} interrupted trial(s) re-queued" if requeued else "")
        + f"; runs in {root}",
        flush=True,
    )
    root.mkdir(parents=True, exist_ok=True)
    running: list[Trial] = []
    interrupted = False
    # Ctrl-C sets a flag that the loop checks: a KeyboardInterrupt raised inside a library call (reading a run's
    # events, the study's database) could be swallowed there, and the study would go on as if nothing happened.
    # A second Ctrl-C interrupts at once.
    requested = []

    def on_ctrl_c(signum: int, frame: Any) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    def check() -> None:
        if requested:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        while done + len(running) < opts.trials or running:
            check()
            while done + len(running) < opts.trials and len(running) < opts.jobs:
                trial = study.ask(dists)
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("pid", os.getpid())
                run = RunSpec(trial.number, algo, trial_args(base, trial.params), f"trial{trial.number}", {})
                trial.set_user_attr("run_name", run.name)
                start(run, root, opts.jobs)
                running.append(Trial(trial, run))
                shown = " ".join(f"{k.lstrip('+~')}={_format(v)}" for k, v in trial.params.items())
                print(f"trial {trial.number} started: {shown}", flush=True)
            time.sleep(1.0)
            check()
            for t in list(running):
                poll(t, root, opts.metric)
                if t.run.proc is not None and t.run.proc.poll() is not None:
                    poll(t, root, opts.metric)
                    running.remove(t)
                    status = conclude(study, t, root, opts.metric)
                    done += 1
                    print(f"trial {t.trial.number} {status} ({t.run.seconds:.0f} s) [{done}/{opts.trials}]", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        signal.signal(signal.SIGINT, previous)
        print("\ninterrupted: stopping the running trials; run the same command to resume", flush=True)
        for t in running:
            if t.run.proc is not None and t.run.proc.poll() is None:
                t.run.proc.send_signal(signal.SIGINT)
        for t in running:
            try:
                t.run.proc.wait(timeout=60)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                t.run.proc.kill()  # type: ignore[union-attr]
            finish_run(t.run, root, opts.metric)
            t.trial.set_user_attr("interrupted", True)
            study.tell(t.trial, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.trial.params, skip_if_exists=False)
    finally:
        signal.signal(signal.SIGINT, previous)

    preset = write_preset(study, algo, base, root, f"{study_name}_best")
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("interrupted"):
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    print("\ntrials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if preset is not None:
        best = study.best_trial
        print(
            f"best: trial {best.number}, {opts.metric} {best.value:.2f}, "
            + ", ".join(f"{k.lstrip('+~')}={_format(v)}" for k, v in best.params.items())
        )
        print(f"preset: {preset}\nrun it: python sheeprl.py --config_dir {root} exp={preset.stem}")
    else:
        print("no trial completed: no best parameters yet")
    return 130 if interrupted else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``python sheeprl.py tune``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    try:
        return tune(argv)
    except SystemExit as exit_:  # tune ALGO -h
        return int(exit_.code or 0)
    except UsageError as err:
        print(f"sheeprl tune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
