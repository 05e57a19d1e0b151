"""The CLI's deferral of torch._dynamo (sheeprl/utils/dynamo.py): runs never import it, compiling still works.

Each check runs in a fresh interpreter: the deferral is about what a process imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter (cwd ``tmp_path``); it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["ppo", "--env_id", "CartPole-v1", "--total_steps", "1024", "--num_envs", "2", "--rollout_steps", "64"],
        ["sac", "--env_id", "Pendulum-v1", "--total_steps", "300", "--learning_starts", "100"],
        ["dqn", "--env_id", "CartPole-v1", "--total_steps", "300", "--learning_starts", "100"],
    ],
    ids=["ppo", "sac", "dqn"],
)
def test_a_run_never_imports_torch_dynamo(argv, tmp_path):
    out = python(
        "import json, sys\n"
        "from sheeprl.cli import run_cli\n"
        f"code = run_cli({argv!r} + ['--log_root', 'logs', '--eval_episodes', '2', '--num_threads', '1'])\n"
        "print(json.dumps({'code': code, 'dynamo': 'torch._dynamo' in sys.modules,\n"
        "                  'tensordict': 'tensordict' in sys.modules, 'fabric': 'lightning.fabric' in sys.modules}))\n",
        tmp_path,
    )
    assert out == {"code": 0, "dynamo": False, "tensordict": True, "fabric": True}


def test_compiling_after_the_deferral_sees_torch_as_it_is(tmp_path):
    """torch.compile works; Lightning recognizes the compiled module; tensordict's allow_in_graph calls count."""
    out = python(
        "import json, sys, torch\n"
        "from sheeprl.utils import dynamo\n"
        "dynamo.defer()\n"
        "from sheeprl.launcher import _fabric_without_trainer\n"
        "_fabric_without_trainer()\n"
        "import lightning.fabric.wrappers as w, tensordict\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "pending = list(dynamo._pending)\n"
        "lin = torch.nn.Linear(3, 2)\n"
        "compiled = torch.compile(lin, backend='eager')\n"
        "x = torch.randn(4, 3)\n"
        "same = torch.allclose(compiled(x), lin(x))\n"
        "from torch._dynamo import trace_rules\n"
        "allowed = all(id(f) in trace_rules._allowed_callable_ids for f in pending)\n"
        "unwrapped = w._unwrap_compiled(compiled)[0] is lin\n"
        "print(json.dumps({'before': before, 'pending': len(pending), 'same': same, 'allowed': allowed,\n"
        "                  'unwrapped': unwrapped, 'left': len(dynamo._pending),\n"
        "                  'is_optimized': isinstance(compiled, w.OptimizedModule)}))\n",
        tmp_path,
    )
    assert out == {
        "before": False,
        "pending": out["pending"],
        "same": True,
        "allowed": True,
        "unwrapped": True,
        "left": 0,
        "is_optimized": True,
    }
    assert out["pending"] > 0  # tensordict did register functions while the stand-in was in place


def test_optimizers_step_the_same_with_and_without_the_deferral(tmp_path):
    """Adam (fused), RMSprop (foreach), SGD: same parameters after seeded steps; state_dict round-trips."""
    code = (
        "import json, sys, torch\n"
        "from sheeprl.utils import dynamo\n"
        "if sys.argv[-1] == 'defer': dynamo.defer()\n"
        "import sheeprl.utils.optim\n"
        "out = {}\n"
        "for cls, kw in ((torch.optim.Adam, {'fused': True}), (torch.optim.RMSprop, {'foreach': True}),\n"
        "                (torch.optim.SGD, {'momentum': 0.9})):\n"
        "    torch.manual_seed(0)\n"
        "    lin = torch.nn.Linear(4, 3)\n"
        "    opt = cls(lin.parameters(), lr=0.01, **kw)\n"
        "    for _ in range(5):\n"
        "        opt.zero_grad()\n"
        "        lin(torch.randn(8, 4)).pow(2).sum().backward()\n"
        "        opt.step()\n"
        "    opt.load_state_dict(opt.state_dict())\n"
        "    out[cls.__name__] = [round(v, 7) for v in lin.weight.flatten().tolist()]\n"
        "out['dynamo'] = 'torch._dynamo' in sys.modules\n"
        "out['patched'] = hasattr(torch.optim.Adam.step, '__wrapped__') and 'torch._dynamo' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    deferred = python(code.replace("sys.argv[-1] == 'defer'", "True"), tmp_path)
    plain = python(code.replace("sys.argv[-1] == 'defer'", "False"), tmp_path)
    assert deferred.pop("dynamo") is False and plain.pop("dynamo") is True
    deferred.pop("patched"), plain.pop("patched")
    assert deferred == plain


def test_an_unknown_name_loads_the_real_module(tmp_path):
    """Whatever else a library reads from torch._dynamo while the stand-in is in place comes from the real one."""
    out = python(
        "import json, sys\n"
        "from sheeprl.utils import dynamo\n"
        "dynamo.defer()\n"
        "got = {}\n"
        "def use():\n"
        "    import torch._dynamo\n"
        "    got['disable'] = callable(torch._dynamo.disable)\n"
        "    import torch._dynamo.config as c\n"
        "    got['config'] = hasattr(c, 'cache_size_limit')\n"
        "dynamo._import_with_stand_in(use)\n"
        "got['real'] = dynamo.loaded() and not isinstance(sys.modules['torch._dynamo'], dynamo._StandIn)\n"
        "print(json.dumps(got))\n",
        tmp_path,
    )
    assert out == {"disable": True, "config": True, "real": True}
