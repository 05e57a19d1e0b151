"""Optimizers by name and learning-rate schedules (sheeprl/utils/optim.py) and their CLI errors."""

import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from sheeprl.cli import build_config, main
from sheeprl.config import OptimizerConfig, ScheduleConfig
from sheeprl.utils.optim import build_optimizer, build_scheduler, optimizer_paths


def node(**kw):
    return OmegaConf.structured(OptimizerConfig(**kw))


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_any_torch_optim_class_by_name_with_its_arguments():
    opt = build_optimizer(params(), node(name="RMSprop", lr=1e-3, kwargs={"alpha": 0.9, "momentum": 0.5}))
    assert isinstance(opt, torch.optim.RMSprop)
    g = opt.param_groups[0]
    assert (g["lr"], g["alpha"], g["momentum"], g["eps"]) == (1e-3, 0.9, 0.5, 1e-8)
    # eps and betas are Adam's: a class that does not take them simply does not get them.
    sgd = build_optimizer(params(), node(name="sgd", lr=0.1, kwargs={"nesterov": True, "momentum": 0.9}))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"] is True
    adamw = build_optimizer(params(), node(name="AdamW", weight_decay=0.01, betas=[0.8, 0.9]))
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9) and adamw.param_groups[0]["weight_decay"] == 0.01


def test_fused_by_default_where_the_class_has_it_unless_asked_otherwise():
    assert build_optimizer(params(), node()).param_groups[0]["fused"] is True
    assert build_optimizer(params(), node(kwargs={"foreach": False})).param_groups[0]["fused"] in (None, False)
    # Without a fused kernel (RMSprop), the multi-tensor path, which torch picks by itself only on CUDA.
    rmsprop = build_optimizer(params(), node(name="RMSprop"))
    assert isinstance(rmsprop, torch.optim.RMSprop) and rmsprop.param_groups[0]["foreach"] is True
    assert (
        build_optimizer(params(), node(name="RMSprop", kwargs={"foreach": False})).param_groups[0]["foreach"] is False
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["algo.optimizer.name=Adamw2"], r"unknown optimizer algo.optimizer.name=Adamw2 \(did you mean 'AdamW'"),
        (
            ["algo.optimizer.name=RMSprop", "algo.optimizer.alhpa=0.9"],
            r"RMSprop takes no argument 'alhpa' \(did you mean 'algo.optimizer.alpha'",
        ),
        (["algo.optimizer.name=SGD", "algo.optimizer.eps=0.1"], r"algo.optimizer.eps: SGD takes no argument 'eps'"),
        (["algo.optimizer.lr=-1"], r"algo.optimizer: Adam: Invalid learning rate"),
        (["algo.optimizer.schedule.name=cosin"], r"did you mean 'cosine'"),
        (["algo.optimizer.schedule.warmup=1.5"], r"warmup must lie in \[0, 1\)"),
    ],
)
def test_bad_optimizer_settings_are_one_line_errors_before_anything_runs(argv, message, tmp_path, capsys):
    code = main(["ppo", "--log_root", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_free_keys_land_in_kwargs_and_both_spellings_work():
    _, cfg = build_config("ppo", ["algo.optimizer.name=RMSprop", "algo.optimizer.alpha=0.99", "--optimizer_lr", "1e-3"])
    assert cfg.algo.optimizer.kwargs == {"alpha": 0.99} and cfg.algo.optimizer.lr == 1e-3
    _, cfg = build_config("ppo", ["algo.optimizer.name=SGD", "algo.optimizer.kwargs.momentum=0.9"])
    assert cfg.algo.optimizer.kwargs.momentum == 0.9


def test_every_optimizer_node_is_found_and_validated():
    from sheeprl.registry import get_algorithm

    assert optimizer_paths(get_algorithm("sac").schema) == [
        "algo.actor_optimizer",
        "algo.critic_optimizer",
        "algo.alpha_optimizer",
    ]
    with pytest.raises(Exception, match="algo.critic_optimizer.momentun"):
        build_config(
            "sac", ["--env_id", "Pendulum-v1", "algo.critic_optimizer.name=SGD", "algo.critic_optimizer.momentun=0.9"]
        )


def factors(name, total, warmup=0.0, final=0.0, n=None):
    opt = torch.optim.SGD(params(), lr=1.0)
    sched = build_scheduler(opt, OmegaConf.structured(ScheduleConfig(name, warmup, final)), total)
    out = []
    for _ in range(n or total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_against_hand_computed_values():
    assert factors("constant", 4) == [1.0] * 4
    # linear from 1 to 0 over 4 updates: PPO's classic annealing 1 - t / T
    assert factors("linear", 4) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert factors("linear", 4, final=0.2) == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert factors("cosine", 4) == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )
    # 2 warm-up updates out of 6 (warmup=1/3): 1/2, 2/2, then linear over the remaining 4
    assert factors("linear", 6, warmup=1 / 3) == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    # past the end the factor stays at its final value
    assert factors("linear", 2, n=4)[2:] == pytest.approx([0.0, 0.0])


def test_scheduler_state_round_trips():
    opt = torch.optim.Adam(params(), lr=1.0)
    sched = build_scheduler(opt, OmegaConf.structured(ScheduleConfig("cosine")), 10)
    for _ in range(3):
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam(params(), lr=1.0)
    sched2 = build_scheduler(opt2, OmegaConf.structured(ScheduleConfig("cosine")), 10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
