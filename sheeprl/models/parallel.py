"""Several MLPs on the same input, evaluated as one: the acting hot path of actor-critics.

A policy step of a small actor-critic (e.g. PPO's two 2x64 MLPs on CartPole) costs far more in per-layer
dispatch than in arithmetic: six Linear modules and their activations. Stacking the first layers and putting
the later ones block-diagonally runs all heads with one matrix product per depth, with the same results up
to float rounding. The stacked weights are a snapshot of the heads' parameters, rebuilt automatically the
first call after they may have changed: after any optimizer step in the process (fused optimizers update
parameters without counting it in their versions), after an in-place write that counts (``load_state_dict``,
``copy_``) and after a new storage (``.to()``, ``param.data = ...``). Evaluation only: nothing here records
gradients.

On the CPU, :meth:`ParallelMLPs.numpy` runs the same snapshot with numpy on numpy inputs: for a few env rows a
numpy op costs ~1 us against ~4 us for a torch op (dispatch, not arithmetic), which a policy step pays a dozen
times. It covers the activations numpy has exactly (tanh, ReLU, leaky ReLU, identity) and small products only,
where numpy's BLAS runs on the calling thread (a larger product would start BLAS threads of its own next to
torch's); otherwise it returns None and the caller uses the torch path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sheeprl.models.blocks import MLP

__all__ = ["ParallelMLPs"]

_optimizer_steps = 0  # optimizer steps taken in this process (any optimizer): a new count makes snapshots stale
_hook_registered = False


def _count_step(*_: object) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _watch_optimizers() -> None:
    global _hook_registered
    if not _hook_registered:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_count_step)
        _hook_registered = True


# Activations that act elementwise, so applying one to the concatenated hidden units equals applying it per head.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.ELU, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Identity)

# Multiply-adds per numpy forward above which the torch path is used: small enough that numpy's BLAS stays on the
# calling thread, and beyond the size where per-op dispatch dominates anyway.
NUMPY_MAX_MACS = 1 << 20


def tracing() -> bool:
    """Whether torch is recording a graph (jit.trace, torch.compile, ONNX export): numpy would be baked in as a
    constant there, so the torch path must run."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and bool(onnx.is_in_onnx_export())


