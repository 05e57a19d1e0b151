"""Weight gradients of layers applied step by step in a recurrent loop, computed once for all the steps.

A loop that applies ``x_t @ W.T`` at each of ``T`` steps gets from autograd ``T`` weight-gradient products
``g_t.T @ x_t`` of ``B`` rows each, and ``T`` accumulations of a ``W``-sized gradient. With a small batch (Dreamer's
world model filters 16 sequences) each of those products reads and writes all of ``W`` for 16 rows of work: they are
memory-bound, and the accumulations copy ``W`` again each step. :class:`DeferredWeightGrads` keeps each step's input
and output gradient and computes ``W``'s gradient as one product over all ``T * B`` rows once the loop's backward is
done (the same sum, added in another order).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from sheeprl.models import gemm


class _Collect(torch.autograd.Function):
    """The root of a :class:`DeferredWeightGrads`: a 0-d token every step reads, so that autograd runs this node's
    backward only after every step's backward (a node runs once all the nodes reading its output have run)."""

    @staticmethod
    def forward(ctx: Any, store: DeferredWeightGrads, *weights: Tensor) -> Tensor:  # type: ignore[override]
        ctx.store = store
        return weights[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: Tensor) -> tuple:  # type: ignore[override]
        return (None, *ctx.store.weight_grads())


class _StepLinear(torch.autograd.Function):
    """``F.linear(x, weight)`` whose backward returns the input's gradient and leaves the weight's to the store."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, token: Tensor, store: DeferredWeightGrads, key: str) -> Tensor:  # type: ignore[override]
        ctx.store, ctx.key = store, key
        ctx.slot = store.record(key, x)
        ctx.save_for_backward(weight)
        return gemm.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        ctx.store.grads[ctx.key][ctx.slot] = grad
        grad_x = gemm.mm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, grad.new_zeros(()), None, None


class DeferredWeightGrads:
    """Per-step linear layers of one pass through a loop, their weight gradients computed once after its backward.

    ``DeferredWeightGrads(gru=cell.linear.weight, ...)`` before the loop, then ``linear("gru", x_t, bias)`` instead
    of ``F.linear(x_t, weight, bias)`` at each step. A weight may be a slice of a parameter (its gradient reaches
    the parameter through the slice). Use one instance per forward pass and one backward through it (the saved rows
    are freed when its gradients are computed: no ``retain_graph`` second pass), with full precision: under autocast
    the steps' products would not be the ones autograd differentiates.
    """

    def __init__(self, **weights: Tensor) -> None:
        self.weights = weights
        # The steps' products read one contiguous copy of a sliced weight per pass: sheeprl.models.gemm would copy
        # the slice at each step's forward and backward to send the product to oneDNN.
        self.dense = {k: w.detach() if w.is_contiguous() else w.detach().contiguous() for k, w in weights.items()}
        self.inputs: dict[str, list[Tensor]] = {k: [] for k in weights}
        self.grads: dict[str, dict[int, Tensor]] = {k: {} for k in weights}
        self.token = _Collect.apply(self, *weights.values())

    def record(self, key: str, x: Tensor) -> int:
        self.inputs[key].append(x.detach())
        return len(self.inputs[key]) - 1

    def linear(self, key: str, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        out = _StepLinear.apply(x, self.dense[key], self.token, self, key)
        return out if bias is None else out + bias

    def weight_grads(self) -> list[Optional[Tensor]]:
        """``sum_t g_t.T @ x_t`` per weight as one product (a step whose output got no gradient adds nothing)."""
        out: list[Optional[Tensor]] = []
        for key, weight in self.weights.items():
            xs, grads = self.inputs[key], self.grads[key]
            if not grads:
                out.append(None)
                continue
            slots = sorted(grads)
            x = torch.cat([xs[i].reshape(-1, xs[i].shape[-1]) for i in slots])
            g = torch.cat([grads[i].reshape(-1, grads[i].shape[-1]) for i in slots])
            out.append(gemm.mm(g.t(), x).to(weight.dtype))
        self.inputs = {k: [] for k in self.weights}  # the pass is over: free the saved rows
        self.grads = {k: {} for k in self.weights}
        return out
