"""Rainbow end to end, as a user runs it: smoke with every component and with every component off (the paper's
ablations), MinAtar pixels, 2 processes, decoupled with 2 and 3 processes, resume with the prioritized buffer,
bad input, and learning CartPole (greedy evaluation, Test/rew_avg)."""

import pytest
import torch
from helpers import run_dirs, scalars

FAST = [
    "--num_envs",
    "2",
    "--learning_starts",
    "100",
    "--batch_size",
    "32",
    "--replay_ratio",
    "0.5",
    "--dense_units",
    "32",
    "--num_atoms",
    "11",
    "--v_min",
    "0",
    "--v_max",
    "50",
    "--target_update_every",
    "20",
    "--buffer.size",
    "500",
    "--eval_episodes",
    "1",
    "--metric.log_every",
    "100",
    "--num_threads",
    "1",
]
TAGS = ("Loss/q_loss", "Info/q_mean", "Rewards/rew_avg", "Test/rew_avg")


def test_rainbow_smoke_writes_logs_and_checkpoint(cli, tmp_path):
    proc = cli("rainbow", *FAST, "--total_steps", "300", "--checkpoint.save_buffer", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    for tag in TAGS:
        assert tag in scalars(run), sorted(scalars(run))
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert {"q", "target_q", "optimizer", "ratio", "gradient_steps", "buffer"} <= state.keys()
    priorities = state["buffer"]["sampler"]["priorities"]
    assert priorities[:300].gt(0).all() and priorities[300:].eq(0).all()  # 150 steps x 2 envs stored
    assert len(set(priorities[:300].tolist())) > 1  # the updates changed them
    proc = cli("eval", "--checkpoint_path", str(ckpt), "--eval_episodes", "2", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_rainbow_every_component_off_is_dqn(cli, tmp_path):
    off = ["--double", "false", "--dueling", "false", "--n_step", "1", "--prioritized", "false"]
    off += ["--distributional", "false", "--noisy", "false"]
    proc = cli("rainbow", *FAST, *off, "--total_steps", "300", "--eval_episodes", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    state = torch.load(next((run / "checkpoint").glob("ckpt_*_0.ckpt")), weights_only=False)
    assert not any("sigma" in k or "advantage" in k for k in state["q"])  # plain linear head


def test_rainbow_minatar_pixels_smoke(cli, tmp_path):
    proc = cli("exp=rainbow_minatar", *FAST, "--total_steps", "300", "--v_min", "-10", "--v_max", "10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/q_loss" in scalars(run)


@pytest.mark.distributed
def test_rainbow_two_ranks_coupled(cli, tmp_path):
    proc = cli("rainbow", *FAST, "--total_steps", "300", "--devices", "2", "--eval_episodes", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/q_loss" in scalars(run)


@pytest.mark.distributed
@pytest.mark.parametrize("devices", ["2", "3"])
def test_rainbow_decoupled_smoke(cli, tmp_path, devices):
    proc = cli(
        "rainbow_decoupled",
        *FAST,
        "--total_steps",
        "300",
        "--devices",
        devices,
        "--checkpoint.save_buffer",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    for tag in TAGS:
        assert tag in scalars(run), sorted(scalars(run))
    state = torch.load(next((run / "checkpoint").glob("ckpt_*_0.ckpt")), weights_only=False)
    # the player's network and buffer, the first trainer's target network and optimizer
    assert {"q", "target_q", "optimizer", "buffer", "ratio"} <= state.keys()
    priorities = state["buffer"]["sampler"]["priorities"]
    assert len(set(priorities[:300].tolist())) > 1  # the trainers' priorities reached the player's buffer


def test_rainbow_resume_with_the_prioritized_buffer(cli, tmp_path):
    args = [*FAST, "--checkpoint.every", "200", "--keep_last", "0", "--eval_episodes", "0", "--checkpoint.save_buffer"]
    proc = cli("rainbow", *args, "--total_steps", "200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    first = torch.load(run / "checkpoint" / "ckpt_200_0.ckpt", weights_only=False)
    proc = cli(
        "rainbow",
        *args,
        "--total_steps",
        "300",
        "--resume_from",
        str(run / "checkpoint" / "ckpt_200_0.ckpt"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 200" in proc.stdout
    second = torch.load(run / "checkpoint" / "ckpt_300_0.ckpt", weights_only=False)
    assert second["buffer"]["storage"]["pos"] == 150
    assert torch.equal(second["buffer"]["storage"]["data"]["state"][:100], first["buffer"]["storage"]["data"]["state"])
    assert second["buffer"]["sampler"]["priorities"][200:300].gt(0).all()  # new rows entered with a priority
    assert second["gradient_steps"] > first["gradient_steps"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n_step", "0"], "algo.n_step must be >= 1"),
        (["--v_min", "5", "--v_max", "1"], "algo.v_min (5.0) must be below algo.v_max (1.0)"),
        (["--num_atoms", "1"], "algo.num_atoms must be >= 2"),
        (["--env_id", "Pendulum-v1"], "rainbow does not support Box action spaces"),
    ],
    ids=["n_step", "support", "atoms", "box"],
)
def test_rainbow_rejects_bad_input_with_one_line(cli, tmp_path, args, message):
    proc = cli("rainbow", *args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.learning
@pytest.mark.parametrize("seed", ["1", "2"])
def test_rainbow_solves_cartpole(cli, tmp_path, seed):
    """Rainbow with its preset reaches a greedy evaluation mean (Test/rew_avg) >= 475 on CartPole-v1 in 50k steps."""
    proc = cli(
        "exp=rainbow_cartpole", "--seed", seed, "--num_threads", "1", "--eval_every", "0", cwd=tmp_path, timeout=2400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    assert step == 50_000 and value >= 475.0, proc.stdout[-2000:]
