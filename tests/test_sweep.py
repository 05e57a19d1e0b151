"""Sweeps (--multirun) and tuning (tune) end to end, as a user runs them, and their one-line errors."""

import csv
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import run_dirs

from sheeprl.cli import main

TINY = [
    "--env_id", "CartPole-v1", "--num_envs", "2", "--rollout_steps", "32", "--minibatch_size", "32",
    "--update_epochs", "1", "--eval_episodes", "2", "--metric.log_every", "1000", "--checkpoint.every", "0",
]  # fmt: skip


def test_sweep_runs_every_combination_and_tabulates_over_seeds(cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "ppo", *TINY, "--total_steps", "64", "-m", "seed=1,2", "algo.optimizer.lr=0.0001,0.0003",
        "--jobs", "2", "--sweep_dir", str(sweep), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = run_dirs(sweep)
    assert len(runs) == 4 and {r.name.split("_", 2)[2] for r in runs} == {
        "ppo_lr=0.0001_seed1", "ppo_lr=0.0001_seed2", "ppo_lr=0.0003_seed1", "ppo_lr=0.0003_seed2",
    }  # fmt: skip
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["algo.optimizer.lr"] for r in rows] == ["0.0001", "0.0003"]
    assert all(r["runs_ok"] == "2" and r["runs"] == "2" for r in rows)
    per_run = {r["run"]: float(r["Test/rew_avg"]) for r in csv.DictReader((sweep / "runs.csv").open())}
    for row, lr in zip(rows, ("0.0001", "0.0003"), strict=True):
        seeds = [per_run[f"ppo_lr={lr}_seed{s}"] for s in (1, 2)]
        assert float(row["Test/rew_avg mean"]) == pytest.approx(sum(seeds) / 2)
        assert float(row["std"]) == pytest.approx(abs(seeds[0] - seeds[1]) / 2)
        assert float(row["min"]) == min(seeds) and float(row["max"]) == max(seeds)
    assert "algo.optimizer.lr" in proc.stdout and "Test/rew_avg mean" in proc.stdout
    # one mean-and-band curve per learning rate
    assert main(["plot", str(sweep), "--group", "--tag", "Test/rew_avg", "--out", str(tmp_path / "g.png")]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "seed=1,2", "algo.gama=0.9,0.99"], "unknown config key 'algo.gama' (did you mean 'algo.gamma'"),
        (
            ["-m", "seed=1,2", "algo.optimizer.lrr=1e-4,3e-4"],
            "Adam takes no argument 'lrr' (did you mean 'algo.optimizer.lr'",
        ),
        (["-m", "seed=1,2", "--minibatch_size", "32,48"], "combination seed=1 algo.minibatch_size=48: algo.minibatch"),
        (["-m", "--jobs", "0", "seed=1,2"], "--jobs must be >= 1"),
        (["-m", "run_name=a,b"], "run_name cannot be swept"),
    ],
)
def test_sweep_errors_are_one_line_and_nothing_runs(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ppo", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------------------------- tune

TUNE = [
    sys.executable, str(ROOT / "sheeprl.py"), "tune", "ppo", *TINY, "--total_steps", "128", "--eval_every", "64",
    "--trials", "4", "--startup_trials", "1", "--sampler_seed", "0",
    "--param", "env.max_episode_steps=choice(5,500)", "--param", "algo.minibatch_size=choice(32,48)",
]  # fmt: skip


def test_tune_prunes_records_failures_and_resumes_after_an_interruption(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    cmd = [*TUNE, "--storage", storage]
    # The first trials' values are queued, so that what each one does is known: A completes; B's minibatch does
    # not divide the rollout (its run fails); C caps episodes at 5 steps, below the median of A's evaluations at
    # the same step (pruned); D completes.
    study = optuna.create_study(study_name="ppo_CartPole-v1", storage=storage, direction="maximize")
    for ep, mb in ((500, 32), (500, 48), (5, 32), (500, 32)):
        study.enqueue_trial({"env.max_episode_steps": ep, "algo.minibatch_size": mb})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Interrupt the study (Ctrl-C) as soon as C starts: C is failed as interrupted and queued again.
    tuner = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in tuner.stdout:
        lines.append(line)
        if line.startswith("trial 2 started"):
            tuner.send_signal(signal.SIGINT)
    assert tuner.wait(timeout=300) == 130, "".join(lines)
    assert "run the same command to resume" in "".join(lines)
    study = optuna.load_study(study_name="ppo_CartPole-v1", storage=storage)
    assert [t.state.name for t in study.trials if t.state.name != "WAITING"] == ["COMPLETE", "FAIL", "FAIL"]
    assert study.trials[2].user_attrs["interrupted"] and "error" in study.trials[1].user_attrs

    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2/4 trials finished" in proc.stdout
    study = optuna.load_study(study_name="ppo_CartPole-v1", storage=storage)
    states = [t.state.name for t in study.trials if not t.user_attrs.get("interrupted")]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "PRUNED"], proc.stdout
    pruned = study.trials[-1]
    assert pruned.params == {"env.max_episode_steps": 5, "algo.minibatch_size": 32}
    for t in study.trials:
        if t.state.name in ("COMPLETE", "PRUNED"):
            assert (tmp_path / t.user_attrs["run_dir"] / "config.yaml").is_file()  # an ordinary run folder
    preset = tmp_path / "logs" / "tune" / "ppo_CartPole-v1" / "exp" / "ppo_CartPole-v1_best.yaml"
    assert preset.is_file() and "max_episode_steps: 500" in preset.read_text()
    # the preset is ready to use
    check = subprocess.run(
        [sys.executable, "-c", "from sheeprl.cli import build_config, _take_config_dirs; "
         f"_take_config_dirs(['--config_dir', '{preset.parent.parent}']); "
         "print(build_config('ppo', ['exp=ppo_CartPole-v1_best'])[1].algo.total_steps)"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert check.stdout.strip() == "128", check.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "2", "--param", "algo.optimizer.lr=log(1e-5)"], "log(low, high) takes two numbers"),
        (["--trials", "2", "--param", "algo.gama=float(0.9,1)"], "--param algo.gama: unknown config key 'algo.gama'"),
        (
            ["--trials", "2", "--param", "algo.optimizer.lrr=log(1e-5,1e-2)"],
            "--param algo.optimizer.lrr: algo.optimizer",
        ),
        (["--trials", "2", "--param", "algo.ent_coef=float(0,0.1)"], "set --eval_every N"),
        (["--trials", "2", "--param", "algo.optimizer.lr=gauss(0,1)"], "expected KEY=log(a,b)"),
    ],
)
def test_tune_errors_are_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    eval_every = [] if "set --eval_every" in message else ["--eval_every", "64"]
    assert main(["tune", "ppo", *TINY, *eval_every, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "tune.db").exists()
