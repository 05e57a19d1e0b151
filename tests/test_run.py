"""Runs you can trust (issue 8): divergence, signals, unwritable folders, budgets, bounds, precision, fabric run.

In-process tests build configs with the real CLI and stub out the launch; the rest run ``sheeprl.py`` as a user
would and read its exit code, its stderr and what it left on disk.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT

from sheeprl import cli
from sheeprl.utils.checkpoint import list_checkpoints
from sheeprl.utils.run import Run, RunError, nonfinite_entry

TINY = ["--num_envs", "2", "--rollout_steps", "64", "--minibatch_size", "32", "--num_threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def launched(monkeypatch):
    """Replace the launch by a recorder: the tests check what reaches it (or that nothing does)."""
    calls = []
    monkeypatch.setattr(cli, "launch", lambda spec, cfg: calls.append((spec.name, cfg)))
    return calls


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ divergence


def test_nonfinite_loss_or_state_stops_the_run_and_keeps_good_checkpoints(tmp_path):
    from lightning.fabric import Fabric

    _, cfg = cli.build_config("ppo", ["--log_root", str(tmp_path), "--keep_last", "2", "--eval_episodes", "0"])
    run = Run(Fabric(accelerator="cpu", devices=1), cfg)
    good = {"agent": {"w": torch.ones(3)}}
    for step in (100, 200, 300):
        run.metrics.update("Loss/value_loss", torch.tensor(1.0))
        run.maybe_checkpoint(step, lambda: good, force=True)
        assert not run.should_stop()
    kept = list_checkpoints(run.checkpointer.folder)
    assert [p.name for p in kept] == ["ckpt_200_0.ckpt", "ckpt_300_0.ckpt"]

    # NaN parameters: no checkpoint is written, keep_last deletes nothing
    bad = {"agent": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(
        RunError, match=r"ppo diverged at step 400: agent.w is nan .*last good checkpoint is .*ckpt_300"
    ):
        run.maybe_checkpoint(400, lambda: bad, force=True)
    assert list_checkpoints(run.checkpointer.folder) == kept

    # a NaN loss: should_stop raises, naming the loss and the step of the last log
    run.log(500)
    run.metrics.update("Loss/policy_loss", torch.tensor(float("inf")))
    with pytest.raises(RunError, match=r"diverged at step 500: Loss/policy_loss is inf"):
        run.should_stop()
    with pytest.raises(RunError):
        run.maybe_checkpoint(600, lambda: good, force=True)
    assert list_checkpoints(run.checkpointer.folder) == kept
    run.logger.close()


def test_nonfinite_entry_finds_nested_tensors_and_skips_the_buffer():
    state = {"opt": {"state": {0: {"exp_avg": torch.tensor([0.0, -float("inf")])}}}, "step": 3}
    assert nonfinite_entry(state) == "opt.state.0.exp_avg is -inf"
    assert nonfinite_entry({"buffer": {"obs": torch.tensor([float("nan")])}, "w": torch.zeros(2)}) is None
    assert nonfinite_entry({"steps": torch.tensor([1, 2])}) is None


def test_divergent_ppo_exits_non_zero_with_one_line(tmp_path):
    """``--lr 1e30 --max_grad_norm 0`` used to exit 0 with NaN parameters and NaN checkpoints."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sheeprl.py"), "ppo", *TINY, "--total_steps", "2048", "--lr", "1e30"]
        + ["--max_grad_norm", "0", "--checkpoint.every", "128", "--keep_last", "0", "--eval_episodes", "2"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "ppo diverged at step" in lines[0] and "Loss/" in lines[0], proc.stderr
    for ckpt in tmp_path.rglob("*.ckpt"):
        assert nonfinite_entry(torch.load(ckpt, weights_only=False)) is None, ckpt


# ------------------------------------------------------------------------------------------------ signals


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "sheeprl.py"), "ppo", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(proc: subprocess.Popen, tmp_path: Path) -> None:
    deadline = time.time() + 180
    while not list(tmp_path.rglob("events.out.tfevents.*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(1.0)


LONG = ["--num_envs", "4", "--rollout_steps", "2048", "--minibatch_size", "2048", "--num_threads", "1"]
LONG += ["--total_steps", "100000000", "--checkpoint.every", "0", "--eval_episodes", "0"]


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
    proc = start(tmp_path, *LONG)
    try:
        wait_for_training(proc, tmp_path)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "terminated (SIGTERM): saving a checkpoint" in out
    assert len(list(tmp_path.rglob("ckpt_*_0.ckpt"))) == 1


def test_second_ctrl_c_exits_130_without_traceback(tmp_path):
    # One iteration of 4 x 131072 steps takes tens of seconds: both signals land in the first rollout, whatever
    # the machine's speed (with 8192-step iterations a fast machine could finish the run between the two).
    first_rollout = [*LONG, "--rollout_steps", "131072"]
    proc = start(tmp_path, *first_rollout)
    try:
        wait_for_training(proc, tmp_path)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and error_lines(err)[-1] == "sheeprl: interrupted"


# Makes the interpreter wait inside `import torch` (a finder consulted before any other), so that a Ctrl-C is sure to
# land in the middle of an import during start-up, whatever the machine's speed or load.
_SLOW_TORCH_IMPORT = """
import sys, time
class SlowTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            print("importing torch", file=sys.stderr, flush=True)
            time.sleep(60)
        return None
sys.meta_path.insert(0, SlowTorch())
"""


def test_ctrl_c_during_start_up_exits_130_without_traceback(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SLOW_TORCH_IMPORT)
    cmd = [sys.executable, str(ROOT / "sheeprl.py"), "ppo", *TINY]
    env = {**ENV, "PYTHONPATH": str(hooks)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline() == "importing torch\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and error_lines(err) == ["sheeprl: interrupted"]
    assert not list(tmp_path.rglob("config.yaml"))  # no run was started


def test_ctrl_c_that_a_library_turns_into_an_error_still_exits_130(monkeypatch, capsys):
    """A KeyboardInterrupt in the middle of an import can resurface as another error (torch's half-done lazy import
    of torch._dynamo failed the optimizer check with a RecursionError: exit 2, "maximum recursion depth exceeded")."""

    def interrupted_then_misreported(algo, rest):
        try:
            cli._on_ctrl_c(signal.SIGINT, None)  # what the CLI's handler does when Ctrl-C comes
        except KeyboardInterrupt:
            pass  # swallowed by a library...
        raise cli.UsageError("algo.optimizer: Adam: maximum recursion depth exceeded")  # ...which fails later

    monkeypatch.setattr(cli, "build_config", interrupted_then_misreported)
    assert cli.run_cli(["ppo"]) == 130
    assert error_lines(capsys.readouterr().err) == ["sheeprl: interrupted"]
    monkeypatch.undo()
    assert cli.run_cli(["ppo", "--no_such_flag"]) == 2  # the flag is per call: without Ctrl-C a usage error is one
    assert "no_such_flag" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ unwritable


def test_log_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = start(tmp_path, *TINY, "--total_steps", "128", "--log_root", "afile")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    (line,) = error_lines(err)
    assert "afile" in line and "Not a directory" in line, err


DISK_FULL = """
import errno, sys, torch
from sheeprl import cli
saves = []
real_save = torch.save
def save(obj, f, *args, **kwargs):
    saves.append(f)
    if len(saves) > 1:  # the first checkpoint fits, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.exit(cli.run_cli(sys.argv[1:]))
"""


def test_full_disk_while_checkpointing_is_one_line_and_keeps_earlier_checkpoints(tmp_path):
    args = [*TINY, "--total_steps", "512", "--checkpoint.every", "128", "--eval_episodes", "0"]
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL, "ppo", *args],
        cwd=tmp_path,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert "cannot write a checkpoint to" in line and "checkpoint: No space left on device" in line, line
    (ckpt,) = tmp_path.rglob("*.ckpt*")  # the first one, intact; no temporary file left
    assert torch.load(ckpt, weights_only=False)["policy_step"] == 128


# ------------------------------------------------------------------------------------------------ start-up checks


def test_budget_rounding_and_no_learning_warn_once(capsys):
    cli.build_config("ppo", ["--total_steps", "100"])
    assert "algo.total_steps=100 is rounded to 256 policy steps" in capsys.readouterr().err
    cli.build_config("td3", ["--env_id", "Pendulum-v1", "--total_steps", "15000"])
    err = capsys.readouterr().err
    assert "algo.total_steps=15000 ends before algo.learning_starts=25000: the run would never train" in err
    cli.build_config("sac", ["--env_id", "Pendulum-v1", "--total_steps", "20000", "--num_envs", "3"])
    cli.build_config("ppo", [])  # 100,000 -> 99,840: whole rollouts, no news
    assert capsys.readouterr().err == ""


class UnboundedBox(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize(
    "algo, extra, refused",
    [("sac", [], True), ("td3", [], True), ("droq", [], True), ("ppo", ["--action_squash", "tanh"], True)]
    + [("ppo", [], False)],
)
def test_infinite_action_bounds(algo, extra, refused, launched, capsys):
    gym.register("UnboundedBoxTest-v0", entry_point=UnboundedBox, max_episode_steps=10)
    try:
        code = cli.main([algo, "--env_id", "UnboundedBoxTest-v0", *extra])
    finally:
        gym.registry.pop("UnboundedBoxTest-v0")
    if refused:
        assert code == 2 and not launched
        (line,) = error_lines(capsys.readouterr().err)
        assert f"{algo} needs finite action bounds" in line and "[-inf, inf]" in line
    else:
        assert code == 0 and len(launched) == 1


def test_decoupled_refuses_mixed_precision(launched, capsys):
    code = cli.main(["ppo_decoupled", "--devices", "2", "--precision", "16-mixed"])
    assert code == 2 and not launched
    assert "ppo_decoupled trains in full precision only: --precision 16-mixed" in capsys.readouterr().err
    assert cli.main(["ppo_decoupled", "--devices", "2", "--precision", "32-true"]) == 0 and launched


FABRIC_RUN_3 = {"LT_CLI_USED": "1", "LT_DEVICES": "3", "LT_NUM_NODES": "1", "LT_ACCELERATOR": "cpu"}


@pytest.mark.parametrize("algo", ["sac", "sac_decoupled", "td3", "droq"])
def test_batch_split_uses_the_world_size_of_fabric_run(algo, launched, monkeypatch, capsys):
    """Under ``fabric run --devices 3``: 256 transitions do not split over 3 coupled ranks or 2 trainers... or do."""
    for key, value in FABRIC_RUN_3.items():
        monkeypatch.setenv(key, value)
    batch = "256" if algo != "sac_decoupled" else "255"  # 255 % 2 trainers != 0
    assert cli.main([algo, "--env_id", "Pendulum-v1", "--batch_size", batch]) == 2 and not launched
    assert "must be divisible by the" in capsys.readouterr().err


def test_fabric_run_ddp_gets_the_run_timeout(monkeypatch):
    """`fabric run` processes build Fabric themselves: the strategy must still carry fabric.timeout_s."""
    import lightning.fabric

    for key, value in {**FABRIC_RUN_3, "LT_STRATEGY": "ddp"}.items():
        monkeypatch.setenv(key, value)
    made = []
    monkeypatch.setattr(lightning.fabric, "Fabric", lambda **kw: made.append(kw) or "fabric")
    spec, cfg = cli.build_config("ppo", ["--timeout_s", "17"])
    monkeypatch.setattr(type(spec), "load_entry", lambda self: lambda fabric, cfg: fabric)
    assert cli.launch(spec, cfg) == "fabric"
    assert made[0]["strategy"]._timeout == timedelta(seconds=17)
    assert os.environ["LT_STRATEGY"] == "ddp"  # restored for anything that reads it later


HEAP_CHURN = """
import resource, torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def churn():  # a step's worth of 1 MiB tensors, all freed at the end: glibc trims them away unless told not to
    blocks = [torch.empty(1 << 18) for _ in range(40)]
    for b in blocks:
        b.fill_(1.0)
churn(); churn()
start = faults()
for _ in range(5):
    churn()
print("faults", faults() - start)
"""


@pytest.mark.parametrize("heap_cache", [True, False])
def test_the_heap_keeps_freed_tensors_for_the_next_step_unless_told_not_to(tmp_path, heap_cache):
    """fabric.heap_cache (default true, Linux/glibc): after a run's set-up, freeing and re-allocating the same
    tensors touches no fresh pages; with false, glibc's thresholds are left as they are. What glibc then does is
    not checked: its dynamic mmap threshold depends on the process's allocation history (~51,000 faults for this
    churn in most runs, 257 in one full-suite run)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt is Linux only")
    code = (
        "from sheeprl.cli import run_cli\n"
        f"code = run_cli(['ppo', *{TINY!r}, '--total_steps', '128', '--eval_episodes', '0',\n"
        f"               '--heap_cache', '{str(heap_cache).lower()}'])\n"
        "import sheeprl.utils.memory as memory\n"
        "print('code', code, 'applied', memory.applied)\n" + HEAP_CHURN
    )
    env = {k: v for k, v in ENV.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.split()
    assert out[out.index("code") + 1] == "0"
    assert out[out.index("applied") + 1] == str(heap_cache)
    if heap_cache:  # 5 rounds of 40 MiB: next to no page faults when kept (~51,000 when glibc trims each round)
        assert int(out[out.index("faults") + 1]) < 2_000, out


def test_the_heap_settings_leave_a_users_malloc_environment_alone(monkeypatch):
    from sheeprl.utils.memory import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False


@pytest.mark.parametrize("flush", [True, False])
def test_denormals_flush_to_zero_unless_told_not_to(tmp_path, flush):
    """fabric.flush_denormal (default true): after a run's set-up, float32 arithmetic rounds denormals to zero."""
    code = (
        "import sys, torch\n"
        "from sheeprl.cli import run_cli\n"
        f"code = run_cli(['ppo', *{TINY!r}, '--total_steps', '128', '--eval_episodes', '0',\n"
        f"               '--flush_denormal', '{str(flush).lower()}'])\n"
        "print(code, float(torch.tensor([1e-39]) * 1.0) == 0.0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["0", str(flush)]
