"""SAC end to end, as a user runs it: smoke runs (coupled, decoupled with 2 and 3 processes), bad input, resume with
the replay buffer, and learning Pendulum."""

import pytest
import torch
from helpers import run_dirs, scalars

# A few hundred steps: 100 random warm-up steps, then replay ratio 1 with small batches and nets.
FAST = [
    "--env_id",
    "Pendulum-v1",
    "--num_envs",
    "2",
    "--learning_starts",
    "100",
    "--batch_size",
    "32",
    "--dense_units",
    "32",
    "--buffer.size",
    "500",
    "--eval_episodes",
    "1",
    "--metric.log_every",
    "100",
    "--num_threads",
    "1",
]
TAGS = (
    "Loss/value_loss",
    "Loss/policy_loss",
    "Loss/alpha_loss",
    "Info/alpha",
    "Time/sps_env_interaction",
    "Test/rew_avg",
)


def test_sac_smoke_writes_logs_and_checkpoint(cli, tmp_path):
    proc = cli("sac", *FAST, "--total_steps", "300", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    for tag in TAGS:
        assert tag in tags, sorted(tags)
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert state["policy_step"] == 300 and "buffer" not in state  # the buffer is saved only when asked
    assert {"actor", "critic", "target_critic", "log_alpha", "ratio"} <= state.keys()


def test_sac_two_ranks_coupled(cli, tmp_path):
    proc = cli(
        "sac", *FAST, "--total_steps", "200", "--devices", "2", "--eval_episodes", "0", cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    losses = [v for _, v in tags["Loss/value_loss"]] + [v for _, v in tags["Loss/policy_loss"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    # 200 policy steps over both ranks, 100 of them after learning_starts: replay ratio 1 gives 100 gradient steps
    # in all (each rank takes every step on its half of the batch), not 100 per rank nor 200.
    assert state["policy_step"] == 200
    assert {int(s["step"]) for s in state["critic_optimizer"]["state"].values()} == {100}
    assert {int(s["step"]) for s in state["actor_optimizer"]["state"].values()} == {100}
    # Both ranks' own state is saved, and they ran different random streams (distinct seeds).
    assert len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])


@pytest.mark.parametrize("devices", ["2", "3"])
def test_sac_decoupled_smoke(cli, tmp_path, devices):
    proc = cli(
        "sac_decoupled",
        *FAST,
        "--total_steps",
        "300",
        "--devices",
        devices,
        "--checkpoint.save_buffer",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    for tag in TAGS:
        assert tag in scalars(run), sorted(scalars(run))
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False)
    # the player's actor and buffer, the first trainer's critics and optimizers
    assert {"actor", "critic", "target_critic", "critic_optimizer", "buffer", "ratio"} <= state.keys()
    assert state["buffer"]["pos"] == 150  # 300 policy steps over 2 envs


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env_id", "CartPole-v1"], "sac does not support Discrete action spaces"),
        (["--replay_ratio", "0"], "algo.replay_ratio must be > 0"),
        (["--learning_starts", "-1"], "algo.learning_starts must be >= 0"),
        (["--batch_size", "0"], "algo.batch_size must be >= 1"),
        (["--batch_size", "255", "--devices", "2"], "must be divisible by the 2 training processes"),
        (["--tau", "0"], "algo.tau must lie in (0, 1]"),
    ],
    ids=["discrete", "ratio", "learning_starts", "batch", "batch_split", "tau"],
)
def test_sac_rejects_bad_input_with_one_line(cli, tmp_path, args, message):
    proc = cli("sac", "--env_id", "Pendulum-v1", *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "logs").exists()


def test_sac_decoupled_needs_a_trainer(cli, tmp_path):
    proc = cli("sac_decoupled", "--env_id", "Pendulum-v1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "needs at least 2 processes" in proc.stderr


def test_sac_resume_with_the_replay_buffer(cli, tmp_path):
    args = [*FAST, "--checkpoint.every", "200", "--keep_last", "0", "--eval_episodes", "0", "--checkpoint.save_buffer"]
    proc = cli("sac", *args, "--total_steps", "200", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    first = torch.load(run / "checkpoint" / "ckpt_200_0.ckpt", weights_only=False)
    assert first["buffer"]["pos"] == 100 and first["buffer"]["data"]["observations"].shape == (100, 2, 3)

    proc = cli(
        "sac",
        *args,
        "--total_steps",
        "300",
        "--resume_from",
        str(run / "checkpoint" / "ckpt_200_0.ckpt"),
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 200" in proc.stdout
    second = torch.load(run / "checkpoint" / "ckpt_300_0.ckpt", weights_only=False)
    buf = second["buffer"]
    # the resumed run continued the saved buffer: its first 100 steps are the old ones, 50 new ones follow
    assert buf["pos"] == 150
    assert torch.equal(buf["data"]["observations"][:100], first["buffer"]["data"]["observations"])
    assert not torch.equal(second["critic"]["weights.0"], first["critic"]["weights.0"])  # and it trained at once
    steps = [s for s, _ in scalars(run)["Loss/value_loss"]]
    assert max(steps) == 300


@pytest.mark.learning
@pytest.mark.parametrize("seed", ["1", "2"])
def test_sac_solves_pendulum(cli, tmp_path, seed):
    """SAC (preset: 64-unit nets, replay ratio 1) reaches a greedy mean return (Test/rew_avg) >= -250 on
    Pendulum-v1 within 15k policy steps, on 2 seeds (5 seeds measured: benchmarks/results/learning_offpolicy.md)."""
    proc = cli("exp=sac_pendulum", "--seed", seed, "--num_threads", "1", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    assert step == 15_000 and value >= -250.0, proc.stdout[-2000:]


@pytest.mark.learning
@pytest.mark.parametrize("seed", ["1", "2"])
def test_sac_decoupled_solves_pendulum(cli, tmp_path, seed):
    """Decoupled SAC (1 player + 1 trainer) reaches the same bar as coupled SAC (Test/rew_avg), on 2 seeds."""
    proc = cli(
        "exp=sac_decoupled_pendulum",
        "--devices",
        "2",
        "--seed",
        seed,
        "--num_threads",
        "1",
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    assert step == 15_000 and value >= -250.0, proc.stdout[-2000:]
