"""``python sheeprl.py export``: the greedy policy of a checkpoint as one self-contained ONNX or TorchScript file.

The file maps a raw observation, as the run's env returns it (before observation normalization),
to the action the env takes: the normalization statistics of the checkpoint, the encoder, the
head and the scaling to the action bounds are inside. Inputs are the observation keys in the
order of ``algo.cnn_keys.encoder + algo.mlp_keys.encoder`` (a plain Box env has the single key
``state``), each batched ``(B, *shape)``; the output ``action`` is ``(B, *action_shape)``.

It works for every algorithm that registers an evaluation (``@register_evaluation``): the export
wraps its greedy policy. A policy with a state (recurrent) registers an ``@register_export``
builder instead; its file then also takes ``state_<name>`` inputs (zeros at an episode start) and
returns ``next_state_<name>`` outputs. A description (keys, shapes, dtypes, action space) is stored
in the file: ONNX metadata ``sheeprl`` and TorchScript extra file ``sheeprl.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from sheeprl.evaluate import EvalError, _Parser, load_run_config, resolve_checkpoint, typed_config

EXIT_USAGE = 2
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python sheeprl.py export",
        description="Write the greedy policy of a checkpoint as one ONNX or TorchScript file that maps a raw "
        "observation to the env's action (normalization, encoder, head and action scaling inside).",
    )
    p.add_argument("--checkpoint_path", required=True, help="a checkpoint file, or a run folder (its newest one)")
    p.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="onnx (default) or torchscript")
    p.add_argument("--out", default=None, help="output file (default: <checkpoint>.onnx / .pt beside it)")
    p.add_argument("--config", default=None, help="the run's config.yaml (default: two levels above the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    return p


# --------------------------------------------------------------------------------------------- the module


def _import_torch() -> Any:
    import torch

    return torch


def _module_class() -> type:
    """Defined lazily so that ``sheeprl.py export -h`` does not import torch."""
    torch = _import_torch()
    nn = torch.nn

    class _Greedy(nn.Module):
        """A registered evaluation's greedy ``act(obs) -> action`` as a module (its networks become submodules)."""

        def __init__(self, act: Any) -> None:
            super().__init__()
            owner = getattr(act, "__self__", None)
            if isinstance(owner, nn.Module):
                self.owner, self.method, self.act = owner, act.__name__, None
            else:
                self.owner, self.method, self.act = None, "", act

        def forward(self, obs: dict[str, Any], state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            fn = getattr(self.owner, self.method) if self.owner is not None else self.act
            return fn(obs), state

    class ExportedPolicy(nn.Module):
        """Raw observation tensors (and state tensors) in, env action (and next state) out."""

        def __init__(
            self,
            policy: nn.Module,
            obs_keys: list[str],
            normalization: dict[str, dict[str, Any]],
            clip: float,
            epsilon: float = 1e-8,
            state_names: Sequence[str] = (),
        ) -> None:
            super().__init__()
            self.policy = policy
            self.obs_keys = list(obs_keys)
            self.state_names = list(state_names)
            self.norm_keys = [k for k in self.obs_keys if k in normalization]
            self.clip = float(clip)
            for i, key in enumerate(self.norm_keys):
                stats = normalization[key]
                mean = torch.as_tensor(stats["mean"], dtype=torch.float64)
                scale = (torch.as_tensor(stats["var"], dtype=torch.float64) + epsilon) ** -0.5
                self.register_buffer(f"mean_{i}", mean)
                self.register_buffer(f"scale_{i}", scale)

        def forward(self, *inputs: Any) -> Any:
            obs = dict(zip(self.obs_keys, inputs[: len(self.obs_keys)], strict=True))
            for i, key in enumerate(self.norm_keys):
                # The env wrapper's arithmetic: float32 observations, float64 statistics, float32 after each step.
                x = (obs[key].double() - getattr(self, f"mean_{i}")).float()
                x = (x.double() * getattr(self, f"scale_{i}")).float()
                obs[key] = torch.clamp(x, -self.clip, self.clip)
            state = dict(zip(self.state_names, inputs[len(self.obs_keys) :], strict=True))
            action, next_state = self.policy(obs, state)
            if not self.state_names:
                return action
            return (action, *[next_state[n] for n in self.state_names])

    return ExportedPolicy, _Greedy


def _space_info(space: Any) -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {"type": type(space).__name__}
    if hasattr(space, "n"):
        info["n"] = int(space.n)
    if hasattr(space, "nvec"):
        info["nvec"] = [int(n) for n in np.asarray(space.nvec).ravel()]
    if hasattr(space, "low") and type(space).__name__ == "Box":
        info.update(shape=list(space.shape), low=np.asarray(space.low).tolist(), high=np.asarray(space.high).tolist())
    return info


def load_exportable(ckpt: Path, config: Optional[str] = None) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """(module, example inputs, description) for the checkpoint ``ckpt``; raises EvalError on user errors."""
    import numpy as np

    torch = _import_torch()
    import gymnasium as gym

    from sheeprl.envs import EnvError, check_env_id, make_env
    from sheeprl.registry import get_evaluation, get_export
    from sheeprl.utils.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err).splitlines()[0]) from None
    cfg = typed_config(load_run_config(ckpt, config))
    algo = str(cfg.algo.name)
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        check_env_id(str(cfg.env.id))
        probe = make_env(cfg, seed=int(cfg.seed), idx=0)()
        obs_space, action_space = probe.observation_space, probe.action_space
        probe.close()
    except EnvError as err:
        raise EvalError(str(err)) from None
    if not isinstance(obs_space, gym.spaces.Dict):
        obs_space = gym.spaces.Dict({"state": obs_space})

    ExportedPolicy, Greedy = _module_class()
    builder = get_export(algo)
    try:
        if builder is not None:
            policy = builder(cfg, state, obs_space, action_space)
            state_shapes = {k: tuple(v) for k, v in getattr(policy, "state_shapes", {}).items()}
        else:
            load_policy = get_evaluation(algo)
            if load_policy is None:
                raise EvalError(f"algorithm '{algo}' registers neither an export nor an evaluation policy")
            policy, state_shapes = Greedy(load_policy(cfg, state, obs_space, action_space, "cpu")), {}
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise EvalError(f"{ckpt} does not hold a {algo} agent for {cfg.env.id}: {err}".splitlines()[0]) from None

    obs_keys = [*cfg.algo.cnn_keys.encoder, *cfg.algo.mlp_keys.encoder]
    ranks = state.get("ranks") or [{}]
    env_state = ranks[0].get("env", {}) if isinstance(ranks[0], dict) else {}
    normalization = env_state.get("obs_rms", {}) if cfg.env.normalize_observation else {}
    module = ExportedPolicy(policy, obs_keys, normalization, float(cfg.env.clip_observation), 1e-8, list(state_shapes))
    module.eval()

    example = []
    for key in obs_keys:
        sp = obs_space[key]
        example.append(torch.as_tensor(np.stack([sp.sample(), sp.sample()])))
    example += [torch.zeros(2, *shape) for shape in state_shapes.values()]
    desc = {
        "algo": algo,
        "env_id": str(cfg.env.id),
        "policy_step": int(state.get("policy_step", 0)),
        "inputs": [
            {"name": k, "shape": ["batch", *obs_space[k].shape], "dtype": str(obs_space[k].dtype)} for k in obs_keys
        ]
        + [{"name": f"state_{n}", "shape": ["batch", *s], "dtype": "float32"} for n, s in state_shapes.items()],
        "outputs": ["action", *[f"next_state_{n}" for n in state_shapes]],
        "action_space": _space_info(action_space),
        "normalized_keys": sorted(normalization),
        "initial_state": "zeros",
    }
    return module, tuple(example), desc


