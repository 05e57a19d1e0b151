"""Tests for sheeprl.models: shapes (with leading dims), init, scaling and layer ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sheeprl.models import (
    CNN,
    MLP,
    CNNEncoder,
    DeCNN,
    LayerNormGRUCell,
    MLPEncoder,
    MultiEncoder,
    NatureCNN,
    get_activation,
    layer_init,
)

SCREEN = 64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- activations / init


@pytest.mark.parametrize(
    "name, cls",
    [("tanh", nn.Tanh), ("ReLU", nn.ReLU), ("elu", nn.ELU), ("silu", nn.SiLU), ("gelu", nn.GELU),
     ("leaky_relu", nn.LeakyReLU), ("identity", nn.Identity)],
)  # fmt: skip
def test_get_activation(name, cls):
    assert get_activation(name) is cls
    assert get_activation(cls) is cls


def test_get_activation_bad_name():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoidish'.*tanh"):
        get_activation("sigmoidish")
    with pytest.raises(ValueError):
        MLP(3, 1, [4], activation="nope")


@pytest.mark.parametrize("gain", [1.0, math.sqrt(2), 0.01])
def test_layer_init_orthogonal(gain):
    layer = layer_init(nn.Linear(256, 32), std=gain, bias_const=0.5)
    w = layer.weight.detach()
    # 32 x 256 (wide): rows are orthogonal with norm gain, so W W^T = gain^2 I.
    assert torch.allclose(w @ w.T, gain**2 * torch.eye(32), atol=1e-5 * max(gain**2, 1))
    assert torch.all(layer.bias == 0.5)
    conv = layer_init(nn.Conv2d(3, 8, 3))
    flat = conv.weight.detach().reshape(8, -1)
    assert torch.allclose(flat @ flat.T, 2 * torch.eye(8), atol=1e-5)


# ---------------------------------------------------------------- MLP


@pytest.mark.parametrize("lead", [(), (5,), (3, 5)])
def test_mlp_shapes(lead):
    mlp = MLP(7, 2, [16, 16])
    assert mlp.output_dim == 2
    assert mlp(torch.randn(*lead, 7)).shape == (*lead, 2)
    features = MLP(7, None, [16, 8], activation="relu")
    assert features.output_dim == 8 and features(torch.randn(*lead, 7)).shape == (*lead, 8)


def test_mlp_identity_when_empty():
    mlp = MLP(5, None, [])
    x = torch.randn(3, 5)
    assert mlp.output_dim == 5 and torch.equal(mlp(x), x)


def test_mlp_dropout_layernorm_order():
    mlp = MLP(4, 1, [8, 8], activation="relu", layer_norm=True, dropout=0.1)
    types = [type(m) for m in mlp]
    block = [nn.Linear, nn.Dropout, nn.LayerNorm, nn.ReLU]
    assert types == block + block + [nn.Linear]
    plain = MLP(4, 1, [8], activation="relu")
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear]
    # Dropout acts in training mode only: there it zeroes about p of the hidden units and rescales the rest.
    x = torch.randn(256, 4)
    mlp.train()
    torch.manual_seed(0)
    a, b = mlp(x), mlp(x)
    assert not torch.allclose(a, b)
    first = mlp[1]
    h = mlp[0](x)
    dropped = first(h)
    zero_frac = (dropped == 0).float().mean().item()
    assert 0.05 < zero_frac < 0.15
    kept = dropped != 0
    assert torch.allclose(dropped[kept], h[kept] / 0.9)
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))
    assert torch.equal(mlp[1](h), h)


def test_mlp_ortho_init_gains():
    mlp = MLP(64, 4, [128], ortho_init=True, output_std=0.01)
    hidden, head = mlp[0].weight.detach(), mlp[-1].weight.detach()
    assert torch.allclose(hidden.T @ hidden, 2 * torch.eye(64), atol=1e-5)  # tall: columns orthogonal
    assert torch.allclose(head @ head.T, 1e-4 * torch.eye(4), atol=1e-8)
    assert torch.all(mlp[-1].bias == 0)


# ---------------------------------------------------------------- convolutional


@pytest.mark.parametrize("lead", [(), (2,), (3, 2)])
def test_nature_cnn_shapes(lead):
    cnn = NatureCNN(3, features_dim=32, screen_size=SCREEN)
    x = torch.randint(0, 256, (*lead, 3, SCREEN, SCREEN), dtype=torch.uint8)
    out = cnn(x)
    assert cnn.output_dim == 32 and out.shape == (*lead, 32)


def test_nature_cnn_scales_only_uint8():
    cnn = NatureCNN(1, features_dim=8, screen_size=SCREEN)
    raw = torch.randint(0, 256, (2, 1, SCREEN, SCREEN), dtype=torch.uint8)
    scaled = raw.float() / 255.0  # frames become float in [0, 1] inside the network, never earlier
    assert torch.allclose(cnn(raw), cnn(scaled), atol=1e-6)
    # A float input is used as given, not rescaled a second time.
    assert not torch.allclose(cnn(raw.float()), cnn(raw))


def test_nature_cnn_other_screen_size():
    cnn = NatureCNN(4, features_dim=16, screen_size=84)
    assert cnn(torch.zeros(2, 4, 84, 84)).shape == (2, 16)


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_cnn_and_decnn_mirror(lead):
    enc = CNN(3, [8, 16], kernel_sizes=4, strides=2, paddings=1, layer_norm=True)
    dec = DeCNN(16, [8, 3], kernel_sizes=[4, 4], strides=[2, 2], paddings=1, layer_norm=True)
    img = torch.randn(*lead, 3, 32, 32)
    z = enc(img)
    assert z.shape == (*lead, 16, 8, 8) and enc.output_shape(32, 32) == (16, 8, 8)
    assert dec(z).shape == (*lead, 3, 32, 32) and dec.out_channels == 3
    # The decoder's last layer is linear (can output negatives), the encoder's ends in an activation.
    assert isinstance(list(enc.model)[-1], nn.ReLU)
    assert isinstance(list(dec.model)[-1], nn.ConvTranspose2d)


def test_cnn_argument_errors():
    with pytest.raises(ValueError, match="kernel_sizes"):
        CNN(3, [8, 16], kernel_sizes=[3], strides=1)
    with pytest.raises(ValueError, match="at least one"):
        CNN(3, [], kernel_sizes=3, strides=1)


# ---------------------------------------------------------------- GRU


@pytest.mark.parametrize("lead", [(5,), (3, 5)])
def test_layernorm_gru_cell(lead):
    cell = LayerNormGRUCell(6, 10)
    x = torch.randn(*lead, 6)
    h0 = torch.zeros(*lead, 10)
    h1 = cell(x, h0)
    assert h1.shape == (*lead, 10)
    assert not torch.allclose(h1, h0)
    h2 = cell(torch.randn(*lead, 6), h1)
    assert not torch.allclose(h2, h1)
    assert torch.equal(cell(x), h1)  # default state is zeros
    assert h1.abs().max() <= 1  # a convex mix of tanh and the (bounded) previous state
    h2.sum().backward()
    assert cell.linear.weight.grad is not None and cell.norm.weight.grad is not None


def test_layernorm_gru_cell_no_bias():
    cell = LayerNormGRUCell(3, 4, bias=False)
    assert cell.linear.bias is None
    assert cell(torch.randn(2, 3)).shape == (2, 4)


def _gru_loop(cell: LayerNormGRUCell, pre: nn.Linear, xs: torch.Tensor, h: torch.Tensor, deferred: bool):
    """A recurrent loop like Dreamer's filter: a per-step input layer, then the GRU; the last step's output unused."""
    from sheeprl.models.deferred import DeferredWeightGrads

    dw = DeferredWeightGrads(pre=pre.weight, gru=cell.linear.weight) if deferred else None
    outs = []
    for t in range(xs.shape[0]):
        # The first step's input does not depend on h: the deferred gradients must still wait for its backward.
        u = torch.tanh(pre(xs[t]) if dw is None else dw.linear("pre", xs[t], pre.bias))
        gru = None if dw is None else (lambda v: dw.linear("gru", v, cell.linear.bias))
        h = cell(u, h, linear=gru)
        outs.append(h)
    return torch.stack(outs[:-1])


def test_deferred_weight_grads_match_autograd():
    """Weight gradients computed once after the loop equal autograd's per-step sums (up to the order of the adds);
    input gradients and outputs are unchanged."""
    cell, pre = LayerNormGRUCell(6, 10), nn.Linear(3, 6)
    xs = torch.randn(7, 4, 3, requires_grad=True)
    h0 = torch.randn(4, 10, requires_grad=True)
    target = torch.randn(6, 4, 10)
    results = []
    for deferred in (False, True):
        for t in (cell.parameters(), pre.parameters(), (xs, h0)):
            for p in t:
                p.grad = None
        out = _gru_loop(cell, pre, xs, h0, deferred)
        ((out - target) ** 2).sum().backward()
        grads = [p.grad.clone() for p in (*cell.parameters(), *pre.parameters(), xs, h0)]
        results.append((out.detach(), grads))
    (out0, grads0), (out1, grads1) = results
    assert torch.allclose(out0, out1, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in grads0)
    for g0, g1 in zip(grads0, grads1, strict=True):
        assert torch.allclose(g0, g1, atol=1e-5, rtol=1e-5)


def test_deferred_weight_grads_free_their_rows_and_run_again():
    """One instance per forward pass: after its backward the saved rows are gone, and a second pass works."""
    from sheeprl.models.deferred import DeferredWeightGrads

    lin = nn.Linear(3, 2, bias=False)
    for _ in range(2):
        lin.weight.grad = None
        dw = DeferredWeightGrads(w=lin.weight)
        x = torch.randn(5, 3)
        dw.linear("w", x).sum().backward()
        assert torch.allclose(lin.weight.grad, x.sum(0).expand(2, 3))
        assert dw.inputs == {"w": []} and dw.grads == {"w": {}}


# ---------------------------------------------------------------- encoders


def make_obs(lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {
        "rgb": torch.randint(0, 256, (*lead, 3, SCREEN, SCREEN), dtype=torch.uint8),
        "depth": torch.randint(0, 256, (*lead, 1, SCREEN, SCREEN), dtype=torch.uint8),
        "state": torch.randn(*lead, 5),
        "goal": torch.randn(*lead, 2, dtype=torch.float64),
    }


@pytest.mark.parametrize("lead", [(4,), (3, 4)])
def test_multi_encoder_both(lead):
    cnn = CNNEncoder(["rgb", "depth"], [3, 1], screen_size=SCREEN, features_dim=32)
    mlp = MLPEncoder(["state", "goal"], [5, 2], hidden_sizes=[16], activation="relu")
    enc = MultiEncoder(cnn, mlp)
    assert enc.output_dim == 48 and enc.keys == ("rgb", "depth", "state", "goal")
    obs = make_obs(lead)
    out = enc(obs)
    assert out.shape == (*lead, 48) and out.dtype == torch.float32
    # Features are the CNN's then the MLP's.
    assert torch.allclose(out[..., :32], cnn(obs)) and torch.allclose(out[..., 32:], mlp(obs))
    # Flattening then restoring the leading dims matches encoding each row separately.
    flat = {k: v.reshape(-1, *v.shape[len(lead) :]) for k, v in obs.items()}
    assert torch.allclose(enc(flat).reshape(out.shape), out, atol=1e-6)


def test_multi_encoder_single():
    obs = make_obs((2, 3))
    mlp_only = MultiEncoder(None, MLPEncoder(["state"], [5], hidden_sizes=[8, 8]))
    assert mlp_only.output_dim == 8 and mlp_only(obs).shape == (2, 3, 8)
    cnn_only = MultiEncoder(CNNEncoder(["rgb"], [3], screen_size=SCREEN, features_dim=16), None)
    assert cnn_only.output_dim == 16 and cnn_only(obs).shape == (2, 3, 16)
    with pytest.raises(ValueError):
        MultiEncoder(None, None)


def test_mlp_encoder_identity_concat():
    enc = MLPEncoder(["state", "goal"], [5, 2], hidden_sizes=[])
    obs = make_obs((3,))
    assert enc.output_dim == 7
    assert torch.allclose(enc(obs), torch.cat([obs["state"], obs["goal"].float()], dim=-1))


def test_encoder_argument_errors():
    with pytest.raises(ValueError, match="2 keys but 1"):
        MLPEncoder(["a", "b"], [3], hidden_sizes=[4])
    with pytest.raises(ValueError, match="at least one key"):
        CNNEncoder([], [], screen_size=SCREEN, features_dim=8)
    enc = CNNEncoder(["rgb", "depth"], [3, 1], screen_size=SCREEN, features_dim=8)
    obs = make_obs((1,))
    obs["depth"] = obs["depth"].float()
    with pytest.raises(ValueError, match="dtypes"):
        enc(obs)


# ------------------------------------------------------------------------------------------ parallel MLPs


def _heads(hidden=(8, 8), act="tanh", outs=(3, 1)):
    torch.manual_seed(0)
    return [MLP(5, o, list(hidden), act) for o in outs]


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_parallel_mlps_match_the_modules(lead):
    from sheeprl.models.parallel import ParallelMLPs

    mlps = _heads(act="relu")
    fused = ParallelMLPs.create(mlps)
    x = torch.randn(*lead, 5) if lead else torch.randn(5)
    with torch.no_grad():
        expected = torch.cat([m(x) for m in mlps], dim=-1)
    out = fused(x)
    assert out.shape == (*lead, 4)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_parallel_mlps_follow_every_weight_change(n_heads):
    """An optimizer step, load_state_dict and a replaced storage each make the next call use the new weights
    (one MLP is viewed, not copied; several are fused into a copy that must be refreshed)."""
    from sheeprl.models.parallel import ParallelMLPs

    mlps = _heads()[:n_heads]
    fused = ParallelMLPs.create(mlps)
    x = torch.randn(6, 5)

    def expected():
        with torch.no_grad():
            return torch.cat([m(x) for m in mlps], dim=-1)

    before = fused(x)
    params = [p for m in mlps for p in m.parameters()]
    # Fused Adam writes the parameters without counting it in their versions: the step itself must be noticed.
    for opt in (torch.optim.Adam(params, lr=0.1, fused=True), torch.optim.SGD(params, lr=0.1)):
        opt.zero_grad()
        sum(m(x).sum() for m in mlps).backward()
        opt.step()
        after_step = fused(x)
        assert not torch.allclose(after_step, before)
        torch.testing.assert_close(after_step, expected())
        before = after_step

    other = _heads()[:n_heads]
    for m in other:
        for p in m.parameters():
            p.data.normal_()
    for m, o in zip(mlps, other, strict=True):
        m.load_state_dict(o.state_dict())
    torch.testing.assert_close(fused(x), expected())
    torch.testing.assert_close(torch.from_numpy(fused.numpy(x.numpy())), expected())

    with torch.no_grad():
        mlps[-1][0].weight.data = torch.randn_like(mlps[-1][0].weight)  # new storage, version untouched
    torch.testing.assert_close(fused(x), expected())
    torch.testing.assert_close(torch.from_numpy(fused.numpy(x.numpy())), expected())
    out = fused(x)
    assert not out.requires_grad  # the snapshot never records a graph


def test_parallel_mlps_refuse_what_they_cannot_fuse():
    from sheeprl.models.parallel import ParallelMLPs

    assert ParallelMLPs.create([]) is None
    assert ParallelMLPs.create([MLP(5, 2, [8], "tanh"), MLP(5, 1, [8, 8], "tanh")]) is None  # depths differ
    assert ParallelMLPs.create([MLP(5, 2, [8], "tanh"), MLP(5, 1, [8], "relu")]) is None  # activations differ
    assert ParallelMLPs.create([MLP(5, 2, [8], "tanh", layer_norm=True), MLP(5, 1, [8], "tanh")]) is None
    assert ParallelMLPs.create([MLP(5, 2, [8], "tanh", dropout=0.1), MLP(5, 1, [8], "tanh")]) is None
    assert ParallelMLPs.create([MLP(5, 2, [8], "tanh"), MLP(4, 1, [8], "tanh")]) is None  # inputs differ
    assert ParallelMLPs.create([MLP(5, 2, [8], "tanh"), MLP(5, 1, [6], "tanh")]) is not None  # widths may differ


def test_ppo_agent_act_matches_its_modules():
    """PPO's fused acting path returns what its actor and critic modules compute (same RNG draw)."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.ppo.agent import build_agent
    from sheeprl.algos.ppo.args import PPOConfig

    cfg = OmegaConf.structured(PPOConfig)
    for action_space in (gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,))):
        agent = build_agent(gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))}), action_space, cfg)
        assert agent._heads is not None
        obs = {"state": torch.randn(5, 4)}
        torch.manual_seed(3)
        actions, logp, values = agent.act(obs)
        agent._heads = None  # the modules' path
        torch.manual_seed(3)
        actions2, logp2, values2 = agent.act(obs)
        torch.testing.assert_close(actions, actions2)
        torch.testing.assert_close(logp, logp2)
        torch.testing.assert_close(values, values2)


