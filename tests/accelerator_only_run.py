"""A run whose default process group refuses CPU tensors, as an NCCL group does (run by tests/test_distributed.py).

``python tests/accelerator_only_run.py ALGO ARGS...`` runs the CLI with every multi-process run started on the
"acceleratoronly" backend: gloo registered for the ``cuda`` device type only, so a CPU tensor handed to the
default group fails with NCCL's own error (``No backend type associated with device type cpu``) and object
collectives try to use CUDA. ``python tests/accelerator_only_run.py run ARGS...`` drives a coupled run's
:class:`~sheeprl.utils.run.Run` (metrics, evaluation, checkpoints, stop flags) without DDP, whose CPU
parameters no accelerator-only group could take.
"""

import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKEND = "acceleratoronly"


def _gloo_for_cuda_only(store, rank, size, timeout):  # noqa: ANN001, ANN202
    return dist.ProcessGroupGloo(store, rank, size, timeout)


dist.Backend.register_backend(BACKEND, _gloo_for_cuda_only, devices=["cuda"])


def drive_run(fabric, cfg):  # noqa: ANN001, ANN201
    """Every host-side collective of a coupled run, in a loop's order."""
    import torch

    from sheeprl.utils import evaluation
    from sheeprl.utils.run import Run

    play = evaluation.run_episodes

    def run_episodes(cfg, act, episodes, **kwargs):  # noqa: ANN001, ANN003, ANN202
        print(f"rank {fabric.global_rank} plays {episodes} episodes", flush=True)
        return play(cfg, act, episodes, **kwargs)

    evaluation.run_episodes = run_episodes
    run = Run(fabric, cfg)
    assert dist.get_backend_config() == f"cuda:{BACKEND}"
    for step in (128, 256):
        run.metrics.update("Loss/policy_loss", float(fabric.global_rank))
        if fabric.global_rank == 1:
            run.metrics.update("Info/only_on_rank_1", 1.0)
        run.log(step, force=True)
        run.maybe_checkpoint(step, lambda: {"agent": {"w": torch.zeros(2)}}, force=True)
        assert not run.should_stop()
    run.finish(256, lambda: {"agent": {"w": torch.zeros(2)}}, act=lambda obs: torch.zeros(1, dtype=torch.long))


def main() -> int:
    from sheeprl import cli, launcher
    from sheeprl.utils import distributed

    distributed.process_group_backend = lambda accelerator: BACKEND  # what cli.launch gives Lightning's DDP
    if sys.argv[1] != "run":
        return cli.run_cli(sys.argv[1:])
    from lightning.fabric import Fabric

    spec, cfg = cli.build_config("ppo", sys.argv[2:])
    fabric = Fabric(accelerator="cpu", devices=2, strategy=launcher.ddp_strategy(cfg, "cpu"))
    fabric.launch(drive_run, cfg)
    return 0


if __name__ == "__main__":
    code = main()
    if code == 0:
        # As the sheeprl script ends a run that went well (cli.script): no interpreter teardown. Tearing down with
        # this process's gloo groups still alive aborted it once under load ("terminate called without an active
        # exception", exit -6) after everything the test checks had been written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)
