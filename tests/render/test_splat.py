"""Gaussian splatting: Warp kernel vs plain-torch twin (values, gradients, split CPU backward),
float64 finite differences for every parameter and the camera, degenerate inputs, training
utilities."""

import math

import pytest
import torch

from diffvc._kernels import split_chunks
from diffvc.geometry.transforms import axis_angle_to_matrix
from diffvc.render import Cameras
from diffvc.render.splat import (DensityControl, Gaussians, bin_gaussians, eval_sh, exponential_lr,
                                 gaussians_from_params, init_splat_params, project_gaussians, psnr,
                                 rasterize_gaussians, render_gaussians, splat_loss, splat_optimizer, ssim)
from diffvc.testing import assert_grad_close

DT = torch.float64


def _scene(n=60, degree=3, seed=0, dtype=DT, spread=1.2, scale=(0.03, 0.12)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * spread
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * (scale[1] - scale[0]) + scale[0]
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    return means, scales, quats, opac, sh


def _cams(dtype=DT, W=37, H=29, ortho=False):
    eyes = [[0.3, 0.6, 3.0], [2.2, 0.4, 1.9]]
    return Cameras.look_at(eyes, width=W, height=H, fov_y=40.0, dtype=dtype, orthographic=ortho,
                           ortho_scale=2.0 if ortho else None)


BG = (0.1, 0.2, 0.3)


def _render(params, cams, backend="warp", **kw):
    return render_gaussians(Gaussians(*params), cams, background=BG, backend=backend, **kw)


def _weighted(img, seed=1):
    g = torch.Generator().manual_seed(seed)
    wc = torch.randn(img.color.shape, generator=g, dtype=img.color.dtype)
    wa = torch.randn(img.alpha.shape, generator=g, dtype=img.color.dtype)
    wd = torch.randn(img.depth.shape, generator=g, dtype=img.color.dtype)
    return (img.color * wc).sum() + (img.alpha * wa).sum() + 0.3 * (img.depth * wd).sum()


@pytest.mark.parametrize("ortho", [False, True])
def test_kernel_matches_twin_values_and_gradients(ortho):
    params = [p.requires_grad_() for p in _scene(n=120)]
    cams = _cams(ortho=ortho)
    a = _render(params, cams, "warp")
    b = _render(params, cams, "torch")
    assert float(a.alpha.detach().max()) > 0.9 and float(a.alpha.detach().min()) < 0.2  # a real image, not empty or full
    for k in ("color", "alpha", "depth"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-10, atol=1e-11)
    ga = torch.autograd.grad(_weighted(a), params)
    gb = torch.autograd.grad(_weighted(b), params)
    for x, y in zip(ga, gb):
        assert float(y.abs().max()) > 0
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_split_backward_keeps_every_add():
    """The CPU backward runs over two thread ranges with private buffers: gradients agree with
    one thread and with the twin (lost atomic adds would make them differ)."""
    params = [p.requires_grad_() for p in _scene(n=150, seed=3)]
    cams = _cams(W=64, H=48)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        n_threads = cams.batch_size * 4 * 3 * 256
        assert len(split_chunks(n_threads, "cpu", min_per_thread=1024)) == 2
        g2 = torch.autograd.grad(_weighted(_render(params, cams)), params)
        torch.set_num_threads(1)
        g1 = torch.autograd.grad(_weighted(_render(params, cams)), params)
    finally:
        torch.set_num_threads(old)
    gt = torch.autograd.grad(_weighted(_render(params, cams, "torch")), params)
    for a, b, c in zip(g2, g1, gt):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-10)


