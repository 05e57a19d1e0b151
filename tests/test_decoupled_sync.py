"""Decoupled plumbing: after a trainers' update and a weight sync, the player holds exactly the trainers' weights,
and the trainers (DDP over their own group) hold identical weights although each trained on its own chunk."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils import parameters_to_vector

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    from tensordict import TensorDict

    from sheeprl.utils.decoupled import setup_decoupled

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fabric = SimpleNamespace(device=torch.device("cpu"), world_size=world, global_rank=rank)
        comm = setup_decoupled(fabric, timeout_s=60)
        torch.manual_seed(100 + rank)  # every rank starts from different weights: only the protocol aligns them
        net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        history = []
        if comm.is_player:
            comm.sync_weights(net)  # start: the first trainer's weights
            history.append(parameters_to_vector(net.parameters()).clone())
            versions = [[p._version for p in net.parameters()]]
            for it in range(3):
                x = torch.randn(8 * comm.num_trainers, 3, generator=torch.Generator().manual_seed(it))
                comm.send_batch(TensorDict({"x": x, "y": x.sum(-1, keepdim=True)}, batch_size=[len(x)]))
                comm.sync_weights(net)
                history.append(parameters_to_vector(net.parameters()).clone())
                versions.append([p._version for p in net.parameters()])
            # Every sync is an in-place update of every parameter (weight snapshots such as ParallelMLPs watch the
            # version), into the parameters' own storage, never the receive buffer.
            steps = zip(versions, versions[1:], strict=False)
            out["versions_grow"] = all(b > a for v0, v1 in steps for a, b in zip(v0, v1, strict=True))
            buffer = comm._buffer.untyped_storage().data_ptr()
            out["aliased"] = any(p.untyped_storage().data_ptr() == buffer for p in net.parameters())
        else:
            model = comm.wrap_ddp(net)
            comm.sync_weights(net)
            history.append(parameters_to_vector(net.parameters()).clone())
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                chunk = comm.recv_batch()  # a different chunk on every trainer
                loss = (model(chunk["x"]) - chunk["y"]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                comm.sync_weights(net)
                history.append(parameters_to_vector(net.parameters()).clone())
        gathered: list = [None] * world
        dist.all_gather_object(gathered, [h.tolist() for h in history])
        if rank == 0:
            out["history"] = gathered
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [3])  # a player and two trainers: both DDP and the sync are exercised
def test_player_holds_the_trainers_weights_after_every_sync(world):
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.start_processes(_worker, args=(world, _free_port(), out), nprocs=world, join=True, start_method="spawn")
    histories = [torch.tensor(h) for h in out["history"]]
    player, trainers = histories[0], histories[1:]
    assert player.shape[0] == 4  # the start and three updates
    for trainer in trainers:
        assert torch.equal(player, trainer)  # bit-identical after every sync, on every trainer
    assert out["versions_grow"] and not out["aliased"]
    # Each update really changed the weights (otherwise equality would prove nothing).
    assert all(not torch.equal(player[i], player[i + 1]) for i in range(3))
