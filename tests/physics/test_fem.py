import pytest
import torch

from diffvc.geometry import tet_box
from diffvc.physics import rollout
from diffvc.physics.fem import (FEMModel, FEMState, element_stress_torch, fem_forces_torch, fem_implicit_step,
                                fem_static_solve, fem_step, fem_step_torch, lame_parameters)
from diffvc.testing import assert_grad_close

D = torch.float64


def _block(res=(2, 1, 1), material="neohookean", dtype=D, **kw):
    v, t = tet_box((0.2, 0.1, 0.1), res, center=(0.0, 0.06, 0.0), dtype=dtype)
    opts = dict(density=1000.0, youngs_modulus=2e4, poisson_ratio=0.3, material=material, damping=(0.5, 0.01),
                ke=2e3, kd=5.0, mu=0.4, contact_smoothing=2e-3)
    opts.update(kw)
    return FEMModel.create(v, t, dtype=dtype, **opts), v


def test_materials_linearise_to_linear_elasticity_and_rest_is_stress_free():
    mu, lam = torch.tensor(2.0e4, dtype=D), torch.tensor(3.0e4, dtype=D)
    eye = torch.eye(3, dtype=D)
    A = 1e-6 * torch.randn(3, 3, dtype=D)
    e = 0.5 * (A + A.T)
    lin = 2 * mu * e + lam * torch.trace(e) * eye
    for material in ("neohookean", "corotated"):
        zero = torch.zeros(3, 3, dtype=D)
        P0 = element_stress_torch(eye, zero, mu, lam, torch.tensor(0.0, dtype=D), material)
        assert P0.abs().max() < 1e-9
        P = element_stress_torch(eye + A, zero, mu, lam, torch.tensor(0.0, dtype=D), material)
        assert (P - lin).abs().max() < 1e-3 * lin.abs().max()
        # rigid rotation: no elastic stress, no damping stress
        R = torch.linalg.matrix_exp(torch.tensor([[0, -0.3, 0.2], [0.3, 0, -0.1], [-0.2, 0.1, 0]], dtype=D))
        W = torch.tensor([[0, -1.0, 0.5], [1.0, 0, -2.0], [-0.5, 2.0, 0]], dtype=D) @ R  # dR/dt for a spin
        assert element_stress_torch(R, W, mu, lam, torch.tensor(0.1, dtype=D), material).abs().max() < 1e-6
    m, l = lame_parameters(1e5, 0.25)
    assert abs(float(m) - 4e4) < 1e-6 and abs(float(l) - 4e4) < 1e-6
    with pytest.raises(ValueError, match="poisson_ratio"):
        lame_parameters(1e5, 0.5)


@pytest.mark.parametrize("material", ["neohookean", "corotated"])
def test_kernel_matches_torch_twin_values_and_gradients(material):
    model, v = _block(material=material, pinned=[0])
    gen = torch.Generator().manual_seed(1)
    x = (v + 0.01 * torch.randn(v.shape, generator=gen, dtype=D)).requires_grad_()
    vel = torch.randn(v.shape, generator=gen, dtype=D).requires_grad_()
    lame = model.lame.clone().requires_grad_()
    damping = model.damping.clone().requires_grad_()
    contact = model.contact.clone().requires_grad_()
    w = torch.randn(2, *v.shape, generator=gen, dtype=D)

    def run(step):
        mdl = FEMModel(model.rest, model.tets, model.Dm_inv, model.volume, model.mass, lame, damping, model.gravity,
                       model.planes, contact, model.pinned, model.material)
        s = FEMState(x, vel)
        for _ in range(3):
            s = step(mdl, s, 1e-3)
        return s

    a, b = run(fem_step), run(fem_step_torch)
    torch.testing.assert_close(a.x, b.x)
    torch.testing.assert_close(a.v, b.v)
    assert (a.x[0] == x[0]).all()  # pinned
    leaves = [x, vel, lame, damping, contact]
    ga = torch.autograd.grad((a.x * w[0]).sum() + (a.v * w[1]).sum(), leaves)
    gb = torch.autograd.grad((b.x * w[0]).sum() + (b.v * w[1]).sum(), leaves)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q)


def test_semi_implicit_gradients_through_contact_match_finite_differences():
    model, v = _block(material="corotated")
    x0 = v - torch.tensor([0.0, 0.055, 0.0], dtype=D)  # bottom layer pressed into the ground

    def run(x, vel, lame_kpa, damping, contact, mass):
        mdl = FEMModel(model.rest, model.tets, model.Dm_inv, model.volume, mass, lame_kpa * 1e3, damping,
                       model.gravity, model.planes, contact, model.pinned, model.material)
        s = rollout(lambda s: fem_step(mdl, s, 1e-3), FEMState(x, vel), 10)
        return s.x, s.v

    vel0 = torch.tensor([0.3, -0.2, 0.1], dtype=D).expand_as(v).clone()
    args = [a.clone().requires_grad_() for a in (x0, vel0, model.lame / 1e3, model.damping, model.contact,
                                                 model.mass)]
    assert_grad_close(run, args, rtol=1e-5, atol=1e-8, eps=1e-7, max_elements=12)


