"""Implicit layers: IFT gradients against float64 finite differences and against gradients
unrolled through the converged solver's iterations."""

import pytest
import torch

from diffvc.optim.implicit import cg, fixed_point, gmres, minimize, qp_solve, root_solve
from diffvc.testing import assert_grad_close

F64 = torch.float64


def test_krylov_solvers_solve_small_systems():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(12, 12, generator=g, dtype=F64)
    spd = M @ M.T + 12 * torch.eye(12, dtype=F64)
    b = torch.randn(12, generator=g, dtype=F64)
    torch.testing.assert_close(cg(lambda v: spd @ v, b), torch.linalg.solve(spd, b), rtol=1e-8, atol=1e-10)
    A = M + 4 * torch.eye(12, dtype=F64)  # non-symmetric
    torch.testing.assert_close(gmres(lambda v: A @ v, b, restart=5), torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)


def _residual(x, a, B):
    return x ** 3 + a * x + B @ x - 1.0


def test_root_solve_gradient_matches_fd_and_unrolled_newton():
    g = torch.Generator().manual_seed(1)
    a = (1.0 + torch.rand(5, generator=g, dtype=F64)).requires_grad_()
    B = (0.2 * torch.randn(5, 5, generator=g, dtype=F64)).requires_grad_()
    x0 = torch.zeros(5, dtype=F64)
    for method in ("gmres", "direct"):
        assert_grad_close(lambda a, B: root_solve(_residual, x0, a, B, backward=method), (a, B), rtol=1e-6, eps=1e-6)
    x = root_solve(_residual, x0, a, B)
    assert float(_residual(x, a, B).norm()) < 1e-10
    w = torch.randn(5, generator=g, dtype=F64)
    ga = torch.autograd.grad((w * x).sum(), [a, B])

    # unrolled: differentiate through 30 Newton iterations (converged long before)
    z = x0.clone()
    for _ in range(30):
        J = torch.autograd.functional.jacobian(lambda v: _residual(v, a, B), z, create_graph=True)
        z = z - torch.linalg.solve(J, _residual(z, a, B))
    gu = torch.autograd.grad((w * z).sum(), [a, B])
    for u, v in zip(ga, gu):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)


def test_fixed_point_gradient_matches_fd_and_unrolled_iteration():
    g = torch.Generator().manual_seed(2)
    W = (0.3 * torch.randn(6, 6, generator=g, dtype=F64) / 6 ** 0.5).requires_grad_()
    u = torch.randn(6, generator=g, dtype=F64).requires_grad_()
    step = lambda x, W, u: torch.tanh(W @ x + u)  # noqa: E731  a contraction
    x0 = torch.zeros(6, dtype=F64)
    assert_grad_close(lambda W, u: fixed_point(step, x0, W, u), (W, u), rtol=1e-6, eps=1e-6)
    plain = fixed_point(step, x0, W, u, tol=1e-14)
    accel = fixed_point(step, x0, W, u, anderson=4)
    torch.testing.assert_close(plain, accel, rtol=1e-9, atol=1e-10)
    z = x0
    for _ in range(300):
        z = step(z, W, u)
    gi = torch.autograd.grad(plain.sum(), [W, u])
    gu = torch.autograd.grad(z.sum(), [W, u])
    for a, b in zip(gi, gu):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _energy(x, k, target):
    # a convex "spring network" energy: pairs coupled by stiffness k, pulled toward target
    d = x[1:] - x[:-1]
    return 0.5 * (k * d * d).sum() + 0.5 * ((x - target) ** 2).sum() + 0.25 * (x ** 4).sum()


