"""PPO end to end, as a user runs it: smoke runs, logs, resume, Ctrl-C, and learning CartPole."""

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


def test_clip_schedule_anneals_the_surrogate_clip(cli, tmp_path):
    """``--clip_schedule linear``: update t of T clips at 0.2 * (1 - t / T), logged as Info/clip_coef."""
    proc = cli("ppo", *FAST, "--env_id", "CartPole-v1", "--total_steps", "512", "--clip_schedule", "linear",
               "--eval_episodes", "0", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    # 4 updates of 128 steps, logged every 128 steps: 0.2, 0.15, 0.1, 0.05.
    assert [round(v, 6) for _, v in scalars(run)["Info/clip_coef"]] == [0.2, 0.15, 0.1, 0.05]


def test_resumed_run_continues_like_an_uninterrupted_one(cli, tmp_path):
    """Stop at 256 and resume to 512 vs one run to 512 (same seed): what does not depend on the envs' states
    (learning-rate schedule, optimizer and scheduler counters, normalization statistics) matches exactly, and
    the resumed run really trains."""
    args = ["--env_id", "CartPole-v1", *FAST, "--checkpoint_every", "256", "--keep_last", "0", "--eval_episodes", "0"]
    args += ["--normalize_observation", "--metric.log_every", "128"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    proc = cli("ppo", *args, "--total_steps", "512", "--log_root", str(whole / "logs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli("ppo", *args, "--total_steps", "256", "--log_root", str(parts / "logs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_a,), (run_b,) = run_dirs(whole / "logs"), run_dirs(parts / "logs")
    saved = torch.load(run_b / "checkpoint" / "ckpt_256_0.ckpt", weights_only=False)
    proc = cli(
        "ppo", *args, "--total_steps", "512", "--resume_from", str(run_b / "checkpoint" / "ckpt_256_0.ckpt"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 256" in proc.stdout
    a = torch.load(run_a / "checkpoint" / "ckpt_512_0.ckpt", weights_only=False)
    b = torch.load(run_b / "checkpoint" / "ckpt_512_0.ckpt", weights_only=False)

    # The same schedule and counters as the uninterrupted run once resumed (the first leg annealed to its own
    # total_steps of 256): nothing restarted from scratch, no stale annealed learning rate.
    lr_a, lr_b = scalars(run_a)["Info/learning_rate"], scalars(run_b)["Info/learning_rate"]
    assert lr_a[2:] == lr_b[2:] and len(lr_b) == 4 and lr_b[1][1] > 0, (lr_a, lr_b)
    assert a["scheduler"] == b["scheduler"]
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["step"], b["optimizer"]["state"][pid]["step"])
    # Observation statistics continued from the saved ones (plus the resumed envs' first observations).
    count = lambda ckpt: ckpt["ranks"][0]["env"]["obs_rms"]["state"]["count"]  # noqa: E731
    assert count(b) == pytest.approx(count(a) + 2) and count(saved) == pytest.approx(2 + 256 + 1e-4, abs=1e-3)
    # The resumed part trained: the weights moved away from the checkpoint, and it logged its own losses.
    assert any(not torch.equal(v, b["agent"][k]) for k, v in saved["agent"].items())
    steps = [s for s, _ in scalars(run_b)["Loss/policy_loss"]]
    assert steps == [128, 256, 384, 512]


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


# The learning test of PPO's defaults is tests/test_learning.py (the benchmark harness, two seeds).