@pytest.mark.parametrize("material", ["neohookean", "corotated"])
def test_implicit_step_adjoint_matches_finite_differences(material):
    """Backward Euler by Newton; the backward is one adjoint solve (implicit function theorem)."""
    model, v = _block(res=(1, 1, 1), material=material, pinned=[0, 1])
    x0 = v - torch.tensor([0.0, 0.012, 0.0], dtype=D)  # bottom layer 2 mm into the ground

    def run(x, vel, E, nu, damping, contact):
        mdl = FEMModel.create(model.rest, model.tets, density=1000.0, youngs_modulus=E, poisson_ratio=nu,
                              material=material, damping=damping, pinned=[0, 1], ke=contact[0], kd=contact[1],
                              mu=contact[2], friction_smoothing=contact[3], contact_smoothing=contact[4])
        s = fem_implicit_step(mdl, FEMState(x, vel), 0.01)
        return s.x, s.v

    vel0 = torch.tensor([0.5, -0.3, 0.2], dtype=D).expand_as(v).clone()
    args = [x0, vel0, torch.tensor(2e4, dtype=D), torch.tensor(0.3, dtype=D), model.damping, model.contact]
    args = [a.clone().requires_grad_() for a in args]
    assert_grad_close(run, args, rtol=1e-5, atol=1e-8, eps=1e-6, max_elements=3)


@pytest.mark.parametrize("material", ["neohookean", "corotated"])
@pytest.mark.parametrize("static", [False, True])
def test_warp_residual_and_jacobian_match_torch_twin_and_finite_differences(material, static):
    """The Newton system assembled in Warp (residual, analytic 3x3-block Jacobian with
    strain-rate damping, contact and friction) equals the torch twin's (forward-mode Jacobian)
    to rounding, and the Jacobian matches central differences of the residual."""
    from diffvc.physics import fem as fem_module

    model, v = _block(res=(2, 2, 1), material=material, pinned=[0, 1])
    gen = torch.Generator().manual_seed(3)
    x0 = v - torch.tensor([0.0, 0.07, 0.0], dtype=D) + 0.01 * torch.randn(v.shape, generator=gen, dtype=D)
    v0 = torch.randn(v.shape, generator=gen, dtype=D)
    x = x0 + 0.01 * v0 + 0.003 * torch.randn(v.shape, generator=gen, dtype=D)
    assert (x[:, 1] < 0).any() and (x[:, 1] > 0).any()  # some vertices in contact, some not
    system = fem_module._System(model, x0, v0, 0.01, static)
    r, blocks = system(x)
    A = system.pattern.matrix(blocks).toarray()
    r_t = fem_module._residual_torch(model, x, x0, v0, 0.01, static)
    A_t = fem_module._jacobian_torch(model, x, x0, 0.01, static).toarray()
    torch.testing.assert_close(r, r_t, rtol=1e-12, atol=1e-14 * float(r_t.abs().max()))
    assert abs(A - A_t).max() <= 1e-12 * abs(A_t).max()
    torch.testing.assert_close(fem_module._residual(model, x, x0, v0, 0.01, static), r_t, rtol=1e-12,
                               atol=1e-14 * float(r_t.abs().max()))
    e = 1e-7 * torch.randn(v.shape, generator=gen, dtype=D)
    fd = (system(x + e, False)[0] - system(x - e, False)[0]).reshape(-1).numpy() / 2
    assert abs(A @ e.reshape(-1).numpy() - fd).max() <= 1e-6 * abs(fd).max()


def test_implicit_steps_reuse_the_factorisation_and_the_adjoint_stays_exact():
    """Later steps of a rollout reuse factors of an earlier Newton matrix of the same mesh (as a
    preconditioner) instead of factorising every iteration; the adjoint still solves with the
    Jacobian at each step's solution (checked against finite differences)."""
    from diffvc.physics import fem as fem_module

    model, v = _block(res=(2, 1, 1), pinned=[0, 1], planes=[])
    fem_module._pattern(model).last.clear()
    vel0 = torch.tensor([0.0, -0.3, 0.2], dtype=D).expand_as(v).clone()

    def run(E, vel):
        mdl = FEMModel.create(model.rest, model.tets, density=1000.0, youngs_modulus=E, poisson_ratio=0.3,
                              damping=(0.5, 0.01), pinned=[0, 1], planes=[])
        s = rollout(lambda s: fem_implicit_step(mdl, s, 0.01), FEMState(v, vel), 4)
        return s.x

    pattern = fem_module._pattern(model)
    before = pattern.factorisations
    newton_iters = []
    orig = fem_module._newton

    def counting(*a, **k):
        x, info = orig(*a, **k)
        newton_iters.append(info["iterations"])
        return x, info

    fem_module._newton = counting
    try:
        run(torch.tensor(2e4, dtype=D), vel0)
        made = pattern.factorisations - before
        assert made < sum(newton_iters) / 2, (made, newton_iters)
        args = [torch.tensor(2e4, dtype=D).requires_grad_(), vel0.clone().requires_grad_()]
        assert_grad_close(run, args, rtol=1e-5, atol=1e-9, eps=1e-6, max_elements=6)
    finally:
        fem_module._newton = orig


