"""Latency of one observation (batch 1) through the PyTorch policy and through its ONNX export (onnxruntime).

    python benchmarks/export_latency.py [--repeats 2000] [--threads 1]

Trains a tiny PPO (CartPole-v1, 2x64 MLP) and SAC (Pendulum-v1, 2x256 MLP) agent (a few hundred steps:
latency does not depend on the weights), exports each with `python sheeprl.py export --format onnx`, then
times, interleaved in rounds, the median wall time of one call for:
  pytorch      the registered evaluation policy (what `sheeprl.py eval` runs), under torch.no_grad
  torchscript  the exported TorchScript file (torch.jit.load)
  onnxruntime  the exported ONNX file, CPUExecutionProvider, intra_op_num_threads = --threads
and prints the medians (microseconds) and the ratio pytorch / onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "ppo": ["ppo", "--env_id", "CartPole-v1", "--num_envs", "2", "--rollout_steps", "64", "--minibatch_size", "64",
            "--total_steps", "128"],
    "sac": ["sac", "--env_id", "Pendulum-v1", "--num_envs", "1", "--learning_starts", "64", "--batch_size", "32",
            "--total_steps", "100", "--buffer.size", "200"],
}  # fmt: skip


def median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import onnxruntime as ort
    import torch

    from sheeprl.envs import make_env
    from sheeprl.evaluate import load_run_config, resolve_checkpoint, typed_config
    from sheeprl.registry import get_evaluation
    from sheeprl.utils.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(False)
    tmp = Path(tempfile.mkdtemp(prefix="export_latency_"))
    print(f"one observation (batch 1), median of {args.repeats} calls x {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s); torch {torch.__version__}, onnxruntime {ort.__version__}")  # fmt: skip
    for name, cmd in RUNS.items():
        common = ["--eval_episodes", "0", "--num_threads", str(args.threads), f"log_root={tmp / name}"]
        subprocess.run([sys.executable, str(ROOT / "sheeprl.py"), *cmd, *common], check=True, capture_output=True)
        run = next((tmp / name).rglob("config.yaml")).parent
        onnx_file, ts_file = tmp / f"{name}.onnx", tmp / f"{name}.pt"
        for fmt, out in (("onnx", onnx_file), ("torchscript", ts_file)):
            subprocess.run(
                [sys.executable, str(ROOT / "sheeprl.py"), "export", "--checkpoint_path", str(run), "--format", fmt,
                 "--out", str(out)], check=True, capture_output=True,
            )  # fmt: skip
        ckpt = resolve_checkpoint(str(run))
        state, cfg = load_checkpoint(ckpt), typed_config(load_run_config(ckpt, None))
        env = make_env(cfg, seed=0, idx=0)()
        act = get_evaluation(name)(cfg, state, env.observation_space, env.action_space)
        obs, _ = env.reset(seed=0)
        x = {k: np.asarray(v)[None] for k, v in obs.items()}
        xt = {k: torch.as_tensor(v) for k, v in x.items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(ts_file))
        keys = [*cfg.algo.cnn_keys.encoder, *cfg.algo.mlp_keys.encoder]

        def pytorch(act=act, xt=xt):
            with torch.no_grad():
                return act(xt).numpy()

        def torchscript(scripted=scripted, xt=xt, keys=keys):
            with torch.no_grad():
                return scripted(*[xt[k] for k in keys]).numpy()

        def onnxruntime(session=session, x=x):
            return session.run(None, x)[0]

        assert np.allclose(pytorch(), onnxruntime(), atol=1e-5) and np.allclose(pytorch(), torchscript(), atol=1e-5)
        results: dict[str, list[float]] = {"pytorch": [], "torchscript": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for label, fn in (("pytorch", pytorch), ("torchscript", torchscript), ("onnxruntime", onnxruntime)):
                results[label].append(median_us(fn, args.repeats))
        med = {k: statistics.median(v) for k, v in results.items()}
        env_id = cfg.env.id
        print(f"{name} ({env_id}): pytorch {med['pytorch']:.1f} us, torchscript {med['torchscript']:.1f} us, "
              f"onnxruntime {med['onnxruntime']:.1f} us; pytorch / onnxruntime = {med['pytorch'] / med['onnxruntime']:.2f}x")  # fmt: skip
        env.close()


if __name__ == "__main__":
    main()
