"""Dreamer V3's pieces against hand-computed values: symlog, two-hot, balanced KL with free bits, the return
normalizer, lambda-returns with gradients, the sparse one-hot layers, and the per-env sequence buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sheeprl.algos.dreamer_v3.agent import mlp, mlp_sparse, sparse_linear
from sheeprl.algos.dreamer_v3.loss import (
    PercentileNormalizer,
    categorical_kl,
    kl_loss,
    make_bins,
    symexp,
    symlog,
    two_hot,
    two_hot_loss,
    two_hot_mean,
)
from sheeprl.data.sequence import EnvSequenceBuffer
from sheeprl.models import gemm
from sheeprl.models.gemm import Linear
from sheeprl.utils.returns import lambda_returns


def test_symlog_symexp_round_trip_and_values():
    x = torch.tensor([-1e6, -100.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 100.0, 1e6], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-9)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    assert symlog(torch.tensor(-(math.e**2 - 1))).item() == pytest.approx(-2.0)


def test_two_hot_hand_made():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    enc = two_hot(torch.tensor([0.25, -1.0, 5.0, -7.0, 1.5]), bins)
    expected = torch.tensor(
        [
            [0, 0, 0.75, 0.25, 0],  # between 0 and 1
            [0, 1.0, 0, 0, 0],  # exactly on a bin
            [0, 0, 0, 0, 1.0],  # clipped to the last bin
            [1.0, 0, 0, 0, 0],  # clipped to the first
            [0, 0, 0, 0.5, 0.5],
        ]
    )
    assert torch.allclose(enc, expected)
    # Decoding a head whose softmax is exactly the two-hot gives back symexp of the encoded value.
    logits = torch.log(expected[:1].clamp_min(1e-30))
    assert two_hot_mean(logits, bins).item() == pytest.approx(math.expm1(0.25), rel=1e-5)


def test_two_hot_255_bins_round_trip_and_loss_minimum():
    bins = make_bins(255)
    y = torch.tensor([-300.0, -3.0, 0.0, 0.7, 42.0, 1000.0])
    enc = two_hot(symlog(y), bins)
    assert torch.allclose(enc.sum(-1), torch.ones(6))
    assert torch.allclose(symexp((enc * bins).sum(-1)), y, rtol=1e-4)
    # The cross-entropy is smallest for the target's own two-hot.
    good = two_hot_loss(torch.log(enc.clamp_min(1e-12)), y, bins)
    bad = two_hot_loss(torch.zeros(6, 255), y, bins)
    assert (good < bad).all()
    # The loss reads two bins (gather); it equals the dense cross-entropy with the two-hot, gradients included.
    logits = torch.randn(6, 255, requires_grad=True)
    two_hot_loss(logits, y, bins).sum().backward()
    grad, logits.grad = logits.grad.clone(), None
    dense = -(two_hot(symlog(y), bins) * F.log_softmax(logits, -1)).sum(-1)
    dense.sum().backward()
    assert torch.allclose(two_hot_loss(logits, y, bins), dense, atol=1e-5)
    assert torch.allclose(grad, logits.grad, atol=1e-6)


def test_kl_free_bits_and_balancing_hand_made():
    # one variable, two classes: KL(p||q) = sum p log(p/q)
    p = torch.tensor([[[0.9, 0.1]]])
    q = torch.tensor([[[0.5, 0.5]]])
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert categorical_kl(p, q).item() == pytest.approx(kl, rel=1e-6)
    # Below the free bits both terms sit at the floor: loss = (0.5 + 0.1) * 1, and no gradient.
    post = p.clone().requires_grad_(True)
    prior = q.clone().requires_grad_(True)
    loss, raw = kl_loss(post, prior, free_nats=1.0, dyn_scale=0.5, rep_scale=0.1)
    assert loss.item() == pytest.approx(0.6) and raw.item() == pytest.approx(kl, rel=1e-6)
    loss.sum().backward()
    assert post.grad.abs().sum() == 0 and prior.grad.abs().sum() == 0
    # Above the free bits: 0.5 * KL + 0.1 * KL, the dynamics term trains only the prior, the representation term
    # only the posterior (stop-gradients).
    post = torch.tensor([[[0.99, 0.01]]], requires_grad=True)
    prior = torch.tensor([[[0.01, 0.99]]], requires_grad=True)
    kl2 = 0.99 * math.log(99) + 0.01 * math.log(1 / 99)
    loss, _ = kl_loss(post, prior, free_nats=1.0, dyn_scale=0.5, rep_scale=0.1)
    assert loss.item() == pytest.approx(0.6 * kl2, rel=1e-5)
    post_only = torch.autograd.grad(kl_loss(post, prior, 1.0, 0.0, 0.1)[0].sum(), (post, prior), allow_unused=True)
    assert post_only[0] is not None and (post_only[1] is None or post_only[1].abs().sum() == 0)
    prior_only = torch.autograd.grad(kl_loss(post, prior, 1.0, 0.5, 0.0)[0].sum(), (post, prior), allow_unused=True)
    assert (prior_only[0] is None or prior_only[0].abs().sum() == 0) and prior_only[1] is not None


def test_percentile_normalizer():
    norm = PercentileNormalizer(decay=0.99)
    x = torch.arange(101, dtype=torch.float32)  # 5th percentile 5, 95th 95
    norm.update(x)
    assert torch.allclose(norm.values, torch.tensor([0.05, 0.95]))
    assert norm.scale().item() == 1.0  # 0.9 < 1: never scales returns up
    for _ in range(2000):
        norm.update(x)
    assert norm.scale().item() == pytest.approx(90.0, rel=1e-3)
    restored = PercentileNormalizer()
    restored.load_state_dict(norm.state_dict())
    assert torch.equal(restored.values, norm.values)


def test_lambda_returns_hand_made_and_differentiable():
    # G_1 = r_1 + g c_2 v_2 ; G_0 = r_0 + g c_1 ((1 - l) v_1 + l G_1)
    r = torch.tensor([[1.0], [2.0]])
    v = torch.tensor([[10.0], [20.0]], requires_grad=True)
    cont = torch.tensor([[1.0], [0.5]])
    g, lam = 0.9, 0.5
    out = lambda_returns(r, v, 1 - cont, torch.zeros_like(r), g, lam, differentiable=True)
    g1 = 2.0 + g * 0.5 * 20.0
    g0 = 1.0 + g * 1.0 * (0.5 * 10.0 + 0.5 * g1)
    assert torch.allclose(out, torch.tensor([[g0], [g1]]))
    out.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert not lambda_returns(r, v, 1 - cont, torch.zeros_like(r), g, lam).requires_grad  # default: constants


def test_sparse_one_hot_layers_match_dense():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8 + 4 * 5 + 3, 6)
    h, a = torch.randn(7, 8), torch.randn(7, 3)
    idx = torch.randint(5, (7, 4))
    dense = lin(torch.cat((h, F.one_hot(idx, 5).float().flatten(-2), a), -1))
    assert torch.allclose(sparse_linear(lin.weight, idx, 5, before=h, after=a, bias=lin.bias), dense, atol=1e-5)
    net = mlp(8 + 20, 16, 2, 3)
    with torch.no_grad():
        sparse = mlp_sparse(net, h, idx, 5)
    assert torch.allclose(sparse, net(torch.cat((h, F.one_hot(idx, 5).float().flatten(-2)), -1)), atol=1e-5)


def test_fused_no_grad_heads_match_each_head_on_its_own():
    """Reward, continue and slow-critic heads with their first layers run as one wider layer give what each head
    gives on its own, on the states each one is needed for (rewards and continues of states 1..H, slow-critic values
    of states 0..H-1)."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.dreamer_v3.agent import build_agent, cached_one_hot_tables
    from sheeprl.algos.dreamer_v3.args import DreamerV3Config
    from sheeprl.algos.dreamer_v3.dreamer_v3 import no_grad_heads, per_step

    torch.manual_seed(0)
    cfg = OmegaConf.structured(DreamerV3Config)
    cfg.algo.size = "XS"
    agent = build_agent(gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))}), gym.spaces.Discrete(2), cfg)
    for p in agent.parameters():
        p.data.normal_(0.0, 0.05)  # the zero-initialized heads would make the check trivial
    rssm, bins = agent.world_model.rssm, agent.bins
    hs, idx = torch.randn(6, 9, rssm.deter), torch.randint(rssm.classes, (6, 9, rssm.stoch))
    with torch.no_grad(), cached_one_hot_tables():
        rewards, cont, slow = no_grad_heads(agent, hs, idx, rssm.classes)
        expected = (
            per_step(agent.world_model.reward, hs[1:], idx[1:], rssm.classes, lambda x: two_hot_mean(x, bins)),
            per_step(agent.world_model.cont, hs[1:], idx[1:], rssm.classes, lambda x: torch.sigmoid(x.squeeze(-1))),
            per_step(agent.slow_critic, hs[:-1], idx[:-1], rssm.classes, lambda x: two_hot_mean(x, bins)),
        )
    for got, want in zip((rewards, cont, slow), expected, strict=True):
        assert got.shape == want.shape == (5, 9) and want.abs().max() > 0
        assert torch.allclose(got, want, atol=1e-6)


