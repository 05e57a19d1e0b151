"""``python sheeprl.py eval``: play a saved policy greedily and report how well it does.

The run folder of a checkpoint (``<run>/checkpoint/ckpt_<step>_0.ckpt``) holds the resolved
``config.yaml`` the agent was trained with; from it this command rebuilds the env (observation
normalization statistics come from the checkpoint, frozen) and, through the registry's
``get_evaluation(algo)`` -> ``load_policy``, the agent. It works for every algorithm that registers
an evaluation. Results are printed and written to ``<checkpoint>.eval.json`` beside the checkpoint.

Every user-caused error (missing, corrupt or foreign file, wrong algorithm, bad flag) ends with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

EXIT_USAGE = 2


class EvalError(Exception):
    """A user-caused error: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage block, so a bad flag costs one line."""

    def error(self, message: str) -> NoReturn:
        raise EvalError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python sheeprl.py eval",
        description="Evaluate a checkpoint of any registered algorithm: greedy episodes, summary statistics, "
        "a JSON file beside the checkpoint and, with --capture_video, one mp4 per episode in the run's videos/.",
    )
    p.add_argument(
        "--checkpoint_path",
        required=True,
        help="a checkpoint file (<run>/checkpoint/ckpt_<step>_0.ckpt), or a run folder (its newest checkpoint)",
    )
    p.add_argument("--eval_episodes", type=int, default=20, help="episodes to play (default: 20)")
    p.add_argument("--env_id", default=None, help="evaluate on another env id than the run's (same spaces needed)")
    p.add_argument("--capture_video", action="store_true", help="record every episode into <run>/videos/")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the evaluation env (default: the run's seed + 10000)"
    )
    p.add_argument(
        "--stochastic", action="store_true", help="sample actions from the policy instead of acting greedily"
    )
    p.add_argument("--algo", default=None, help="fail unless the checkpoint comes from this algorithm")
    p.add_argument("--device", default="cpu", help="torch device for the agent (default: cpu)")
    p.add_argument("--num_threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--config", default=None, help="the run's config.yaml (default: two levels above the checkpoint)")
    p.add_argument("--output", default=None, help="where to write the JSON results (default: <checkpoint>.eval.json)")
    return p


# --------------------------------------------------------------------------------------------- inputs


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or the newest rank-0 checkpoint of a run folder (or of its ``checkpoint/``)."""
    p = Path(path)
    if p.is_dir():
        from sheeprl.utils.checkpoint import list_checkpoints  # imports torch: only when needed

        found = list_checkpoints(p / "checkpoint") or list_checkpoints(p)
        if not found:
            raise EvalError(f"no checkpoint (ckpt_<step>_0.ckpt) in {p} or {p / 'checkpoint'}")
        return found[-1]
    if not p.exists():
        raise EvalError(f"checkpoint not found: {p}")
    return p


def load_run_config(ckpt: Path, config: Optional[str]) -> Any:
    """The run's resolved ``config.yaml`` (two levels above ``<run>/checkpoint/ckpt_*.ckpt``)."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(config) if config else ckpt.resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise EvalError(f"no config.yaml for {ckpt} (looked at {path}; pass --config)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml and OmegaConf errors mean the same to a user
        raise EvalError(f"cannot read {path}: {_one_line(err)}") from None
    if not isinstance(cfg, DictConfig) or "algo" not in cfg or "name" not in cfg.algo or "env" not in cfg:
        raise EvalError(f"{path} is not a sheeprl run config (no algo.name / env)")
    return cfg


def typed_config(cfg: Any) -> Any:
    """Merge the saved config onto its algorithm's schema, so fields added since then get their defaults."""
    from omegaconf import OmegaConf

    from sheeprl.config import migrate_saved_config
    from sheeprl.registry import get_algorithm, load_algorithms

    OmegaConf.set_struct(cfg, False)
    migrate_saved_config(cfg)
    name = str(cfg.algo.name)
    spec = get_algorithm(name)
    if spec is None:
        raise EvalError(
            f"the run's algorithm '{name}' is not registered (known: {', '.join(sorted(load_algorithms()))})"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.schema), cfg)
    except Exception as err:
        raise EvalError(f"the run's config does not fit the {name} schema: {_one_line(err)}") from None
    OmegaConf.set_struct(merged, False)
    return merged


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


