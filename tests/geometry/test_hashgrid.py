"""Hash-grid encoding: the Warp kernel against its torch twin (values, first derivatives w.r.t.
points and table, float32 and float64), central FD in float64, second derivatives (an eikonal
loss) through the kernel path, a NeuralField on both backends, bad input."""

import pytest
import torch

from diffvc.geometry import HashGridEncoding, NeuralField
from diffvc.testing import assert_grad_close


def _enc(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    args = dict(levels=4, features=2, log2_table=10, base_resolution=4, max_resolution=32, bounds=(-0.9, 0.9))
    args.update(kw)
    he = HashGridEncoding(**args).to(dtype)
    with torch.no_grad():
        he.table.normal_()
    return he


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_kernel_matches_twin(dtype, tol):
    he = _enc(dtype, features=3)
    assert he.dense[0] and not he.dense[-1]  # both kinds of level
    x = (torch.rand(2000, 3, dtype=dtype) * 2.2 - 1.1).requires_grad_()  # some points outside the box
    y = he(x)
    yt = he.forward_torch(x)
    assert y.shape == (2000, he.out_dim) == yt.shape
    assert torch.allclose(y, yt, atol=tol, rtol=0)
    g = torch.randn_like(y)
    gx, gt = torch.autograd.grad(y, [x, he.table], g)
    gxt, gtt = torch.autograd.grad(yt, [x, he.table], g)
    scale = float(gxt.abs().max())
    assert torch.allclose(gx, gxt, atol=tol * scale, rtol=0)
    assert torch.allclose(gt, gtt, atol=tol * float(gtt.abs().max()), rtol=0)
    out = (x.detach().abs() > 0.9).any(-1)
    assert out.any() and gx[out].ne(0).any()  # a clamped coordinate: zero, others not
    assert (gx[(x.detach().abs() > 0.9)] == 0).all()


def test_kernel_gradients_match_fd():
    he = _enc()
    x = (torch.rand(6, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    assert_grad_close(lambda p: he(p), (x,), rtol=1e-6)
    table = he.table.detach().clone().requires_grad_()

    def f(t):
        return torch.func.functional_call(he, {"table": t}, (x.detach(),))

    assert_grad_close(f, (table,), rtol=1e-6, max_elements=40)


def test_double_backward_through_kernel_matches_twin_and_fd():
    """An eikonal-style loss of the first derivative w.r.t. the points, differentiated w.r.t. the
    table: the kernel path (second derivatives through the twin) equals the twin and central FD."""
    he = _enc(levels=3, log2_table=8, base_resolution=3, max_resolution=9)
    x = torch.rand(10, 3, dtype=torch.float64) * 1.6 - 0.8
    w = torch.randn(he.out_dim, dtype=torch.float64)

    def loss(table, backend):
        he.backend = backend
        with torch.enable_grad():  # also under the FD checker's no_grad
            p = x.clone().requires_grad_()
            y = torch.func.functional_call(he, {"table": table}, (p,)) @ w
            (g,) = torch.autograd.grad(y.sum(), p, create_graph=True)
        return ((g.norm(dim=-1) - 1) ** 2).sum()

    table = he.table.detach().clone().requires_grad_()
    (gk,) = torch.autograd.grad(loss(table, "warp"), table)
    (gt,) = torch.autograd.grad(loss(table, "torch"), table)
    assert gk.abs().sum() > 0 and torch.allclose(gk, gt, atol=1e-12)
    assert_grad_close(lambda t: loss(t, "warp"), (table,), rtol=1e-5, max_elements=30)
    he.backend = "warp"


def test_neural_field_backends_agree():
    torch.manual_seed(2)
    net = NeuralField(out_dim=4, encoding="hash", hidden=16, layers=1, squeeze=False, levels=4, log2_table=10,
                      max_resolution=32).double()
    x = torch.rand(300, 3, dtype=torch.float64) * 2 - 1
    a = net(x)
    net.encoding.backend = "torch"
    b = net(x)
    assert torch.allclose(a, b, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="backend"):
        HashGridEncoding(backend="cuda")
    he = _enc()
    with pytest.raises(ValueError, match="backend"):
        he.backend = "numpy"
    with pytest.raises(ValueError, match="x"):
        he(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_resolution"):
        HashGridEncoding(max_resolution=2 ** 21)
    assert he(torch.zeros(0, 3, dtype=torch.float64)).shape == (0, he.out_dim)