def test_float32_matches_twin():
    params = [p.float().requires_grad_() for p in _scene(n=80, seed=5)]
    cams = _cams(dtype=torch.float32)
    a, b = _render(params, cams), _render(params, cams, "torch")
    assert float((a.color - b.color).detach().abs().mean()) < 1e-5
    ga = torch.autograd.grad(_weighted(a), params)
    gb = torch.autograd.grad(_weighted(b), params)
    for x, y in zip(ga, gb):
        assert float((x - y).norm() / y.norm()) < 1e-3


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_gradients_match_finite_differences(degree):
    means, scales, quats, opac, sh = _scene(n=10, degree=degree, seed=11 + degree, spread=0.9,
                                            scale=(0.08, 0.2))
    cams = _cams(W=18, H=15)
    inputs = [x.clone().requires_grad_() for x in (means, scales, quats, opac, sh)]

    def f(m, s, q, o, c):
        img = render_gaussians(Gaussians(m, s, q, o, c), cams, background=BG)
        return img.color, img.alpha, img.depth

    rep = assert_grad_close(f, inputs, rtol=1e-5, atol=1e-8, eps=1e-6, max_elements=16)
    assert min(float(n.norm()) for n in rep.numeric) > 1e-3


def test_camera_pose_and_intrinsics_gradients():
    means, scales, quats, opac, sh = _scene(n=10, degree=1, seed=21, spread=0.9, scale=(0.08, 0.2))
    base = _cams(W=18, H=15)
    g = Gaussians(means, scales, quats, opac, sh)

    def f(rot, trans, K):
        R = axis_angle_to_matrix(rot) @ base.R
        cams = Cameras(R, base.t + trans, K, base.width, base.height)
        img = render_gaussians(g, cams, background=BG)
        return img.color, img.depth

    rot = torch.zeros(2, 3, dtype=DT, requires_grad=True)
    trans = torch.zeros(2, 3, dtype=DT, requires_grad=True)
    K = base.intrinsics.clone().requires_grad_()
    rep = assert_grad_close(f, [rot, trans, K], rtol=1e-5, atol=1e-8)
    assert min(float(n.norm()) for n in rep.numeric) > 1e-3


def test_projection_ewa_matches_analytic_jacobian():
    """An isotropic Gaussian on the optical axis at depth d projects to sigma * f / d pixels."""
    cams = Cameras.look_at([[0.0, 0.0, 4.0]], width=64, height=64, fov_y=50.0, dtype=DT)
    f = float(cams.intrinsics[0, 0])
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]], dtype=DT)
    scales = torch.full((2, 3), 0.1, dtype=DT)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=DT)
    p = project_gaussians(means, scales, quats, cams, eps2d=0.3)
    var = (0.1 * f / 4.0) ** 2 + 0.3
    torch.testing.assert_close(p.means2d[0, 0], torch.tensor([32.0, 32.0], dtype=DT))
    torch.testing.assert_close(p.cov2d[0, 0], torch.tensor([var, 0.0, var], dtype=DT))
    torch.testing.assert_close(p.conics[0, 0], torch.tensor([1 / var, 0.0, 1 / var], dtype=DT))
    assert int(p.radii[0, 0]) == math.ceil(3 * math.sqrt(var))
    assert int(p.radii[0, 1]) == 0            # behind the camera: culled
    off = project_gaussians(torch.tensor([[30.0, 0.0, 0.0]], dtype=DT), scales[:1], quats[:1], cams)
    assert int(off.radii[0, 0]) == 0          # outside the frustum


def test_sh_basis_orthonormal_and_degree_limit():
    torch.manual_seed(0)
    d = torch.randn(200000, 3, dtype=DT)
    from diffvc.render.splat import _sh_basis

    Y = _sh_basis(d / d.norm(dim=-1, keepdim=True), 3)
    gram = Y.T @ Y * (4 * math.pi / d.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=DT), atol=0.02, rtol=0)
    sh = torch.randn(5, 16, 3, dtype=DT)
    dirs = torch.randn(5, 3, dtype=DT)
    torch.testing.assert_close(eval_sh(sh, dirs, 1), eval_sh(sh[:, :4], dirs))
    with pytest.raises(ValueError, match="sh must have"):
        eval_sh(torch.zeros(5, 5, 3), dirs)


