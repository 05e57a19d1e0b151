"""Start-up without ``torch._dynamo`` for runs that never compile (~0.7 s, a third of a CartPole run's start).

Nothing in an eager run uses torch.compile's frontend, yet three libraries import it on the way:

- ``lightning.fabric.wrappers`` imports ``OptimizedModule``, only for ``isinstance`` checks;
- ``tensordict`` marks a few functions with ``allow_in_graph`` / ``assume_constant_result`` at import: records
  for a tracer that is not running;
- ``torch.optim``: every ``step()`` calls ``torch._dynamo.graph_break()`` (a no-op outside tracing), and four
  ``Optimizer`` methods import it on their first call to wrap themselves with ``torch._dynamo.disable`` (which
  only matters while tracing).

:func:`defer` (called by the CLI before anything is imported) makes each of these wait for the real module
without changing what happens once it is there:

- while ``lightning.fabric`` and ``tensordict`` import, ``torch._dynamo`` is a stand-in that answers those
  names: ``OptimizedModule`` is a class whose ``isinstance`` asks the real one if it has been imported (before
  that no compiled module can exist), ``allow_in_graph`` is recorded and replayed on the real module the moment
  anything imports it, ``assume_constant_result`` sets its attribute as the real one does. Any other name
  imports the real module and answers from it;
- the optimizer methods skip the dynamo wrappers only while ``torch._dynamo`` is not imported; from then on they
  take torch's own path, so code that compiles later sees torch's behaviour.

Every patch checks that the library code is the one it was written against (the wrapped functions' code
objects) and does nothing otherwise: a newer torch then starts as it would without this module, slower but
unchanged. ``tests/test_dynamo.py`` checks that a run does not import ``torch._dynamo`` and that compiling
afterwards still works.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

_DYNAMO = "torch._dynamo"
_WINDOWS = ("lightning.fabric", "tensordict")  # packages imported with the stand-in in place
_pending: list[Any] = []  # functions tensordict asked to allow in graph: replayed on the real module
_finder: _ImportHooks | None = None
_optimizers_patched = False


def loaded() -> bool:
    """Whether the real ``torch._dynamo`` has been imported in this process."""
    module = sys.modules.get(_DYNAMO)
    return module is not None and not isinstance(module, _StandIn)


def _real() -> types.ModuleType:
    if isinstance(sys.modules.get(_DYNAMO), _StandIn):
        del sys.modules[_DYNAMO]
    return importlib.import_module(_DYNAMO)


class _OptimizedModuleMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        # Only torch._dynamo creates OptimizedModules: none exists before it is imported.
        return loaded() and isinstance(obj, sys.modules[_DYNAMO].OptimizedModule)

    def __subclasscheck__(cls, sub: type) -> bool:
        return loaded() and issubclass(sub, sys.modules[_DYNAMO].OptimizedModule)


class OptimizedModule(metaclass=_OptimizedModuleMeta):
    """Stands for ``torch._dynamo.OptimizedModule`` in ``isinstance`` checks (lightning.fabric.wrappers)."""


def _allow_in_graph(fn: Any) -> Any:
    _pending.append(fn)
    return fn


def _assume_constant_result(fn: Any) -> Any:
    fn._dynamo_marked_constant = True  # what torch._dynamo.assume_constant_result does
    return fn


class _StandIn(types.ModuleType):
    """``torch._dynamo`` while lightning.fabric or tensordict imports; any other name loads the real module."""

    def __init__(self) -> None:
        super().__init__(_DYNAMO)
        # A package with no folder: `from torch._dynamo import X` looks X up here instead of importing a
        # submodule, and a real submodule import comes to _ImportHooks, which loads the real package first.
        self.__path__: list[str] = []
        self.OptimizedModule = OptimizedModule
        self.allow_in_graph = _allow_in_graph
        self.assume_constant_result = _assume_constant_result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real(), name)


class _Existing(importlib.abc.Loader):
    """Loader of a module that is already in sys.modules (a torch._dynamo submodule the real import loaded)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return sys.modules[spec.name]

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _replay(module: types.ModuleType) -> None:
    while _pending:
        module.allow_in_graph(_pending.pop(0))