# --------------------------------------------------------------------------------------------- evaluation


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Load, play and summarize; returns the JSON-ready results (raises EvalError on user errors)."""
    if args.eval_episodes < 1:
        raise EvalError(f"--eval_episodes must be >= 1, got {args.eval_episodes}")
    ckpt = resolve_checkpoint(args.checkpoint_path)

    import torch

    from sheeprl.envs import EnvError, check_env_id, make_env
    from sheeprl.registry import get_evaluation
    from sheeprl.utils.checkpoint import load_checkpoint
    from sheeprl.utils.evaluation import run_episodes, summarize

    try:
        state = load_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err).splitlines()[0]) from None
    cfg = load_run_config(ckpt, args.config)
    algo = str(cfg.algo.name)
    if args.algo is not None and args.algo != algo:
        raise EvalError(f"{ckpt} is a checkpoint of '{algo}', not of '{args.algo}'")
    cfg = typed_config(cfg)
    load_policy = get_evaluation(algo)
    if load_policy is None:
        raise EvalError(f"algorithm '{algo}' registers no evaluation (a load_policy in its utils.py)")

    # One env, every episode recorded, the training statistics loaded but frozen.
    if args.env_id is not None:
        cfg.env.id = args.env_id
    cfg.env.num_envs = 1
    cfg.env.capture_video = bool(args.capture_video)
    cfg.env.video_every = 1
    seed = int(cfg.seed) + 10_000 if args.seed is None else int(args.seed)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(seed)  # --stochastic samples from torch's generator
    torch.distributions.Distribution.set_default_validate_args(False)

    try:
        check_env_id(str(cfg.env.id))
        probe = make_env(cfg, seed=seed, idx=0)()
        observation_space, action_space = probe.observation_space, probe.action_space
        probe.close()
    except EnvError as err:
        raise EvalError(str(err)) from None
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise EvalError(f"bad --device '{args.device}': {_one_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {args.device}: no CUDA device is available here")
    try:
        act = load_policy(cfg, state, observation_space, action_space, device, stochastic=args.stochastic)
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        # Missing or mis-shaped weights: the file belongs to another algorithm or another env.
        raise EvalError(f"{ckpt} does not hold a {algo} agent for {cfg.env.id}: {_one_line(err)}") from None

    ranks = state.get("ranks") or [{}]
    env_state = ranks[0].get("env") if isinstance(ranks[0], dict) else None
    run_dir = ckpt.resolve().parent.parent
    try:  # record privately first (see _collect_videos)
        video_tmp = Path(tempfile.mkdtemp(prefix=".eval_video_", dir=run_dir)) if args.capture_video else None
    except OSError as err:
        raise EvalError(f"cannot write videos into {run_dir}: {err.strerror or err}") from None
    try:
        try:
            result = run_episodes(
                cfg,
                act,
                args.eval_episodes,
                seed=seed,
                device=device,
                env_state=env_state,
                run_dir=str(video_tmp) if video_tmp else None,
                capture_video=bool(args.capture_video),
            )
        except (EnvError, ValueError, RuntimeError) as err:
            raise EvalError(f"evaluation failed on {cfg.env.id}: {_one_line(err)}") from None
        videos = _collect_videos(video_tmp, run_dir / "videos", int(state["policy_step"]), seed, args.eval_episodes)
    finally:
        if video_tmp is not None:
            shutil.rmtree(video_tmp, ignore_errors=True)

    return {
        "algo": algo,
        "env_id": str(cfg.env.id),
        "checkpoint": str(ckpt.resolve()),
        "policy_step": int(state["policy_step"]),
        "episodes": len(result["returns"]),
        "seed": seed,
        "stochastic": bool(args.stochastic),
        "return": summarize(result["returns"]),
        "length": summarize(result["lengths"]),
        "returns": result["returns"],
        "lengths": result["lengths"],
        "videos": [str(v) for v in videos],
    }


_VIDEO_RE = re.compile(r"-episode-(\d+)\.mp4$")


def _collect_videos(src: Optional[Path], dest: Path, step: int, seed: int, episodes: int) -> list[Path]:
    """Move the recorded episodes to ``<run>/videos/eval_step<step>_seed<seed>-episode-<i>.mp4``.

    Recording into a private folder first keeps earlier evaluations' videos; the recorder also starts
    the episode that autoreset begins after the last one, which is dropped here.
    """
    if src is None:
        return []
    out = []
    for f in sorted((src / "videos").glob("*.mp4")):
        m = _VIDEO_RE.search(f.name)
        if m is None or int(m.group(1)) >= episodes:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"eval_step{step}_seed{seed}-episode-{int(m.group(1))}.mp4"
        shutil.move(str(f), target)
        out.append(target)
    return sorted(out, key=lambda p: int(_VIDEO_RE.search(p.name).group(1)))  # type: ignore[union-attr]


def format_results(res: dict[str, Any]) -> str:
    """A small table: one row for the return, one for the episode length."""
    cols = ("mean", "std", "median", "iqm", "min", "max")
    mode = "stochastic" if res["stochastic"] else "greedy"
    lines = [
        f"{res['algo']} on {res['env_id']} at policy step {res['policy_step']}: "
        f"{res['episodes']} {mode} episodes (seed {res['seed']})",
        f"  {'':<8}" + "".join(f"{c:>10}" for c in cols),
    ]
    for row in ("return", "length"):
        lines.append(f"  {row:<8}" + "".join(f"{res[row][c]:>10.2f}" for c in cols))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``python sheeprl.py eval`` and of the ``sheeprl-eval`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        res = evaluate(args)
        out = Path(args.output) if args.output else Path(res["checkpoint"]).with_suffix(".eval.json")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=2) + "\n")
        except OSError as err:
            raise EvalError(f"cannot write {out}: {err.strerror or err}") from None
    except EvalError as err:
        print(f"sheeprl eval: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # -h / --help
        return int(exit_.code or 0)
    print(format_results(res))
    for video in res["videos"]:
        print(f"video: {video}")
    print(f"results: {out}")
    return 0
