"""Optimizers by name and learning-rate schedules, for every algorithm.

An optimizer node of the config (``algo.optimizer``, ``algo.actor_optimizer``, ... : any field typed
:class:`~sheeprl.config.OptimizerConfig`) names a ``torch.optim`` class and its keyword arguments::

    algo.optimizer.name=AdamW algo.optimizer.weight_decay=0.01
    algo.optimizer.name=RMSprop algo.optimizer.alpha=0.99      # stored as algo.optimizer.kwargs.alpha

The typed fields ``eps``, ``betas`` and ``weight_decay`` are passed only to classes that take them
(so ``name=SGD`` works with Adam's defaults in place); every other key must be an argument of the
class. :func:`validate_optimizers` checks all of it when the CLI validates the config, before
anything runs, with a did-you-mean.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from typing import Any, Optional

import torch
from torch.optim import optimizer as _optimizer_module

from sheeprl.config import ConfigError, OptimizerConfig
from sheeprl.utils import dynamo
from sheeprl.utils.targets import unwrap

dynamo.patch_optimizers()  # before any optimizer exists (a no-op unless the CLI deferred torch._dynamo)

SCHEDULES = ("constant", "linear", "cosine")
# Typed fields of OptimizerConfig handed to the class only when its signature takes them.
_OPTIONAL_FIELDS = ("eps", "betas", "weight_decay")
_NOT_KWARGS = ("name", "kwargs", "schedule")


def optimizer_names() -> list[str]:
    """Every optimizer class ``torch.optim`` exports."""
    return sorted(
        n
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    )


def optimizer_class(name: str, where: str = "optimizer") -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class called ``name`` (case-insensitive); ConfigError with a did-you-mean otherwise."""
    names = optimizer_names()
    by_lower = {n.lower(): n for n in names}
    if name.lower() in by_lower:
        return getattr(torch.optim, by_lower[name.lower()])
    close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)]
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else f"; choose one of {', '.join(names)}"
    raise ConfigError(f"unknown optimizer {where}.name={name}{hint}")