class _ImportHooks(importlib.abc.MetaPathFinder):
    """Wraps the loading of a few modules: the stand-in windows around lightning.fabric and tensordict, and the
    replay of the recorded ``allow_in_graph`` calls once the real torch._dynamo has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.startswith(_DYNAMO + ".") and isinstance(sys.modules.get(_DYNAMO), _StandIn):
            # A submodule while the stand-in is in place: the real package first, then its submodule.
            _real()
            if name in sys.modules:
                return importlib.machinery.ModuleSpec(name, _Existing())
            return importlib.util.find_spec(name)
        if name not in (*_WINDOWS, _DYNAMO):
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def run(module: types.ModuleType) -> None:
            if name == _DYNAMO:
                exec_module(module)
                _replay(module)
            else:
                _import_with_stand_in(functools.partial(exec_module, module))

        spec.loader.exec_module = run  # type: ignore[method-assign]  # this spec's own loader object
        return spec


def _import_with_stand_in(do_import: Callable[[], Any]) -> None:
    if _DYNAMO in sys.modules:  # the real one, or an outer window's stand-in
        do_import()
        return
    stand_in = _StandIn()
    sys.modules[_DYNAMO] = stand_in
    try:
        do_import()
    finally:
        if sys.modules.get(_DYNAMO) is stand_in:
            del sys.modules[_DYNAMO]


def defer() -> None:
    """Install the deferral for this process (idempotent; a no-op once ``torch._dynamo`` is imported)."""
    global _finder
    if _finder is not None or loaded():
        return
    _finder = _ImportHooks()
    sys.meta_path.insert(0, _finder)
    if "torch" in sys.modules:
        patch_optimizers()


def patch_optimizers() -> None:
    """The ``torch.optim`` part of :func:`defer` (``sheeprl.utils.optim`` calls it on import: torch is then loaded).

    A no-op unless :func:`defer` was called and torch._dynamo is not imported; run it before any optimizer is
    created (torch wraps a class's ``step`` once, at its first instance).
    """
    global _optimizers_patched
    if _finder is None or _optimizers_patched or loaded():
        return
    _optimizers_patched = True
    _patch_optimizers()


# ----------------------------------------------------------------------------------------------- torch.optim


def _patch_optimizers() -> None:
    import torch
    from torch.optim import optimizer as opt_module

    # The wrappers as this torch writes them: a function whose code differs is left alone.
    use_grad_code = opt_module._use_grad_for_differentiable(lambda *a, **k: None).__code__
    disable_code = torch._disable_dynamo(lambda: None).__code__
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        inner = opt_module.Optimizer.__dict__.get(name)
        fn = getattr(inner, "__wrapped__", None)
        if getattr(inner, "__code__", None) is disable_code and fn is not None and _disabled(fn) is None:
            # torch's wrapper calls fn.__dynamo_disable, which it creates (importing dynamo) when missing.
            setattr(fn, "__dynamo_disable", _until_dynamo(fn))
    for cls in _optimizer_classes(torch.optim):
        step = cls.__dict__.get("step")
        if getattr(step, "__code__", None) is use_grad_code and getattr(step, "__wrapped__", None) is not None:
            cls.step = _step_without_graph_break(step)


def _disabled(fn: Any) -> Any:
    return getattr(fn, "__dynamo_disable", None)


def _optimizer_classes(optim: Any) -> list[type]:
    return [
        c
        for c in vars(optim).values()
        if isinstance(c, type) and issubclass(c, optim.Optimizer) and c is not optim.Optimizer
    ]


def _until_dynamo(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself until torch._dynamo is imported (nothing can be tracing), then torch's disabled ``fn``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if not loaded():
            return fn(*args, **kwargs)
        disabled = sys.modules[_DYNAMO].disable(fn, True, wrapping=False)
        setattr(fn, "__dynamo_disable", disabled)  # as torch's own wrapper caches it
        return disabled(*args, **kwargs)

    return call


def _step_without_graph_break(use_grad_step: Callable[..., Any]) -> Callable[..., Any]:
    """torch's ``_use_grad`` step wrapper without its two ``torch._dynamo.graph_break()`` calls until dynamo is
    imported: grad mode set to ``defaults["differentiable"]`` around the step and restored after, as there."""
    import torch

    raw = use_grad_step.__wrapped__  # type: ignore[attr-defined]

    @functools.wraps(raw)
    def step(*args: Any, **kwargs: Any) -> Any:
        if loaded():
            return use_grad_step(*args, **kwargs)
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(args[0].defaults["differentiable"])
            return raw(*args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    step._sheeprl_use_grad = use_grad_step  # type: ignore[attr-defined]
    return step
