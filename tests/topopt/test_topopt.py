"""SIMP topology optimisation: element matrices, solvers, adjoint gradients (float64 FD), filters,
OC/MMA, passive elements, load cases, 3D, and the top88 reference (numpy port) on its MBB beam."""

import numpy as np
import pytest
import torch

from diffvc.testing import assert_grad_close
from diffvc.topopt import (SIMP, SOLID, VOID, DensityFilter, ElasticityGrid, GridProblem, cantilever,
                           cantilever_3d, compliance, displacements, element_stiffness, heaviside, mbb_beam,
                           with_passive)
from diffvc.topopt.top88 import lk, top88


def test_element_stiffness_matches_top88_and_has_rigid_modes():
    assert np.abs(element_stiffness(2).numpy() - lk(0.3)).max() < 1e-14
    for d, n_rigid in [(2, 3), (3, 6)]:
        K = element_stiffness(d, 0.3)
        assert torch.allclose(K, K.T, atol=1e-15)
        ev = torch.linalg.eigvalsh(K)
        assert ev[:n_rigid].abs().max() < 1e-12 and ev[n_rigid] > 1e-3


@pytest.mark.parametrize("shape", [(16, 8), (8, 4, 4)])
def test_mgcg_and_direct_agree(shape):
    p = mbb_beam(*shape) if len(shape) == 2 else cantilever_3d(*shape)
    E = 1e-3 + torch.rand(int(np.prod(shape)), dtype=torch.float64) ** 3
    ud = ElasticityGrid(shape, p.fixed, solver="direct").solve(E, p.loads)
    g = ElasticityGrid(shape, p.fixed, solver="mgcg", tol=1e-11, coarse_dofs=50)
    assert len(g.level_shapes) >= 2
    um = g.solve(E, p.loads)
    assert ((um - ud).norm() / ud.norm()) < 1e-8
    # the solution satisfies K u = f on the free dofs: check against a dense assembly
    KE = element_stiffness(len(shape))
    K = torch.zeros(p.ndof, p.ndof, dtype=torch.float64)
    ed = g.edof
    k = ed.shape[1]
    K.index_put_((ed[:, :, None].expand(-1, k, k).reshape(-1), ed[:, None, :].expand(-1, k, k).reshape(-1)),
                 (E[:, None, None] * KE).reshape(-1), accumulate=True)
    free = ~p.fixed
    r = (K @ ud)[free] - p.loads[free]
    assert r.norm() < 1e-9 * p.loads.norm() and ud[p.fixed].abs().max() == 0


@pytest.mark.parametrize("solver", ["direct", "mgcg"])
def test_displacements_adjoint_matches_fd(solver):
    p = cantilever(6, 4, load="two")
    g = ElasticityGrid(p.shape, p.fixed, solver=solver, tol=1e-13, coarse_dofs=20)
    E = (0.2 + torch.rand(24, dtype=torch.float64)).requires_grad_()
    f = p.loads.clone().requires_grad_()
    n = None if solver == "direct" else 16  # FD entries checked (mgcg solves cost more)
    assert_grad_close(lambda E, f: displacements(E, f, g), (E, f), rtol=1e-6, max_elements=n)
    assert_grad_close(lambda E, f: compliance(E, f, g), (E, f), rtol=1e-6, max_elements=n)


@pytest.mark.parametrize("filt,beta", [("sensitivity", None), ("density", None), ("density", 4.0)])
def test_compliance_gradient_through_filters_matches_fd(filt, beta):
    s = SIMP(mbb_beam(8, 4), volfrac=0.5, rmin=1.5, filter=filt, beta=beta)
    x = (0.2 + 0.6 * torch.rand(8, 4, dtype=torch.float64)).requires_grad_()
    assert_grad_close(lambda x: s.compliance(s.physical(x)), (x,), rtol=1e-6)


def test_filters_and_projection():
    f = DensityFilter((7, 5), 1.5)
    x = torch.rand(7, 5, dtype=torch.float64)
    # top88's explicit H and Hs
    r = 1
    H = torch.zeros(35, 35, dtype=torch.float64)
    for i1 in range(7):
        for j1 in range(5):
            for i2 in range(max(i1 - r, 0), min(i1 + r + 1, 7)):
                for j2 in range(max(j1 - r, 0), min(j1 + r + 1, 5)):
                    H[i1 * 5 + j1, i2 * 5 + j2] = max(0.0, 1.5 - ((i1 - i2) ** 2 + (j1 - j2) ** 2) ** 0.5)
    Hs = H.sum(1)
    assert torch.allclose(f(x).reshape(-1), H @ x.reshape(-1) / Hs, atol=1e-14)
    dc = -torch.rand(7, 5, dtype=torch.float64)
    ref = H @ (x * dc).reshape(-1) / Hs / x.reshape(-1).clamp_min(1e-3)
    assert torch.allclose(f.sensitivity(x, dc).reshape(-1), ref, atol=1e-14)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    h = heaviside(t, 8.0, 0.5)
    assert abs(h[0]) < 1e-15 and abs(h[-1] - 1) < 1e-15 and bool((h[1:] > h[:-1]).all())
    with pytest.raises(ValueError, match="beta"):
        heaviside(t, 0.0)