def test_degenerate_gaussians_finite():
    means, scales, quats, opac, sh = _scene(n=8, degree=2, seed=7, spread=0.8)
    cams = _cams(W=20, H=16)
    center = cams.centers[0]
    means = means.clone()
    means[0] = center                         # at the camera centre
    means[1] = center + 0.5 * (center - torch.zeros(3, dtype=DT))  # behind the camera
    scales = scales.clone()
    scales[2] = 0.0                           # zero scale
    scales[3, 1] = 0.0                        # flat
    opac = opac.clone()
    opac[4] = 0.0                             # zero opacity
    quats = quats.clone()
    quats[5] = 0.0                            # zero quaternion
    params = [p.requires_grad_() for p in (means, scales, quats, opac, sh)]
    img = _render(params, cams)
    assert all(bool(torch.isfinite(x).all()) for x in (img.color, img.alpha, img.depth))
    grads = torch.autograd.grad(_weighted(img), params)
    assert all(bool(torch.isfinite(gr).all()) for gr in grads)
    assert int(img.projected.radii[:, 0].max()) == 0 and int(img.projected.radii[:, 1].max()) == 0
    empty = Gaussians(*(p[:0].detach() for p in params))
    out = render_gaussians(empty, cams, background=BG)
    torch.testing.assert_close(out.color, torch.tensor(BG, dtype=DT).expand_as(out.color))


def test_bad_inputs_raise_naming_argument():
    means, scales, quats, opac, sh = _scene(n=4, degree=0)
    bad = means.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="means"):
        Gaussians(bad, scales, quats, opac, sh)
    with pytest.raises(ValueError, match="scales"):
        Gaussians(means, -scales, quats, opac, sh)
    with pytest.raises(ValueError, match="quats"):
        Gaussians(means, scales, quats[:, :3], opac, sh)
    with pytest.raises(TypeError, match="opacities"):
        Gaussians(means, scales, quats, opac.float(), sh)
    with pytest.raises(ValueError, match="sh"):
        Gaussians(means, scales, quats, opac, torch.zeros(4, 3, 3, dtype=DT))
    with pytest.raises(ValueError, match="backend"):
        render_gaussians(Gaussians(means, scales, quats, opac, sh), _cams(), backend="cuda")


def test_binning_lists_sorted_and_complete():
    means, scales, quats, opac, sh = _scene(n=300, seed=2)
    cams = _cams(W=70, H=50)
    p = project_gaussians(means, scales, quats, cams)
    bins = bin_gaussians(p.means2d, p.radii, p.depths, 50, 70)
    nt = bins.tiles_x * bins.tiles_y
    expected = 0
    for b in range(2):
        for k in range(nt):
            ids = bins.ids[bins.starts[b * nt + k]:bins.starts[b * nt + k + 1]].long()
            d = p.depths[b, ids]
            assert bool((d[1:] >= d[:-1]).all())
            ty, tx = divmod(k, bins.tiles_x)
            r = p.radii[b].double()
            m = p.means2d[b]
            touch = ((r > 0) & (m[:, 0] + r > tx * 16) & (m[:, 0] - r < (tx + 1) * 16)
                     & (m[:, 1] + r > ty * 16) & (m[:, 1] - r < (ty + 1) * 16))
            assert set(ids.tolist()) == set(torch.nonzero(touch).flatten().tolist())
            expected += int(touch.sum())
    assert bins.num_pairs == expected > 300


def test_ssim_and_loss():
    torch.manual_seed(0)
    x = torch.rand(2, 24, 24, 3, dtype=DT)
    assert abs(float(ssim(x, x)) - 1) < 1e-12
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    s = float(ssim(x, y))
    assert 0 < s < 0.9
    assert float(splat_loss(x, x)) < 1e-12 and float(splat_loss(x, y)) > 0.05
    assert abs(psnr(x, x + 0.1) - 20.0) < 1e-9
    xr = x.clone().requires_grad_()
    assert_grad_close(lambda a: ssim(a[:, :8, :8], y[:, :8, :8]), [xr], max_elements=12)

    def ssim_3dgs(a, b):  # gaussian-splatting's utils/loss_utils.py: five 11x11 depthwise filters
        g = torch.exp(-((torch.arange(11, dtype=DT) - 5) ** 2) / (2 * 1.5 ** 2))
        g = g / g.sum()
        w = (g[:, None] * g[None, :]).expand(3, 1, 11, 11).contiguous()
        a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)

        def f(z):
            return torch.nn.functional.conv2d(z, w, padding=5, groups=3)

        mu1, mu2 = f(a), f(b)
        s11, s22, s12 = f(a * a) - mu1 ** 2, f(b * b) - mu2 ** 2, f(a * b) - mu1 * mu2
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))).mean()

    assert abs(float(ssim(x, y) - ssim_3dgs(x, y))) < 1e-14