def test_minimize_gradient_matches_fd_and_unrolled_newton():
    g = torch.Generator().manual_seed(3)
    k = (1.0 + torch.rand(7, generator=g, dtype=F64)).requires_grad_()
    target = torch.randn(8, generator=g, dtype=F64).requires_grad_()
    x0 = torch.zeros(8, dtype=F64)
    assert_grad_close(lambda k, t: minimize(_energy, x0, k, t), (k, target), rtol=1e-6, eps=1e-6, max_elements=5)
    # L-BFGS stops at |grad| ~ 1e-8 here, so central differences of its output carry ~1e-2 noise
    # at eps = 1e-6; a larger eps shows the same IFT gradient
    assert_grad_close(lambda k, t: minimize(_energy, x0, k, t, method="lbfgs"), (k, target), rtol=2e-3, eps=1e-3, max_elements=5)
    x = minimize(_energy, x0, k, target)
    gi = torch.autograd.grad(x.sum(), [k, target])
    z = x0.clone().requires_grad_()
    for _ in range(12):  # Newton, unrolled with the tape (converged after ~6 iterations)
        gz = torch.autograd.grad(_energy(z, k, target), z, create_graph=True)[0]
        H = torch.stack([torch.autograd.grad(gz[i], z, create_graph=True)[0] for i in range(8)])
        z = z - torch.linalg.solve(H, gz)
    gu = torch.autograd.grad(z.sum(), [k, target])
    for a, b in zip(gi, gu):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _qp_data():
    g = torch.Generator().manual_seed(4)
    M = torch.randn(4, 4, generator=g, dtype=F64)
    Q = M @ M.T + torch.eye(4, dtype=F64)
    p = torch.randn(4, generator=g, dtype=F64)
    G = torch.randn(3, 4, generator=g, dtype=F64)
    h = torch.tensor([-0.5, 0.2, 1.0], dtype=F64)
    A = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=F64)
    b = torch.tensor([0.5], dtype=F64)
    return Q, p, G, h, A, b


def test_qp_solution_satisfies_kkt_and_matches_the_active_set_solve():
    Q, p, G, h, A, b = _qp_data()
    x, lam, nu = qp_solve(Q, p, G, h, A, b, return_duals=True)
    assert float((G @ x - h).max()) < 1e-9 and float((A @ x - b).abs().max()) < 1e-9
    assert float(lam.min()) > -1e-10
    active = lam > 1e-6
    assert 1 <= int(active.sum()) < 3  # some but not all inequalities bind
    Ga = G[active]
    K = torch.cat([torch.cat([Q, Ga.T, A.T], 1),
                   torch.cat([Ga, torch.zeros(Ga.shape[0], Ga.shape[0] + 1, dtype=F64)], 1),
                   torch.cat([A, torch.zeros(1, Ga.shape[0] + 1, dtype=F64)], 1)], 0)
    sol = torch.linalg.solve(K, torch.cat([-p, h[active], b]))
    torch.testing.assert_close(x, sol[:4], rtol=1e-8, atol=1e-9)


def test_qp_gradients_match_finite_differences():
    data = [t.clone().requires_grad_() for t in _qp_data()]
    assert_grad_close(lambda *d: qp_solve(*d), data, rtol=1e-5, eps=1e-6)


def test_qp_without_constraints_is_a_linear_solve():
    Q, p, *_ = _qp_data()
    torch.testing.assert_close(qp_solve(Q, p), torch.linalg.solve(Q, -p), rtol=1e-9, atol=1e-10)


def test_bad_arguments_raise_naming_them():
    x0 = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="backward"):
        root_solve(lambda x: x - 1, x0, backward="bicgstab")
    with pytest.raises(TypeError, match="params"):
        root_solve(lambda x, a: x - a, x0, 1.0)
    with pytest.raises(ValueError, match="anderson"):
        fixed_point(lambda x: x, x0, anderson=-1)
    with pytest.raises(ValueError, match="method"):
        minimize(lambda x: (x * x).sum(), x0, method="bfgs")
    Q, p, G, h, A, b = _qp_data()
    with pytest.raises(ValueError, match="G and h"):
        qp_solve(Q, p, G=G)
    with pytest.raises(ValueError, match="p must"):
        qp_solve(Q, p[:2])
