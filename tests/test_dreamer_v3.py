"""Dreamer V3 end to end, as a user runs it: vectors (discrete and continuous), pixels with video and the
reconstruction image, 2 processes, resume with the buffer, bad input, checkpoint evaluation, and (behind
SHEEPRL_HEAVY=1) the CartPole learning check."""

import math
import os

import pytest
import torch
from helpers import run_dirs, scalars

# A tiny model and a few dozen steps: 32 random steps, then a gradient step every 4 policy steps.
TINY = [
    "--algo.size", "XXS", "--algo.dense_units", "16", "--algo.recurrent_state_size", "16",
    "--algo.stochastic_size", "4", "--algo.discrete_size", "4", "--algo.cnn_multiplier", "2",
    "--algo.batch_size", "4", "--algo.sequence_length", "8", "--algo.horizon", "3",
    "--algo.learning_starts", "32", "--algo.replay_ratio", "0.25", "--buffer.size", "200",
    "--num_envs", "2", "--eval_episodes", "1", "--metric.log_every", "32", "--num_threads", "1",
]  # fmt: skip
LOSSES = (
    "Loss/world_model_loss",
    "Loss/observation_loss",
    "Loss/reward_loss",
    "Loss/state_loss",
    "Loss/continue_loss",
    "Loss/policy_loss",
    "Loss/value_loss",
)


def _ckpt(run):
    (ckpt,) = sorted((run / "checkpoint").glob("ckpt_*_0.ckpt"))
    return ckpt


