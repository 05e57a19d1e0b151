"""Dreamer V3's networks: the world model (encoder, RSSM, decoders, reward and continue heads) and the actor-critic.

Every hidden layer is Linear -> LayerNorm -> SiLU (convolutions: Conv -> channel LayerNorm -> SiLU), as in the
paper. The latent state is ``[h, z]``: the GRU's deterministic ``h`` and 32 categorical variables of 32 classes
``z``, sampled with 1% uniform mixing and straight-through gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sheeprl.algos.dreamer_v3.loss import make_bins, symlog, two_hot_mean
from sheeprl.models import gemm
from sheeprl.models.blocks import CNN, DeCNN, LayerNormGRUCell
from sheeprl.models.deferred import DeferredWeightGrads
from sheeprl.models.gemm import Linear

# The paper's model sizes (Hafner et al., 2023, table of model sizes): GRU units, CNN multiplier, dense units,
# MLP layers. "XXS" is this project's CPU size for quick learning runs and tests.
SIZES: dict[str, dict[str, int]] = {
    "XXS": {"recurrent_state_size": 64, "cnn_multiplier": 8, "dense_units": 64, "mlp_layers": 1},
    "XS": {"recurrent_state_size": 256, "cnn_multiplier": 24, "dense_units": 256, "mlp_layers": 1},
    "S": {"recurrent_state_size": 512, "cnn_multiplier": 32, "dense_units": 512, "mlp_layers": 2},
    "M": {"recurrent_state_size": 1024, "cnn_multiplier": 48, "dense_units": 640, "mlp_layers": 3},
    "L": {"recurrent_state_size": 2048, "cnn_multiplier": 64, "dense_units": 768, "mlp_layers": 4},
    "XL": {"recurrent_state_size": 4096, "cnn_multiplier": 96, "dense_units": 1024, "mlp_layers": 5},
}


def model_dims(a: Any) -> dict[str, int]:
    """The size preset ``algo.size`` with any explicitly set dimension (not null) taking precedence."""
    dims = dict(SIZES[str(a.size)])
    for key in dims:
        if a.get(key) is not None:
            dims[key] = int(a[key])
    return dims


class PaddedLinear(Linear):
    """``nn.Linear`` (same parameters and state dict) whose product runs with its outputs padded by zero rows to a
    multiple of 16: MKL's single-precision product with 255 outputs (the two-hot heads' bins) took ~1.5x as long as
    with 256 on an AVX2 CPU, and the zero rows change none of the other outputs."""

    def forward(self, x: Tensor) -> Tensor:
        pad = -self.out_features % 16
        bias = None if self.bias is None else F.pad(self.bias, (0, pad))
        return gemm.linear(x, F.pad(self.weight, (0, 0, 0, pad)), bias)[..., : self.out_features]


def mlp(in_dim: int, units: int, layers: int, out_dim: Optional[int] = None, zero_out: bool = False) -> nn.Sequential:
    """``layers`` x (Linear -> LayerNorm -> SiLU), then an optional Linear head (zero-initialized if ``zero_out``)."""
    mods: list[nn.Module] = []
    last = in_dim
    for _ in range(layers):
        mods += [Linear(last, units, bias=False), nn.LayerNorm(units), nn.SiLU()]
        last = units
    if out_dim is not None:
        head = PaddedLinear(last, out_dim) if out_dim > 64 and out_dim % 16 else Linear(last, out_dim)
        if zero_out:  # reward and critic start predicting 0, so early returns are not noise (paper, section 3)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        mods.append(head)
    return nn.Sequential(*mods)


def unimix_probs(logits: Tensor, unimix: float) -> Tensor:
    """``(1 - unimix) * softmax(logits) + unimix / K``: no class ever gets probability 0."""
    probs = logits.softmax(-1)
    return probs if unimix <= 0 else probs * (1.0 - unimix) + unimix / logits.shape[-1]


def unimix_logits(logits: Tensor, unimix: float) -> Tensor:
    """The log of :func:`unimix_probs` (normalized logits)."""
    return logits.log_softmax(-1) if unimix <= 0 else torch.log(unimix_probs(logits, unimix))


def sample_index(probs: Tensor) -> Tensor:
    """One class index per categorical of ``probs`` (*, K) by inverse-CDF sampling (one uniform number per
    categorical; Gumbel-max would draw K of them)."""
    u = torch.rand(*probs.shape[:-1], 1, dtype=probs.dtype, device=probs.device)
    return (probs.detach().cumsum(-1) < u).sum(-1).clamp_(max=probs.shape[-1] - 1)


def sample_onehot(probs: Tensor, straight_through: bool = True) -> Tensor:
    """A one-hot sample per categorical of ``probs`` (*, K), with straight-through gradients to the probabilities."""
    sample = F.one_hot(sample_index(probs), probs.shape[-1]).to(probs.dtype)
    return sample + probs - probs.detach() if straight_through else sample


_TABLES: Optional[dict[tuple[int, int, int], tuple[Tensor, Tensor]]] = None


@contextmanager
def cached_one_hot_tables() -> Iterator[None]:
    """Inside this block (where no weight changes: no optimizer step), each layer's ``embedding_bag`` table is
    copied once instead of at each of the ~90 sparse-layer calls of an imagination pass (a few % of a step)."""
    global _TABLES
    _TABLES = {}
    try:
        yield
    finally:
        _TABLES = None


def _columns(weight: Tensor, lo: int, hi: int, transpose: bool) -> Tensor:
    """``weight[:, lo:hi]`` (``.T`` if ``transpose``) as a contiguous copy, cached inside
    :func:`cached_one_hot_tables` when no gradient has to reach ``weight`` through it."""
    if _TABLES is None or (torch.is_grad_enabled() and weight.requires_grad):
        block = weight[:, lo:hi]
        return (block.t() if transpose else block).contiguous()
    key = (id(weight), lo, hi, transpose)
    cached = _TABLES.get(key)
    if cached is None or cached[0] is not weight:  # an id is unique only while its tensor lives: keep it alive
        block = weight.detach()[:, lo:hi]
        cached = _TABLES[key] = (weight, (block.t() if transpose else block).contiguous())
    return cached[1]


def one_hot_table(weight: Tensor, nb: int, nz: int) -> Tensor:
    """``weight[:, nb:nb+nz].T`` contiguous, the ``embedding_bag`` table of a layer's one-hot block."""
    return _columns(weight, nb, nb + nz, transpose=True)