def test_density_control_clone_split_prune_keeps_adam_state():
    torch.manual_seed(0)
    pts = torch.rand(6, 3, dtype=DT)
    params = init_splat_params(pts, sh_degree=1, opacity=0.5)
    with torch.no_grad():
        params["scales"][:3] = math.log(0.001)   # small: clone
        params["scales"][3:] = math.log(0.5)     # large: split
        params["opacities"][5] = -10.0           # nearly transparent: prune
    opt = splat_optimizer(params, {k: 1e-3 for k in params})
    loss = sum((p ** 2).sum() for p in params.values())
    loss.backward()
    opt.step()
    dc = DensityControl(scene_extent=1.0, grad_threshold=1e-3)
    grad = torch.zeros(1, 6, 2, dtype=DT)
    grad[0, [0, 3]] = 1.0                       # hot: 0 (small) and 3 (large)
    dc.accumulate(grad, torch.ones(1, 6, dtype=torch.int32), 64, 64)
    old_means = params["means"].detach().clone()
    old_scale3 = torch.exp(params["scales"][3].detach())
    old_avg = opt.state[params["means"]]["exp_avg"].clone()
    new, counts = dc.densify_and_prune(params, opt)
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "total": 6 - 1 - 1 + 1 + 2}
    assert new["means"].shape[0] == 7 and new["shN"].shape == (7, 3, 3)
    # survivors keep rows and Adam moments; clone copies row 0 with zero moments
    keep = [0, 1, 2, 4]
    torch.testing.assert_close(new["means"][:4], old_means[keep])
    torch.testing.assert_close(new["means"][4], old_means[0])
    st = opt.state[new["means"]]["exp_avg"]
    torch.testing.assert_close(st[:4], old_avg[keep])
    assert float(st[4:].abs().max()) == 0
    # split children: smaller, near the parent
    torch.testing.assert_close(new["scales"][5:], torch.log(old_scale3 / 1.6).expand(2, 3))
    assert float((new["means"][5:].detach() - old_means[3]).norm(dim=-1).max()) < 3.0
    assert all(g["params"][0] is new[g["name"]] for g in opt.param_groups)
    # the optimizer still steps with the new tensors
    (new["means"] ** 2).sum().backward()
    opt.step()
    reset = dc.reset_opacity(new, opt, 0.01)
    assert float(torch.sigmoid(reset["opacities"]).max()) <= 0.01 + 1e-12
    g = gaussians_from_params(reset)
    assert len(g) == 7 and g.degree == 1
    assert abs(exponential_lr(0, 1e-2, 1e-4, 10) - 1e-2) < 1e-15
    assert abs(exponential_lr(5, 1e-2, 1e-4, 10) - 1e-3) < 1e-12


def test_opacity_aware_radius_leaves_image_unchanged():
    """Shorter tile lists from the opacity-aware radius drop only pixels where alpha < 1/255."""
    means, scales, quats, opac, sh = _scene(n=150, seed=4)
    opac = opac * 0.4
    cams = _cams()
    a = render_gaussians(Gaussians(means, scales, quats, opac, sh), cams, background=BG)
    p3 = project_gaussians(means, scales, quats, cams)  # plain 3-sigma boxes
    colors = eval_sh(sh[None].expand(2, -1, -1, -1), means[None] - cams.centers[:, None])
    b = rasterize_gaussians(p3, colors, opac, cams.height, cams.width, torch.tensor(BG, dtype=DT))
    for k in ("color", "alpha", "depth"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-12, atol=1e-12)
    pa = a.projected
    n_a = bin_gaussians(pa.means2d, pa.radii, pa.depths, cams.height, cams.width).num_pairs
    n_3 = bin_gaussians(p3.means2d, p3.radii, p3.depths, cams.height, cams.width).num_pairs
    assert n_a < n_3