def test_padded_linear_is_a_linear_with_the_same_outputs():
    """The two-hot heads' 255-output layer runs padded to 256: same state dict, bit-equal outputs, same gradients."""
    from sheeprl.algos.dreamer_v3.agent import PaddedLinear

    torch.manual_seed(0)
    padded, plain = PaddedLinear(32, 255), torch.nn.Linear(32, 255)
    plain.load_state_dict(padded.state_dict())
    assert isinstance(mlp(8, 32, 1, 255)[-1], PaddedLinear) and type(mlp(8, 32, 1, 256)[-1]) is Linear
    x = torch.randn(3, 40, 32, requires_grad=True)
    out = padded(x)
    assert out.shape == (3, 40, 255) and torch.equal(out, plain(x))
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, padded.weight, padded.bias), g)
    want = torch.autograd.grad(plain(x), (x, plain.weight, plain.bias), g)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def cartpole_batch(T: int, B: int) -> dict[str, torch.Tensor]:
    """A random ``(T, B)`` training batch shaped like CartPole's (4 observations, 2 actions), episodes starting at 0."""
    first = torch.zeros(T, B)
    first[0] = 1
    return {
        "state": torch.randn(T, B, 4),
        "actions": F.one_hot(torch.randint(2, (T, B)), 2).float(),
        "rewards": torch.randn(T, B),
        "terminated": torch.zeros(T, B),
        "is_first": first,
    }


