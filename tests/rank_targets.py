"""Runs ``python sheeprl.py ARGS`` and, when the run finishes, writes every rank's target networks to $TARGETS_OUT.

A test helper (not collected by pytest): Fabric's launcher re-executes this script on every rank, so the patch of
``Run.finish`` below is in place everywhere; each rank hands in the ``target*`` entries of its own ``state_fn()``.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from sheeprl.cli import run_cli  # noqa: E402
from sheeprl.utils.run import Run  # noqa: E402

_finish = Run.finish


def finish(self, policy_step, state_fn, envs=None, act=None):
    targets = {k: {n: t.detach().cpu() for n, t in v.items()} for k, v in state_fn().items() if k.startswith("target")}
    gathered = [None] * self.world_size
    dist.all_gather_object(gathered, targets)
    if self.rank == 0:
        torch.save(gathered, os.environ["TARGETS_OUT"])
    return _finish(self, policy_step, state_fn, envs, act)


Run.finish = finish

if __name__ == "__main__":
    sys.exit(run_cli())
