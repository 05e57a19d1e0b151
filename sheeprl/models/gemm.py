"""Large float32 matrix products on the CPU through oneDNN where it outruns MKL.

PyTorch computes CPU float32 products (``F.linear``, ``@``) with MKL. On AMD CPUs with AVX-512 (Zen 4 and 5) MKL
runs its AVX2 kernels; oneDNN, which every x86 build of PyTorch also carries (``torch.compile`` uses it for CPU
linear layers), runs AVX-512 ones there. On a Zen 5 EPYC at 1 thread it did the Dreamer V3 S model's products
(1024 rows, 512 to 1536 wide) at 94-107 G multiply-adds/s against MKL's 42-46, forward and input gradient alike
(weight gradient: 73 against 47), in the same float32 arithmetic (errors against float64 of the same order).

Two limits shape which products take it: oneDNN has a fixed cost of ~18 us a call, so below ~2M multiply-adds
MKL is faster; and an operand that is neither contiguous nor a transposed contiguous tensor (a column slice of a
weight) sends oneDNN to a reference kernel ~100x slower, so such an operand is copied first (a copy costs about
1/rows of the product). :func:`linear` and :func:`mm` take oneDNN only for large products and are ``F.linear`` and
``@`` otherwise (other devices and dtypes, autocast, ``torch.compile``, tracing for export). A caller that applies
the same sliced weight many times can keep a contiguous copy itself (Dreamer's imagination does).

The backend is chosen once per process: ``fabric.cpu_matmul`` (``auto``: oneDNN on AMD CPUs with AVX-512, MKL
elsewhere, as before; ``onednn``; ``mkl``). Same seed, same machine, same results; another CPU or backend rounds
differently, as another BLAS would.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "onednn", "mkl")
# Below this many multiply-adds oneDNN's fixed cost per call (~18 us) exceeds what its faster kernels save.
MIN_MACS = 1 << 21

_backend = "auto"


def set_backend(name: str) -> None:
    """``auto``, ``onednn`` or ``mkl`` (``fabric.cpu_matmul``; the run's set-up calls this)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"cpu_matmul must be one of {BACKENDS}, got {name!r}")
    _backend = name
    use_onednn.cache_clear()


@functools.cache
def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def _amd_avx512() -> bool:
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in f)
    except OSError:
        return False


@functools.cache
def use_onednn() -> bool:
    """Whether large dense float32 CPU products go to oneDNN in this process."""
    if _backend == "mkl" or not _onednn_available():
        return False
    return _backend == "onednn" or _amd_avx512()


def _dense(t: Tensor) -> bool:
    return t.is_contiguous() or t.t().is_contiguous()


def _dense_copy(t: Tensor) -> Tensor:
    return t if _dense(t) else t.contiguous()


def wants(x: Tensor, weight: Tensor, rows: int) -> bool:
    """Whether ``rows`` rows of ``x (*, K) @ weight (N, K).T`` go to oneDNN (:func:`linear` copies a strided operand)."""
    return (
        not (torch.jit.is_tracing() or torch.compiler.is_compiling())  # traced/compiled graphs keep aten's ops
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.dim() == 2
        and rows * weight.shape[0] * weight.shape[1] >= MIN_MACS
        and use_onednn()
        and not torch.is_autocast_enabled("cpu")
    )


def _product(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN (2-D ``x``; both must be dense: :func:`_dense`)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D tensors, with no gradient through it (inside an autograd Function, or under no_grad)."""
    if (
        a.dim() == 2
        and b.dim() == 2
        and wants(a, b.t(), a.shape[0])
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    ):
        return _product(_dense_copy(a), _dense_copy(b.t()))
    return a @ b


class _Linear(torch.autograd.Function):
    """``F.linear`` of a dense 2-D ``x`` with oneDNN products forward and backward (input, weight gradients).

    The output is a new tensor, not a view (autograd forbids in-place ops, e.g. ``ReLU(inplace=True)``, on a view
    made inside a Function): :func:`linear` reshapes around it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = _dense_copy(grad)
        grad_x = mm(g, weight) if ctx.needs_input_grad[0] else None
        grad_w = mm(g.t(), x) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN when :func:`use_onednn` and the product is large and dense."""
    if x.dim() == 0 or not wants(x, weight, x.numel() // max(x.shape[-1], 1)):
        return F.linear(x, weight, bias)
    if bias is not None and (bias.dtype != torch.float32 or bias.dim() != 1):
        return F.linear(x, weight, bias)
    x2 = _dense_copy(x.reshape(-1, x.shape[-1]))
    weight = _dense_copy(weight)  # differentiable: a slice's gradient still reaches its parameter
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        out = _Linear.apply(x2, weight, bias)
    else:
        out = _product(x2, weight, bias)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, initialization and state dict) computing through :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
