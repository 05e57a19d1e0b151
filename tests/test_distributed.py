"""Several processes, as a user runs them: coupled PPO over DDP, decoupled PPO, `fabric run`, two nodes, faults.

Every run is a subprocess (Fabric's launcher re-executes ``sys.argv``) with a timeout, CPU and gloo.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import event_files, run_dirs, scalars

pytestmark = pytest.mark.distributed

FAST = [
    "--env_id",
    "CartPole-v1",
    "--num_envs",
    "2",
    "--rollout_steps",
    "64",
    "--minibatch_size",
    "32",
    "--num_threads",
    "1",
    "--eval_episodes",
    "2",
    "--metric.log_every",
    "128",
]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def one_run(root: Path) -> Path:
    """The single run folder under ``root``/logs, with exactly one set of TensorBoard events."""
    (run,) = run_dirs(root / "logs")
    assert len(event_files(run)) == 1, event_files(run)
    assert [p.name for p in run.iterdir() if p.name.startswith("events.")] == [event_files(run)[0].name]
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of children too), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"LOCAL_RANK=")]
    return ranks[0] if ranks else -1


# ------------------------------------------------------------------------------------------------ usage


def test_decoupled_with_one_process_is_a_usage_error(cli, tmp_path):
    proc = cli("ppo_decoupled", "--env_id", "CartPole-v1", "--devices", "1", cwd=tmp_path, timeout=600)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "at least 2 processes" in lines[0], proc.stderr
    assert not (tmp_path / "logs").exists()


def test_decoupled_rollout_must_split_over_trainers(cli, tmp_path):
    args = [
        "--env_id",
        "CartPole-v1",
        "--devices",
        "4",
        "--num_envs",
        "1",
        "--rollout_steps",
        "64",
        "--minibatch_size",
        "32",
    ]
    proc = cli("ppo_decoupled", *args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2 and "split into 3 equal trainer shares" in proc.stderr, proc.stderr
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------------------------------------------ coupled


def test_coupled_ppo_two_processes_logs_once_and_resumes(cli, tmp_path):
    proc = cli(
        "ppo",
        *FAST,
        "--devices",
        "2",
        "--total_steps",
        "512",
        "--checkpoint.every",
        "256",
        "--keep_last",
        "0",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = one_run(tmp_path)
    tags = scalars(run)
    # policy_step counts both ranks: 2 ranks x 2 envs x 64 steps = 256 per iteration.
    assert [s for s, _ in tags["Loss/policy_loss"]] == [256, 512]
    assert "Test/rew_avg" in tags and "Time/sps_train" in tags
    ckpt = torch.load(run / "checkpoint" / "ckpt_256_0.ckpt", weights_only=False)
    assert len(ckpt["ranks"]) == 2  # each rank's RNG streams, gathered on rank 0
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["ckpt_256_0.ckpt", "ckpt_512_0.ckpt"]

    proc = cli(
        "ppo",
        *FAST,
        "--devices",
        "2",
        "--total_steps",
        "768",
        "--eval_episodes",
        "0",
        "--resume_from",
        str(run / "checkpoint" / "ckpt_512_0.ckpt"),
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 512" in proc.stdout
    assert run_dirs(tmp_path / "logs") == [run]  # the resumed run continues in its folder, rank 0 writing
    assert len(event_files(run)) == 2  # one events file per invocation
    assert max(s for s, _ in scalars(run)["Loss/policy_loss"]) == 768


def test_fabric_run_two_processes(tmp_path):
    cmd = [
        str(BIN / "fabric"),
        "run",
        "--accelerator=cpu",
        "--devices=2",
        str(ROOT / "sheeprl.py"),
        "ppo",
        *FAST,
        "--total_steps",
        "256",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = one_run(tmp_path)
    assert [s for s, _ in scalars(run)["Loss/policy_loss"]] == [256]


def test_two_nodes_on_loopback_decoupled(tmp_path):
    """Two `fabric run` invocations, node ranks 0 and 1, one process each: the player on node 0, a trainer on node 1."""
    port = str(free_port())
    procs = []
    for node in (0, 1):
        cmd = [
            str(BIN / "fabric"),
            "run",
            "--accelerator=cpu",
            "--devices=1",
            "--num-nodes=2",
            f"--node-rank={node}",
            "--main-address=127.0.0.1",
            f"--main-port={port}",
            str(ROOT / "sheeprl.py"),
            "ppo_decoupled",
            *FAST,
            "--total_steps",
            "256",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    run = one_run(tmp_path)
    assert "Loss/policy_loss" in scalars(run)


# ------------------------------------------------------------------------------------------------ decoupled


@pytest.mark.parametrize("devices", [2, 3])
def test_decoupled_ppo_smoke(cli, tmp_path, devices):
    proc = cli(
        "ppo_decoupled",
        *FAST,
        "--devices",
        str(devices),
        "--total_steps",
        "512",
        "--checkpoint.every",
        "256",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = one_run(tmp_path)
    tags = scalars(run)
    # Only the player steps envs: 2 envs x 64 steps = 128 policy steps per iteration.
    assert [s for s, _ in tags["Loss/policy_loss"]] == [128, 256, 384, 512]
    for tag in (
        "Loss/value_loss",
        "Info/learning_rate",
        "Time/sps_env_interaction",
        "Time/sps_train",
        "Time/weights_sync_ms",
        "Rewards/rew_avg",
        "Test/rew_avg",
    ):
        assert tag in tags, sorted(tags)
    ckpt = torch.load(run / "checkpoint" / "ckpt_512_0.ckpt", weights_only=False)
    assert {"agent", "optimizer", "scheduler"} <= ckpt.keys() and len(ckpt["ranks"]) == devices
    assert ckpt["scheduler"]["last_epoch"] == 4  # the trainers' optimizer state reached the player's checkpoint
    assert "evaluation at step 512" in proc.stdout


def test_decoupled_ppo_repeats_coupled_ppo(cli, tmp_path):
    """Same seed, same settings: one trainer repeats coupled PPO's run exactly, two change only float rounding.

    The trainers start from the player's seed, the player draws the minibatch orders where coupled PPO draws them,
    and each trainer computes its slice of coupled PPO's minibatches, so nothing but the mean's summation order
    (DDP averages two 16-row halves of each 32-row minibatch) tells the runs apart.
    """
    args = [*FAST, "--eval_episodes", "0", "--total_steps", "640", "--seed", "3"]
    weights, losses = {}, {}
    for name, algo, devices in (
        ("coupled", "ppo", 1),
        ("one trainer", "ppo_decoupled", 2),
        ("two", "ppo_decoupled", 3),
    ):
        root = tmp_path / str(devices)
        root.mkdir()
        proc = cli(algo, *args, "--devices", str(devices), cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = one_run(root)
        weights[name] = torch.load(run / "checkpoint" / "ckpt_640_0.ckpt", weights_only=False)["agent"]
        losses[name] = scalars(run)["Loss/value_loss"]
    assert len(losses["coupled"]) == 5  # one logged update per 128-step rollout
    assert len({v for _, v in losses["coupled"]}) == 5  # and the weights moved between them
    assert losses["one trainer"] == losses["coupled"]
    assert weights["one trainer"].keys() == weights["coupled"].keys()
    for key, value in weights["coupled"].items():
        assert torch.equal(weights["one trainer"][key], value), key
        torch.testing.assert_close(weights["two"][key], value, rtol=1e-5, atol=1e-6)


def test_decoupled_ppo_resumes(cli, tmp_path):
    args = [
        "ppo_decoupled",
        *FAST,
        "--devices",
        "2",
        "--eval_episodes",
        "0",
        "--checkpoint.every",
        "256",
        "--keep_last",
        "0",
    ]
    proc = cli(*args, "--total_steps", "256", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = one_run(tmp_path)
    first = torch.load(run / "checkpoint" / "ckpt_256_0.ckpt", weights_only=False)
    proc = cli(
        *args,
        "--total_steps",
        "384",
        "--resume_from",
        str(run / "checkpoint" / "ckpt_256_0.ckpt"),
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 256" in proc.stdout
    second = torch.load(run / "checkpoint" / "ckpt_384_0.ckpt", weights_only=False)
    assert second["scheduler"]["last_epoch"] == first["scheduler"]["last_epoch"] + 1
    assert len(second["optimizer"]["state"]) == len(first["optimizer"]["state"])


def test_killing_a_trainer_ends_the_run_with_an_error(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "sheeprl.py"),
        "ppo_decoupled",
        *FAST,
        "--devices",
        "3",
        "--total_steps",
        "100000000",
        "--checkpoint.every",
        "0",
        "--save_last",
        "false",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list((tmp_path / "logs").rglob("events.out.tfevents.*")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        time.sleep(2.0)  # training is under way
        trainers = [pid for pid in descendants(proc.pid) if rank_of(pid) == 2]
        assert trainers, "no trainer process found"
        os.kill(trainers[0], signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=120)
        elapsed = time.time() - t0
        assert proc.returncode != 0, err[-3000:]
        assert elapsed < 120
        time.sleep(1.0)
        assert not descendants(proc.pid)  # nothing left behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any straggler of this run's session
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------------------ learning


# Decoupled PPO's learning test (its defaults, two seeds) is in tests/test_learning.py.


@pytest.mark.learning
def test_coupled_ppo_two_processes_solves_cartpole(cli, tmp_path):
    """2 DDP processes with exp=ppo_cartpole_2proc: greedy mean return >= 475 within 100k policy steps."""
    proc = cli(
        "exp=ppo_cartpole_2proc",
        "--devices",
        "2",
        "--seed",
        "1",
        "--num_threads",
        "1",
        "--eval_episodes",
        "10",
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ((step, value),) = scalars(one_run(tmp_path))["Test/rew_avg"]
    assert step >= 99_000 and value >= 475.0, proc.stdout[-2000:]


# ------------------------------------------------------------------------------------------------ accelerator-only groups


def accelerator_only(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``tests/accelerator_only_run.py``: the run's default group refuses CPU tensors, as NCCL's does."""
    cmd = [sys.executable, str(ROOT / "tests" / "accelerator_only_run.py"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)


def test_run_collectives_work_on_an_accelerator_only_group(tmp_path):
    """Stop flags, metrics, the run folder, per-rank checkpoint state and evaluation of a coupled run."""
    proc = accelerator_only(tmp_path, "run", "--num_threads", "1", "--eval_episodes", "3", "--log_root", "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = one_run(tmp_path)
    ckpt = torch.load(run / "checkpoint" / "ckpt_256_0.ckpt", weights_only=False)
    assert len(ckpt["ranks"]) == 2
    assert scalars(run)["Info/only_on_rank_1"] == [(128, 1.0), (256, 1.0)]
    assert [v for _, v in scalars(run)["Loss/policy_loss"]] == [0.5, 0.5]  # mean of rank 0's 0 and rank 1's 1
    # the evaluation's 3 episodes are split over the 2 ranks, and gathered
    assert "rank 0 plays 2 episodes" in proc.stdout and "rank 1 plays 1 episodes" in proc.stdout
    assert "evaluation at step 256: " in proc.stdout and "over 3 episodes" in proc.stdout


def test_decoupled_collectives_work_on_an_accelerator_only_group(tmp_path):
    proc = accelerator_only(
        tmp_path,
        "ppo_decoupled",
        *FAST,
        "--devices",
        "2",
        "--total_steps",
        "256",
        "--eval_every",
        "128",
        "--checkpoint.every",
        "128",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=acceleratoronly" in proc.stderr  # the simulation was in force
    run = one_run(tmp_path)
    assert [s for s, _ in scalars(run)["Loss/policy_loss"]] == [128, 256]
    assert [s for s, _ in scalars(run)["Test/rew_avg"]] == [128, 256]
    assert len(torch.load(run / "checkpoint" / "ckpt_256_0.ckpt", weights_only=False)["ranks"]) == 2


# ------------------------------------------------------------------------------------------------ failures


def test_a_frozen_rank_is_not_left_behind(tmp_path):
    """SIGSTOP one rank: the other times out after fabric.timeout_s , says so in one line, and nothing remains.

    (fabric.timeout_s also bounds the start-up rendezvous: 60 s leaves room for a busy machine.)
    """
    cmd = [sys.executable, str(ROOT / "sheeprl.py"), "ppo", *FAST, "--devices", "2", "--timeout_s", "60"]
    cmd += ["--total_steps", "100000000", "--checkpoint.every", "0", "--save_last", "false"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list((tmp_path / "logs").rglob("events.out.tfevents.*")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        time.sleep(2.0)  # training is under way
        (child,) = [pid for pid in descendants(proc.pid) if rank_of(pid) == 1]
        os.kill(child, signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("sheeprl: error: another process of the run died or hung")
        assert "Traceback" not in err
        assert not Path(f"/proc/{child}").exists()  # killed and reaped, not left stopped
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any straggler of this run's session
        except ProcessLookupError:
            pass


def test_a_detached_child_observer_does_not_kill_the_process_that_reports_the_failure():
    """After the run has ended its children, Lightning's observer must not SIGKILL the rank printing the error.

    (It polls every 5 s; seeing the killed frozen child's -9 during the reporting rank's teardown, it cut the
    exit code 1 to -9.) A stand-in "main" process takes the observer's kill here, so pytest is never at risk.
    """
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    from sheeprl.launcher import _stop_child_observer

    main = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    failed.wait()
    try:
        observer = _ChildProcessObserver(main_pid=main.pid, child_processes=[failed], sleep_period=0.2)
        observer.start()
        _stop_child_observer()
        observer.join(timeout=5)
        assert not observer.is_alive()
        assert main.poll() is None  # not killed
        # Without the detach the same observer kills the stand-in: the test would catch a Lightning change.
        control = _ChildProcessObserver(main_pid=main.pid, child_processes=[failed], sleep_period=0.2)
        control.start()
        control.join(timeout=5)
        assert main.wait(timeout=5) == -signal.SIGKILL
    finally:
        main.kill()
        main.wait()


def test_close_process_groups_ends_the_groups_of_a_finished_run(tmp_path):
    """A finished run leaves no gloo group to interpreter teardown (its workers could abort the rank there)."""
    import torch.distributed as dist

    from sheeprl.launcher import close_process_groups

    close_process_groups()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    dist.new_group([0])
    dist.all_reduce(torch.ones(3))
    close_process_groups()
    assert not dist.is_initialized()
