# ruff: noqa: I001  (runs in the SheepRL 0.8.4 interpreter: its sheeprl is a third-party package there)
"""Run by benchmarks/dreamer_v3.py inside the SheepRL 0.8.4 interpreter: times SheepRL's own dreamer_v3 ``train()``.

    ../peers/sheeprl084/bin/python benchmarks/_sheeprl084_dreamer_v3.py SIZE BATCH SEQ STEPS [THREADS]

Same batch as this project's benchmark: CartPole-v1-shaped vectors (4 floats, 2 discrete actions), random rows.
Prints one JSON line ``{"grad_steps_per_s": ..., "per_cpu_s": ...}`` (per wall and per CPU second).
"""

import json
import sys
import time
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import sheeprl
import torch
from lightning.fabric import Fabric
from omegaconf import OmegaConf

size, batch, seq, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
torch.manual_seed(0)
from sheeprl.algos.dreamer_v3.agent import build_agent  # noqa: E402
from sheeprl.algos.dreamer_v3.dreamer_v3 import train  # noqa: E402
from sheeprl.algos.dreamer_v3.utils import Moments  # noqa: E402
from sheeprl.utils.utils import dotdict  # noqa: E402

config_dir = str(Path(sheeprl.__file__).parent / "configs")
with hydra.initialize_config_dir(config_dir=config_dir, version_base="1.3"):
    cfg = hydra.compose(
        config_name="config",
        overrides=[
            "exp=dreamer_v3",
            f"algo=dreamer_v3_{size}",
            "env=gym",
            "env.id=CartPole-v1",
            "algo.cnn_keys.encoder=[]",
            "algo.cnn_keys.decoder=[]",
            "algo.mlp_keys.encoder=[state]",
            "algo.mlp_keys.decoder=[state]",
            f"algo.per_rank_batch_size={batch}",
            f"algo.per_rank_sequence_length={seq}",
            "fabric.accelerator=cpu",
            "metric.log_level=0",
        ],
    )
cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
fabric = Fabric(accelerator="cpu", devices=1)
obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,), np.float32)})
world_model, actor, critic, target_critic, player = build_agent(fabric, (2,), False, cfg, obs_space)
inst = hydra.utils.instantiate
wo = inst(cfg.algo.world_model.optimizer, params=world_model.parameters(), _convert_="all")
ao = inst(cfg.algo.actor.optimizer, params=actor.parameters(), _convert_="all")
co = inst(cfg.algo.critic.optimizer, params=critic.parameters(), _convert_="all")
wo, ao, co = fabric.setup_optimizers(wo, ao, co)
m = cfg.algo.actor.moments
moments = Moments(m.decay, m.max, m.percentile.low, m.percentile.high)
is_first = torch.zeros(seq, batch, 1)
is_first[0] = 1
data = {
    "state": torch.randn(seq, batch, 4),
    "actions": torch.nn.functional.one_hot(torch.randint(2, (seq, batch)), 2).float(),
    "rewards": torch.ones(seq, batch, 1),
    "terminated": torch.zeros(seq, batch, 1),
    "truncated": torch.zeros(seq, batch, 1),
    "is_first": is_first,
}


def step():
    train(fabric, world_model, actor, critic, target_critic, wo, ao, co,
          {k: v.clone() for k, v in data.items()}, None, cfg, False, (2,), moments)  # fmt: skip


step()
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
print(
    json.dumps(
        {"grad_steps_per_s": steps / (time.perf_counter() - t0), "per_cpu_s": steps / (time.process_time() - c0)}
    )
)