def add_product(out: Tensor, x: Tensor, weight: Tensor, lo: int = 0, hi: Optional[int] = None) -> Tensor:
    """``out + x @ weight[:, lo:hi].T``, accumulated into ``out`` in place when nothing would cast (under autocast or
    with mixed dtypes the product is the ordinary, cast one). A product that goes to oneDNN
    (:mod:`sheeprl.models.gemm`) reads the column block's contiguous copy, made once per imagination pass."""
    block = weight[:, lo:hi]
    if out.dtype == x.dtype == weight.dtype and not torch.is_autocast_enabled(out.device.type):
        if gemm.wants(x, block, x.shape[0]):
            return out.add_(gemm.linear(x, _columns(weight, lo, lo + block.shape[1], transpose=False)))
        return out.addmm_(x, block.t())
    return out + F.linear(x, block)


def sparse_linear(
    weight: Tensor,
    idx: Tensor,
    classes: int,
    before: Optional[Tensor] = None,
    after: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """``F.linear(cat(before, one_hot(idx).flatten(), after), weight, bias)`` without building the one-hot.

    ``idx`` (*, stoch) holds class indices: the one-hot block's matmul becomes a sum of ``stoch`` weight columns
    (``embedding_bag``), 32x fewer multiply-adds for 32 classes. Gradients reach the weights, not ``idx``.
    """
    w = weight
    nb = before.shape[-1] if before is not None else 0
    stoch = idx.shape[-1]
    nz = stoch * classes
    flat = (idx + torch.arange(stoch, device=idx.device) * classes).reshape(-1, stoch)
    out = F.embedding_bag(flat, one_hot_table(w, nb, nz), mode="sum")
    if before is not None:
        out = add_product(out, before.reshape(-1, nb), w, 0, nb)
    if after is not None:
        out = add_product(out, after.reshape(-1, after.shape[-1]), w, nb + nz)
    if bias is not None:
        out = out + bias
    return out.view(*idx.shape[:-1], w.shape[0])


class _LatentLinear(torch.autograd.Function):
    """``[h, one_hot(idx)] @ W.T`` with a sparse weight gradient for the one-hot block.

    Forward: ``h W_h^T`` plus a sum of ``stoch`` columns of ``W_z`` (``embedding_bag``). Backward: ``W_z``'s gradient
    is a sparse (COO) x dense product, ``stoch`` adds per row instead of ``stoch * classes`` multiply-adds, with no
    one-hot built; below 32 classes the dense product is cheaper and used. ``idx`` is data: no gradient reaches it;
    ``h`` gets one when it needs one.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, flat: Tensor, weight: Tensor, nz: int) -> Tensor:  # type: ignore[override]
        nb = h.shape[-1]
        ctx.save_for_backward(h, flat, weight)
        ctx.nz = nz
        return add_product(F.embedding_bag(flat, one_hot_table(weight, nb, nz), mode="sum"), h, weight, 0, nb)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        h, flat, weight = ctx.saved_tensors
        grad = grad.contiguous()
        nb = h.shape[-1]
        grad_h = gemm.mm(grad, weight[:, :nb]) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[2]:
            n, stoch = flat.shape
            if ctx.nz // stoch >= 32:
                # one_hot(idx).T @ grad as a sparse (nz, N) matrix with N * stoch ones: a sparse-dense product
                rows = torch.arange(n, device=flat.device).repeat_interleave(stoch)
                onehot_t = torch.sparse_coo_tensor(torch.stack((flat.reshape(-1), rows)), grad.new_ones(n * stoch),
                                                   (ctx.nz, n), check_invariants=False)  # fmt: skip
                grad_z = torch.sparse.mm(onehot_t, grad).t()
            else:  # few classes: the dense product is cheaper than building the sparse matrix
                grad_z = grad.t() @ grad.new_zeros(n, ctx.nz).scatter_(1, flat, 1.0)
            grad_w = torch.cat((gemm.mm(grad.t(), h), grad_z), 1)
        return grad_h, None, grad_w, None


def mlp_sparse(net: nn.Sequential, h: Tensor, idx: Tensor, classes: int) -> Tensor:
    """``net(cat(h, one_hot(idx)))`` for an :func:`mlp` whose input is a latent ``[h, z]``, never building the
    one-hot: the first layer is :func:`sparse_linear`, or :class:`_LatentLinear` when it is trained."""
    first = net[0]
    if torch.is_grad_enabled() and first.weight.requires_grad:
        stoch = idx.shape[-1]
        flat = (idx + torch.arange(stoch, device=idx.device) * classes).reshape(-1, stoch)
        out = _LatentLinear.apply(h.reshape(-1, h.shape[-1]), flat, first.weight, stoch * classes)
        out = out.view(*idx.shape[:-1], -1)
        if first.bias is not None:
            out = out + first.bias
        return net[1:](out)
    return net[1:](sparse_linear(first.weight, idx, classes, before=h, bias=first.bias))


def fuse_first_layers(nets: Sequence[nn.Sequential]) -> tuple[Tensor, Optional[Tensor], list[int]]:
    """The first layers of ``nets`` (heads that read the same latent) as one layer: ``(weight, bias, widths)``.

    A copy of the weights, for passes without a gradient: build it once per update, after the optimizer steps.
    """
    firsts = [net[0] for net in nets]
    widths = [int(f.weight.shape[0]) for f in firsts]
    bias = None
    if any(f.bias is not None for f in firsts):
        bias = torch.cat(
            [f.bias if f.bias is not None else f.weight.new_zeros(w) for f, w in zip(firsts, widths, strict=True)]
        )
    return torch.cat([f.weight for f in firsts]).detach(), None if bias is None else bias.detach(), widths


@torch.no_grad()
def heads_sparse(
    nets: Sequence[nn.Sequential], fused: tuple[Tensor, Optional[Tensor], list[int]], h: Tensor, idx: Tensor,
    classes: int, keep: Optional[Sequence[bool]] = None,
) -> list[Optional[Tensor]]:  # fmt: skip
    """``[net(cat(h, one_hot(idx))) for net in nets]`` without a gradient (as :func:`mlp_sparse`), their first
    layers ``fused`` (:func:`fuse_first_layers`) run as one :func:`sparse_linear`: one ``embedding_bag`` and one
    matrix product as wide as all of them instead of one of each per head (a wider product runs nearer the CPU's
    peak). ``keep[i]`` False: head ``i`` stops after the shared layer (None in its place)."""
    weight, bias, widths = fused
    parts = sparse_linear(weight, idx, classes, before=h, bias=bias).split(widths, -1)
    return [
        net[1:](part) if keep is None or keep[i] else None
        for i, (net, part) in enumerate(zip(nets, parts, strict=True))
    ]


# ---------------------------------------------------------------------------------------------------- encoders


class Encoder(nn.Module):
    """Pixels (``cnn_keys``, uint8 CHW 64x64) through a stride-2 CNN; vectors (``mlp_keys``) symlog'd through an MLP."""

    def __init__(self, cnn_keys: list[str], cnn_channels: list[int], mlp_keys: list[str], mlp_dims: list[int], d: dict):
        super().__init__()
        self.cnn_keys, self.mlp_keys = list(cnn_keys), list(mlp_keys)
        m, units, layers = d["cnn_multiplier"], d["dense_units"], d["mlp_layers"]
        self.output_dim = 0
        if self.cnn_keys:
            self.cnn = CNN(sum(cnn_channels), [m, 2 * m, 4 * m, 8 * m], 4, 2, activation="silu", layer_norm=True,
                           paddings=1)  # fmt: skip
            self.output_dim += 8 * m * 4 * 4
        if self.mlp_keys:
            self.mlp = mlp(sum(mlp_dims), units, layers)
            self.output_dim += units if layers else sum(mlp_dims)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        feats = []
        if self.cnn_keys:
            x = torch.cat([obs[k] for k in self.cnn_keys], -3).float() / 255.0 - 0.5
            feats.append(self.cnn(x).flatten(-3))
        if self.mlp_keys:
            feats.append(self.mlp(symlog(torch.cat([obs[k].float() for k in self.mlp_keys], -1))))
        return torch.cat(feats, -1) if len(feats) > 1 else feats[0]


class Decoder(nn.Module):
    """From the latent ``[h, z]`` back to every observation key: a transposed CNN for pixels, an MLP for vectors.

    Pixels are predicted in [-0.5, 0.5], vectors in symlog space; the loss is a sum of squared errors per key.
    """

    def __init__(self, latent: int, cnn_keys: list[str], cnn_channels: list[int], mlp_keys: list[str],
                 mlp_dims: list[int], d: dict):  # fmt: skip
        super().__init__()
        self.cnn_keys, self.cnn_channels = list(cnn_keys), list(cnn_channels)
        self.mlp_keys, self.mlp_dims = list(mlp_keys), list(mlp_dims)
        m, units, layers = d["cnn_multiplier"], d["dense_units"], d["mlp_layers"]
        if self.cnn_keys:
            self.m = m
            self.cnn_in = Linear(latent, 8 * m * 16)
            self.decnn = DeCNN(8 * m, [4 * m, 2 * m, m, sum(cnn_channels)], 4, 2, activation="silu",
                               layer_norm=True, paddings=1)  # fmt: skip
        if self.mlp_keys:
            self.mlp = mlp(latent, units, layers, sum(mlp_dims))

    def forward(self, latent: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.cnn_keys:
            x = self.cnn_in(latent).unflatten(-1, (8 * self.m, 4, 4))
            out.update(zip(self.cnn_keys, self.decnn(x).split(self.cnn_channels, -3), strict=True))
        if self.mlp_keys:
            out.update(zip(self.mlp_keys, self.mlp(latent).split(self.mlp_dims, -1), strict=True))
        return out

    def loss(self, pred: dict[str, Tensor], obs: Mapping[str, Tensor]) -> Tensor:
        """Per-(T, B) squared error summed over every key's elements."""
        total: Tensor | float = 0.0
        for k in self.cnn_keys:
            target = obs[k].float() / 255.0 - 0.5
            total = total + (pred[k] - target).square().sum((-3, -2, -1))
        for k in self.mlp_keys:
            total = total + (pred[k] - symlog(obs[k].float())).square().sum(-1)
        return total  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- RSSM


class RSSM(nn.Module):
    """Recurrent state-space model: h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]); prior p(z_t | h_t); posterior
    q(z_t | h_t, embed_t). ``stoch`` categoricals of ``classes`` classes; the initial ``h`` is learned (tanh)."""

    def __init__(self, embed_dim: int, action_dim: int, d: dict, stoch: int, classes: int, unimix: float) -> None:
        super().__init__()
        deter, units = d["recurrent_state_size"], d["dense_units"]
        self.stoch, self.classes, self.unimix, self.deter = stoch, classes, unimix, deter
        self.z_dim = stoch * classes
        self.pre = nn.Sequential(Linear(self.z_dim + action_dim, units, bias=False), nn.LayerNorm(units), nn.SiLU())
        self.gru = LayerNormGRUCell(units, deter)
        self.prior = mlp(deter, units, 1, self.z_dim)
        self.post = mlp(deter + embed_dim, units, 1, self.z_dim)
        self.h0 = nn.Parameter(torch.zeros(deter))

    def probs(self, net: nn.Module, x: Tensor) -> Tensor:
        """Unimixed probabilities ``(*, stoch, classes)`` of the prior or posterior ``net``."""
        return unimix_probs(net(x).unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def initial(self, batch: int) -> tuple[Tensor, Tensor]:
        """The learned initial ``h`` and the mode of its prior, ``(batch, deter)`` and ``(batch, stoch * classes)``."""
        h = torch.tanh(self.h0).expand(batch, -1)
        z = F.one_hot(self.prior(h).unflatten(-1, (self.stoch, self.classes)).argmax(-1), self.classes)
        z = z.to(h.dtype).flatten(-2)
        return h, z

    def step(self, h: Tensor, z: Tensor, action: Tensor, dw: Optional[DeferredWeightGrads] = None) -> Tensor:
        """The next ``h``; with ``dw`` (inside :meth:`observe`) the two layers' weight gradients are deferred."""
        u = torch.cat((z, action), -1)
        if dw is None:
            return self.gru(self.pre(u), h)
        gru_linear = lambda x: dw.linear("gru", x, self.gru.linear.bias)  # noqa: E731
        return self.gru(self.pre[1:](dw.linear("pre", u)), h, linear=gru_linear)

    def observe(self, embed: Tensor, actions: Tensor, is_first: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Filter a ``(T, B)`` sequence; at ``is_first`` the state restarts from the initial one and the action is 0.

        Returns ``h (T,B,deter)``, ``z (T,B,stoch*classes)``, posterior and prior probabilities ``(T,B,stoch,classes)``.
        The prior is computed after the loop in one batched call: only the posterior feeds the recurrence.
        """
        T, B = embed.shape[:2]
        h0, z0 = self.initial(B)
        first = is_first.unsqueeze(-1).bool()
        actions = actions.masked_fill(first, 0.0)
        # The posterior's first layer reads [h_t, embed_t]: the embed half is one matmul over the whole sequence
        # (unbound: indexing it per step would give each step's backward a zero-filled (T, B, units) gradient).
        w_post, post_out = self.post[0].weight, self.post[-1]
        w_h, post_embed = w_post[:, : self.deter], gemm.linear(embed, w_post[:, self.deter :]).unbind(0)
        # The loop's products have 16-row inputs (the batch): their weight gradients run once over all T * B rows
        # after the backward instead of per step (not under autocast, nor when `step` was replaced, e.g. compiled).
        dw = None
        if torch.is_grad_enabled() and w_h.requires_grad and "step" not in vars(self):
            if not torch.is_autocast_enabled(embed.device.type):
                dw = DeferredWeightGrads(
                    pre=self.pre[0].weight, gru=self.gru.linear.weight, post_h=w_h, post_out=post_out.weight
                )
        h, z = h0, z0
        hs, zs, posts = [], [], []
        for t in range(T):
            h = torch.where(first[t], h0, h)
            z = torch.where(first[t], z0, z)
            if dw is None:
                h = self.step(h, z, actions[t])
                logits = self.post[1:](F.linear(h, w_h) + post_embed[t])
            else:
                h = self.step(h, z, actions[t], dw)
                logits = dw.linear("post_out", self.post[1:-1](dw.linear("post_h", h) + post_embed[t]), post_out.bias)
            post = unimix_probs(logits.unflatten(-1, (self.stoch, self.classes)), self.unimix)
            z = sample_onehot(post).flatten(-2)
            hs.append(h)
            zs.append(z)
            posts.append(post)
        hs_t = torch.stack(hs)
        return hs_t, torch.stack(zs), torch.stack(posts), self.probs(self.prior, hs_t)

    def imagine_step_sparse(self, h: Tensor, idx: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`imagine_step` on class indices (no gradients through the latents): returns ``h`` and indices."""
        x = self.pre[1:](sparse_linear(self.pre[0].weight, idx, self.classes, after=action, bias=self.pre[0].bias))
        h = self.gru(x, h)
        return h, sample_index(self.probs(self.prior, h))

    def imagine_step(self, h: Tensor, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        h = self.step(h, z, action)
        return h, sample_onehot(self.probs(self.prior, h)).flatten(-2)


class WorldModel(nn.Module):
    def __init__(self, encoder: Encoder, rssm: RSSM, decoder: Decoder, latent: int, d: dict, bins: int) -> None:
        super().__init__()
        self.encoder, self.rssm, self.decoder = encoder, rssm, decoder
        self.reward = mlp(latent, d["dense_units"], d["mlp_layers"], bins, zero_out=True)
        self.cont = mlp(latent, d["dense_units"], d["mlp_layers"], 1)


# ---------------------------------------------------------------------------------------------------- behaviour


class Actor(nn.Module):
    """Discrete: categorical with 1% unimix (REINFORCE). Continuous: Normal(tanh(mu), std in [0.1, 1]), samples
    clipped to [-1, 1] with straight-through gradients (dynamics backpropagation)."""

    def __init__(self, latent: int, action_dim: int, discrete: bool, d: dict, unimix: float,
                 min_std: float = 0.1, max_std: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.discrete, self.unimix, self.min_std, self.max_std = discrete, unimix, min_std, max_std
        self.net = mlp(latent, d["dense_units"], d["mlp_layers"], action_dim * (1 if discrete else 2))

    def forward(self, latent: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.head(self.net(latent))

    def head(self, out: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The network's raw output -> unimixed log-probabilities, or (mean, std)."""
        if self.discrete:
            return unimix_logits(out, self.unimix)
        mean, std = out.chunk(2, -1)
        return torch.tanh(mean), (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std

    def sample(self, latent: Tensor, greedy: bool = False) -> Tensor:
        """An action: one-hot for discrete, in [-1, 1] for continuous (reparameterized)."""
        return self.sample_from(self(latent), greedy)

    def sample_from(self, out: Any, greedy: bool = False) -> Tensor:
        if self.discrete:
            if greedy:
                return F.one_hot(out.argmax(-1), out.shape[-1]).to(out.dtype)
            return sample_onehot(out.exp(), straight_through=False)
        mean, std = out
        if greedy:
            return mean
        a = mean + std * torch.randn_like(mean)
        return a + (a.clamp(-1.0, 1.0) - a).detach()

    def log_prob_entropy(self, latent: Tensor, action: Tensor, out: Any = None) -> tuple[Tensor, Tensor]:
        """Log-probability of ``action`` and entropy; ``out`` (the head's output) replaces ``latent`` if given."""
        out = self(latent) if out is None else out
        if self.discrete:
            logp = F.log_softmax(out, -1)
            return (logp * action).sum(-1), -(logp.exp() * logp).sum(-1)
        mean, std = out
        dist = torch.distributions.Normal(mean, std)
        return dist.log_prob(action).sum(-1), dist.entropy().sum(-1)


class Agent(nn.Module):
    """Everything that trains: world model, actor, critic; plus the slow critic (an EMA, never optimized)."""

    def __init__(self, world_model: WorldModel, actor: Actor, critic: nn.Module, slow_critic: nn.Module,
                 bins: Tensor) -> None:  # fmt: skip
        super().__init__()
        self.world_model, self.actor, self.critic, self.slow_critic = world_model, actor, critic, slow_critic
        self.register_buffer("bins", bins, persistent=False)

    def value(self, net: nn.Module, latent: Tensor) -> Tensor:
        return two_hot_mean(net(latent), self.bins)


def obs_dims(observation_space: gym.spaces.Dict, cnn_keys: list[str], mlp_keys: list[str]) -> tuple[list, list]:
    for k in [*cnn_keys, *mlp_keys]:
        if k not in observation_space.spaces:
            raise ValueError(f"observation key {k!r} is not in the env's observations {list(observation_space)}")
    channels = [int(observation_space[k].shape[0]) for k in cnn_keys]
    dims = [int(np.prod(observation_space[k].shape)) for k in mlp_keys]
    return channels, dims


def action_info(action_space: gym.Space) -> tuple[int, bool]:
    """(action dim as the networks see it, discrete?)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n), True
    return int(np.prod(action_space.shape)), False


def build_agent(
    observation_space: gym.spaces.Dict, action_space: gym.Space, cfg: Any, state: Optional[dict] = None
) -> Agent:
    """Build the agent from ``cfg.algo``; load ``state["agent"]`` when given."""
    a = cfg.algo
    d = model_dims(a)
    cnn_keys, mlp_keys = list(a.cnn_keys.encoder), list(a.mlp_keys.encoder)
    channels, dims = obs_dims(observation_space, cnn_keys, mlp_keys)
    action_dim, discrete = action_info(action_space)
    latent = d["recurrent_state_size"] + a.stochastic_size * a.discrete_size
    encoder = Encoder(cnn_keys, channels, mlp_keys, dims, d)
    rssm = RSSM(encoder.output_dim, action_dim, d, a.stochastic_size, a.discrete_size, a.unimix)
    decoder = Decoder(latent, cnn_keys, channels, mlp_keys, dims, d)
    world_model = WorldModel(encoder, rssm, decoder, latent, d, a.bins)
    actor = Actor(latent, action_dim, discrete, d, a.unimix)
    critic = mlp(latent, d["dense_units"], d["mlp_layers"], a.bins, zero_out=True)
    slow_critic = mlp(latent, d["dense_units"], d["mlp_layers"], a.bins, zero_out=True)
    slow_critic.load_state_dict(critic.state_dict())
    slow_critic.requires_grad_(False)
    agent = Agent(world_model, actor, critic, slow_critic, make_bins(a.bins))
    if state is not None:
        agent.load_state_dict(state["agent"])
    return agent


class Player:
    """Acts in ``num_envs`` envs, carrying each env's recurrent state ``(h, z, previous action)`` between steps.

    ``reset(mask)`` restarts the masked envs' states at an episode start (all envs when ``mask`` is None).
    """

    def __init__(self, agent: Agent, num_envs: int, action_space: gym.Space, device: torch.device | str) -> None:
        self.agent, self.num_envs, self.device = agent, num_envs, torch.device(device)
        self.action_dim, self.discrete = action_info(action_space)
        if not self.discrete:
            self.low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
            self.high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
            self.shape = action_space.shape
        self.reset()

    @torch.no_grad()
    def reset(self, mask: Optional[np.ndarray | Tensor] = None) -> None:
        h0, z0 = self.agent.world_model.rssm.initial(self.num_envs)
        h0, z0 = h0.to(self.device), z0.to(self.device)
        a0 = torch.zeros(self.num_envs, self.action_dim, device=self.device)
        if mask is None:
            self.h, self.z, self.a = h0.clone(), z0.clone(), a0
            return
        m = torch.as_tensor(np.asarray(mask), dtype=torch.bool).to(self.device).unsqueeze(-1)
        self.h, self.z, self.a = torch.where(m, h0, self.h), torch.where(m, z0, self.z), torch.where(m, a0, self.a)

    @torch.no_grad()
    def act(self, obs: Mapping[str, Tensor], greedy: bool = False) -> Tensor:
        """The networks' action ``(num_envs, action_dim)`` (one-hot / [-1, 1]) after filtering ``obs``."""
        wm = self.agent.world_model
        embed = wm.encoder({k: v.to(self.device) for k, v in obs.items()})
        self.h = wm.rssm.step(self.h, self.z, self.a)
        self.z = sample_onehot(wm.rssm.probs(wm.rssm.post, torch.cat((self.h, embed), -1)), False).flatten(-2)
        self.a = self.agent.actor.sample(torch.cat((self.h, self.z), -1), greedy=greedy)
        return self.a

    def to_env(self, action: Tensor) -> np.ndarray:
        """Network action -> what ``envs.step`` takes (indices, or rescaled to the Box bounds)."""
        if self.discrete:
            return action.argmax(-1).cpu().numpy()
        a = action.cpu()
        return (self.low + (a + 1.0) * 0.5 * (self.high - self.low)).view(-1, *self.shape).numpy()

    def state_dict(self) -> dict[str, Tensor]:
        return {"h": self.h.cpu(), "z": self.z.cpu(), "a": self.a.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["h"].shape[0] == self.num_envs:
            self.h, self.z, self.a = (state[k].to(self.device) for k in ("h", "z", "a"))


def greedy_policy(agent: Agent, action_space: gym.Space, device: Any, stochastic: bool = False) -> Any:
    """A stateful ``act(obs) -> env actions`` for one env with a ``reset(mask)`` hook (see utils/evaluation.py)."""
    player = Player(agent, 1, action_space, device)

    def act(obs: Mapping[str, Tensor]) -> Tensor:
        return torch.as_tensor(player.to_env(player.act(obs, greedy=not stochastic)))

    act.reset = player.reset  # type: ignore[attr-defined]
    return act
