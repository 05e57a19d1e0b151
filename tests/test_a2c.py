"""A2C: losses against hand-computed values, the optimizer choice, smoke runs with resume, learning CartPole."""

import shutil

import pytest
import torch
from helpers import run_dirs, scalars
from omegaconf import OmegaConf

from sheeprl.algos.a2c.args import A2CArgs
from sheeprl.algos.a2c.loss import policy_loss, value_loss
from sheeprl.utils.optim import build_optimizer
from sheeprl.utils.returns import discounted_returns, gae, next_values_from_rollout

FAST = ["--num_envs", "2", "--rollout_steps", "8", "--eval_episodes", "2", "--metric.log_every", "128",
        "--num_threads", "1"]  # fmt: skip


def test_losses_by_hand():
    logp = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss = policy_loss(logp, adv)
    assert loss.item() == pytest.approx(-(-0.5 * 1.0 + -1.0 * -2.0 + -2.0 * 0.5) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 3)
    assert value_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == pytest.approx((1 + 4) / 2)


def test_lambda_one_gives_the_n_step_returns():
    """GAE with lambda = 1 (A2C's default) is the discounted n-step return bootstrapped at the rollout's end."""
    torch.manual_seed(0)
    T, N = 5, 3
    rewards, values = torch.randn(T, N), torch.randn(T, N)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    terminated[2, 1] = True
    dones = terminated.clone()
    dones[3, 2] = True  # a truncation, bootstrapped from V(real final observation)
    bootstrap = torch.where(dones & ~terminated, torch.randn(T, N), torch.zeros(T, N))
    next_values = next_values_from_rollout(values, torch.randn(N), dones, bootstrap)
    adv, ret = gae(rewards, values, next_values, terminated, dones, 0.9, 1.0)
    torch.testing.assert_close(ret, discounted_returns(rewards, next_values, terminated, dones, 0.9))
    torch.testing.assert_close(adv, ret - values)


def test_default_optimizer_is_sb3s_rmsprop():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OmegaConf.structured(A2CArgs).optimizer)
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["lr"] == 7e-4 and opt.defaults["eps"] == 1e-5 and opt.defaults["alpha"] == 0.99


def test_unknown_optimizer_is_a_usage_error(cli, tmp_path):
    proc = cli("a2c", "algo.optimizer.name=rmsprob", cwd=tmp_path)
    assert proc.returncode == 2 and "algo.optimizer.name" in proc.stderr and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "env_args",
    [["--env_id", "CartPole-v1"], ["--env_id", "Pendulum-v1", "algo.optimizer.name=adam"]],
    ids=["cartpole-rmsprop", "pendulum-adam"],
)
def test_smoke_and_resume(cli, tmp_path, env_args):
    args = [*FAST, *env_args, "--checkpoint.every", "160", "--keep_last", "0"]
    proc = cli("a2c", *args, "--total_steps", "320", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    tags = scalars(run)
    for tag in ("Loss/policy_loss", "Loss/value_loss", "Loss/entropy_loss", "Time/sps_train", "Test/rew_avg"):
        assert tag in tags, sorted(tags)
    saved = torch.load(run / "checkpoint" / "ckpt_160_0.ckpt", weights_only=False)
    assert {"agent", "optimizer", "scheduler"} <= saved.keys()

    # Resuming at the saved step trains nothing: what is saved again is exactly what was loaded.
    original = tmp_path / "ckpt_160.ckpt"
    shutil.copy(run / "checkpoint" / "ckpt_160_0.ckpt", original)
    proc = cli("a2c", *args, "--total_steps", "160", "--eval_episodes", "0", "--resume_from", str(original),
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run2,) = [d for d in run_dirs(tmp_path / "logs") if d != run]
    again = torch.load(run2 / "checkpoint" / "ckpt_160_0.ckpt", weights_only=False)
    for name, tensor in saved["agent"].items():
        assert torch.equal(tensor, again["agent"][name]), name
    for pid, st in saved["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(again["optimizer"]["state"][pid][k])), k

    # Resuming inside the run folder continues to the new total; the greedy policy evaluates from the checkpoint.
    proc = cli("a2c", *args, "--total_steps", "480", "--resume_from", str(run / "checkpoint" / "ckpt_320_0.ckpt"),
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "resuming from step 320" in proc.stdout, proc.stderr[-3000:]
    assert max(s for s, _ in scalars(run)["Loss/policy_loss"]) == 480
    proc = cli("eval", "--checkpoint_path", str(run), "--eval_episodes", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.distributed
def test_two_processes(cli, tmp_path):
    proc = cli("a2c", *FAST, "--devices", "2", "--total_steps", "320", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    # 2 ranks x 2 envs x 8 steps = 32 policy steps per update
    assert max(s for s, _ in scalars(run)["Loss/policy_loss"]) == 320
    ckpt = torch.load(run / "checkpoint" / "ckpt_320_0.ckpt", weights_only=False)
    assert len(ckpt["ranks"]) == 2


@pytest.mark.learning
@pytest.mark.parametrize("seed", [1, 2])
def test_a2c_solves_cartpole(cli, tmp_path, seed):
    """exp=a2c_cartpole reaches a greedy mean return >= 475 over 20 episodes (Test/rew_avg) within 500k steps.

    The preset's learning rate is constant, so its first 200k steps are exactly this shorter run; both seeds
    are at 500 there (seed 1 averaged 457 at 100k), which keeps the test well inside the 500k budget.
    """
    proc = cli("a2c", "exp=a2c_cartpole", "--total_steps", "200000", "--seed", str(seed), "--eval_episodes", "20",
               "--num_threads", "1", "--metric.log_every", "50000", cwd=tmp_path, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "logs")
    ((step, value),) = scalars(run)["Test/rew_avg"]
    assert step == 200_000 and value >= 475.0, proc.stdout[-2000:]
