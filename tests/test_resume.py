"""Resume and checkpoint hardening: compatibility checked before anything is written, state restored before
the first observation, durable writes and no stale temp files (issue 8, items 7, 8 and 10)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_dirs

from sheeprl.cli import build_config, main
from sheeprl.utils.checkpoint import Checkpointer, atomic_save, capture_rng

PPO_FAST = ["--num_envs", "2", "--rollout_steps", "64", "--minibatch_size", "64", "--eval_episodes", "0"]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> Path:
    """A finished 256-step PPO CartPole run with checkpoints at 128 and 256."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("ppo_resume")
    proc = run_cli("ppo", *PPO_FAST, "--total_steps", "256", "--checkpoint_every", "128", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(root / "logs")
    return run


def _snapshot(folder: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")}


def _bad_resumes(run: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    ckpt = run / "checkpoint" / "ckpt_128_0.ckpt"
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:500])
    empty = tmp / "empty.ckpt"
    empty.write_bytes(b"")
    foreign = tmp / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    return {
        "other_algorithm": (["sac", "--env_id", "Pendulum-v1", "--resume_from", str(ckpt)], "checkpoint of 'ppo'"),
        "other_spaces": (["ppo", "--env_id", "Pendulum-v1", "--resume_from", str(ckpt)], "observation space"),
        "other_actions": (["ppo", "--env_id", "Acrobot-v1", "--resume_from", str(ckpt)], "space"),
        "truncated": (["ppo", "--resume_from", str(truncated)], "cannot read checkpoint"),
        "empty": (["ppo", "--resume_from", str(empty)], "cannot read checkpoint"),
        "not_sheeprl": (["ppo", "--resume_from", str(foreign)], "is not a sheeprl checkpoint"),
        "missing": (["ppo", "--resume_from", str(tmp / "nope.ckpt")], "checkpoint not found"),
    }


@pytest.mark.parametrize(
    "case", ["other_algorithm", "other_spaces", "other_actions", "truncated", "empty", "not_sheeprl", "missing"]
)
def test_incompatible_resume_is_one_line_exit_2_and_writes_nothing(ppo_run, tmp_path, monkeypatch, capsys, case):
    argv, message = _bad_resumes(ppo_run, tmp_path)[case]
    before_run, before_tmp = _snapshot(ppo_run), _snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, f"log_root={tmp_path / 'logs'}", "--eval_episodes", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sheeprl: error: ") and message in err, err
    # Nothing written: no config_resume_*.yaml or events in the original run folder, no orphan run folder.
    assert _snapshot(ppo_run) == before_run
    assert _snapshot(tmp_path) == before_tmp


def test_checkpoints_carry_algorithm_and_spaces(ppo_run):
    meta = torch.load(ppo_run / "checkpoint" / "ckpt_256_0.ckpt", weights_only=False)["meta"]
    assert meta["algo"] == "ppo" and meta["env_id"] == "CartPole-v1"
    assert meta["observation_space"] == "Dict(state: Box((4,), float32))"
    assert meta["action_space"] == "Discrete(2)"


# --------------------------------------------------------------------------------------------- item 8


def test_resumed_envs_use_restored_statistics_and_a_fresh_seed(tmp_path, monkeypatch):
    """The first observation of a resumed run is normalized with the saved statistics (not fresh ones), and the
    envs are reseeded (not replaying the run's first starting states)."""
    from lightning.fabric import Fabric

    from sheeprl.envs import get_env_state, make_vector_env
    from sheeprl.utils.run import Run, resumed_env_seed

    _, cfg = build_config("ppo", ["--normalize_observation", "--num_envs", "2", f"log_root={tmp_path}"])
    fabric = Fabric(accelerator="cpu", devices=1)
    # Statistics of a long run: far from the fresh ones (mean 0, var 1, count 1e-4).
    trained = make_vector_env(cfg, seed=100)
    trained.reset(seed=100)
    for _ in range(300):
        trained.step(trained.action_space.sample())
    saved_env = get_env_state(trained)
    trained.close()

    previous = signal.getsignal(signal.SIGINT)
    try:
        run = Run(fabric, cfg)
        run.state = {"policy_step": 5000, "ranks": [{"rng": capture_rng(), "env": saved_env}]}
        run.start_step = 5000
        envs = make_vector_env(cfg, seed=cfg.seed)
        obs = run.reset_envs(envs, cfg.seed)
    finally:
        signal.signal(signal.SIGINT, previous)

    # The restored statistics saw the first observations (the count grew from the saved one by num_envs) ...
    stats = get_env_state(envs)["obs_rms"]["state"]
    assert stats["count"] == pytest.approx(saved_env["obs_rms"]["state"]["count"] + 2)
    # ... and normalized them: the raw first observations of the derived seed, normalized with those statistics.
    seed = resumed_env_seed(cfg.seed, 5000)
    assert seed != cfg.seed
    raw_cfg = cfg.copy()
    raw_cfg.env.normalize_observation = False
    raw_envs = make_vector_env(raw_cfg, seed=seed)
    raw, _ = raw_envs.reset(seed=seed)
    fresh, _ = raw_envs.reset(seed=cfg.seed)
    mean = np.asarray(stats["mean"], dtype=np.float32)
    std = np.sqrt(np.asarray(stats["var"], dtype=np.float32) + 1e-8)
    np.testing.assert_allclose(obs["state"], np.clip((raw["state"] - mean) / std, -10, 10), rtol=1e-4, atol=1e-4)
    assert not np.allclose(raw["state"], fresh["state"])  # reseeded: not the run's first starting states
    envs.close()
    raw_envs.close()


# --------------------------------------------------------------------------------------------- item 10


def test_atomic_save_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    atomic_save({"x": torch.ones(3)}, tmp_path / "ckpt_1_0.ckpt")
    assert events[:2] == ["fsync", "rename"] and events.count("fsync") >= 2  # the file, then its folder
    assert torch.load(tmp_path / "ckpt_1_0.ckpt")["x"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_1_0.ckpt"]


def test_stale_temp_files_are_removed_at_start_and_when_rotating(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    stale = folder / ".ckpt_100_0.ckpt.tmp4242"  # what a kill -9 during a write leaves
    stale.write_bytes(b"half a checkpoint")
    keep = folder / "notes.txt"
    keep.write_text("not ours")
    ckpt = Checkpointer(folder, every=10, keep_last=2, is_writer=True)
    ckpt.start_from(0)
    assert not stale.exists() and keep.exists()

    stale.write_bytes(b"another killed writer")
    for step in (10, 20, 30):
        ckpt.save(step, {"agent": {}}, {"rng": None})
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt_20_0.ckpt", "ckpt_30_0.ckpt", "notes.txt"]

    # A process that is not the writer never touches the folder.
    stale.write_bytes(b"x")
    Checkpointer(folder, every=10, keep_last=2, is_writer=False).start_from(0)
    assert stale.exists()
