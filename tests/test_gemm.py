"""sheeprl.models.gemm: oneDNN products equal F.linear / @ (values and gradients) and fall back where they should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sheeprl.models import gemm

pytestmark = pytest.mark.skipif(not gemm._onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture
def backend():
    """Run with a chosen backend, then restore the process's default."""
    yield gemm.set_backend
    gemm.set_backend("auto")


def calls(monkeypatch) -> list[tuple]:
    """Record the oneDNN calls (operand shapes)."""
    seen: list[tuple] = []
    real = gemm._product

    def spy(x, weight, bias=None):
        seen.append((tuple(x.shape), tuple(weight.shape)))
        return real(x, weight, bias)

    monkeypatch.setattr(gemm, "_product", spy)
    return seen


@pytest.mark.parametrize("shape", [(256, 96), (4, 64, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear_values_and_gradients(backend, monkeypatch, shape, bias):
    backend("onednn")
    seen = calls(monkeypatch)
    torch.manual_seed(0)
    layer, plain = gemm.Linear(96, 128, bias=bias), torch.nn.Linear(96, 128, bias=bias)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    out, want = layer(x), plain(x)
    assert out.shape == want.shape and torch.allclose(out, want, atol=1e-5)
    g = torch.randn_like(out)
    params = [layer.weight] + ([layer.bias] if bias else [])
    got = torch.autograd.grad(out, [x, *params], g)
    ref = torch.autograd.grad(want, [x, plain.weight] + ([plain.bias] if bias else []), g)
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    # forward, input gradient and weight gradient all ran in oneDNN (3 products of 256 x 96 x 128 multiply-adds)
    assert len(seen) == 3


def test_linear_output_takes_in_place_ops(backend):
    """``Linear -> ReLU(inplace=True)``, as the shared MLP blocks build it, trains through the oneDNN path."""
    backend("onednn")
    torch.manual_seed(0)
    net = torch.nn.Sequential(gemm.Linear(64, 256), torch.nn.ReLU(inplace=True), gemm.Linear(256, 1))
    ref = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    ref.load_state_dict(net.state_dict())
    for x in (torch.randn(512, 64), torch.randn(4, 128, 64)):
        net(x).sum().backward()
        ref(x).sum().backward()
        for p, q in zip(net.parameters(), ref.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, atol=1e-3, rtol=1e-4)


def test_mm_matches_matmul_for_transposed_operands(backend, monkeypatch):
    backend("onednn")
    seen = calls(monkeypatch)
    torch.manual_seed(0)
    a, b = torch.randn(300, 200), torch.randn(160, 300)
    for x, y in ((a.t(), a), (b, a), (a.t(), b.t())):
        assert torch.allclose(gemm.mm(x, y), x @ y, atol=1e-4)
    assert len(seen) == 3


def test_a_sliced_weight_is_copied_and_its_gradient_reaches_the_parameter(backend, monkeypatch):
    """A column slice would send oneDNN to its slow reference kernel: the product reads a contiguous copy."""
    backend("onednn")
    seen = calls(monkeypatch)
    torch.manual_seed(0)
    w = torch.randn(128, 256, requires_grad=True)
    x = torch.randn(512, 128)
    out = gemm.linear(x, w[:, :128])
    assert torch.allclose(out, F.linear(x, w[:, :128]), atol=1e-4) and len(seen) == 1
    (grad,) = torch.autograd.grad(out.sum(), w)
    (want,) = torch.autograd.grad(F.linear(x, w[:, :128]).sum(), w)
    assert torch.allclose(grad, want, atol=1e-3) and grad[:, 128:].abs().sum() == 0
    with torch.no_grad():
        assert torch.allclose(gemm.mm(x, w[:, 64:192].t()), x @ w[:, 64:192].t(), atol=1e-4)


def test_what_falls_back_to_torch(backend, monkeypatch):
    """Small products, other dtypes, autocast, mkl, grad tracking through mm: all take F.linear / @ and give the
    same values."""
    backend("onednn")
    seen = calls(monkeypatch)
    torch.manual_seed(0)
    w = torch.randn(128, 256)
    small = torch.randn(2, 256)
    assert torch.allclose(gemm.linear(small, w), F.linear(small, w))
    x = torch.randn(512, 128)
    assert gemm.linear(x.double(), w[:, :128].double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm.linear(x, w[:, 128:].contiguous()).dtype == torch.bfloat16
    wt = torch.randn(128, 128, requires_grad=True)
    assert gemm.mm(x, wt).requires_grad  # needs a graph: torch's own product
    assert seen == []
    backend("mkl")
    gemm.linear(x, w[:, 128:].contiguous())
    assert seen == [] and not gemm.use_onednn()


def test_backend_choice(monkeypatch):
    assert gemm.use_onednn() == gemm._amd_avx512()  # auto: oneDNN only where MKL leaves AVX-512 unused

    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", unreadable)
    assert gemm._amd_avx512.__wrapped__() is False  # no /proc/cpuinfo (macOS, Windows): MKL
    with pytest.raises(ValueError, match="cpu_matmul"):
        gemm.set_backend("openblas")
