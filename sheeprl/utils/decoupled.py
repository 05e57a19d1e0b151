"""The collective plumbing of decoupled algorithms: one player (rank 0) and N-1 trainers (ranks 1..N-1).

A decoupled algorithm's entry calls :func:`setup_decoupled` on every rank and branches on the role::

    comm = setup_decoupled(fabric, timeout_s=cfg.fabric.timeout_s)   # collective: every rank calls it
    run = Run(fabric, cfg)                                          # folder, logs and checkpoints as usual
    if comm.is_player:
        ...                                     # collect a batch, flatten it to a (N, ...) TensorDict
        comm.send_batch(batch)                  # chunk i of N // num_trainers rows goes to trainer i + 1
                                                # (or comm.broadcast_batch(obj): the same object to every trainer)
        comm.sync_weights(actor)                # blocks until the first trainer sends the updated weights
    else:
        model = comm.wrap_ddp(agent)            # DDP over the trainers' own process group
        chunk = comm.recv_batch()               # this trainer's chunk, on fabric.device (comm.broadcast_batch())
        ...                                     # update `model`; all_reduce with group=comm.trainer_group
        comm.sync_weights(agent)                # the first trainer sends, the other trainers skip
    run.log(policy_step)                        # every rank: the trainers' metrics reach the player here

Groups (all created here with ``timeout_s``, so a rank that stops answering fails the run instead of
hanging it): ``data_group`` holds every rank (batches), ``trainer_group`` the trainers (DDP and their
reductions), ``weights_group`` the player and the first trainer (weights, trainer state for checkpoints).
Everything :class:`~sheeprl.utils.run.Run` does (run folder, metric aggregation, checkpoints, Ctrl-C)
stays collective over all ranks, so player and trainers call it in the same order with the same
``policy_step``. A dead process is noticed sooner still: Fabric's launcher (or ``fabric run``'s agent)
ends the whole run when one process exits with an error, and a gloo peer whose socket closes fails the
collective it was part of at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parameters_to_vector

from sheeprl.utils.distributed import cpu_capable_backend

if TYPE_CHECKING:
    from lightning.fabric import Fabric
    from tensordict import TensorDict

PLAYER = 0  # global rank of the player
FIRST_TRAINER = 1  # global rank of the trainer that sends weights and state back to the player


@dataclass
class DecoupledComm:
    """Roles and process groups of a decoupled run (see the module docstring for the protocol)."""

    fabric: Any
    rank: int
    world_size: int
    data_group: Any
    trainer_group: Any  # None on the player: it is not a member
    weights_group: Any
    weights_bytes: int = 0  # size of one weight transfer (known after the first sync_weights)
    last_sync_s: float = 0.0  # seconds the last weight transfer took on the first trainer (the sender)
    _buffer: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def num_trainers(self) -> int:
        return self.world_size - 1

    @property
    def is_player(self) -> bool:
        return self.rank == PLAYER

    @property
    def is_trainer(self) -> bool:
        return self.rank != PLAYER

    @property
    def is_first_trainer(self) -> bool:
        return self.rank == FIRST_TRAINER

    @property
    def trainer_index(self) -> int:
        """0 for the first trainer ... num_trainers - 1 for the last; -1 on the player."""
        return self.rank - 1

    # ----------------------------------------------------------------------------------- batches

    def send_batch(self, batch: TensorDict) -> None:
        """Player: split ``batch`` (first dim = transitions) into ``num_trainers`` equal chunks and send them."""
        n = batch.batch_size[0]
        if n % self.num_trainers != 0:
            raise ValueError(f"a batch of {n} transitions does not split evenly over {self.num_trainers} trainers")
        chunks: list[Any] = [None, *(c.cpu() for c in batch.split(n // self.num_trainers, dim=0))]
        out: list[Any] = [None]
        dist.scatter_object_list(out, chunks, src=PLAYER, group=self.data_group)

    def recv_batch(self) -> TensorDict:
        """Trainer: this trainer's chunk of the player's batch, on ``fabric.device``."""
        out: list[Any] = [None]
        dist.scatter_object_list(out, None, src=PLAYER, group=self.data_group)
        return out[0].to(self.fabric.device)

    def broadcast_batch(self, obj: Any = None) -> Any:
        """Player -> every trainer: the same picklable ``obj`` (e.g. a whole rollout that each trainer indexes its
        own share of); trainers call it without ``obj`` and get it back with tensors on ``fabric.device``."""
        box = [obj if self.is_player else None]
        dist.broadcast_object_list(box, src=PLAYER, group=self.data_group)
        if self.is_player:
            return obj
        return _to_device(box[0], self.fabric.device)

    def gather_from_trainers(self, obj: Any = None) -> Optional[list[Any]]:
        """Every trainer -> player: the trainers' picklable objects in trainer order (e.g. new priorities of the
        chunks ``send_batch`` handed out); None on the trainers. Collective over every rank."""
        out: Optional[list[Any]] = [None] * self.world_size if self.is_player else None
        dist.gather_object(None if self.is_player else obj, out, dst=PLAYER, group=self.data_group)
        return out[1:] if out is not None else None

    # ----------------------------------------------------------------------------------- weights & state

    def sync_weights(self, module: nn.Module) -> None:
        """First trainer -> player: copy ``module``'s parameters (one flat broadcast). Other trainers return at once.

        Both ends must hold the same architecture; buffers are not sent (they must not change in training).
        """
        if not (self.is_player or self.is_first_trainer):
            return
        params = list(module.parameters())
        t0 = time.perf_counter()
        if self.is_first_trainer:
            flat = parameters_to_vector([p.detach() for p in params]).contiguous()
            dist.broadcast(flat, src=FIRST_TRAINER, group=self.weights_group)
        else:
            if self._buffer is None or self._buffer.numel() != sum(p.numel() for p in params):
                self._buffer = torch.empty(
                    sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device
                )
            flat = self._buffer
            dist.broadcast(flat, src=FIRST_TRAINER, group=self.weights_group)
            # Copied in place, not aliased (as vector_to_parameters would): the parameters keep their own storage and
            # count the update in their version, which snapshots of the weights (ParallelMLPs) watch.
            with torch.no_grad():
                torch._foreach_copy_(
                    params, [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]
                )
        self.weights_bytes = flat.numel() * flat.element_size()
        self.last_sync_s = time.perf_counter() - t0

    def from_first_trainer(self, obj: Any = None) -> Any:
        """First trainer -> player: any picklable object (e.g. optimizer state for a checkpoint); None elsewhere."""
        if not (self.is_player or self.is_first_trainer):
            return None
        box = [obj if self.is_first_trainer else None]
        dist.broadcast_object_list(box, src=FIRST_TRAINER, group=self.weights_group)
        return box[0]

    # ----------------------------------------------------------------------------------- trainers

    def wrap_ddp(self, module: nn.Module) -> nn.Module:
        """Trainer: ``module`` on ``fabric.device`` inside DDP over the trainers only (its weights start as trainer 1's)."""
        if not self.is_trainer:
            raise RuntimeError("only trainers train: the player has no DDP model")
        device = self.fabric.device
        module = module.to(device)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, process_group=self.trainer_group)


