"""Launching a run: Fabric's strategy (timeout, backend), and no process left behind when the run ends or fails.

``cli.main`` composes and validates the config, then calls :func:`launch_run`; the failures a run can end with
(a dead or frozen rank, an unwritable folder) are told apart here so that the CLI prints one line for each.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

from sheeprl.config import world_size


def _fabric_without_trainer() -> None:
    """Let ``import lightning.fabric`` skip ``lightning/__init__``, which imports the whole Trainer stack.

    ``lightning``'s package ``__init__`` pulls ``lightning.pytorch`` (Trainer, callbacks) and through it torchmetrics
    and scipy.signal: about 1.5 s of a 50k-step PPO run's 8 s on this CPU, for code a run never uses. The package is
    registered bare (its ``__path__`` only), so its subpackages import as usual; the first access to any other
    attribute (``lightning.Trainer``, ...) runs the real ``__init__`` into it, so nothing changes for other code.
    """
    if "lightning" in sys.modules:
        return
    spec = importlib.util.find_spec("lightning")
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return
    from importlib.metadata import version

    package = types.ModuleType("lightning")
    package.__file__ = spec.origin
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__package__ = "lightning"
    package.__version__ = version("lightning")  # lightning.fabric reads it from the package

    def _full_package(name: str) -> Any:
        # PEP 562 hook: run the real __init__ once, into this module, on first use of a top-level name.
        if f"lightning.{name}" in sys.modules:  # a subpackage still importing (`import lightning.fabric as f`)
            return sys.modules[f"lightning.{name}"]
        if name.startswith("__"):
            raise AttributeError(name)
        package.__dict__.pop("__getattr__", None)
        with open(spec.origin) as f:
            exec(compile(f.read(), spec.origin, "exec"), package.__dict__)
        return getattr(package, name)

    package.__getattr__ = _full_package  # type: ignore[method-assign]
    sys.modules["lightning"] = package
    _version_checks_without_import()


def _version_checks_without_import() -> None:
    """Answer Lightning's start-up check ``torchmetrics >= 1.0`` from package metadata instead of importing it.

    ``lightning.fabric.utilities.imports`` imports torchmetrics (and with it scipy.signal, ~1 s) only to read its
    version; a Fabric run never uses torchmetrics. Every other package goes through Lightning's own check.
    """
    import lightning_utilities.core.imports as checks

    if getattr(checks.compare_version, "_sheeprl_metadata", False):
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    original = checks.compare_version

    def compare_version(package: str, op: Any, wanted: str, use_base_version: bool = False) -> bool:
        if package != "torchmetrics" or package in sys.modules:
            return original(package, op, wanted, use_base_version)
        try:
            found = Version(version(package))
        except PackageNotFoundError:
            return False
        return op(Version(found.base_version) if use_base_version else found, Version(wanted))

    compare_version._sheeprl_metadata = True  # type: ignore[attr-defined]
    checks.compare_version = compare_version


def ddp_strategy(cfg: Any, accelerator: str) -> Any:
    """DDP with the run's collective timeout and a backend that takes CPU tensors next to the accelerator's."""
    from datetime import timedelta

    _fabric_without_trainer()
    from lightning.fabric.strategies import DDPStrategy

    from sheeprl.utils.distributed import process_group_backend

    # A rank that hangs (rather than dies) must end the run within a bounded time, not Fabric's hidden default.
    return DDPStrategy(
        timeout=timedelta(seconds=cfg.fabric.timeout_s), process_group_backend=process_group_backend(accelerator)
    )


def launch_run(spec: Any, cfg: Any) -> Any:
    """Create Fabric and run the entry on every rank (directly when processes already exist under ``fabric run``)."""
    _fabric_without_trainer()
    from lightning.fabric import Fabric
    from lightning.fabric.connector import _is_using_cli

    if _is_using_cli():
        # `fabric run` already created the processes and passes its flags through the environment.
        cli_strategy = os.environ.get("LT_STRATEGY", cfg.fabric.strategy)
        if cli_strategy in ("auto", "ddp") and world_size(cfg) > 1:
            # Fabric would refuse a strategy object next to `--strategy` from the CLI: this one is what "ddp" means,
            # with the run's timeout and backend.
            saved = os.environ.pop("LT_STRATEGY", None)
            try:
                fabric = Fabric(strategy=ddp_strategy(cfg, os.environ.get("LT_ACCELERATOR", "auto")))
            finally:
                if saved is not None:
                    os.environ["LT_STRATEGY"] = saved
        else:
            fabric = Fabric(strategy=cfg.fabric.strategy) if cfg.fabric.strategy != "auto" else Fabric()
        result = spec.load_entry()(fabric, cfg)
        close_process_groups()
        return result
    strategy: Any = cfg.fabric.strategy
    if strategy in ("auto", "ddp") and cfg.fabric.devices * cfg.fabric.num_nodes > 1:
        strategy = ddp_strategy(cfg, cfg.fabric.accelerator)
    fabric = Fabric(
        accelerator=cfg.fabric.accelerator,
        devices=cfg.fabric.devices,
        num_nodes=cfg.fabric.num_nodes,
        precision=cfg.fabric.precision,
        strategy=strategy,
    )
    try:
        result = fabric.launch(spec.load_entry(), cfg)
    except BaseException:
        _end_children(fabric, wait_s=0.0)  # a failed run leaves no process behind (a frozen rank included)
        raise
    close_process_groups()
    if _end_children(fabric, wait_s=float(cfg.fabric.timeout_s)):
        raise RunFailed("a process of the run failed (see its output above)")
    return result


def close_process_groups() -> None:
    """End this rank's process groups once its run has ended well (every rank has made its last collective).

    A gloo worker thread drops its last collective's tensors just after the waiting rank has moved on, and
    dropping them takes the GIL. If the interpreter is being torn down by then, Python ends that thread inside a
    C++ destructor and the rank aborts ("terminate called without an active exception", exit code 1) after a run
    that succeeded. (A barrier does not help: its work holds the previous collectives and drops them the same
    way.) Sleeping releases the GIL, so those threads finish while the interpreter is whole; then the groups go.
    """
    import time

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    time.sleep(0.05)
    dist.destroy_process_group()


class RunFailed(Exception):
    """The run failed in another process, which printed its own error."""


def _end_children(fabric: Any, wait_s: float) -> bool:
    """Wait up to ``wait_s`` seconds for the processes Fabric's launcher started, then kill what is left.

    Returns whether any of them failed. (Processes started by ``fabric run`` belong to its agent.)
    """
    import subprocess
    import time

    procs: list[subprocess.Popen] = list(getattr(getattr(fabric.strategy, "launcher", None), "procs", None) or [])
    if procs:
        _stop_child_observer()
    deadline = time.monotonic() + wait_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    failed = False
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
            proc.wait()
        failed = failed or proc.returncode != 0
    return failed


def _stop_child_observer() -> None:
    """Detach Lightning's child-process observer: from here on this process ends its children itself.

    The observer (a thread polling every 5 s) SIGKILLs this process as soon as it sees a child with a non-zero
    exit code. Once this process has killed a frozen child, or a child has failed, that would cut the one-line
    error and exit code 1 short with a -9 while the interpreter shuts down. Its list is rebound, not cleared
    (it is the launcher's own list), so its next poll sees no child and ends.
    """
    import threading

    for thread in threading.enumerate():
        if thread.name == "child-process-observer" and hasattr(thread, "_child_processes"):
            thread._child_processes = []


def os_error_line(err: OSError) -> str:
    """``path: cause`` for an OSError (e.g. ``logs/x: Not a directory``)."""
    path = err.filename if err.filename is not None else ""
    cause = err.strerror or str(err)
    return f"{path}: {cause}" if path else cause


def is_collective_failure(err: RuntimeError) -> bool:
    """torch.distributed's own errors, or the plain RuntimeError DDP's reducer raises for a gloo/NCCL failure."""
    import torch.distributed as dist

    text = str(err)
    markers = ("gloo", "NCCL", "nccl", "Timed out", "Connection closed by peer", "Connection reset by peer")
    return isinstance(err, dist.DistError) or any(m in text for m in markers)
