"""Algorithm and evaluation registry.

An algorithm registers itself in its light ``args.py`` (next to its schema), naming its entry
function explicitly::

    register_algorithm(
        "ppo", entry="sheeprl.algos.ppo.ppo:main", schema=PPOConfig,
        description="...", action_spaces=("Discrete", "Box"), validate=validate,
    )

The entry module (which imports torch, tensordict, Lightning, ...) is imported only when the
algorithm runs, so ``--sheeprl_help`` and ``<algo> -h`` cost little more than importing torch.
Names are explicit, never derived from file names, and the CLI never special-cases an
algorithm: everything it knows comes from the :class:`AlgorithmSpec`.

A checkpoint evaluation registers with ``@register_evaluation("ppo")`` on a ``load_policy``
function in the algorithm's ``utils.py`` (see ``sheeprl/algos/ppo/utils.py`` for the protocol);
the evaluation command imports that module on demand. ``@register_export`` (same module) registers
the export builder of a policy with a state; stateless policies are exported from their evaluation.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    entry: str  # "package.module:function", called as function(fabric, cfg)
    schema: type
    description: str
    action_spaces: tuple[str, ...]
    decoupled: bool = False
    validate: Optional[Callable[[Any], None]] = None

    @property
    def min_devices(self) -> int:
        # A decoupled run needs a player (rank 0) and at least one trainer.
        return 2 if self.decoupled else 1

    def load_entry(self) -> Callable[..., Any]:
        module, _, func = self.entry.partition(":")
        return getattr(importlib.import_module(module), func)


ALGORITHMS: dict[str, AlgorithmSpec] = {}
_EVALUATIONS: dict[str, Callable[..., Any]] = {}


def register_algorithm(
    name: str,
    *,
    entry: str,
    schema: type,
    description: str,
    action_spaces: Sequence[str] = ("Discrete", "Box"),
    decoupled: bool = False,
    validate: Optional[Callable[[Any], None]] = None,
) -> AlgorithmSpec:
    """Register algorithm ``name``; ``validate(cfg)`` raises ConfigError on bad input before anything is written."""
    if ":" not in entry:
        raise ValueError(f"entry of '{name}' must look like 'package.module:function', got '{entry}'")
    spec = AlgorithmSpec(name, entry, schema, description, tuple(action_spaces), decoupled, validate)
    if name in ALGORITHMS and ALGORITHMS[name] != spec:
        raise ValueError(f"algorithm '{name}' is registered twice")
    ALGORITHMS[name] = spec
    return spec


def register_evaluation(algorithms: str | Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(fabric, cfg, state, **options)`` as the checkpoint evaluation of one or more algorithms."""
    names = [algorithms] if isinstance(algorithms, str) else list(algorithms)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _EVALUATIONS[n] = fn
        return fn

    return decorator


def get_evaluation(name: str) -> Optional[Callable[..., Any]]:
    """The ``load_policy`` of algorithm ``name`` (imports ``<algorithm package>.utils``, which registers it)."""
    spec = get_algorithm(name)
    if spec is not None and name not in _EVALUATIONS:
        package = spec.entry.partition(":")[0].rpartition(".")[0]
        try:
            importlib.import_module(package + ".utils")
        except ModuleNotFoundError as err:
            if err.name != package + ".utils":
                raise
    return _EVALUATIONS.get(name)


_EXPORTS: dict[str, Callable[..., Any]] = {}


def register_export(algorithms: str | Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(cfg, state, observation_space, action_space) -> nn.Module`` as the exported policy of algorithms.

    Only algorithms whose policy carries a state (recurrent ones) need this: the module's
    ``forward(obs, state) -> (action, new_state)`` takes and returns dicts of batched tensors and its
    ``state_shapes`` attribute ({name: per-sample shape}) names the state (zeros at an episode start).
    Every other algorithm is exported from its registered evaluation's greedy policy (see sheeprl/export.py).
    """
    names = [algorithms] if isinstance(algorithms, str) else list(algorithms)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _EXPORTS[n] = fn
        return fn

    return decorator


def get_export(name: str) -> Optional[Callable[..., Any]]:
    """The export builder of algorithm ``name`` (None: export its greedy evaluation policy)."""
    get_evaluation(name)  # imports the algorithm's utils.py, which registers both
    return _EXPORTS.get(name)


_LOADED = False


def load_algorithms() -> dict[str, AlgorithmSpec]:
    """Import every ``sheeprl.algos.<name>.args`` module once; they register their algorithms."""
    global _LOADED
    if not _LOADED:
        import sheeprl.algos as algos_pkg

        for info in pkgutil.iter_modules(algos_pkg.__path__, prefix="sheeprl.algos."):
            if info.ispkg:
                try:
                    importlib.import_module(info.name + ".args")
                except ModuleNotFoundError as err:
                    if err.name != info.name + ".args":
                        raise
        _LOADED = True
    return ALGORITHMS


def get_algorithm(name: str) -> Optional[AlgorithmSpec]:
    return load_algorithms().get(name)