def test_energy_line_search_cuts_an_overshooting_newton_step():
    """A stiff block released from a large stretch: the full Newton step from the initial guess
    overshoots (its incremental energy rises); the line search halves it, and the solve still
    reaches the residual's root."""
    from diffvc.physics import fem as fem_module

    model, v = _block(res=(1, 1, 1), youngs_modulus=1e6, planes=[], pinned=[0])
    x0 = v * torch.tensor([2.5, 0.4, 1.0], dtype=D)
    s = FEMState(x0, torch.zeros_like(v))
    x, info = fem_module._newton(model, s.x, s.v, 0.05, False, s.x.clone(), 50, 1e-12)
    assert info["converged"] and info["line_search_cuts"] > 0
    assert float(fem_module._residual_torch(model, x, s.x, s.v, 0.05, False).abs().max()) < 1e-9


def test_implicit_step_converges_where_full_newton_steps_cycle_on_friction():
    """5.8 cm deep in the ground and sliding: full Newton steps cycled around the friction law
    (update stuck near 2e-2 m); the damped steps converge."""
    import warnings

    from diffvc.physics import fem as fem_module

    model, v = _block(pinned=[0, 1])
    x0 = v - torch.tensor([0.0, 0.058, 0.0], dtype=D)
    vel0 = torch.tensor([0.5, -0.3, 0.2], dtype=D).expand_as(v).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        s = fem_implicit_step(model, FEMState(x0, vel0), 0.01)
    r = fem_module._residual_torch(model, s.x, x0, vel0, 0.01, False)
    assert float(r.abs().max()) < 1e-9


def test_implicit_step_is_stable_for_stiff_material_where_explicit_is_not():
    model, v = _block(youngs_modulus=1e8, planes=[], pinned=[0, 1, 2, 3])
    s = FEMState(v + 0.002 * torch.randn_like(v), torch.zeros_like(v))
    si = s
    for _ in range(5):
        si = fem_implicit_step(model, si, 0.01)
    def strain(x):  # largest relative change of a pairwise distance
        return float(((torch.cdist(x, x) - torch.cdist(v, v)).abs() / (torch.cdist(v, v) + 1e-3)).max())

    assert torch.isfinite(si.x).all() and strain(si.x) <= 1.01 * strain(s.x)  # no growth (it dissipates)
    se = s
    try:
        for _ in range(5):
            se = fem_step(model, se, 0.01)
        blew_up = strain(se.x) > 10 * strain(s.x)
    except ValueError as e:  # diverged: a state holding NaN/inf is refused on construction
        blew_up = "non-finite" in str(e)
    assert blew_up


def _cantilever(res, E=None):
    L, h, b, rho, g = 1.0, 0.1, 0.1, 1000.0, 9.81
    I = b * h ** 3 / 12
    q = rho * g * b * h
    E = q * L ** 4 / (8 * I * 0.005) if E is None else E  # tip deflection 0.5% of the length
    v, t = tet_box((L, h, b), res, center=(L / 2, 0.0, 0.0), dtype=D)
    model = FEMModel.create(v, t, density=rho, youngs_modulus=E, poisson_ratio=0.0, pinned=v[:, 0] < 1e-9,
                            planes=[], dtype=D)
    x = fem_static_solve(model, tol=1e-9)
    tip = v[:, 0] > L - 1e-9
    return float(-(x[tip, 1] - v[tip, 1]).mean()) / (q * L ** 4 / (8 * E * I))


def test_cantilever_matches_euler_bernoulli_within_5_percent():
    """Clamped beam L/h = 10 under its own weight, nu = 0, static Newton solve. Linear tets are
    stiff in bending (shear locking) and converge from below with the resolution along the
    length and through the thickness (the width, across which nothing bends, needs one cell):
    (20,2,1) gives 0.58 of w = q L^4 / (8 E I), (100,10,1) 0.979."""
    coarse = _cantilever((20, 2, 1))
    fine = _cantilever((100, 10, 1))
    assert 0.5 < coarse < fine < 1.0
    assert abs(fine - 1) < 0.05