def test_world_model_gradients_with_deferred_weight_gradients_match_plain_autograd():
    """The posterior loop's weight gradients, computed once after the backward, equal autograd's per-step ones."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.dreamer_v3.agent import build_agent
    from sheeprl.algos.dreamer_v3.args import DreamerV3Config
    from sheeprl.algos.dreamer_v3.dreamer_v3 import world_model_loss

    cfg = OmegaConf.structured(DreamerV3Config)
    cfg.algo.size = "XXS"
    torch.manual_seed(0)
    agent = build_agent(gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))}), gym.spaces.Discrete(2), cfg)
    batch = cartpole_batch(12, 3)
    batch["is_first"][5, 1] = 1  # an episode starts inside the window too
    rssm = agent.world_model.rssm
    grads = []
    for deferred in (True, False):
        if not deferred:
            rssm.step = rssm.step  # a replaced `step` (e.g. compiled) turns the deferral off
        agent.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, _, _ = world_model_loss(agent, batch, cfg)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in agent.world_model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "rssm.gru.linear.weight" in grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("stoch,classes", [(3, 5), (2, 32)])  # dense and sparse-product weight gradients
def test_trained_sparse_layer_gradients_match_dense(stoch, classes):
    """With gradients on, the first layer never builds the one-hot input: same values and gradients as dense."""
    torch.manual_seed(0)
    net = mlp(6 + stoch * classes, 8, 2, 4)
    h = torch.randn(5, 7, 6, requires_grad=True)
    idx = torch.randint(classes, (5, 7, stoch))
    sparse = mlp_sparse(net, h, idx, classes)
    sparse.square().sum().backward()
    grads, grad_h = [p.grad.clone() for p in net.parameters()], h.grad.clone()
    net.zero_grad()
    h.grad = None
    dense = net(torch.cat((h, F.one_hot(idx, classes).float().flatten(-2)), -1))
    dense.square().sum().backward()
    assert torch.allclose(sparse, dense, atol=1e-5)
    for g, p in zip(grads, net.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5)
    assert torch.allclose(grad_h, h.grad, atol=1e-5)


def _episodes_buffer(n_envs: int = 3, size: int = 40, steps: int = 60, seed: int = 0) -> EnvSequenceBuffer:
    """Fill a buffer as the loop does: every env ends episodes at random; on an end it writes the final row, then
    the next episode's first row. ``ep`` records which episode a row belongs to, ``t`` its step in it."""
    rng = np.random.default_rng(seed)
    rb = EnvSequenceBuffer(size, n_envs)
    ep, t = np.zeros(n_envs), np.zeros(n_envs)

    def row(first, ids=None):
        n = len(first)
        e = ep if ids is None else ep[ids]
        tt = t if ids is None else t[ids]
        rb.add(
            {
                "ep": torch.tensor(e, dtype=torch.float32).view(1, n),
                "t": torch.tensor(tt, dtype=torch.float32).view(1, n),
                "is_first": torch.tensor(first, dtype=torch.float32).view(1, n),
            },
            ids,
        )

    row(np.ones(n_envs))
    for _ in range(steps):
        t += 1
        done = rng.random(n_envs) < 0.15
        if done.any():
            ids = np.flatnonzero(done)
            row(np.zeros(len(ids)), ids)  # the final observation of the ended episodes
            ep[done] += 1
            t[done] = 0
        row(done.astype(float))
    return rb


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequence_buffer_never_crosses_an_episode_unmarked(seed):
    rb = _episodes_buffer(seed=seed)
    assert rb.env_full.all()  # the ring wrapped: windows also start mid-episode at the oldest rows
    batch = rb.sample(32, 12, n_samples=4, generator=torch.Generator().manual_seed(seed))
    assert batch.shape == (4, 12, 32)
    ep, t, first = batch["ep"], batch["t"], batch["is_first"]
    assert (first[:, 0] == 1).all()  # the model restarts at every window's first row
    changed = ep[:, 1:] != ep[:, :-1]
    assert (first[:, 1:][changed] == 1).all(), "a window crossed into a new episode without is_first"
    assert (t[:, 1:][changed] == 0).all()
    same = ~changed
    assert (t[:, 1:][same] == t[:, :-1][same] + 1).all()  # consecutive rows of one env and episode


