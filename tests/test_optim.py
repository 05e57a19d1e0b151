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


def _twin_params(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    torch.manual_seed(seed)
    shapes = [(8, 3), (8,), (2, 8), (2,), (5,)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    return a, [torch.nn.Parameter(p.detach().clone()) for p in a]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("Adam", {}),
        ("Adam", {"weight_decay": 0.1, "maximize": True}),
        ("AdamW", {"weight_decay": 0.05}),
        ("AdamW", {"betas": [0.8, 0.95], "eps": 1e-6}),
    ],
)
def test_lean_fused_step_matches_torch_bit_for_bit(name, kwargs):
    """The lean step (LeanAdam / LeanAdamW) against torch's fused Adam / AdamW on the same gradients: the first step
    (state created by torch's path), later ones (the direct kernel call), a parameter without a gradient, a
    learning-rate change in the param group (what LambdaLR does), and the saved state loaded the other way."""
    from sheeprl.utils.optim import LeanAdam, LeanAdamW

    ours_p, ref_p = _twin_params()
    typed = {k: v for k, v in kwargs.items() if k in ("eps", "betas", "weight_decay")}
    extra = {k: v for k, v in kwargs.items() if k not in typed}
    ours = build_optimizer(ours_p, node(name=name, lr=1e-2, kwargs=extra, **typed))
    assert type(ours) is (LeanAdam if name == "Adam" else LeanAdamW)
    assert isinstance(ours, getattr(torch.optim, name))
    ref_kwargs = {**typed, **extra}
    if "betas" in ref_kwargs:
        ref_kwargs["betas"] = tuple(ref_kwargs["betas"])
    ref_kwargs["weight_decay"] = ours.param_groups[0]["weight_decay"]  # the config's default, not AdamW's 0.01
    ref = getattr(torch.optim, name)(ref_p, lr=1e-2, fused=True, **ref_kwargs)
    gen = torch.Generator().manual_seed(1)
    for t in range(6):
        for i, (a, b) in enumerate(zip(ours_p, ref_p, strict=True)):
            if t == 3 and i == 1:  # no gradient for one parameter on one step: skipped by both
                a.grad = b.grad = None
                continue
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        if t == 4:
            ours.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 3e-3
        ours.step()
        ref.step()
        for a, b in zip(ours_p, ref_p, strict=True):
            assert torch.equal(a, b)
    for sa, sb in zip(ours.state.values(), ref.state.values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    # Checkpoints are the same as torch's: a plain Adam resumes from the lean one's state and vice versa.
    plain_opt = getattr(torch.optim, name)(ref_p, lr=1e-2, fused=True, **ref_kwargs)
    plain_opt.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    # load_state_dict re-patches a class's step unless it is marked: the resumed optimizer keeps the lean step.
    assert type(ours).step is (LeanAdam if name == "Adam" else LeanAdamW).step
    assert not hasattr(type(ours).step, "__wrapped__")


def test_lean_step_hands_other_cases_to_torch():
    """Hooks, closures, amsgrad and unfused optimizers take torch's own step; other classes stay as they are."""
    from sheeprl.utils.optim import LeanAdam

    ps = params()
    opt = build_optimizer(ps, node(lr=0.1))
    assert type(opt) is LeanAdam
    ps[0].grad = torch.ones(3)
    opt.step()
    calls = []
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o is opt, args, kwargs)))
    opt.step()  # lean path: post hooks run once, with the arguments torch's wrapper gives them
    assert calls == [("post", True, (opt,), {})]
    pre = opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.step()  # a pre hook may rewrite the arguments: torch's step runs (each hook once)
    pre.remove()
    post.remove()
    assert calls[1:] == ["pre", ("post", True, (opt,), {})]
    assert opt.step(lambda: torch.tensor(2.0)).item() == 2.0  # a closure's loss comes back
    assert int(opt.state[ps[0]]["step"]) == 4
    amsgrad = build_optimizer(params(), node(kwargs={"amsgrad": True}))
    p = amsgrad.param_groups[0]["params"][0]
    for _ in range(2):
        p.grad = torch.ones(3)
        amsgrad.step()
    assert "max_exp_avg_sq" in amsgrad.state[p] and int(amsgrad.state[p]["step"]) == 2
    assert type(build_optimizer(params(), node(kwargs={"fused": False}))) is torch.optim.Adam
    assert type(build_optimizer(params(), node(name="SGD", lr=0.1))) is torch.optim.SGD


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


