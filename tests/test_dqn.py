"""DQN end to end, as a user runs it: smoke (CartPole, MinAtar pixels), 2 processes, bad input, resume with the
replay buffer, evaluation of a checkpoint, learning CartPole (greedy evaluation, Test/rew_avg) and, opt-in
(SHEEPRL_HEAVY=1), DQN and Rainbow learning MinAtar Breakout."""

import os

import pytest
import torch
from helpers import run_dirs, scalars

# A few hundred steps: 100 random warm-up steps, then small batches and nets.
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
    "--target_update_every",
    "20",
    "--exploration_steps",
    "200",
    "--buffer.size",
    "500",
    "--eval_episodes",
    "1",
    "--metric.log_every",
    "100",
    "--num_threads",
    "1",
]
TAGS = ("Loss/q_loss", "Info/q_mean", "Info/epsilon", "Rewards/rew_avg", "Test/rew_avg")


def test_dqn_smoke_double_dueling_writes_logs_and_checkpoint(cli, tmp_path):
    proc = cli("dqn", "--env_id", "CartPole-v1", *FAST, "--total_steps", "300", "--double", "--dueling", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    for tag in TAGS:
        assert tag in tags, sorted(tags)
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert state["policy_step"] == 300 and "buffer" not in state
    assert {"q", "target_q", "optimizer", "ratio", "gradient_steps"} <= state.keys()
    assert any(k.startswith("advantage") for k in state["q"])  # the dueling streams
    # the checkpoint evaluates through the registry, as a user would
    proc = cli("eval", "--checkpoint_path", str(ckpt), "--eval_episodes", "2", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.distributed
def test_dqn_two_ranks_coupled(cli, tmp_path):
    proc = cli("dqn", *FAST, "--total_steps", "300", "--devices", "2", "--eval_episodes", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/q_loss" in scalars(run)


def test_dqn_minatar_pixels_smoke(cli, tmp_path):
    proc = cli("exp=dqn_minatar", *FAST, "--total_steps", "300", "--checkpoint.save_buffer", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/q_loss" in scalars(run)
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert "frames" in state["buffer"]  # the frame buffer: planes stored once, bit-packed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env_id", "Pendulum-v1"], "dqn does not support Box action spaces"),
        (["--replay_ratio", "0"], "algo.replay_ratio must be > 0"),
        (["--tau", "0"], "algo.tau must lie in (0, 1]"),
        (["--train_every", "0"], "algo.train_every must be >= 1"),
        (["--eps_end", "2"], "algo.eps_end must lie in [0, 1]"),
        (["--batch_size", "33", "--devices", "2"], "must be divisible by the 2 training processes"),
    ],
    ids=["box", "ratio", "tau", "train_every", "eps", "batch_split"],
)
def test_dqn_rejects_bad_input_with_one_line(cli, tmp_path, args, message):
    proc = cli("dqn", *args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "logs").exists()


def test_dqn_resume_with_the_replay_buffer(cli, tmp_path):
    args = [*FAST, "--checkpoint.every", "200", "--keep_last", "0", "--eval_episodes", "0", "--checkpoint.save_buffer"]
    proc = cli("dqn", *args, "--total_steps", "200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    first = torch.load(run / "checkpoint" / "ckpt_200_0.ckpt", weights_only=False)
    assert first["buffer"]["pos"] == 100
    proc = cli(
        "dqn", *args, "--total_steps", "300", "--resume_from", str(run / "checkpoint" / "ckpt_200_0.ckpt"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 200" in proc.stdout
    second = torch.load(run / "checkpoint" / "ckpt_300_0.ckpt", weights_only=False)
    assert second["buffer"]["pos"] == 150
    assert torch.equal(second["buffer"]["data"]["state"][:100], first["buffer"]["data"]["state"])
    assert second["gradient_steps"] > first["gradient_steps"]  # it trained at once, on the restored buffer


def test_dqn_trains_in_bursts_with_the_same_ratio_and_resumes_mid_interval(cli, tmp_path):
    """--train_every N trains every N rounds on what replay_ratio accumulated: the same gradient steps in total.

    200 rounds of 2 envs, 100 of them after the 100 warm-up steps: 100 gradient steps at ratio 0.5 whether they
    come one per round or 10 per 10 rounds; every 30 rounds, 3 bursts of 30 and 10 steps still pending at the end.
    A resume from step 200 (round 50 of 100, mid-interval) ends in the same state as the run that went through.
    """
    counts = {}
    for every in ("1", "10", "30"):
        where = tmp_path / every
        where.mkdir()
        args = [*FAST, "--train_every", every, "--eval_episodes", "0", "--checkpoint.every", "200", "--keep_last", "0"]
        proc = cli("dqn", *args, "--total_steps", "300", "--checkpoint.save_buffer", cwd=where)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (run,) = run_dirs(where / "logs")
        final = torch.load(run / "checkpoint" / "ckpt_300_0.ckpt", weights_only=False)
        counts[every] = (final["gradient_steps"], final["pending_gradient_steps"], final["train_rounds"])
    assert counts == {"1": (100, 0, 100), "10": (100, 0, 100), "30": (90, 10, 100)}, counts
    ckpt = run / "checkpoint" / "ckpt_200_0.ckpt"
    proc = cli("dqn", *args, "--total_steps", "300", "--checkpoint.save_buffer", "--resume_from", str(ckpt), cwd=where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(run / "checkpoint" / "ckpt_300_0.ckpt", weights_only=False)
    assert (resumed["gradient_steps"], resumed["pending_gradient_steps"], resumed["train_rounds"]) == counts["30"]


@pytest.mark.learning
@pytest.mark.parametrize("seed", ["1", "2"])
def test_dqn_learns_cartpole(cli, tmp_path, seed):
    """DQN with its preset solves CartPole-v1: a greedy evaluation (Test/rew_avg, 10 episodes every 5k steps)
    reaches >= 475 (random play: ~22) within 50k policy steps, on both seeds (issue 9's bar; seeds 1-5 measured
    in sheeprl/algos/dqn/README.md)."""
    proc = cli(
        "exp=dqn_cartpole", "--seed", seed, "--num_threads", "1", "--eval_every", "5000", cwd=tmp_path, timeout=2400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    evals = scalars(run)["Test/rew_avg"]
    assert evals[-1][0] == 50_000 and max(v for _, v in evals) >= 475.0, evals


@pytest.mark.learning
@pytest.mark.skipif(not os.environ.get("SHEEPRL_HEAVY"), reason="~40 CPU-minutes a run: set SHEEPRL_HEAVY=1")
@pytest.mark.parametrize("algo", ["dqn", "rainbow"])
@pytest.mark.parametrize("seed", ["1", "2"])
def test_value_based_learns_minatar_breakout(cli, tmp_path, algo, seed):
    """Issue 9's pixel bar: with its MinAtar preset, a greedy evaluation (Test/rew_avg, 10 episodes every 50k)
    reaches a mean return >= 5 on MinAtar/Breakout-v1 (random play: ~0.5) within 300k policy steps, on both seeds
    (measured in benchmarks/results/learning_minatar.md). Opt-in: the 300k steps take longer than the whole suite."""
    proc = cli(f"exp={algo}_minatar", "--seed", seed, "--num_threads", "1", "--eval_every", "50000", cwd=tmp_path,
               timeout=6 * 3600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    evals = scalars(run)["Test/rew_avg"]
    assert evals[-1][0] == 300_000 and max(v for _, v in evals) >= 5.0, evals


@pytest.mark.parametrize("preset", ["exp=dqn_atari", "exp=rainbow_atari"])
def test_atari_presets_smoke(cli, tmp_path, preset):
    """The papers' Atari presets run end to end for a few hundred steps (small buffer, early warm-up end)."""
    args = ["--total_steps", "200", "--learning_starts", "100", "--buffer.size", "1000", "--eval_episodes", "0"]
    args += ["--metric.log_every", "100", "--num_threads", "1", "--checkpoint.save_last", "false"]
    proc = cli(preset, *args, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/q_loss" in scalars(run), sorted(scalars(run))