@pytest.mark.parametrize("act", ["tanh", "relu", "leaky_relu", "identity"])
def test_parallel_mlps_numpy_matches_torch_and_follows_weight_changes(act):
    from sheeprl.models.parallel import ParallelMLPs

    mlps = _heads(act=act)
    fused = ParallelMLPs.create(mlps)
    x = torch.randn(6, 5)
    out = fused.numpy(x.numpy())
    assert out is not None and out.dtype == np.float32 and out.shape == (6, 4)
    torch.testing.assert_close(torch.from_numpy(out), fused(x))
    params = [p for m in mlps for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    sum(m(x).sum() for m in mlps).backward()
    opt.step()
    with torch.no_grad():
        expected = torch.cat([m(x) for m in mlps], dim=-1)
    torch.testing.assert_close(torch.from_numpy(fused.numpy(x.numpy())), expected)


def test_parallel_mlps_numpy_declines_what_it_cannot_run_exactly():
    """None (the caller then takes the torch path): GELU, float64 weights, a product big enough for BLAS threads."""
    from sheeprl.models import parallel
    from sheeprl.models.parallel import ParallelMLPs

    x = np.random.default_rng(0).standard_normal((4, 5), dtype=np.float32)
    assert ParallelMLPs.create(_heads(act="gelu")).numpy(x) is None
    mlps = _heads()
    for m in mlps:
        m.double()
    assert ParallelMLPs.create(mlps).numpy(x.astype(np.float64)) is None
    fused = ParallelMLPs.create(_heads())
    rows = parallel.NUMPY_MAX_MACS // fused._macs_per_row + 1
    assert fused.numpy(np.zeros((rows, 5), dtype=np.float32)) is None
    assert fused.numpy(np.zeros((rows - 1, 5), dtype=np.float32)) is not None


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete", "box"])
def test_ppo_agent_numpy_acting_equals_the_torch_path(kind):
    """On the CPU PPO acts in numpy: same actions for the same seed, log-probs and values equal up to rounding."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.ppo.agent import build_agent
    from sheeprl.algos.ppo.args import PPOConfig

    cfg = OmegaConf.merge(OmegaConf.structured(PPOConfig), {"algo": {"mlp_keys": {"encoder": ["a", "b"]}}})
    space = {
        "discrete": gym.spaces.Discrete(3),
        "multidiscrete": gym.spaces.MultiDiscrete([2, 5]),
        "box": gym.spaces.Box(-1.0, 1.0, (2,)),
    }[kind]
    obs_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (4,)), "b": gym.spaces.Box(-1, 1, (3,))})
    agent = build_agent(obs_space, space, cfg)
    for lead in ((5,), (2, 3)):
        obs = {"a": torch.randn(*lead, 4), "b": torch.randn(*lead, 3).double()}  # float64 is cast, as in the encoder
        torch.manual_seed(7)
        fast = agent._act_numpy(obs)
        assert fast is not None
        torch.manual_seed(7)
        slow = agent._act_torch(obs)
        assert torch.equal(fast[0], slow[0]) and fast[0].dtype == slow[0].dtype
        for f, s in zip(fast, slow, strict=True):
            assert f.shape == s.shape and f.dtype == s.dtype
            torch.testing.assert_close(f, s)
        # act() draws the same noise as the torch path, so a seeded run is the same on either path.
        torch.manual_seed(7)
        assert torch.equal(agent.act(obs)[0], slow[0])
        assert agent._heads_numpy(obs) is not None
        torch.testing.assert_close(agent.value(obs), agent._value_torch(obs))
        assert agent._heads_numpy(obs, agent._actor_snapshot) is not None
        greedy, expected = agent.greedy(obs), agent._greedy_torch(obs)
        assert greedy.shape == expected.shape and greedy.dtype == expected.dtype
        torch.testing.assert_close(greedy, expected)
    # An observation that carries a graph is not the rollout's: the torch path answers.
    assert agent._act_numpy({"a": torch.randn(5, 4, requires_grad=True), "b": torch.randn(5, 3)}) is None


@pytest.mark.parametrize("dueling", [False, True])
def test_dqn_greedy_in_numpy_equals_the_modules(dueling):
    """DQN acts on a numpy snapshot of its head(s) on the CPU: the same Q-values (up to rounding) and actions."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.dqn.agent import build_agent
    from sheeprl.algos.dqn.args import DQNConfig

    cfg = OmegaConf.merge(OmegaConf.structured(DQNConfig), {"algo": {"dueling": dueling}})
    q = build_agent(gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))}), gym.spaces.Discrete(3), cfg)
    obs = {"state": torch.randn(3, 4).double()}  # 3 rows: under the numpy path's size limit with 2x256 dueling heads
    values = q._q_numpy(obs)
    assert values is not None
    with torch.no_grad():
        expected = q(obs)
    torch.testing.assert_close(torch.from_numpy(values), expected)
    actions = q.greedy(obs)
    assert actions.dtype == torch.int64 and torch.equal(actions, expected.argmax(-1))
    # After an optimizer step the snapshot follows the new weights.
    opt = torch.optim.Adam(q.parameters(), lr=0.1)
    q(obs).sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(q._q_numpy(obs)), q(obs))


def test_numpy_acting_steps_aside_while_torch_traces():
    """Under jit.trace (as policy export does) the torch path runs: numpy would be recorded as a constant."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.ppo.agent import build_agent
    from sheeprl.algos.ppo.args import PPOConfig

    agent = build_agent(
        gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))}), gym.spaces.Discrete(3), OmegaConf.structured(PPOConfig)
    )

    class Greedy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.agent = agent

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.agent.greedy({"state": x})

    traced = torch.jit.trace(Greedy(), torch.randn(2, 4), check_trace=False)
    x = torch.randn(64, 4)
    assert torch.equal(traced(x), agent.greedy({"state": x}))
