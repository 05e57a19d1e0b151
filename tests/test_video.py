"""--capture_video: valid mp4 files for classic control (training and eval), Box2D and headless MuJoCo."""

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from conftest import run_cli
from helpers import run_dirs

from sheeprl.cli import main

TINY = ["--num_envs", "1", "--rollout_steps", "64", "--minibatch_size", "64", "--update_epochs", "1",
        "--eval_episodes", "0", "--num_threads", "1"]  # fmt: skip

# Renders one frame through Gymnasium's MuJoCo renderer, exactly what RecordVideo will do.
_GL_PROBE = """
import gymnasium as gym
env = gym.make("InvertedPendulum-v5", render_mode="rgb_array", width=16, height=16)
env.reset(seed=0)
assert env.render().shape == (16, 16, 3)
env.close()
"""


@lru_cache(maxsize=1)
def mujoco_gl_backend() -> Optional[str]:
    """The first headless OpenGL backend that renders MuJoCo here (the user's MUJOCO_GL first), or None."""
    candidates = list(dict.fromkeys([os.environ.get("MUJOCO_GL", "egl"), "egl", "osmesa"]))
    for backend in candidates:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        try:
            proc = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode == 0:
            return backend
    return None


def assert_valid_mp4(path: Path) -> int:
    """An mp4 container that ffmpeg (imageio-ffmpeg's own binary) decodes into at least one frame."""
    import imageio_ffmpeg

    data = path.read_bytes()
    assert len(data) > 0 and data[4:8] == b"ftyp", f"{path} is not an mp4 file"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames > 0, f"{path} has no frames"
    return frames


def test_training_and_eval_videos_cartpole(tmp_path, capsys):
    # video_every 1000: only the first episode is recorded (every encoding starts an ffmpeg process).
    proc = run_cli("ppo", "--env_id", "CartPole-v1", *TINY, "--total_steps", "64", "--capture_video",
                   "--video_every", "1000", cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    train_videos = sorted((run / "videos").glob("train-episode-*.mp4"))
    assert [v.name for v in train_videos] == ["train-episode-0.mp4"]
    for video in train_videos:
        assert_valid_mp4(video)

    # eval records every episode, named after the checkpoint's step and the seed, beside the training videos.
    args = ["eval", "--checkpoint_path", str(run), "--eval_episodes", "2", "--capture_video", "--seed", "3"]
    assert main(args) == 0
    assert "video:" in capsys.readouterr().out
    eval_videos = sorted((run / "videos").glob("eval_*.mp4"))
    assert [v.name for v in eval_videos] == [f"eval_step64_seed3-episode-{i}.mp4" for i in range(2)]
    for video in eval_videos:
        assert_valid_mp4(video)
    assert not list(run.glob(".eval_video_*")), "the private recording folder is removed"


def test_box2d_video(tmp_path):
    pytest.importorskip("Box2D", reason="Box2D envs need gymnasium[box2d]")
    from omegaconf import OmegaConf

    from sheeprl.algos.ppo.args import PPOConfig
    from sheeprl.envs import make_vector_env

    cfg = OmegaConf.structured(PPOConfig)
    cfg.env.id, cfg.env.max_episode_steps, cfg.env.video_every = "LunarLander-v3", 25, 1
    envs = make_vector_env(cfg, seed=0, num_envs=1, run_dir=str(tmp_path), capture_video=True)
    envs.reset(seed=0)
    for _ in range(30):  # one whole (truncated) episode and the start of the next
        envs.step(np.array([envs.single_action_space.sample()]))
    envs.close()
    videos = sorted((tmp_path / "videos").glob("train-episode-*.mp4"))
    assert videos, "no video written"
    assert assert_valid_mp4(videos[0]) >= 20


def test_mujoco_video_headless(tmp_path):
    backend = mujoco_gl_backend()
    if backend is None:
        pytest.skip("no headless OpenGL backend renders MuJoCo here (install libEGL or libosmesa6)")
    proc = run_cli(
        "ppo", "--env_id", "InvertedPendulum-v5", *TINY, "--rollout_steps", "32", "--minibatch_size", "32",
        "--total_steps", "32", "--capture_video", "--video_every", "1000", "env.kwargs.width=64", "env.kwargs.height=64",
        cwd=tmp_path, timeout=600, env={"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    videos = sorted((run / "videos").glob("train-episode-*.mp4"))
    assert videos, f"no MuJoCo video written with MUJOCO_GL={backend}"
    for video in videos:
        assert_valid_mp4(video)
