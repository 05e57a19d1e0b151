"""The pixel data path: Atari env speed with our preprocessing, replay memory per stored transition.

    OMP_NUM_THREADS=1 python benchmarks/pixels.py [--steps 4000] [--rounds 7] [--game ALE/Breakout-v5]

Prints:
  env steps/s      agent steps per CPU second (process time; random actions) of
                     bare     gym.make("ALE/<Game>-v5"): the emulator skips 4 frames itself, 210x160 RGB observations
                     sheeprl  our Atari env (env=atari): frameskip=1 emulator + AtariPreprocessing (no-ops, skip 4,
                              max-pool, 84x84 grayscale) + FIRE reset + FrameStackObservation(4) + dict observation
                   each round steps both envs in alternating chunks of 50 steps (the machine's speed moves by
                   30% within seconds, so rounds of one env then the other gave ratios from 0.9x to 1.3x in one
                   run); the ratio is bare / sheeprl per round, and its median over the rounds.
  bytes/transition FrameReplayBuffer storage (frames, frame ids, actions, rewards, flags) for 84x84x4 stacks,
                   the frames actually written per transition in a real Atari rollout, and the same transition in a
                   plain ReplayBuffer (observation + next observation, both stacked).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sheeprl.config import RunConfig  # noqa: E402
from sheeprl.data import FrameReplayBuffer  # noqa: E402
from sheeprl.envs import make_env, make_vector_env  # noqa: E402
from sheeprl.envs.atari import register_ale  # noqa: E402


def atari_cfg(game: str, num_envs: int = 1) -> object:
    cfg = OmegaConf.structured(RunConfig)
    cfg.algo.cnn_keys.encoder, cfg.algo.mlp_keys.encoder = ["rgb"], []
    preset = OmegaConf.load(ROOT / "configs" / "env" / "atari.yaml")
    cfg.env = OmegaConf.merge(cfg.env, preset.env)
    cfg.env.id, cfg.env.num_envs = game, num_envs
    return cfg


class Stepper:
    """Random actions in one env, resetting at episode ends; accumulates the CPU time of its steps."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        self.env, self.rng, self.n = env, np.random.default_rng(seed), env.action_space.n
        self.cpu, self.steps = 0.0, 0
        env.reset(seed=seed)

    def run(self, steps: int) -> None:
        env, rng, n = self.env, self.rng, self.n
        # CPU time of this (single-threaded) process: on a shared machine wall time mostly measures the queue.
        start = time.process_time()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(int(rng.integers(n)))
            if terminated or truncated:
                env.reset()
        self.cpu += time.process_time() - start
        self.steps += steps

    @property
    def per_second(self) -> float:
        return self.steps / self.cpu


def env_speed(game: str, steps: int, rounds: int, chunk: int = 50) -> None:
    register_ale()
    bare = gym.make(game)  # v5 defaults: frameskip 4 in the emulator, sticky actions 0.25
    ours = make_env(atari_cfg(game), seed=0, idx=0)()
    print(
        f"{game}: env steps per CPU second, 1 env, {rounds} rounds of {steps} steps each (chunks of {chunk}, alternating)"
    )
    ratios, speeds = [], []
    for r in range(rounds):
        a, b = Stepper(bare, r), Stepper(ours, r)
        for c in range(max(steps // chunk, 1)):
            for stepper in (a, b) if c % 2 == 0 else (b, a):
                stepper.run(chunk)
        ratios.append(a.per_second / b.per_second)
        speeds.append((a.per_second, b.per_second))
        print(f"  round {r}: bare {a.per_second:6.0f}  sheeprl {b.per_second:6.0f}  ratio {ratios[-1]:.3f}", flush=True)
    bare_sps, ours_sps = (float(np.median(v)) for v in zip(*speeds, strict=True))
    print(f"  bare ALE v5 (skip 4 in C++, RGB 210x160)      {bare_sps:8.0f}   (median)")
    print(f"  sheeprl env=atari (DeepMind preprocessing)    {ours_sps:8.0f}   (median)")
    print(
        f"  overhead (bare / sheeprl)                     {float(np.median(ratios)):8.2f}x   median of the rounds' "
        f"ratios ({min(ratios):.2f}-{max(ratios):.2f}), target <= 1.3x"
    )


def buffer_bytes(game: str, steps: int) -> None:
    # Storage per transition: allocate a buffer of 1 env and divide (the frame ring scales linearly).
    size = 20_000
    rb = FrameReplayBuffer(size, 1, frame_keys=("rgb",), stack=4)
    cfg = atari_cfg(game)
    cfg.env.max_episode_steps = 2_000  # frames: short episodes, to count the reset frames too
    envs = make_vector_env(cfg, seed=0)
    obs, _ = envs.reset(seed=0)
    for _ in range(steps):
        actions = envs.action_space.sample()
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        real = next_obs["rgb"].copy()
        for i in np.flatnonzero(terminated | truncated):
            real[i] = infos["final_obs"][i]["rgb"]
        rb.add(
            {
                "rgb": obs["rgb"][None],
                "next_rgb": real[None],
                "actions": torch.as_tensor(actions)[None],
                "rewards": torch.as_tensor(rewards, dtype=torch.float32)[None],
                "terminated": torch.as_tensor(terminated)[None],
                "truncated": torch.as_tensor(truncated)[None],
            }
        )
        obs = next_obs
    per = rb.nbytes() / size
    frame = 84 * 84
    plain = 2 * 4 * frame + 8 + 4 + 1 + 1
    written = rb.frames_written / len(rb)
    print(f"replay memory, 84x84 grayscale, stack 4 (frame = {frame} bytes)")
    print(f"  FrameReplayBuffer bytes/transition            {per:8.0f}   -> 1M transitions: {per * 1e6 / 1e9:.2f} GB")
    print(f"  frames written per transition (real rollout)  {written:8.3f}   ({steps} steps, episodes of <= 500 steps)")
    print(
        f"  plain ReplayBuffer bytes/transition           {plain:8.0f}   -> 1M transitions: {plain * 1e6 / 1e9:.2f} GB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--game", default="ALE/Breakout-v5")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env_speed(args.game, args.steps, args.rounds)
    buffer_bytes(args.game, args.steps)


if __name__ == "__main__":
    main()
