"""`python sheeprl.py eval`: a PPO checkpoint round trip, eval_every curves, and one-line errors for bad inputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import run_dirs, scalars

from sheeprl.cli import main

TRAIN = [
    "ppo", "--env_id", "CartPole-v1", "--num_envs", "2", "--rollout_steps", "64", "--minibatch_size", "64",
    "--update_epochs", "1", "--total_steps", "384", "--eval_every", "128", "--eval_episodes", "2",
    "--metric.log_every", "128", "--normalize_observation", "--num_threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short PPO run (observation normalization on, greedy evaluation every 128 steps); returns its folder."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("eval_run")
    proc = run_cli(*TRAIN, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(root / "logs")
    return run


def test_eval_round_trip_writes_json_beside_the_checkpoint(trained, capsys):
    ckpt = trained / "checkpoint" / "ckpt_384_0.ckpt"
    assert main(["eval", "--checkpoint_path", str(ckpt), "--eval_episodes", "5", "--num_threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ppo on CartPole-v1 at policy step 384: 5 greedy episodes" in out
    for col in ("mean", "std", "median", "iqm", "min", "max"):
        assert col in out
    res = json.loads((trained / "checkpoint" / "ckpt_384_0.eval.json").read_text())
    assert res["algo"] == "ppo" and res["policy_step"] == 384 and not res["stochastic"]
    assert res["episodes"] == 5 and len(res["returns"]) == 5 and len(res["lengths"]) == 5
    assert set(res["return"]) == {"mean", "std", "median", "iqm", "min", "max"}
    # The summary is the summary of these very returns, computed independently here.
    r = sorted(res["returns"])
    expected = {"mean": sum(r) / 5, "median": r[2], "iqm": sum(r[1:4]) / 3, "min": r[0], "max": r[-1]}
    for key, value in expected.items():
        assert res["return"][key] == pytest.approx(value), key
    assert res["return"]["std"] == pytest.approx(float(torch.tensor(r, dtype=torch.float64).std(correction=0)))
    # CartPole pays 1 per step: the raw (unnormalized) return equals the episode length.
    assert res["returns"] == res["lengths"]


@pytest.mark.parametrize(
    "values, iqm",
    [
        ([1, 2, 3, 4, 100], 3.0),
        ([10, 0, 1, 2, 3, 4, 5, 6], 3.5),
        ([7], 7.0),
        ([1, 3], 2.0),
        ([0, 1, 2, 3, 1000, -1000], 1.5),
    ],
)
def test_summarize_interquartile_mean_by_hand(values, iqm):
    """IQM: the mean of the middle half (rliable's trimmed mean at 25%), insensitive to the outliers."""
    from sheeprl.utils.evaluation import summarize

    out = summarize(values)
    assert out["iqm"] == pytest.approx(iqm)
    assert out["min"] == min(values) and out["max"] == max(values)


def test_eval_of_a_run_folder_uses_its_newest_checkpoint_and_is_reproducible(trained, tmp_path, capsys):
    args = ["eval", "--checkpoint_path", str(trained), "--eval_episodes", "3", "--stochastic", "--seed", "7"]
    assert main([*args, "--output", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--output", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["checkpoint"].endswith("ckpt_384_0.ckpt") and a["stochastic"] and a["seed"] == 7
    assert a["returns"] == b["returns"]  # same seed, same sampled actions


def test_eval_every_logs_one_greedy_point_per_evaluation(trained):
    tags = scalars(trained)
    assert [s for s, _ in tags["Test/rew_avg"]] == [128, 256, 384]  # the final one is not logged twice
    assert "Test/rew_std" in tags and "Test/ep_len_avg" in tags


def _write_bad_inputs(trained: Path, tmp: Path) -> dict:
    ckpt = trained / "checkpoint" / "ckpt_384_0.ckpt"
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes(ckpt.read_bytes()[:1000])  # a truncated copy
    foreign = tmp / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    # A checkpoint whose run is not the algorithm its state holds: PPO's config, another algorithm's weights.
    wrong_run = tmp / "run" / "checkpoint"
    wrong_run.mkdir(parents=True)
    shutil.copy(trained / "config.yaml", wrong_run.parent / "config.yaml")
    torch.save({"policy_step": 10, "actor": {}, "critic": {}, "ranks": [{"env": {}}]}, wrong_run / "ckpt_10_0.ckpt")
    lonely = tmp / "lonely.ckpt"  # a real checkpoint moved out of its run folder: no config.yaml
    shutil.copy(ckpt, lonely)
    return {
        "missing": (["--checkpoint_path", str(tmp / "nope.ckpt")], "checkpoint not found"),
        "corrupt": (["--checkpoint_path", str(corrupt)], "cannot read checkpoint"),
        "not_sheeprl": (["--checkpoint_path", str(foreign)], "is not a sheeprl checkpoint"),
        "other_algo_named": (
            ["--checkpoint_path", str(ckpt), "--algo", "sac"],
            "is a checkpoint of 'ppo', not of 'sac'",
        ),
        "other_algo_state": (["--checkpoint_path", str(wrong_run / "ckpt_10_0.ckpt")], "does not hold a ppo agent"),
        "no_config": (["--checkpoint_path", str(lonely)], "no config.yaml"),
        "unknown_flag": (["--checkpoint_path", str(ckpt), "--episodes", "3"], "unrecognized arguments: --episodes"),
        "no_episodes": (["--checkpoint_path", str(ckpt), "--eval_episodes", "0"], "--eval_episodes must be >= 1"),
        "unknown_env": (["--checkpoint_path", str(ckpt), "--env_id", "CartPol-v1"], "unknown env id 'CartPol-v1'"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "corrupt", "not_sheeprl", "other_algo_named", "other_algo_state", "no_config", "unknown_flag",
     "no_episodes", "unknown_env"],
)  # fmt: skip
def test_bad_inputs_exit_2_with_one_line(trained, tmp_path, capsys, case):
    args, message = _write_bad_inputs(trained, tmp_path)[case]
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sheeprl eval: error: "), err
    assert message in err


def test_bad_input_as_a_user_sees_it_and_the_console_script(trained, tmp_path):
    """In a real process: no traceback, exit code 2; ``sheeprl-eval`` is the same command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sheeprl.py"), "eval", "--checkpoint_path", str(tmp_path / "missing.ckpt")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    script = Path(sys.executable).parent / "sheeprl-eval"
    if not script.exists():
        pytest.skip("the sheeprl-eval console script is not installed in this environment (pip install -e .)")
    proc = subprocess.run(
        [str(script), "--checkpoint_path", str(trained), "--eval_episodes", "2", "--output", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["episodes"] == 2


def test_help_lists_the_commands(capsys):
    assert main(["--sheeprl_help"]) == 0
    out = capsys.readouterr().out
    assert "eval" in out.split("commands:")[1] and "plot" in out.split("commands:")[1]
    assert main(["eval", "-h"]) == 0
    assert "--checkpoint_path" in capsys.readouterr().out


def test_eval_of_a_run_saved_before_the_optimizer_schedule(trained, tmp_path, capsys):
    """A run folder whose config.yaml still has PPO's retired ``algo.anneal_lr`` is evaluated (the key is migrated)."""
    from omegaconf import OmegaConf

    from sheeprl.config import migrate_saved_config

    old = tmp_path / "old_run"
    shutil.copytree(trained, old)
    cfg = OmegaConf.load(old / "config.yaml")
    del cfg.algo.optimizer["schedule"]
    cfg.algo.anneal_lr = True
    OmegaConf.save(cfg, old / "config.yaml")
    assert main(["eval", "--checkpoint_path", str(old), "--eval_episodes", "2", "--num_threads", "1"]) == 0
    assert "2 greedy episodes" in capsys.readouterr().out

    for anneal, schedule in ((True, "linear"), (False, "constant")):
        saved = OmegaConf.create({"algo": {"name": "ppo", "anneal_lr": anneal, "optimizer": {"lr": 1e-3}}})
        assert migrate_saved_config(saved)
        assert "anneal_lr" not in saved.algo and saved.algo.optimizer.schedule.name == schedule
