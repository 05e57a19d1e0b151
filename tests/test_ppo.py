"""PPO end to end, as a user runs it: smoke runs, logs, resume, Ctrl-C, and learning CartPole."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from helpers import event_files, run_dirs, scalars

FAST = [
    "--num_envs",
    "2",
    "--rollout_steps",
    "64",
    "--minibatch_size",
    "64",
    "--eval_episodes",
    "2",
    "--metric.log_every",
    "128",
]


@pytest.mark.parametrize(
    "env_args",
    [
        ["--env_id", "CartPole-v1"],
        ["--env_id", "Pendulum-v1", "--action_squash", "tanh"],
        [
            "exp=ppo_halfcheetah",
            "--num_envs",
            "2",
            "--rollout_steps",
            "64",
            "--minibatch_size",
            "64",
            "--update_epochs",
            "1",
        ],
    ],
    ids=["cartpole", "pendulum", "halfcheetah"],
)
def test_smoke_writes_config_logs_and_checkpoint(cli, tmp_path, env_args):
    proc = cli("ppo", *FAST, *env_args, "--total_steps", "384", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert len(event_files(run)) == 1
    tags = scalars(run)
    for tag in (
        "Loss/policy_loss",
        "Loss/value_loss",
        "Loss/entropy_loss",
        "Info/learning_rate",
        "Time/sps_env_interaction",
        "Time/sps_train",
        "Test/rew_avg",
    ):
        assert tag in tags, sorted(tags)
    ckpts = sorted((run / "checkpoint").glob("ckpt_*_0.ckpt"))
    assert [c.name for c in ckpts] == ["ckpt_384_0.ckpt"]
    assert "evaluation at step 384" in proc.stdout


def test_resume_restores_everything_and_finishes_at_total_steps(cli, tmp_path):
    args = [
        "--env_id",
        "CartPole-v1",
        *FAST,
        "--checkpoint.every",
        "128",
        "--keep_last",
        "0",
        "--eval_episodes",
        "0",
        "--normalize_observation",
    ]
    proc = cli("ppo", *args, "--total_steps", "256", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    saved = torch.load(run / "checkpoint" / "ckpt_128_0.ckpt", weights_only=False)
    assert saved["policy_step"] == 128 and saved["ranks"][0]["env"]  # normalization statistics are saved

    # Resuming at total_steps = the saved step trains nothing: what is saved again is exactly what was loaded.
    original = tmp_path / "ckpt_128.ckpt"
    shutil.copy(run / "checkpoint" / "ckpt_128_0.ckpt", original)
    proc = cli("ppo", *args, "--total_steps", "128", "--resume_from", str(original), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run2,) = [d for d in run_dirs(tmp_path / "logs") if d != run]  # a checkpoint outside a run folder: new folder
    again = torch.load(run2 / "checkpoint" / "ckpt_128_0.ckpt", weights_only=False)
    for key in ("agent",):
        for name, tensor in saved[key].items():
            assert torch.equal(tensor, again[key][name]), name
    assert again["optimizer"]["state"].keys() == saved["optimizer"]["state"].keys()
    for pid, st in saved["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], again["optimizer"]["state"][pid]["exp_avg"])
        assert torch.equal(st["step"], again["optimizer"]["state"][pid]["step"])
    assert again["scheduler"] == saved["scheduler"]
    assert torch.equal(again["ranks"][0]["rng"]["torch"], saved["ranks"][0]["rng"]["torch"])
    for k, v in saved["ranks"][0]["env"].items():
        assert str(again["ranks"][0]["env"][k]) == str(v)

    # Resuming from inside the run folder continues that run to the new total_steps.
    proc = cli(
        "ppo", *args, "--total_steps", "512", "--resume_from", str(run / "checkpoint" / "ckpt_256_0.ckpt"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 256" in proc.stdout
    names = sorted(p.name for p in (run / "checkpoint").glob("*.ckpt"))
    assert "ckpt_384_0.ckpt" in names and "ckpt_512_0.ckpt" in names
    steps = [s for s, _ in scalars(run)["Loss/policy_loss"]]
    assert max(steps) == 512 and min(steps) <= 256


def test_keep_last_prunes_old_checkpoints(cli, tmp_path):
    proc = cli(
        "ppo",
        *FAST,
        "--total_steps",
        "640",
        "--checkpoint.every",
        "128",
        "--keep_last",
        "2",
        "--eval_episodes",
        "0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["ckpt_512_0.ckpt", "ckpt_640_0.ckpt"]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "sheeprl.py"),
            "ppo",
            *FAST,
            "--total_steps",
            "10000000",
            "--checkpoint.every",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "logs").rglob("events.out.tfevents.*")):
        time.sleep(0.5)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "interrupted" in out
    (run,) = run_dirs(tmp_path / "logs")
    assert len(list((run / "checkpoint").glob("ckpt_*_0.ckpt"))) == 1


@pytest.mark.learning
def test_ppo_solves_cartpole(cli, tmp_path):
    """PPO with CleanRL's defaults reaches a greedy mean return >= 475 on CartPole-v1 within 100k steps."""
    proc = cli(
        "ppo", "exp=ppo_cartpole", "--seed", "1", "--total_steps", "100000", "--eval_episodes", "10", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    assert step >= 99_000 and value >= 475.0, proc.stdout[-2000:]
