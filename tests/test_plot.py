"""`python sheeprl.py plot`: PNGs of learning curves from TensorBoard event files, grouping seeds, one-line errors.

The event files are written by the logger training runs use (sheeprl.utils.metrics.TensorBoardLogger);
howto/evaluate.md's tested commands also plot a real training run.
"""

import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from sheeprl.cli import main
from sheeprl.plot import Curve, aggregate, smooth
from sheeprl.utils.metrics import TensorBoardLogger


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def fake_run(root: Path, name: str, seed: int, lr: float, steps: list[int], offset: float) -> Path:
    """A run folder as training writes it: config.yaml and TensorBoard events of Rewards/rew_avg."""
    run = root / "ppo" / "CartPole-v1" / f"2026-01-01_00-00-0{seed}_{name}"
    run.mkdir(parents=True)
    cfg = {"algo": {"name": "ppo", "optimizer": {"lr": lr}}, "env": {"id": "CartPole-v1"}, "seed": seed,
           "run_name": name, "log_root": str(root)}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    logger = TensorBoardLogger(str(run))
    for s in steps:
        logger.log_metrics({"Rewards/rew_avg": offset + s / 100.0, "Loss/policy_loss": 0.1}, s)
    logger.close()
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plot_runs")
    fake_run(root, "ppo_seed1", 1, 3e-4, [100, 200, 300, 400], 0.0)
    fake_run(root, "ppo_seed2", 2, 3e-4, [128, 256, 384], 10.0)  # another seed logs at other steps
    fake_run(root, "fast_seed1", 1, 1e-3, [100, 200, 300], 50.0)  # another setting
    return root


def test_overlaid_runs_png_of_the_expected_size(runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["plot", str(runs), "--out", str(out)]) == 0
    assert png_size(out) == (800, 500)
    assert "3 curves of Rewards/rew_avg from 3 runs" in capsys.readouterr().out


def test_seeds_group_into_a_mean_with_a_band(runs, tmp_path, capsys):
    out = tmp_path / "sub" / "grouped.png"
    args = ["plot", str(runs), "--group", "--out", str(out), "--width", "4", "--height", "3", "--dpi", "50"]
    assert main([*args, "--smooth", "0.5", "--band", "minmax"]) == 0
    assert png_size(out) == (200, 150)
    assert "2 curves of Rewards/rew_avg from 3 runs" in capsys.readouterr().out


def test_several_run_folders_and_labels(runs, tmp_path):
    run_a, run_b = sorted((runs / "ppo" / "CartPole-v1").iterdir())[:2]
    out = tmp_path / "two.png"
    assert (
        main(["plot", str(run_a), str(run_b), "--tag", "Loss/policy_loss", "--labels", "a", "b", "--out", str(out)])
        == 0
    )
    assert out.stat().st_size > 0


def test_aggregate_interpolates_onto_common_steps():
    a = Curve(Path("a"), "a", "g", np.array([0.0, 100.0, 200.0]), np.array([0.0, 10.0, 20.0]))
    b = Curve(Path("b"), "b", "g", np.array([0.0, 150.0]), np.array([10.0, 25.0]))
    x, mean, lo, hi = aggregate([a, b], "std")
    assert x.tolist() == [0.0, 100.0, 150.0]  # up to the step both seeds reached
    assert mean.tolist() == [5.0, 15.0, 20.0]  # b interpolated at 100 -> 20, a at 150 -> 15
    assert np.allclose(hi - mean, [5.0, 5.0, 5.0]) and np.allclose(mean - lo, [5.0, 5.0, 5.0])
    assert smooth(np.array([1.0, 1.0, 1.0]), 0.9).tolist() == pytest.approx([1.0, 1.0, 1.0])  # debiased


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/folder"], "no such folder"),
        (["{empty}"], "no TensorBoard event files"),
        (["{runs}", "--tag", "Rewards/rew_sum"], "no run has the tag 'Rewards/rew_sum' (tags found: Loss/policy_loss"),
        (["{runs}", "--labels", "only_one"], "--labels got 1 labels for 3 curves"),
        (["{runs}", "--smooth", "1.5"], "--smooth must lie in [0, 1)"),
        (["{runs}", "--colour", "red"], "unrecognized arguments: --colour"),
        ([], "the following arguments are required: RUN_DIR"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(runs, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(runs=runs, empty=tmp_path / "empty") for a in args]
    assert main(["plot", *args, "--out", str(tmp_path / "x.png")] if args else ["plot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sheeprl plot: error: "), err
    assert message in err
    assert not (tmp_path / "x.png").exists()