def _signature(cls: type) -> set[str]:
    return {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")}


def optimizer_kwargs(cfg: Any, where: str = "optimizer") -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """(class, keyword arguments) of an optimizer node; raises ConfigError on an argument the class does not take."""
    cls = optimizer_class(str(cfg["name"]), where)
    accepted = _signature(cls)
    kwargs: dict[str, Any] = {"lr": float(cfg["lr"])}
    for key in _OPTIONAL_FIELDS:
        if key in accepted and cfg.get(key) is not None:
            value = cfg[key]
            kwargs[key] = tuple(value) if key == "betas" else value
    for key, value in dict(cfg.get("kwargs") or {}).items():
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1, cutoff=0.6)
            hint = f" (did you mean '{where}.{close[0]}'?)" if close else f"; it takes {', '.join(sorted(accepted))}"
            raise ConfigError(f"{where}.{key}: {cls.__name__} takes no argument '{key}'{hint}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    if cls is torch.optim.LBFGS:
        raise ConfigError(
            f"{where}.name: LBFGS needs a closure that re-evaluates the loss; RL updates do not provide one"
        )
    return cls, kwargs


def build_optimizer(params: Any, cfg: Any, where: str = "optimizer") -> torch.optim.Optimizer:
    """The optimizer an ``OptimizerConfig`` node describes, over ``params``.

    Unless the node sets ``fused`` or ``foreach``, classes that have a fused implementation get ``fused=True`` (one
    kernel for all parameters, CPU and CUDA), and the others (RMSprop, ...) ``foreach=True``: torch picks the
    multi-tensor path by itself only on CUDA, and on the CPU the per-parameter loop costs 2x more per step.
    """
    cls, kwargs = optimizer_kwargs(cfg, where)
    params = list(params)
    if "fused" not in kwargs and "foreach" not in kwargs:
        for fast in ("fused", "foreach"):
            if fast in _signature(cls):
                try:
                    return lean_step(cls(params, **kwargs, **{fast: True}))
                except (RuntimeError, ValueError, TypeError):
                    pass  # e.g. parameters on a device without fused kernels: try the next, then the default
    return lean_step(cls(params, **kwargs))


def lean_step(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A fused Adam / AdamW made a :class:`LeanAdam` / :class:`LeanAdamW` (same object, same state); any other
    optimizer unchanged.

    The class is swapped after ``Optimizer.__init__``, which wraps the ``step`` of a class it sees first in
    profiler ranges and hook calls: the lean class's own ``step`` stays unwrapped, its fallback is Adam's wrapped one.
    """
    lean = _LEAN.get(type(optimizer))
    if lean is not None and all(g.get("fused") for g in optimizer.param_groups):
        optimizer.__class__ = lean
    return optimizer


class _LeanFusedStep:
    """``step`` of a fused Adam / AdamW that calls the fused kernel directly when nothing else is asked of it.

    ``Adam.step`` spends ~70 us per call before its kernel (profiler ranges, hook lists, per-parameter checks, the
    device grouping), about as long as the kernel itself for the 2x256 networks of the CartPole and Pendulum runs,
    where a whole update is a few hundred microseconds of tensor work. This step does what ``Adam.step`` does for
    fused groups (``step += 1``, then ``torch._fused_adam_`` / ``_fused_adamw_`` on the same state tensors, so
    ``state_dict`` and resumes are unchanged, then the step post hooks) and hands every other case to Adam's own: a
    closure, step pre hooks (they may change the arguments), a grad scaler, amsgrad / capturable / differentiable /
    unfused groups, a tensor learning rate, a parameter without state yet (the first step creates it), sparse
    gradients, mixed devices or dtypes within a group, and torch.compile tracing.
    ``tests/test_optim.py`` checks it against ``Adam.step`` bit for bit.
    """

    param_groups: list[dict[str, Any]]
    state: Any

    def _torch_step(self, closure: Any) -> Any:
        """Adam's own (wrapped) step, called the way the caller called this one."""
        return super().step() if closure is None else super().step(closure)  # type: ignore[misc]

    def step(self, closure: Any = None) -> Any:
        optim_module = _optimizer_module
        if (
            closure is not None
            or self._optimizer_step_pre_hooks  # type: ignore[attr-defined]
            or optim_module._global_optimizer_pre_hooks
            or getattr(self, "grad_scale", None) is not None
            or getattr(self, "found_inf", None) is not None
            or torch.compiler.is_compiling()
        ):
            return self._torch_step(closure)
        state = self.state
        calls = []
        for group in self.param_groups:
            if (
                group["amsgrad"]
                or group["capturable"]
                or group["differentiable"]
                or not group["fused"]
                or isinstance(group["lr"], torch.Tensor)
            ):
                return self._torch_step(closure)
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                s = state.get(p)
                if not s or grad.is_sparse:
                    return self._torch_step(closure)
                params.append(p)
                grads.append(grad)
                exp_avgs.append(s["exp_avg"])
                exp_avg_sqs.append(s["exp_avg_sq"])
                steps.append(s["step"])
            if params:
                first = params[0]
                if any(p.device != first.device or p.dtype != first.dtype for p in params):
                    return self._torch_step(closure)
                calls.append((group, params, grads, exp_avgs, exp_avg_sqs, steps))
        with torch.no_grad():
            for group, params, grads, exp_avgs, exp_avg_sqs, steps in calls:
                beta1, beta2 = group["betas"]
                torch._foreach_add_(steps, 1)
                kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
                kernel(
                    params,
                    grads,
                    exp_avgs,
                    exp_avg_sqs,
                    [],
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=float(beta1),
                    beta2=float(beta2),
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                    grad_scale=None,
                    found_inf=None,
                )
        # The post hooks as torch's wrapper calls them (ParallelMLPs counts steps with one to refresh snapshots).
        self._optimizer_step_code()  # type: ignore[attr-defined]
        for hook in (*self._optimizer_step_post_hooks.values(), *optim_module._global_optimizer_post_hooks.values()):  # type: ignore[attr-defined]
            hook(self, (self,), {})
        return None


# Optimizer.__setstate__ (every load_state_dict) wraps a class's step in profiler ranges and hook calls unless it is
# marked as wrapped: this step hands hooks to Adam's wrapped step itself, so a resumed run keeps the lean path.
_LeanFusedStep.step.hooked = True  # type: ignore[attr-defined]


class LeanAdam(_LeanFusedStep, torch.optim.Adam):
    """Fused :class:`torch.optim.Adam` with :class:`_LeanFusedStep`'s step (made by :func:`lean_step`)."""


class LeanAdamW(_LeanFusedStep, torch.optim.AdamW):
    """Fused :class:`torch.optim.AdamW` with :class:`_LeanFusedStep`'s step (made by :func:`lean_step`)."""


_LEAN: dict[type, type] = {torch.optim.Adam: LeanAdam, torch.optim.AdamW: LeanAdamW}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, total_updates: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``total_updates`` calls of ``scheduler.step()`` for a ``ScheduleConfig`` node.

    The factor on the learning rate at update ``t`` (0-based) is a linear warm-up over the first
    ``warmup * total_updates`` updates, then ``constant`` 1, ``linear`` from 1 to ``final_lr_ratio``
    or ``cosine`` from 1 to ``final_lr_ratio``; it stays at its final value past the end.
    """
    fn = schedule_factor(str(cfg.name), float(cfg.warmup), float(cfg.final_lr_ratio), int(total_updates))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def load_scheduler_state(optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]) -> None:
    """Resume a LambdaLR built for THIS run: its counter comes from ``state``, its schedule stays this run's.

    ``LambdaLR.load_state_dict`` would also bring back the old run's schedule object (and so its total number
    of updates): a resume with a larger ``total_steps`` would then continue the old, finished annealing. Call it
    after the optimizer's state was loaded.
    """
    fresh = copy.deepcopy(scheduler.lr_lambdas)  # load_state_dict updates schedule objects in place
    scheduler.load_state_dict(state)
    scheduler.lr_lambdas = fresh
    for group, factor in zip(optimizer.param_groups, fresh, strict=True):
        group["lr"] = group["initial_lr"] * factor(scheduler.last_epoch)


def schedule_factor(name: str, warmup: float, final_ratio: float, total_updates: int) -> Any:
    """``factor(t)`` of :func:`build_scheduler` as a picklable callable."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{name}'; choose one of {', '.join(SCHEDULES)}")
    return _Factor(name, warmup, final_ratio, max(1, total_updates))