def _to_device(obj: Any, device: Any) -> Any:
    if hasattr(obj, "to"):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def setup_decoupled(fabric: Fabric, timeout_s: float = 600.0) -> DecoupledComm:
    """Create the decoupled process groups. Collective: every rank calls it, before anything else collective."""
    if not (dist.is_available() and dist.is_initialized()) or fabric.world_size < 2:
        raise RuntimeError("a decoupled algorithm needs at least 2 processes (a player and a trainer)")
    world = fabric.world_size
    timeout = timedelta(seconds=timeout_s)
    # Batches and trainer state travel as objects (CPU), weights and gradients as device tensors: on an
    # accelerator-only default group (NCCL) the groups get gloo for CPU tensors next to the accelerator's backend.
    backend = cpu_capable_backend()
    # new_group is collective over the default group: every rank creates every group, in the same order.
    data_group = dist.new_group(list(range(world)), timeout=timeout, backend=backend)
    trainer_group = dist.new_group(list(range(1, world)), timeout=timeout, backend=backend)
    weights_group = dist.new_group([PLAYER, FIRST_TRAINER], timeout=timeout, backend=backend)
    rank = fabric.global_rank
    return DecoupledComm(
        fabric=fabric,
        rank=rank,
        world_size=world,
        data_group=data_group,
        trainer_group=trainer_group if rank != PLAYER else None,
        weights_group=weights_group,
    )
