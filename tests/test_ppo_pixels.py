"""PPO on pixels, as a user runs it: the Atari and MinAtar presets, and learning MinAtar Breakout."""

import pytest
import torch
from helpers import run_dirs, scalars

pytest.importorskip("ale_py")
pytest.importorskip("minatar")
pytest.importorskip("cv2")

FAST = ["--num_envs", "2", "--rollout_steps", "64", "--minibatch_size", "64", "--metric.log_every", "128"]


@pytest.mark.parametrize(
    "preset",
    [
        ["exp=ppo_minatar", "--total_steps", "384", "--eval_episodes", "2"],
        # 400 frames = 100 agent steps per episode, so episodes (and their whole-game scores) end in the smoke run.
        ["exp=ppo_atari", "--total_steps", "256", "--eval_episodes", "1", "--max_episode_steps", "400"],
    ],
    ids=["minatar", "atari"],
)
def test_pixel_presets_train_evaluate_and_checkpoint(cli, tmp_path, preset):
    proc = cli(*preset, *FAST, "--update_epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    for tag in ("Loss/policy_loss", "Rewards/rew_avg", "Test/rew_avg", "Time/sps_env_interaction"):
        assert tag in tags, f"{tag} missing: {sorted(tags)}"
    (ckpt,) = (run / "checkpoint").glob("ckpt_*_0.ckpt")
    state = torch.load(ckpt, weights_only=False, map_location="cpu")["agent"]
    conv = [k for k in state if k.startswith("encoder.cnn_encoder.model.cnn.0.weight")]
    assert conv, sorted(state)[:5]
    # NatureCNN on 4 stacked 84x84 frames; MinAtar's 3x3 conv on Breakout's 4 planes.
    expected = (32, 4, 8, 8) if preset[0] == "exp=ppo_atari" else (16, 4, 3, 3)
    assert tuple(state[conv[0]].shape) == expected


@pytest.mark.learning
@pytest.mark.parametrize("seed", [1, 2])
def test_ppo_learns_minatar_breakout(cli, tmp_path, seed):
    """exp=ppo_minatar reaches a greedy mean return >= 5 (random play ~0.5) on MinAtar/Breakout-v1 in 300k steps.

    Checks the greedy evaluation (``Test/rew_avg``, 20 episodes) at the end; ~2 CPU-minutes per seed.
    Measured: 9.05 (seed 2); seed 1 scored 5.65, 6.25, 6.85 at 60k, 120k, 180k steps.
    """
    proc = cli("exp=ppo_minatar", "--seed", str(seed), "--eval_episodes", "20", cwd=tmp_path, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    assert step >= 299_000 and value >= 5.0, proc.stdout[-2000:]