class _Factor:
    def __init__(self, name: str, warmup: float, final_ratio: float, total: int) -> None:
        self.name, self.final_ratio, self.total = name, final_ratio, total
        self.warmup_updates = int(round(warmup * total))

    def __call__(self, t: int) -> float:
        if t < self.warmup_updates:
            return (t + 1) / self.warmup_updates
        if self.name == "constant":
            return 1.0
        progress = min(1.0, (t - self.warmup_updates) / max(1, self.total - self.warmup_updates))
        r = self.final_ratio
        if self.name == "linear":
            return 1.0 - (1.0 - r) * progress
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------- validation


def optimizer_paths(schema: type, prefix: str = "") -> list[str]:
    """Dotted paths of every OptimizerConfig node in a (nested dataclass) schema."""
    import dataclasses
    import typing

    out: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, OptimizerConfig):
            out.append(prefix + f.name)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(optimizer_paths(tp, f"{prefix}{f.name}."))
    return out


def validate_optimizer(node: Any, where: str, default: Optional[Any] = None) -> None:
    """One optimizer node: class, arguments (against the signature and by building it on a dummy tensor), schedule.

    A typed field (eps, betas, weight_decay) that the class does not take is an error only when it was
    changed from ``default`` (the schema's value), i.e. when the user asked for it.
    """
    cls, kwargs = optimizer_kwargs(node, where)
    accepted = _signature(cls)
    for key in _OPTIONAL_FIELDS:
        if key not in accepted and default is not None and node.get(key) != default.get(key):
            raise ConfigError(f"{where}.{key}: {cls.__name__} takes no argument '{key}'")
    try:
        cls([torch.zeros(1, requires_grad=True)], **kwargs)
    except (ValueError, TypeError, RuntimeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{where}: {cls.__name__}: {msg}") from None
    s = node.schedule
    if s.name not in SCHEDULES:
        close = difflib.get_close_matches(str(s.name), SCHEDULES, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; choose one of {', '.join(SCHEDULES)}"
        raise ConfigError(f"unknown schedule {where}.schedule.name={s.name}{hint}")
    if not 0.0 <= s.warmup < 1.0:
        raise ConfigError(f"{where}.schedule.warmup must lie in [0, 1), got {s.warmup}")
    if s.final_lr_ratio < 0:
        raise ConfigError(f"{where}.schedule.final_lr_ratio must be >= 0, got {s.final_lr_ratio}")


def validate_optimizers(cfg: Any, schema: type) -> None:
    """Check every optimizer node of a composed config (called by the CLI before anything runs)."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.structured(schema)
    for path in optimizer_paths(schema):
        node = OmegaConf.select(cfg, path)
        if node is not None:
            validate_optimizer(node, path, OmegaConf.select(defaults, path))


def require_constant_schedule(cfg: Any, *paths: str) -> None:
    """For algorithms that step no scheduler: a schedule other than a constant one is a config error."""
    from omegaconf import OmegaConf

    for path in paths:
        s = OmegaConf.select(cfg, path + ".schedule")
        if s is not None and (s.name != "constant" or s.warmup > 0):
            raise ConfigError(f"{cfg.algo.name} has a constant learning rate: {path}.schedule is not supported")


# --------------------------------------------------------------------------------------------- one gradient step


class GradientStep:
    """zero grads -> ``fabric.backward`` -> clip the gradient norm -> ``optimizer.step()`` for one network, without
    the per-call plumbing that costs as much as the tensor work of a small network's update.

        update = GradientStep(fabric, q, optimizer, max_grad_norm=10.0)   # q: what fabric.setup_module returned
        loss = loss_fn(update.forward(obs))                                # the module to call for the loss
                                                                           # (update.plain: for no-grad passes)
        norm = update(loss)                                                # the gradient norm before clipping

    Where Fabric adds nothing (one or more processes with ``SingleDeviceStrategy`` / ``DDPStrategy`` and full
    precision), it does the same arithmetic as ``optimizer.zero_grad(set_to_none=True)``, ``fabric.backward``,
    ``fabric.clip_gradients(module, optimizer, max_norm=...)`` and ``optimizer.step()``, bit for bit, in fewer
    calls. Measured on the 2-core AMD machine for DQN's 2x256 CartPole network (batch 64): the clip 215 -> 80 us
    (``torch.nn.utils.clip_grad_norm_`` groups tensors by device and dtype in Python on every call), the zero 20 ->
    1 us, and ``forward`` on one process calls the module itself instead of Fabric's wrapper (~55 us of input
    conversion and context managers). With mixed precision (a gradient scaler to unscale by) or any other strategy,
    every part is Fabric's own. Unlike ``fabric.clip_gradients`` it never raises on a non-finite norm: the run's
    divergence check (``Run``) ends such a run with one line, as for any other non-finite loss.
    """

    def __init__(self, fabric: Any, module: torch.nn.Module, optimizer: Any, max_grad_norm: float = 0.0) -> None:
        from lightning.fabric.plugins.precision import Precision
        from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy

        strategy = fabric.strategy
        self.fabric, self.module, self.optimizer = fabric, module, optimizer
        self.max_grad_norm = float(max_grad_norm)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.lean = type(strategy.precision) is Precision and type(strategy) in (SingleDeviceStrategy, DDPStrategy)
        # The user's module, for passes without a gradient (DDP's forward would sync buffers for nothing).
        self.plain: torch.nn.Module = unwrap(module)
        # DDP's forward registers the gradient all-reduce: only a single process may skip the wrapper.
        self.single = self.lean and type(strategy) is SingleDeviceStrategy
        self.forward: torch.nn.Module = self.plain if self.single else module

    def __call__(self, loss: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.lean:
            self.optimizer.zero_grad(set_to_none=True)
            self.fabric.backward(loss)
            norm = None
            if self.max_grad_norm > 0:
                norm = self.fabric.clip_gradients(self.module, self.optimizer, max_norm=self.max_grad_norm)
            self.optimizer.step()
            return norm
        for p in self.params:
            p.grad = None
        if self.single:
            loss.backward()  # all that fabric.backward does here
        else:
            self.fabric.backward(loss)  # DDP: its hooks all-reduce the gradients
        norm = clip_grad_norm(self.params, self.max_grad_norm) if self.max_grad_norm > 0 else None
        self.optimizer.step()
        return norm


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (2-norm) for gradients on one device and dtype, with
    the same kernels in the same order (so the same result bit for bit) and none of the per-call Python.

    Mixed devices or dtypes, or no foreach kernels for the device, go to torch's own.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    first = grads[0]
    if first.device.type not in ("cpu", "cuda") or any(
        g.device != first.device or g.dtype != first.dtype or g.is_sparse for g in grads
    ):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(float(max_norm) / (total + 1e-6), max=1.0))
    return total