# --------------------------------------------------------------------------------------------- writers


def write_onnx(module: Any, example: tuple[Any, ...], desc: dict[str, Any], out: Path, opset: int = 17) -> None:
    torch = _import_torch()
    import onnx

    inputs = [i["name"] for i in desc["inputs"]]
    outputs = list(desc["outputs"])
    axes = {n: {0: "batch"} for n in [*inputs, *outputs]}
    with warnings.catch_warnings():
        # The TorchScript-based exporter: seconds instead of the torch.export one's half minute for these small nets.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(out),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(out))
    entry = model.metadata_props.add()
    entry.key, entry.value = "sheeprl", json.dumps(desc)
    onnx.save(model, str(out))


def write_torchscript(module: Any, example: tuple[Any, ...], desc: dict[str, Any], out: Path) -> None:
    torch = _import_torch()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={"sheeprl.json": json.dumps(desc)})


def export(args: argparse.Namespace) -> Path:
    """Build the module and write it (to a temporary file first, then renamed)."""
    ckpt = resolve_checkpoint(args.checkpoint_path)
    module, example, desc = load_exportable(ckpt, args.config)
    out = Path(args.out) if args.out else ckpt.with_suffix(FORMATS[args.format])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        if args.format == "onnx":
            write_onnx(module, example, desc, tmp, args.opset)
        else:
            write_torchscript(module, example, desc, tmp)
        tmp.replace(out)
    except OSError as err:
        raise EvalError(f"cannot write {out}: {err.strerror or err}") from None
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``python sheeprl.py export``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        out = export(args)
    except EvalError as err:
        print(f"sheeprl export: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # -h / --help
        return int(exit_.code or 0)
    print(f"exported {args.format}: {out}")
    return 0