def test_sequence_buffer_per_env_positions_and_state_dict():
    rb = _episodes_buffer(size=200, steps=30)
    lengths = rb.env_lengths()
    assert len(rb) == lengths.min() and (lengths >= 31).all()
    state = rb.state_dict()
    other = EnvSequenceBuffer(200, 3)
    other.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = rb.sample(5, 8, generator=g1), other.sample(5, 8, generator=g2)
    assert all(torch.equal(a[k], b[k]) for k in ("ep", "t", "is_first"))
    with pytest.raises(ValueError, match="sequence_length"):
        rb.sample(2, 1000)


def test_sequence_buffer_memmap_and_uint8(tmp_path):
    rb = EnvSequenceBuffer(10, 2, memmap=True, memmap_dir=tmp_path)
    frame = torch.randint(0, 255, (1, 2, 3, 8, 8), dtype=torch.uint8)
    for _ in range(12):
        rb.add({"rgb": frame, "is_first": torch.zeros(1, 2)})
    assert (tmp_path / "rgb.memmap").exists() and rb["rgb"].dtype == torch.uint8
    out = rb.sample(3, 4)
    assert out["rgb"].dtype == torch.uint8
    assert any(torch.equal(out["rgb"][0, 0, 0], frame[0, e]) for e in range(2))


@pytest.mark.skipif(not gemm._onednn_available(), reason="this PyTorch build has no oneDNN")
def test_update_gradients_match_between_cpu_matmul_backends(monkeypatch):
    """A whole update's gradients (world model, actor, critic) through oneDNN equal MKL's, at a size where the
    layers' products take oneDNN (sheeprl.models.gemm), including the sparse latent layers and deferred gradients."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from sheeprl.algos.dreamer_v3.agent import build_agent, cached_one_hot_tables
    from sheeprl.algos.dreamer_v3.args import DreamerV3Config
    from sheeprl.algos.dreamer_v3.dreamer_v3 import behaviour_loss, world_model_loss

    cfg = OmegaConf.structured(DreamerV3Config)
    cfg.algo.size = "XS"
    cfg.algo.horizon = 4
    torch.manual_seed(0)
    agent = build_agent(gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (4,))}), gym.spaces.Discrete(2), cfg)
    batch = cartpole_batch(16, 8)
    products = []
    real = gemm._product
    monkeypatch.setattr(gemm, "_product", lambda *a: products.append(1) or real(*a))
    grads = []
    try:
        for backend in ("mkl", "onednn"):
            gemm.set_backend(backend)
            agent.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            loss, _, start = world_model_loss(agent, batch, cfg)
            loss.backward()
            agent.world_model.requires_grad_(False)
            with cached_one_hot_tables():
                policy, value, _ = behaviour_loss(agent, start, PercentileNormalizer(), cfg, None)
            (policy + value).backward()
            agent.world_model.requires_grad_(True)
            grads.append({n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None})
            if backend == "mkl":
                assert products == []
    finally:
        gemm.set_backend("auto")
    assert len(products) > 50  # the oneDNN pass ran its large products there
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("actor.") for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3), name
