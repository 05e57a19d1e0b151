"""`python sheeprl.py export`: ONNX (onnxruntime) and TorchScript (torch.jit.load) round trips give the PyTorch
policy's actions on 200 raw env observations (exactly for discrete actions, within 1e-5 for continuous ones)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_dirs

from sheeprl.cli import main

COMMON = ["--num_envs", "2", "--eval_episodes", "0", "--num_threads", "1", "--metric.log_every", "1000"]
OFFPOLICY = ["--env_id", "Pendulum-v1", "--learning_starts", "64", "--batch_size", "16", "--dense_units", "16"]
PPO = ["--rollout_steps", "32", "--minibatch_size", "32", "--update_epochs", "1", "--dense_units", "16"]
CASES = {
    "ppo_discrete": ["ppo", "--env_id", "CartPole-v1", *PPO, "--total_steps", "64"],
    # observation normalization on: its statistics must travel inside the file
    "ppo_continuous": ["ppo", "--env_id", "Pendulum-v1", *PPO, "--total_steps", "128", "--normalize_observation"],
    "sac": ["sac", *OFFPOLICY, "--total_steps", "96", "--buffer.size", "100"],
    "td3": ["td3", *OFFPOLICY, "--total_steps", "96", "--buffer.size", "100", "--normalize_observation"],
}
_RUNS: dict[str, Path] = {}


def trained(case: str, tmp_path_factory) -> Path:
    """One tiny run per case, shared by both formats."""
    from conftest import run_cli

    if case not in _RUNS:
        root = tmp_path_factory.mktemp(case)
        proc = run_cli(*CASES[case], *COMMON, cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (_RUNS[case],) = run_dirs(root / "logs")
    return _RUNS[case]


def reference_and_raw(run: Path, steps: int = 200):
    """(raw observations, the PyTorch policy's actions on them) along 200 steps that the policy drives."""
    from sheeprl.envs import make_env, make_vector_env, set_env_state
    from sheeprl.envs.normalization import NormalizeDictObservation, find_wrapper
    from sheeprl.evaluate import load_run_config, resolve_checkpoint, typed_config
    from sheeprl.registry import get_evaluation
    from sheeprl.utils.checkpoint import load_checkpoint
    from sheeprl.utils.tensors import obs_to_torch

    ckpt = resolve_checkpoint(str(run))
    state, cfg = load_checkpoint(ckpt), typed_config(load_run_config(ckpt, None))
    probe = make_env(cfg, seed=0, idx=0)()
    act = get_evaluation(cfg.algo.name)(cfg, state, probe.observation_space, probe.action_space)
    probe.close()
    envs = make_vector_env(cfg, seed=123, num_envs=1, training=False)
    set_env_state(envs, state["ranks"][0]["env"])
    norm = find_wrapper(envs, NormalizeDictObservation)
    inner = norm.env if norm is not None else envs
    raw, actions = [], []
    obs, _ = inner.reset(seed=123)
    for _ in range(steps):
        raw.append({k: np.array(v) for k, v in obs.items()})
        a = act(obs_to_torch(norm.normalize(obs) if norm is not None else obs, "cpu"))
        actions.append(a.numpy())
        obs, *_ = inner.step(a.numpy())
    envs.close()
    keys = [*cfg.algo.cnn_keys.encoder, *cfg.algo.mlp_keys.encoder]
    return keys, raw, actions, cfg.env.normalize_observation


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", list(CASES))
def test_exported_policy_acts_like_the_pytorch_policy(case, fmt, tmp_path, tmp_path_factory):
    run = trained(case, tmp_path_factory)
    out = tmp_path / ("policy.onnx" if fmt == "onnx" else "policy.pt")
    assert main(["export", "--checkpoint_path", str(run), "--format", fmt, "--out", str(out)]) == 0
    keys, raw, expected, normalized = reference_and_raw(run)
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        desc = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["sheeprl"])
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = [session.run(None, {k: o[k] for k in keys})[0] for o in raw]
    else:
        extra = {"sheeprl.json": ""}
        policy = torch.jit.load(str(out), _extra_files=extra)
        desc = json.loads(extra["sheeprl.json"])
        with torch.no_grad():
            got = [policy(*[torch.as_tensor(o[k]) for k in keys]).numpy() for o in raw]
    assert [i["name"] for i in desc["inputs"]] == keys and desc["outputs"] == ["action"]
    assert bool(desc["normalized_keys"]) == normalized
    got, expected = np.concatenate(got), np.concatenate(expected)
    assert got.shape == expected.shape
    if desc["action_space"]["type"] == "Discrete":
        assert got.dtype == np.int64 and np.array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        low, high = np.array(desc["action_space"]["low"]), np.array(desc["action_space"]["high"])
        assert np.all(got >= low - 1e-6) and np.all(got <= high + 1e-6)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint_path", str(tmp_path / "nope.ckpt")]) == 2
    assert main(["export", "--checkpoint_path", str(tmp_path), "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "checkpoint not found" in err[0] and "invalid choice: 'tflite'" in err[1]