@pytest.mark.parametrize("algo", ["dqn", "rainbow", "rainbow_decoupled", "dreamer_v3", "sac", "td3", "droq"])
def test_a_schedule_an_algorithm_does_not_step_is_an_error_not_ignored(algo, tmp_path, capsys):
    from sheeprl.registry import get_algorithm

    path = optimizer_paths(get_algorithm(algo).schema)[-1]
    code = main([algo, "--log_root", str(tmp_path / "runs"), f"{path}.schedule.name=linear"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "constant learning rate" in err, err
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


def _net_and_data(seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    return net, torch.randn(16, 4), torch.randn(16, 3)


@pytest.mark.parametrize("max_norm", [0.0, 0.05, 1e6])  # no clip, a clip that bites, one that does not
def test_gradient_step_matches_fabrics_own_calls_bit_for_bit(max_norm):
    """GradientStep (lean zero / backward / clip / step) leaves the same weights and optimizer state as
    ``zero_grad(set_to_none=True)``, ``fabric.backward``, ``fabric.clip_gradients`` and ``optimizer.step()``."""
    from lightning.fabric import Fabric

    from sheeprl.utils.optim import GradientStep, clip_grad_norm

    fabric = Fabric(accelerator="cpu", devices=1)
    results = []
    for lean in (False, True):
        net, x, y = _net_and_data(0)
        module = fabric.setup_module(net)
        cfg = OptimizerConfig(name="Adam", lr=1e-2)
        optimizer = fabric.setup_optimizers(build_optimizer(net.parameters(), OmegaConf.structured(cfg)))
        update = GradientStep(fabric, module, optimizer, max_norm)
        assert update.lean and update.forward is net and update.plain is net
        norms = []
        for _ in range(5):
            if lean:
                norms.append(update(torch.nn.functional.mse_loss(update.forward(x), y)))
            else:
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(torch.nn.functional.mse_loss(module(x), y))
                if max_norm > 0:
                    norms.append(fabric.clip_gradients(module, optimizer, max_norm=max_norm))
                optimizer.step()
        results.append(([p.detach().clone() for p in net.parameters()], norms, optimizer.state_dict()))
    (p0, n0, s0), (p1, n1, s1) = results
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True))
    if max_norm > 0:
        assert all(torch.equal(a, b) for a, b in zip(n0, n1, strict=True))
        if max_norm < 1:
            assert all(float(n) > max_norm for n in n1)  # the clip did scale the gradients
    for k, v in s0["state"].items():
        assert all(torch.equal(v[name], s1["state"][k][name]) for name in v)
    # The clip alone against torch's, on gradients of mixed sizes.
    net, x, y = _net_and_data(1)
    torch.nn.functional.mse_loss(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    expected = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g
    assert torch.equal(clip_grad_norm(list(net.parameters()), 0.1), expected)


def test_gradient_step_leaves_mixed_precision_to_fabric():
    """With a precision plugin of its own (here bf16 autocast) every part of the step is Fabric's."""
    from lightning.fabric import Fabric

    from sheeprl.utils.optim import GradientStep

    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    net, x, y = _net_and_data(0)
    module = fabric.setup_module(net)
    optimizer = fabric.setup_optimizers(torch.optim.Adam(net.parameters(), lr=1e-2))
    update = GradientStep(fabric, module, optimizer, 1.0)
    assert not update.lean and update.forward is module and update.plain is net
    before = [p.detach().clone() for p in net.parameters()]
    norm = update(torch.nn.functional.mse_loss(update.forward(x).float(), y))
    assert norm is not None and torch.isfinite(norm)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