def test_dreamer_v3_vectors_discrete_smoke_and_eval(cli, tmp_path):
    proc = cli("dreamer_v3", "--env_id", "CartPole-v1", *TINY, "--total_steps", "96", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    for tag in (*LOSSES, "Rewards/rew_avg", "Test/rew_avg"):
        assert tag in tags, sorted(tags)
    state = torch.load(_ckpt(run), weights_only=False)
    assert state["policy_step"] == 96 and "buffer" not in state
    assert {"agent", "world_model_optimizer", "actor_optimizer", "critic_optimizer", "normalizer", "player"} <= set(
        state
    )
    assert state["player"]["h"].shape == (2, 16)  # the recurrent state of every env
    proc = cli("eval", "--checkpoint_path", str(_ckpt(run)), "--eval_episodes", "2", "--num_threads", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "return" in proc.stdout


def test_dreamer_v3_bf16_mixed_precision_smoke(cli, tmp_path):
    """Under autocast the sparse layers and the posterior loop take their cast paths (no in-place accumulation of a
    bf16 product into a float32 sum, no deferred weight gradients): a run completes with finite losses."""
    proc = cli("dreamer_v3", "--env_id", "CartPole-v1", *TINY, "--total_steps", "64", "--precision", "bf16-mixed",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    assert all(math.isfinite(v) for _, v in tags["Loss/world_model_loss"] + tags["Loss/value_loss"])


def test_dreamer_v3_continuous_pendulum_smoke(cli, tmp_path):
    # Dynamics backpropagation through the imagined trajectory (continuous actions).
    proc = cli("dreamer_v3", "--env_id", "Pendulum-v1", *TINY, "--total_steps", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/policy_loss" in scalars(run)


def test_dreamer_v3_pixels_dmc_video_and_images(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = cli(
        "dreamer_v3", "--env_id", "dmc/cartpole-swingup", "--env.from_pixels", "true",
        "--algo.cnn_keys.encoder", "[rgb]", "--algo.mlp_keys.encoder", "[]", *TINY, "--total_steps", "64",
        "--env.max_episode_steps", "40", "--algo.image_every", "32", "--env.capture_video", "true",
        "--env.video_every", "1", "--buffer.memmap", "true", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/observation_loss" in scalars(run)
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert "Images/real_vs_reconstructed" in acc.Tags()["images"]
    assert list((run / "videos").glob("*.mp4"))
    assert (run / "memmap_buffer" / "rank_0" / "rgb.memmap").exists()


def test_dreamer_v3_atari_preset_smoke(cli, tmp_path):
    # exp=dreamer_v3_100k_ms_pacman with a tiny model: env=atari preprocessing, 64x64 RGB, one env.
    proc = cli("exp=dreamer_v3_100k_ms_pacman", *TINY, "--num_envs", "1", "--total_steps", "48", "--eval_episodes", "0",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/observation_loss" in scalars(run)


def test_dreamer_v3_resume_with_buffer(cli, tmp_path):
    args = ["dreamer_v3", "--env_id", "CartPole-v1", *TINY, "--eval_episodes", "0", "--checkpoint.save_buffer"]
    proc = cli(*args, "--total_steps", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    state = torch.load(_ckpt(run), weights_only=False)
    assert state["buffer"]["env_pos"].min() >= 33  # every step of both envs, plus the episode-end rows
    proc = cli(*args, "--total_steps", "96", "--resume_from", str(_ckpt(run)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 64" in proc.stdout
    steps = [s for s, _ in scalars(run)["Loss/world_model_loss"]]
    assert max(steps) == 96  # trained on straight away: the buffer came back


@pytest.mark.distributed
def test_dreamer_v3_two_processes(cli, tmp_path):
    proc = cli(
        "dreamer_v3", "--env_id", "CartPole-v1", *TINY, "--total_steps", "128", "--devices", "2",
        "--eval_episodes", "0", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    assert "Loss/world_model_loss" in scalars(run)
    # Gradients are averaged over the ranks: both hold the same weights (rank 0's checkpoint is the one written).
    assert torch.load(_ckpt(run), weights_only=False)["policy_step"] == 128


@pytest.mark.distributed
def test_dreamer_v3_two_processes_train_before_the_buffer_fills(cli, tmp_path):
    """learning_starts 0: training waits until every env holds a sequence, and the ranks must agree on when that is
    although their episodes end at different steps (each end adds a row): this once left the ranks waiting on each
    other's collectives forever."""
    proc = cli(
        "dreamer_v3", "--env_id", "CartPole-v1", *TINY, "--algo.learning_starts", "0", "--algo.sequence_length", "16",
        "--total_steps", "128", "--devices", "2", "--eval_episodes", "0", "--fabric.timeout_s", "120", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    # Trained from policy step 60 (the first row plus 15 steps' rows per env), on both ranks alike.
    assert [s for s, _ in scalars(run)["Loss/world_model_loss"]] == [64, 96, 128]


def test_dreamer_v3_bad_input(cli, tmp_path):
    proc = cli("dreamer_v3", "--algo.size", "XXXL", cwd=tmp_path)
    assert proc.returncode == 2 and "algo.size" in proc.stderr
    proc = cli("dreamer_v3", "--algo.cnn_keys.encoder", "[rgb]", "--env.screen_size", "84", cwd=tmp_path)
    assert proc.returncode == 2 and "64x64" in proc.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.learning
@pytest.mark.skipif(not os.environ.get("SHEEPRL_HEAVY"), reason="about an hour of CPU: set SHEEPRL_HEAVY=1")
@pytest.mark.parametrize("seed", ["1", "2"])
def test_dreamer_v3_learns_cartpole(cli, tmp_path, seed):
    """exp=dreamer_v3_cartpole: training return (Rewards/rew_avg) averaged over the last two logged windows (2000
    policy steps: about the last 10 episodes at a return of 150-200) > 150 within its 20k policy steps, and the
    observation and reward losses at least halve from their first logged values."""
    proc = cli("exp=dreamer_v3_cartpole", "--seed", seed, "--num_threads", "1", cwd=tmp_path, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    last = [v for _, v in tags["Rewards/rew_avg"][-2:]]
    assert sum(last) / len(last) > 150, tags["Rewards/rew_avg"]
    for name in ("Loss/observation_loss", "Loss/reward_loss"):
        values = [v for _, v in tags[name]]
        assert min(values[-3:]) <= 0.5 * values[0], (name, values)
