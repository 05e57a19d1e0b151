"""Several MLPs on the same input, evaluated as one: the acting hot path of actor-critics.

A policy step of a small actor-critic (e.g. PPO's two 2x64 MLPs on CartPole) costs far more in per-layer
dispatch than in arithmetic: six Linear modules and their activations. Stacking the first layers and putting
the later ones block-diagonally runs all heads with one matrix product per depth, with the same results up
to float rounding. The stacked weights are a snapshot of the heads' parameters, rebuilt automatically the
first call after any of them changed in place (an optimizer step, ``load_state_dict``), so a caller can
never act with stale weights. Evaluation only: nothing here records gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sheeprl.models.blocks import MLP

__all__ = ["ParallelMLPs"]

# Activations that act elementwise, so applying one to the concatenated hidden units equals applying it per head.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.ELU, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Identity)


def _layers(mlp: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """``[(linear, activation or None), ...]`` for a plain Linear/activation stack, else None (not fusable)."""
    if not isinstance(mlp, MLP):
        return None
    out: list[tuple[nn.Linear, nn.Module | None]] = []
    for module in mlp:
        if isinstance(module, nn.Linear):
            out.append((module, None))
        elif isinstance(module, _ELEMENTWISE) and out and out[-1][1] is None:
            out[-1] = (out[-1][0], module)
        else:  # dropout, layer norm, anything else: keep the modules' own forward
            return None
    return out


class ParallelMLPs:
    """``heads(x)`` = ``torch.cat([mlp(x) for mlp in mlps], -1)``, computed with one matmul per layer depth.

    Use :meth:`create`, which returns None when the MLPs cannot be fused (different depths or activations,
    layer norm, dropout, a non-MLP head); callers then keep calling the modules.
    """

    def __init__(self, heads: list[list[tuple[nn.Linear, nn.Module | None]]]) -> None:
        self._heads = heads
        self._params = [p for head in heads for lin, _ in head for p in lin.parameters()]
        self._activations = [act for _, act in heads[0]]
        self._version: tuple[tuple[int, int], ...] | None = None
        self._weights: list[tuple[Tensor, Tensor]] = []

    @classmethod
    def create(cls, mlps: Sequence[nn.Module]) -> ParallelMLPs | None:
        heads = [_layers(m) for m in mlps]
        if len(heads) < 2 or any(h is None or not h for h in heads):
            return None
        depth = len(heads[0])
        for h in heads:
            if len(h) != depth or h[0][0].in_features != heads[0][0][0].in_features:
                return None
            for (_, act), (_, act0) in zip(h, heads[0], strict=True):
                if type(act) is not type(act0) or repr(act) != repr(act0):  # e.g. LeakyReLU slopes
                    return None
        if any(lin.bias is None for h in heads for lin, _ in h):
            return None
        return cls(heads)  # type: ignore[arg-type]

    @torch.no_grad()
    def _refresh(self) -> None:
        weights = []
        for depth in range(len(self._heads[0])):
            layers = [h[depth][0] for h in self._heads]
            if depth == 0:  # same input for every head: stack the outputs
                w = torch.cat([lin.weight for lin in layers], dim=0)
            else:  # each head reads its own hidden units: block-diagonal
                w = torch.block_diag(*[lin.weight for lin in layers])
            weights.append((w.t().contiguous(), torch.cat([lin.bias for lin in layers])))
        self._weights = weights

    def __call__(self, x: Tensor) -> Tensor:
        # Parameters count their in-place updates, and a new storage (``.to()``, ``param.data = ...``) has a new
        # address: either means the snapshot is stale.
        version = tuple((p._version, p.data_ptr()) for p in self._params)
        if version != self._version:
            self._refresh()
            self._version = version
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for (w, b), act in zip(self._weights, self._activations, strict=True):  # snapshots: no graph unless x has one
            h = torch.addmm(b, h, w)
            if act is not None:
                h = act(h)
        return h.reshape(*lead, h.shape[-1])
