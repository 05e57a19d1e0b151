"""Recurrent PPO and A2C: speed against feed-forward PPO and against Stable-Baselines3 / sb3-contrib.

    python benchmarks/recurrent.py [--steps 50000] [--a2c_steps 100000] [--repeats 2] [--peer_python PY]

1. ``ppo_recurrent`` vs ``ppo`` at the same settings (CartPole-v1, 8 envs, 32-step rollouts, 4 epochs,
   minibatches of 256 transitions = 8 sequences of 32 steps): rollout SPS, train SPS, whole run.
2. ``a2c`` whole-run wall time (process start included) vs Stable-Baselines3's A2C at the same settings
   (CartPole-v1, 8 envs, 5-step rollouts, RMSprop, 2x64 tanh actor and critic), and ``ppo_recurrent`` with
   ``exp=ppo_recurrent_cartpole_novel`` settings vs sb3-contrib's RecurrentPPO (an LSTM of 64 units each for
   the actor and the critic, clip range annealed linearly).
   The peers run in their own virtual env (``--peer_python``, default ../peers/sb3/bin/python); skipped
   when it is missing.

Runs are interleaved (sheeprl, peer, sheeprl, peer, ...) and the median of ``--repeats`` is shown, so a
busy machine slows both sides alike; compare the ratios, not the absolute numbers. The CPU seconds of
each run (user + system, process start included) are printed too: on a shared machine they move far
less with the load than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

SB3_A2C = """
import sys, torch
torch.set_num_threads(1)
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
env = make_vec_env("CartPole-v1", n_envs=8, seed=1)
A2C("MlpPolicy", env, n_steps=5, ent_coef=0.0, seed=1, device="cpu").learn(int(sys.argv[1]))
"""

SB3_RECURRENT = """
import sys, numpy as np, torch, gymnasium as gym
torch.set_num_threads(1)
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

class NoVelocity(gym.ObservationWrapper):
    def observation(self, obs):
        return obs * np.array([1, 0, 1, 0], dtype=obs.dtype)

env = VecNormalize(make_vec_env("CartPole-v1", n_envs=8, seed=1, wrapper_class=NoVelocity), gamma=0.98)
RecurrentPPO("MlpLstmPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
             ent_coef=0.0, learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p, seed=1, device="cpu",
             policy_kwargs=dict(lstm_hidden_size=64, shared_lstm=False, enable_critic_lstm=True,
                                net_arch=dict(pi=[64], vf=[64]), activation_fn=torch.nn.ReLU)).learn(int(sys.argv[1]))
"""


CPU: dict[str, list[float]] = {}  # CPU seconds (user + system) of every timed child, by label


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: str, label: str = "") -> float:
    """Wall seconds of a command; its CPU seconds go to ``CPU[label]`` (steadier than wall on a busy machine)."""
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-2000:]}")
    CPU.setdefault(label, []).append(_children_cpu() - c0)
    return time.perf_counter() - t0


def sheeprl(args: list[str]) -> dict[str, float]:
    """Wall time of ``python sheeprl.py ARGS`` and the mean rollout / train SPS it logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        wall = timed([sys.executable, str(ROOT / "sheeprl.py"), *args, "--eval_episodes", "0", "--num_threads", "1",
                      "--seed", "1", "--checkpoint.save_last", "false"], tmp, args[0])  # fmt: skip
        (events,) = list(Path(tmp).rglob("events.out.tfevents.*"))
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()

        def mean(tag: str) -> float:
            return statistics.fmean(e.value for e in acc.Scalars(tag))

        return {"wall": wall, "rollout": mean("Time/sps_env_interaction"), "train": mean("Time/sps_train")}


def peer(script: str, steps: int, python: str, label: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return timed([python, "-c", script, str(steps)], tmp, label)


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50_000, help="policy steps of the (recurrent) PPO runs")
    p.add_argument("--a2c_steps", type=int, default=100_000, help="policy steps of the A2C runs")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peer_python", default="../peers/sb3/bin/python")
    p.add_argument("--skip", nargs="*", default=[], choices=["ppo", "a2c", "recurrent_peer"])
    args = p.parse_args()
    # Absolute (the runs start in temporary folders), without following the venv's symlink to the base interpreter.
    args.peer_python = os.path.abspath(args.peer_python)
    has_peer = Path(args.peer_python).exists()
    log = ["--metric.log_every", "10000"]

    if "ppo" not in args.skip:
        same = ["--env_id", "CartPole-v1", "--num_envs", "8", "--rollout_steps", "32", "--update_epochs", "4",
                "--total_steps", str(args.steps), *log]  # fmt: skip
        rec, ff = [], []
        for _ in range(args.repeats):
            rec.append(sheeprl(["ppo_recurrent", *same, "--sequence_length", "32", "--minibatch_size", "8"]))
            ff.append(sheeprl(["ppo", *same, "--minibatch_size", "256"]))
        print(f"ppo_recurrent vs ppo, CartPole-v1, 8 envs x 32 steps, 4 epochs, 256-transition minibatches, "
              f"{args.steps} steps, median of {args.repeats}")  # fmt: skip
        for key, what in (("rollout", "rollout SPS"), ("train", "train SPS")):
            r, f = med(rec, key), med(ff, key)
            print(f"  {what:14s} ppo_recurrent {r:9,.0f}   ppo {f:9,.0f}   ratio {r / f:5.2f}")
        r, f = med(rec, "wall"), med(ff, "wall")
        print(f"  {'whole run':14s} ppo_recurrent {r:8.1f}s   ppo {f:8.1f}s   ratio {f / r:5.2f} (ppo time / ours)")

    if "a2c" not in args.skip:
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(sheeprl(["a2c", "exp=a2c_cartpole", "--total_steps", str(args.a2c_steps), *log])["wall"])
            if has_peer:
                theirs.append(peer(SB3_A2C, args.a2c_steps, args.peer_python, "sb3_a2c"))
        o = statistics.median(ours)
        line = f"a2c CartPole-v1, 8 envs x 5 steps, {args.a2c_steps} steps: sheeprl {o:.1f}s"
        if theirs:
            t = statistics.median(theirs)
            line += f", Stable-Baselines3 A2C {t:.1f}s, speed-up {t / o:.2f}x"
        print(line + f" (whole runs, median of {args.repeats})")
        if theirs:
            o, t = statistics.median(CPU["a2c"]), statistics.median(CPU["sb3_a2c"])
            print(f"  CPU time: sheeprl {o:.1f}s, Stable-Baselines3 {t:.1f}s, speed-up {t / o:.2f}x")

    if "recurrent_peer" not in args.skip and has_peer:
        ours, theirs = [], []
        for _ in range(args.repeats):
            preset = ["ppo_recurrent", "exp=ppo_recurrent_cartpole_novel", "--total_steps", str(args.steps), *log]
            ours.append(sheeprl(preset)["wall"])
            theirs.append(peer(SB3_RECURRENT, args.steps, args.peer_python, "sb3_recurrent"))
        o, t = statistics.median(ours), statistics.median(theirs)
        print(
            f"ppo_recurrent exp=ppo_recurrent_cartpole_novel, {args.steps} steps: sheeprl {o:.1f}s, "
            f"sb3-contrib RecurrentPPO {t:.1f}s, speed-up {t / o:.2f}x (whole runs, median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