@pytest.mark.parametrize("ft,filt", [(1, "sensitivity"), (2, "density")])
def test_reproduces_top88_mbb_60x20(ft, filt):
    ref = top88(60, 20, 0.5, 3.0, 1.5, ft)
    res = SIMP(mbb_beam(60, 20), 0.5, 3.0, 1.5, filter=filt).optimize("oc")
    assert res.converged
    assert abs(res.iterations - ref["iterations"]) <= 3, (res.iterations, ref["iterations"])
    assert abs(res.compliance[-1] - ref["c"][-1]) <= 0.005 * ref["c"][-1], (res.compliance[-1], ref["c"][-1])
    assert np.abs(res.density.numpy().T - ref["x"]).max() < 1e-3
    assert abs(res.volume[-1] - 0.5) < 2e-3


def test_mma_and_oc_on_cantilever():
    p = cantilever(40, 20)
    oc = SIMP(p, 0.4, filter="density").optimize("oc", max_iter=60)
    mma = SIMP(p, 0.4, filter="density").optimize("mma", max_iter=60)
    for r in (oc, mma):
        assert r.compliance[-1] < 0.5 * r.compliance[0]
        assert float(r.density.mean()) <= 0.4 + 2e-3
    assert abs(mma.compliance[-1] - oc.compliance[-1]) < 0.05 * oc.compliance[-1], (mma.compliance[-1], oc.compliance[-1])


def test_passive_elements_and_two_load_cases():
    p = cantilever(30, 20, load="two")
    ii, jj = torch.meshgrid(torch.arange(30), torch.arange(20), indexing="ij")
    passive = torch.zeros(30, 20, dtype=torch.int8)
    passive[((ii - 10) ** 2 + (jj - 10) ** 2) < 25] = VOID
    passive[25:, 9:11] = SOLID
    s = SIMP(with_passive(p, passive), 0.4, filter="density")
    r = s.optimize("oc", max_iter=30)
    assert float(r.density[passive == VOID].abs().max()) == 0.0
    assert float(r.density[passive == SOLID].min()) == 1.0
    assert r.compliance[-1] < r.compliance[0]
    # the objective is the sum of the two load cases' compliances
    E = s.young(r.density)
    c2 = compliance(E, s.loads, s.grid)
    c_sep = [compliance(E, s.loads[:, i], s.grid) for i in range(2)]
    assert torch.allclose(c2, torch.stack(c_sep), rtol=1e-10)
    assert abs(float(s.compliance(r.density)) - float(c2.sum())) < 1e-9 * float(c2.sum())


def test_3d_cantilever_and_extra_loss():
    p = cantilever_3d(12, 6, 4)
    s = SIMP(p, 0.3, rmin=1.5, filter="density")
    r = s.optimize("oc", max_iter=15)
    assert r.compliance[-1] < 0.7 * r.compliance[0] and float(r.density.mean()) <= 0.3 + 2e-3
    # the compliance is an ordinary torch loss: combine it with another term
    x = torch.full(p.shape, 0.3, dtype=torch.float64, requires_grad=True)
    xp = s.physical(x)
    loss = s.compliance(xp) + 10.0 * ((xp - 0.3) ** 2).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_bad_input_names_argument():
    p = mbb_beam(8, 4)
    with pytest.raises(ValueError, match="volfrac"):
        SIMP(p, volfrac=1.5)
    with pytest.raises(ValueError, match="filter"):
        SIMP(p, filter="gauss")
    with pytest.raises(ValueError, match="Emin"):
        SIMP(p, Emin=0.0)
    with pytest.raises(ValueError, match="loads"):
        GridProblem((8, 4), p.fixed, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="fixed"):
        GridProblem((8, 4), torch.zeros(p.ndof, dtype=torch.bool), p.loads)
    with pytest.raises(ValueError, match="E must"):
        compliance(torch.ones(5, dtype=torch.float64), p.loads, ElasticityGrid(p.shape, p.fixed))
    with pytest.raises(ValueError, match="update"):
        SIMP(p).optimize("sgd")
    with pytest.raises(ValueError, match="x must"):
        SIMP(p).physical(torch.zeros(4, 8))


def test_near_void_design_gives_finite_gradients():
    s = SIMP(mbb_beam(8, 4), filter="density")
    x = torch.zeros(8, 4, dtype=torch.float64, requires_grad=True)
    c = s.compliance(s.physical(x))
    c.backward()
    assert torch.isfinite(c) and torch.isfinite(x.grad).all()