@pytest.mark.slow
def test_cantilever_fully_refined_3d_matches_euler_bernoulli_within_5_percent():
    ratio = _cantilever((100, 10, 10))  # 60,000 tets: 0.974
    assert abs(ratio - 1) < 0.05


def test_static_solve_gradient_matches_finite_differences():
    v, t = tet_box((0.3, 0.06, 0.06), (3, 1, 1), center=(0.15, 0.0, 0.0), dtype=D)
    pinned = v[:, 0] < 1e-9

    def run(E, nu, rho):
        model = FEMModel.create(v, t, density=rho, youngs_modulus=E, poisson_ratio=nu, pinned=pinned, planes=[],
                                dtype=D)
        return fem_static_solve(model)

    args = [torch.tensor(2e5, dtype=D), torch.tensor(0.3, dtype=D), torch.tensor(1000.0, dtype=D)]
    assert_grad_close(run, [a.requires_grad_() for a in args], rtol=1e-5, atol=1e-10, eps=1e-4)


def test_degenerate_and_inverted_tets_give_finite_values_and_gradients():
    # one flat rest tet (zero volume), one regular
    verts = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=D) * 0.1 + 0.2
    tets = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]])
    for material in ("neohookean", "corotated"):
        model = FEMModel.create(verts, tets, material=material, dtype=D)
        assert model.volume[0] == 0 and model.volume[1] > 0
        # invert the regular tet (vertex 4 pushed through the base) and flatten it
        for z in (-0.05, 0.0):
            x = verts.clone()
            x[4, 2] = 0.2 + z
            x = x.requires_grad_()
            lame = model.lame.clone().requires_grad_()
            mdl = FEMModel(model.rest, model.tets, model.Dm_inv, model.volume, model.mass, lame, model.damping,
                           model.gravity, model.planes, model.contact, model.pinned, model.material)
            s = fem_step(mdl, FEMState(x, torch.zeros_like(x)), 1e-4)
            gx, gl = torch.autograd.grad(s.x.sum() + s.v.sum(), [x, lame])
            assert torch.isfinite(s.x).all() and torch.isfinite(gx).all() and torch.isfinite(gl).all()
            f = fem_forces_torch(mdl, x.detach(), None)
            assert torch.isfinite(f).all()
            if material == "neohookean":
                assert f[4, 2] > 0  # stable Neo-Hookean pushes the inverted/flat tet back out


def _drop(E, nu, damping, steps=200, res=4, dt=1e-3):
    """A soft 0.2 m tet cube (384 tets) dropped from 5 cm onto the ground."""
    v, t = tet_box(0.2, res, center=(0.0, 0.15, 0.0), dtype=D)
    model = FEMModel.create(v, t, density=500.0, youngs_modulus=E, poisson_ratio=nu, damping=damping,
                            ke=2e4, kd=20.0, mu=0.5, contact_smoothing=2e-3, dtype=D)
    state = FEMState(v, torch.tensor([0.3, -0.5, 0.0], dtype=D).expand_as(v).clone())
    return rollout(lambda s: fem_step(model, s, dt), state, steps, checkpoint_every=50)


def test_drop_rollout_gradient_wrt_material_and_damping_matches_finite_differences():
    """The pipeline's "recover E, nu, damping from a drop" scenario: 384 tets, 200 steps (0.2 s)
    of semi-implicit steps with ground contact; gradient of the final shape w.r.t. (E, nu,
    alpha, beta)."""
    def fn(E, nu, damping):
        s = _drop(E, nu, damping)
        return s.x[:, 1].max() - s.x[:, 1].min(), s.x[:, 0].mean(), s.v.pow(2).sum()

    args = [torch.tensor(3e4, dtype=D), torch.tensor(0.3, dtype=D), torch.tensor([1.0, 0.005], dtype=D)]
    with torch.no_grad():
        s = _drop(*args)
        assert float(s.v[:, 1].mean()) > -1.0  # it has landed (free fall would give -2.46 m/s)
    assert_grad_close(fn, [a.requires_grad_() for a in args], rtol=1e-4, atol=1e-9, eps=1e-6)


def test_bad_input_names_the_argument():
    v, t = tet_box(0.1, 1, dtype=D)
    with pytest.raises(ValueError, match="tets"):
        FEMModel.create(v, t[:, :3], dtype=D)
    with pytest.raises(ValueError, match="material"):
        FEMModel.create(v, t, material="rubber", dtype=D)
    with pytest.raises(ValueError, match="density"):
        FEMModel.create(v, t, density=-1.0, dtype=D)
    model = FEMModel.create(v, t, dtype=D)
    with pytest.raises(ValueError, match="state.x"):
        fem_step(model, FEMState(v[:3], v[:3]), 1e-3)
    with pytest.raises(ValueError, match="x_init"):
        fem_static_solve(model, v[:3])