def _numpy_activation(act: nn.Module | None) -> Callable[[np.ndarray], None] | None | bool:
    """An in-place numpy version of ``act`` (None: no activation), or False when there is none."""
    if act is None or isinstance(act, nn.Identity):
        return None
    if isinstance(act, nn.Tanh):
        return lambda h: np.tanh(h, out=h)
    if isinstance(act, nn.ReLU):
        return lambda h: np.maximum(h, 0.0, out=h)
    if isinstance(act, nn.LeakyReLU):
        slope = float(act.negative_slope)
        return lambda h: np.multiply(h, slope, out=h, where=h < 0)
    return False


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
        self._version: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self._weights: list[tuple[Tensor, Tensor]] = []
        np_acts = [_numpy_activation(act) for act in self._activations]
        self._np_activations = None if any(a is False for a in np_acts) else np_acts
        self._np_weights: list[tuple[np.ndarray, np.ndarray]] | None = None
        # Per input row: the first stacked product, then the block-diagonal ones (zeros multiplied too).
        sizes = [
            (sum(h[d][0].in_features for h in heads), sum(h[d][0].out_features for h in heads))
            for d in range(len(heads[0]))
        ]
        self._macs_per_row = heads[0][0][0].in_features * sizes[0][1] + sum(i * o for i, o in sizes[1:])
        _watch_optimizers()

    @classmethod
    def create(cls, mlps: Sequence[nn.Module]) -> ParallelMLPs | None:
        heads = [_layers(m) for m in mlps]
        if not heads or any(h is None or not h for h in heads):
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
        if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in self._params):
            self._refresh_numpy()
            return
        weights = []
        for depth in range(len(self._heads[0])):
            layers = [h[depth][0] for h in self._heads]
            if depth == 0:  # same input for every head: stack the outputs
                w = torch.cat([lin.weight for lin in layers], dim=0)
            else:  # each head reads its own hidden units: block-diagonal
                w = torch.block_diag(*[lin.weight for lin in layers])
            weights.append((w.t().contiguous(), torch.cat([lin.bias for lin in layers])))
        self._weights = weights
        self._np_weights = None

    def _refresh_numpy(self) -> None:
        """The CPU snapshot: fused (in, out) arrays allocated once, each head's block copied in (the off-diagonal
        blocks stay zero). A dozen numpy copies instead of torch's cat/block_diag/transpose: A2C refreshes after
        every 5-step update."""
        if self._np_weights is None:
            arrays = []
            for depth in range(len(self._heads[0])):
                layers = [h[depth][0] for h in self._heads]
                rows = layers[0].in_features if depth == 0 else sum(lin.in_features for lin in layers)
                cols = sum(lin.out_features for lin in layers)
                arrays.append((np.zeros((rows, cols), dtype=np.float32), np.zeros(cols, dtype=np.float32)))
            self._np_weights = arrays
            # The torch path reads the same memory.
            self._weights = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in arrays]
        for depth, (w, b) in enumerate(self._np_weights):
            row = col = 0
            for head in self._heads:
                lin = head[depth][0]
                weight = lin.weight.detach().numpy()  # (out, in)
                out, inp = weight.shape
                w[(slice(None) if depth == 0 else slice(row, row + inp)), col : col + out] = weight.T
                b[col : col + out] = lin.bias.detach().numpy()
                row, col = row + inp, col + out

    def _check_snapshot(self) -> None:
        if len(self._heads) == 1:
            # One MLP needs no fused copy: views of its parameters see every in-place update (optimizer steps,
            # load_state_dict); only a new storage (``.to()``, ``param.data = ...``) or dtype needs new views.
            version: tuple = tuple((p.data_ptr(), p.dtype, p.device) for p in self._params)
            if version != self._version:
                self._view_single()
                self._version = version
            return
        # Optimizer steps (fused ones included), the parameters' own count of in-place writes, and their storage
        # addresses (``.to()``, ``param.data = ...``): a change in any means the snapshot is stale.
        version = (_optimizer_steps, tuple((p._version, p.data_ptr()) for p in self._params))
        if version != self._version:
            self._refresh()
            self._version = version

    def _view_single(self) -> None:
        """The snapshot of a single MLP: detached (in, out) views of its own weights, no copy."""
        layers = [lin for lin, _ in self._heads[0]]
        self._weights = [(lin.weight.detach().t(), lin.bias.detach()) for lin in layers]
        cpu32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in self._params)
        self._np_weights = [(w.numpy(), b.numpy()) for w, b in self._weights] if cpu32 else None

    def numpy(self, x: np.ndarray) -> np.ndarray | None:
        """``self(x)`` for a float32 array ``(rows, in_features)``, in numpy; None where only the torch path runs.

        None: weights not float32 on the CPU, an activation numpy has no exact equivalent of, or a product large
        enough for BLAS threads (see the module docstring).
        """
        if self._np_activations is None or x.shape[0] * self._macs_per_row > NUMPY_MAX_MACS or tracing():
            return None
        self._check_snapshot()
        if self._np_weights is None:
            return None
        h = x
        for (w, b), act in zip(self._np_weights, self._np_activations, strict=True):
            h = h @ w
            h += b
            if act is not None:
                act(h)
        return h

    def __call__(self, x: Tensor) -> Tensor:
        self._check_snapshot()
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for (w, b), act in zip(self._weights, self._activations, strict=True):  # snapshots: no graph unless x has one
            h = torch.addmm(b, h, w)
            if act is not None:
                h = act(h)
        return h.reshape(*lead, h.shape[-1])
