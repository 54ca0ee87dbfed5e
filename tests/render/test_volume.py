"""Volume rendering: Warp kernels vs torch twins, finite differences (float64), closed forms,
bad input, Mitsuba .vol files."""

import math

import pytest
import torch

from diffvc.render import Cameras
from diffvc.render.volume import (composite_rays, grid_index_map, importance_samples, ray_aabb, read_vol,
                                  render_field, render_grid, render_volume, stratified_samples, write_vol)
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _rays(n, dtype=D64, seed=0, spread=0.25):
    g = torch.Generator().manual_seed(seed)
    o = (torch.randn(n, 3, generator=g, dtype=D64) * 0.3 + torch.tensor([0.1, -0.1, -3.0], dtype=D64))
    d = torch.tensor([0.0, 0.0, 1.0], dtype=D64) + spread * torch.randn(n, 3, generator=g, dtype=D64)
    d = d / d.norm(dim=-1, keepdim=True)
    return o.to(dtype), d.to(dtype)


def _grids(shape=(5, 6, 4), chans=3, dtype=D64, seed=1):
    g = torch.Generator().manual_seed(seed)
    dens = (torch.rand(shape, generator=g, dtype=D64) * 2 + 0.2).to(dtype)
    feat = torch.randn(*shape, chans, generator=g, dtype=D64).to(dtype)
    return dens, feat


def _run(backend, dens, feat, o, d, sh=None, **kw):
    out = render_grid(dens, o, d, -1.0, 1.0, 12, features=feat, sh_degree=sh, backend=backend, **kw)
    return out


@pytest.mark.parametrize("mode", ["rgb", "sh3", "absorption", "stop"])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_march_kernel_matches_twin(mode, dtype):
    o, d = _rays(300, dtype)  # 300 rays: the CPU launch is split over workers with private buffers
    dens, feat = _grids(chans=48 if mode == "sh3" else 3, dtype=dtype)
    jit = torch.rand(300, generator=torch.Generator().manual_seed(3), dtype=D64).to(dtype)
    kw = dict(jitter=jit, background=torch.tensor([0.2, 0.5, 0.9], dtype=dtype))
    if mode == "absorption":
        feat, kw = None, dict(jitter=jit)
    if mode == "stop":
        dens = dens * 4
        kw["t_stop"] = 0.05
    sh = 3 if mode == "sh3" else None
    res = []
    for backend in ("warp", "torch"):
        leaves = [x.clone().requires_grad_() for x in (dens, o, d) + ((feat,) if feat is not None else ())]
        out = _run(backend, leaves[0], leaves[3] if feat is not None else None, leaves[1], leaves[2], sh, **kw)
        w = torch.linspace(0.5, 1.5, 300, dtype=dtype)
        loss = (out.transmittance * w).sum() + 0.1 * (out.depth * w.flip(0)).sum()
        if out.color is not None:
            loss = loss + (out.color * torch.tensor([1.0, -2.0, 0.5], dtype=dtype)).sum()
        grads = torch.autograd.grad(loss, leaves)
        res.append(([out.transmittance, out.depth] + ([out.color] if out.color is not None else []), grads))
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    for a, b in zip(res[0][0], res[1][0]):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(res[0][1], res[1][1]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, **(tol if dtype == D64 else dict(atol=2e-3, rtol=2e-3)))
    if mode == "stop":  # the cut-off is reached on some rays and changes the result by <= t_stop
        full = _run("warp", dens, feat, o, d, None, jitter=jit, background=kw["background"])
        assert (res[0][0][0] != full.transmittance).any()
        assert (res[0][0][0] - full.transmittance).abs().max() <= 0.05


def test_split_backward_loses_no_adds():
    """The CPU backward splits rays over workers with private grid buffers: 1 and 2 threads agree."""
    o, d = _rays(2000, D64, spread=0.05)  # many rays cross the same voxels
    dens, feat = _grids((4, 4, 4))
    grads = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            dd, ff = dens.clone().requires_grad_(), feat.clone().requires_grad_()
            out = render_grid(dd, o, d, n_samples=16, features=ff)
            (out.color.sum() + out.transmittance.sum()).backward()
            grads.append((dd.grad, ff.grad))
    finally:
        torch.set_num_threads(old)
    twin_d, twin_f = dens.clone().requires_grad_(), feat.clone().requires_grad_()
    out = render_grid(twin_d, o, d, n_samples=16, features=twin_f, backend="torch")
    (out.color.sum() + out.transmittance.sum()).backward()
    for g in grads:
        torch.testing.assert_close(g[0], twin_d.grad, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(g[1], twin_f.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("sh", [None, 2])
def test_march_fd_all_inputs(sh):
    o, d = _rays(6)
    dens, feat = _grids((3, 4, 3), chans=27 if sh == 2 else 3)
    jit = torch.tensor([0.1, 0.7, 0.3, 0.9, 0.5, 0.25], dtype=D64)
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=D64)

    def f(dens, feat, o, d, bg):
        out = render_grid(dens, o, d, -1.0, 1.0, 7, features=feat, sh_degree=sh, jitter=jit, background=bg)
        return out.color, out.transmittance, out.depth

    assert_grad_close(f, [x.clone().requires_grad_() for x in (dens, feat, o, d, bg)], rtol=1e-5, atol=1e-8,
                      max_elements=24)


def test_absorption_fd_node_grid():
    o, d = _rays(5)
    dens, _ = _grids((4, 3, 5))

    def f(dens, o, d):
        return render_grid(dens, o, d, -1.0, 1.0, 9, cell_centered=False, near=0.0).transmittance

    assert_grad_close(f, [x.clone().requires_grad_() for x in (dens, o, d)], rtol=1e-5, atol=1e-8, max_elements=30)


def test_camera_gradients_fd():
    dens, feat = _grids((4, 4, 4))
    R0 = Cameras.look_at([[0.4, 0.5, 3.0]], width=5, height=4, fov_y=35, dtype=D64)

    def f(t, K, feat):
        cam = Cameras(R0.R, t, K, 5, 4)
        return render_volume(cam, dens, feat, n_samples=6, supersample=2)

    assert_grad_close(f, [R0.t.clone().requires_grad_(), R0.intrinsics.clone().requires_grad_(),
                          feat.clone().requires_grad_()], rtol=1e-5, atol=1e-8, max_elements=24)


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_composite_matches_twin_and_fd(backend):
    g = torch.Generator().manual_seed(0)
    N, S = 7, 9
    sigma = torch.rand(N, S, generator=g, dtype=D64) * 3
    col = torch.rand(N, S, 3, generator=g, dtype=D64)
    delta = torch.rand(N, S, generator=g, dtype=D64) * 0.3 + 0.01
    t = torch.cumsum(delta, 1)
    bg = torch.rand(N, 3, generator=g, dtype=D64)

    def f(sigma, col, delta, t, bg):
        out = composite_rays(sigma, col, delta, t, bg, backend=backend)
        return out.color, out.transmittance, out.depth

    assert_grad_close(f, [x.clone().requires_grad_() for x in (sigma, col, delta, t, bg)], rtol=1e-6, atol=1e-9,
                      max_elements=30)
    a = composite_rays(sigma, col, delta, t, bg, t_stop=0.2, backend="warp")
    b = composite_rays(sigma, col, delta, t, bg, t_stop=0.2, backend="torch")
    torch.testing.assert_close(a.color, b.color)
    torch.testing.assert_close(a.transmittance, b.transmittance)
    # transmittance is exp(-sum tau)
    torch.testing.assert_close(composite_rays(sigma, None, delta).transmittance, torch.exp(-(sigma * delta).sum(1)))


def test_homogeneous_cube_closed_form():
    sigma = 1.7
    dens = torch.full((8, 8, 8), sigma, dtype=D64)
    # random rays through the cube [-1, 1]^3 from outside: T = exp(-sigma * chord length)
    g = torch.Generator().manual_seed(5)
    target = torch.rand(200, 3, generator=g, dtype=D64) * 1.6 - 0.8
    o = torch.randn(200, 3, generator=g, dtype=D64)
    o = 4 * o / o.norm(dim=-1, keepdim=True)
    d = target - o
    d = d / d.norm(dim=-1, keepdim=True)
    tn, tf, hit = ray_aabb(o, d, -1.0, 1.0)
    assert hit.all()
    # chord length by dense point sampling (independent of the slab code)
    ts = torch.linspace(0, 8, 80001, dtype=D64)
    inside = ((o[:, None] + ts[None, :, None] * d[:, None]).abs() <= 1).all(-1)
    chord = inside.sum(1).double() * (ts[1] - ts[0])
    torch.testing.assert_close(tf - tn, chord, atol=2e-4, rtol=0)
    for backend in ("warp", "torch"):
        out = render_grid(dens, o, d, -1.0, 1.0, 5, backend=backend)
        torch.testing.assert_close(out.transmittance, torch.exp(-sigma * (tf - tn)), atol=1e-12, rtol=1e-12)
    # axis-aligned orthographic view: every pixel sees L = 2
    cam = Cameras.look_at([[0.0, 0.0, 5.0]], width=8, height=8, orthographic=True, ortho_scale=1.5, dtype=D64)
    img = render_volume(cam, dens, n_samples=3)
    torch.testing.assert_close(img, torch.full_like(img, math.exp(-2 * sigma)), atol=1e-12, rtol=0)


def test_missing_rays_and_bad_input():
    dens, feat = _grids((4, 4, 4))
    o = torch.tensor([[5.0, 5.0, -3.0], [0.0, 0.0, -3.0]], dtype=D64)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=D64)  # first misses; both parallel to 2 slabs
    dd, ff, oo = dens.clone().requires_grad_(), feat.clone().requires_grad_(), o.clone().requires_grad_()
    out = render_grid(dd, oo, d, features=ff, background=0.25, n_samples=8)
    assert out.transmittance[0] == 1 and (out.color[0] == 0.25).all() and out.depth[0] == 0
    assert out.transmittance[1] < 0.5
    (out.color.sum() + out.transmittance.sum()).backward()
    assert torch.isfinite(dd.grad).all() and torch.isfinite(oo.grad).all() and (oo.grad[0] == 0).all()
    # zero-length direction: finite, defined (misses)
    z = render_grid(dens, o, torch.zeros_like(d), n_samples=4)
    assert torch.isfinite(z.transmittance).all()
    bad = dens.clone()
    bad[1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="density"):
        render_grid(bad, o, d)
    with pytest.raises(ValueError, match="density"):
        render_grid(dens[0], o, d)
    with pytest.raises(ValueError, match="n_samples"):
        render_grid(dens, o, d, n_samples=0)
    with pytest.raises(ValueError, match="features"):
        render_grid(dens, o, d, features=feat[..., :2], sh_degree=1)
    with pytest.raises(ValueError, match="origins"):
        render_grid(dens, o[:, :2], d)
    with pytest.raises(ValueError, match="bbox_min"):
        render_grid(dens, o, d, 1.0, -1.0)
    with pytest.raises(ValueError, match="jitter"):
        render_grid(dens, o, d, jitter=torch.full((2,), 1.5, dtype=D64))
    with pytest.raises(ValueError, match="backend"):
        render_grid(dens, o, d, backend="cuda")
    with pytest.raises(ValueError, match="sigma"):
        composite_rays(torch.full((2, 3), float("inf")), None, torch.ones(2, 3))
    with pytest.raises(ValueError, match="delta"):
        composite_rays(torch.ones(2, 3), None, -torch.ones(2, 3))
    # negative densities count as zero
    neg = render_grid(-dens, o, d, n_samples=4)
    assert (neg.transmittance == 1).all()


def test_index_map_conventions():
    # cell-centred: voxel centres at lo + (i + 1/2) * size / n ; nodes: lo + i * size / (n - 1)
    xf = grid_index_map((4, 4, 4), -1.0, 1.0, True)
    centres = -1 + (torch.arange(4.0) + 0.5) * 0.5
    torch.testing.assert_close(centres * xf[0, 0] + xf[1, 0], torch.arange(4.0))
    xf = grid_index_map((5, 5, 5), -1.0, 1.0, False)
    torch.testing.assert_close(torch.linspace(-1, 1, 5) * xf[0, 0] + xf[1, 0], torch.arange(5.0))
    # a linear ramp along x rendered through a thin slab reads back the voxel-centred values, and
    # is constant in the half-voxel border (index clamped)
    ramp = torch.arange(4.0, dtype=D64)[:, None, None].expand(4, 2, 2).contiguous()
    xs = torch.tensor([-0.95, -0.75, -0.25, 0.25, 0.75, 0.95], dtype=D64)
    o = torch.stack([xs, torch.zeros_like(xs), torch.full_like(xs, -2.0)], -1)
    d = torch.tensor([0.0, 0.0, 1.0], dtype=D64).expand(6, 3)
    tau = -torch.log(render_grid(ramp, o, d, n_samples=4).transmittance) / 2
    torch.testing.assert_close(tau, torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0], dtype=D64))


def test_vol_file_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, 4, 5, generator=g)
    p = write_vol(tmp_path / "a.vol", v, [-1, -2, -3], [1, 2, 3])
    raw = p.read_bytes()
    assert raw[:4] == b"VOL\x03" and len(raw) == 48 + 4 * 60
    import struct
    # Mitsuba's layout: x fastest, then y, then z
    x, y, z = 2, 1, 3
    off = 48 + 4 * ((z * 4 + y) * 3 + x)
    assert struct.unpack("<f", raw[off:off + 4])[0] == pytest.approx(float(v[x, y, z]))
    back, lo, hi = read_vol(p)
    torch.testing.assert_close(back, v)
    assert lo.tolist() == [-1, -2, -3] and hi.tolist() == [1, 2, 3]
    rgb = torch.rand(2, 3, 4, 3, generator=g)
    back, _, _ = read_vol(write_vol(tmp_path / "b.vol", rgb))
    torch.testing.assert_close(back, rgb)
    (tmp_path / "c.vol").write_bytes(b"NOPE" + bytes(60))
    with pytest.raises(ValueError, match="path"):
        read_vol(tmp_path / "c.vol")


def test_stratified_and_importance_samples():
    tn = torch.tensor([0.5, 1.0], dtype=D64)
    tf = torch.tensor([2.5, 1.0], dtype=D64)  # the second is a miss (zero span)
    t, delta = stratified_samples(tn, tf, 4, torch.tensor([0.0, 0.5], dtype=D64))
    torch.testing.assert_close(t[0], torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=D64))
    assert (delta[1] == 0).all() and (t[1] == 1.0).all()
    # importance samples give an unbiased optical depth: average over jitters -> exact integral
    g = torch.Generator().manual_seed(0)
    n = 2000
    tn, tf = torch.zeros(n, dtype=D64), torch.full((n,), 2.0, dtype=D64)
    tc, dc = stratified_samples(tn, tf, 32)
    sig = lambda x: 3 * torch.exp(-200 * (x - 1.3) ** 2)  # noqa: E731
    w = torch.exp(-torch.cumsum(sig(tc) * dc, 1)) * sig(tc)
    tfi, dfi = importance_samples(tc, dc, w, 8, torch.rand(n, generator=g, dtype=D64))
    assert (tfi[:, 1:] >= tfi[:, :-1]).all() and (tfi >= 0).all() and (tfi <= 2).all()
    est = (sig(tfi) * dfi).sum(1)
    exact = 3 * math.sqrt(math.pi / 200)  # the peak lies well inside [0, 2]
    assert abs(float(est.mean()) - exact) < 3 * float(est.std()) / math.sqrt(n) + 1e-9
    ts, ds = stratified_samples(tn, tf, 8, torch.rand(n, generator=g, dtype=D64))
    uniform = (sig(ts) * ds).sum(1)
    assert float(est.std()) < 0.5 * float(uniform.std())  # importance sampling reduces the spread


def test_render_field_neural_field_weights_fd():
    from diffvc.geometry import NeuralField

    torch.manual_seed(0)
    net = NeuralField(out_dim=4, encoding="frequency", hidden=8, layers=1, num_freqs=2, squeeze=False).double()

    def field(p, d):
        h = net(p)
        return torch.nn.functional.softplus(h[:, 0]) * 2, torch.sigmoid(h[:, 1:])

    o, d = _rays(4)
    names = [n for n, _ in net.named_parameters()]

    def f(*ps):
        sd = dict(zip(names, ps))

        def fld(p, d):
            h = torch.func.functional_call(net, sd, (p,))
            return torch.nn.functional.softplus(h[:, 0]) * 2, torch.sigmoid(h[:, 1:])

        # (importance sampling is left out: its sample positions move with the weights, a
        # dependence that is not differentiated, so finite differences would see it)
        r = render_field(fld, o, d, n_samples=8, background=0.5, jitter=torch.full((4,), 0.3, dtype=D64))
        return r.color, r.transmittance, r.depth

    assert_grad_close(f, [p.detach().clone().requires_grad_() for _, p in net.named_parameters()], rtol=1e-5,
                      atol=1e-8, max_elements=12)
    # both backends agree on a NeuralField render
    a = render_field(field, o, d, n_samples=8, n_importance=8, backend="warp")
    b = render_field(field, o, d, n_samples=8, n_importance=8, backend="torch")
    torch.testing.assert_close(a.color, b.color)
    assert (a.transmittance < 0.999).any()


def test_occupancy_grid_skipping():
    from diffvc.render.volume import OccupancyGrid

    g = torch.Generator().manual_seed(0)
    n = 16
    c = (torch.arange(n, dtype=D64) + 0.5) / n * 2 - 1
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    # near-empty space (1e-5, not exactly 0: zero density is a kink where finite precision picks the side)
    dens = torch.where(x ** 2 + y ** 2 + z ** 2 < 0.3, 2 + torch.rand(n, n, n, generator=g, dtype=D64),
                       torch.full((n, n, n), 1e-5, dtype=D64))
    feat = torch.rand(n, n, n, 3, generator=g, dtype=D64)
    occ = OccupancyGrid(8, dtype=D64).update(dens, generator=g)
    assert 0.1 < occ.fraction < 0.9
    o, d = _rays(200)
    jit = torch.rand(200, generator=g, dtype=D64)
    outs = []
    for backend, grid in (("warp", occ), ("torch", occ), ("warp", None)):
        dd, ff = dens.clone().requires_grad_(), feat.clone().requires_grad_()
        out = render_grid(dd, o, d, n_samples=24, features=ff, jitter=jit, occupancy=grid, backend=backend)
        (out.color.sum() + out.transmittance.sum() + out.depth.sum()).backward()
        outs.append((out.color, out.transmittance, out.depth, dd.grad, ff.grad))
    for a, b in zip(outs[0], outs[1]):  # kernel == twin with skipping
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    for a, b in zip(outs[0][:3], outs[2][:3]):  # only near-empty space was skipped: the same image
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    inside = dens > 1  # and the same gradients for the dense voxels
    torch.testing.assert_close(outs[0][3][inside], outs[2][3][inside], atol=1e-4, rtol=1e-3)
    # a stale grid that marks everything empty renders nothing and passes no gradient
    occ.occupied.zero_()
    dd = dens.clone().requires_grad_()
    out = render_grid(dd, o, d, n_samples=24, occupancy=occ)
    out.transmittance.sum().backward()
    assert (out.transmittance == 1).all() and (dd.grad == 0).all()
    with pytest.raises(TypeError, match="occupancy"):
        render_grid(dens, o, d, occupancy=dens)


def _ball_scene(n=32, haze=1e-3, seed=0):
    """Density 2..3 in a ball of radius 0.5, a thin haze ``haze`` elsewhere; random RGB."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.arange(n, dtype=D64) + 0.5) / n * 2 - 1
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    r2 = x ** 2 + y ** 2 + z ** 2
    dens = torch.where(r2 < 0.25, 2 + torch.rand(n, n, n, generator=g, dtype=D64), torch.full_like(r2, haze))
    return dens, torch.rand(n, n, n, 3, generator=g, dtype=D64), r2


def test_occupancy_absolute_threshold_prunes_empty_space():
    from diffvc.render.volume import OccupancyGrid

    dens, _, _ = _ball_scene()
    g = torch.Generator().manual_seed(1)
    # nerfacc's rule: empty when one step (here of length diagonal / 128) has optical depth <= 0.01
    occ = OccupancyGrid(16, threshold=0.01, step_size=2 * 3 ** 0.5 / 128, dtype=D64)
    assert occ.density_threshold == pytest.approx(0.01 / (2 * 3 ** 0.5 / 128))
    assert OccupancyGrid(16).density_threshold == 0.01  # default: a density of 0.01 per world unit
    occ.update(dens, generator=g)
    # the haze (1e-3, a nonzero density everywhere: a threshold relative to the mean kept it) is pruned
    assert occ.fraction < 0.25
    cc = (torch.arange(16, dtype=D64) + 0.5) / 16 * 2 - 1
    cx, cy, cz = torch.meshgrid(cc, cc, cc, indexing="ij")
    rc = (cx ** 2 + cy ** 2 + cz ** 2).sqrt()
    assert occ.occupied[rc < 0.4].all()                         # cells inside the ball
    assert not occ.occupied[rc > 0.5 + 2 * 3 ** 0.5 / 8].any()  # beyond the ball, the dilation and a cell diagonal
    # EMA of the maxima: the ball emptied, the cells stay marked while decay * ema > threshold
    occ.update(torch.zeros_like(dens), generator=g)
    assert occ.occupied[rc < 0.4].all()
    occ0 = OccupancyGrid(16, threshold=0.01, step_size=2 * 3 ** 0.5 / 128, decay=0.0, dtype=D64).update(dens)
    assert occ0.fraction > 0 and occ0.update(torch.zeros_like(dens)).fraction == 0  # no memory without decay
    # the threshold is per step of the given length; bad arguments are named
    assert OccupancyGrid(4, threshold=0.05, step_size=0.1).density_threshold == pytest.approx(0.5)
    with pytest.raises(ValueError, match="step_size"):
        OccupancyGrid(4, step_size=0.0)
    with pytest.raises(ValueError, match="threshold"):
        OccupancyGrid(4, threshold=-1.0)
    with pytest.raises(TypeError, match="threshold"):
        OccupancyGrid(4, threshold=None)


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_occupancy_pruned_render_matches_unpruned(backend):
    """Skipping the haze changes each ray by at most haze * (ray length in skipped cells) <=
    haze * box diagonal; voxels whose footprint lies only in skipped cells get zero gradient."""
    from diffvc.render.volume import OccupancyGrid

    haze = 1e-3
    dens, feat, r2 = _ball_scene(haze=haze)
    occ = OccupancyGrid(16, dtype=D64).update(dens, generator=torch.Generator().manual_seed(2))
    o, d = _rays(300, spread=0.2)
    jit = torch.rand(300, generator=torch.Generator().manual_seed(3), dtype=D64)
    outs = []
    for grid in (None, occ):
        dd, ff = dens.clone().requires_grad_(), feat.clone().requires_grad_()
        out = render_grid(dd, o, d, n_samples=64, features=ff, jitter=jit, occupancy=grid, backend=backend)
        (out.color.sum() + out.transmittance.sum()).backward()
        outs.append((out.color, out.transmittance, dd.grad, ff.grad))
    bound = haze * 2 * 3 ** 0.5
    dT = (outs[0][1] - outs[1][1]).abs()
    dC = (outs[0][0] - outs[1][0]).abs()
    assert 0 < dT.max() <= bound and dC.max() <= bound
    assert (outs[0][1] < 0.5).sum() > 50  # many rays cross the ball
    far = r2 > 1.05 ** 2  # voxels far from the ball (beyond the dilated cells and a voxel): only in skipped cells
    assert outs[0][2][far].abs().sum() > 0 and (outs[1][2][far] == 0).all() and (outs[1][3][far] == 0).all()
    inside = r2 < 0.35 ** 2  # the dense voxels' gradients change by the haze's share only
    torch.testing.assert_close(outs[1][2][inside], outs[0][2][inside], atol=5 * bound, rtol=0.02)


@pytest.mark.parametrize("negative", [False, True])
def test_absorption_image_loss_backward_matches_twin_and_fd(negative):
    """Absorption only, a loss of the image alone, gradients to the grid only: the backward that
    scatters one gradient per ray (no re-gather; taken for a non-negative grid) and the general
    backward (a grid with a negative entry) both equal the torch twin and finite differences."""
    o, d = _rays(300)
    dens, _ = _grids()
    if negative:
        dens[2, 3, 1] = -0.5
    jit = torch.rand(300, generator=torch.Generator().manual_seed(5), dtype=D64)
    w = torch.linspace(0.5, 1.5, 300, dtype=D64)

    def f(dens, backend="warp"):
        out = render_grid(dens, o, d, -1.0, 1.0, 12, backend=backend, jitter=jit)
        return (out.transmittance * w).sum()

    grads = [torch.autograd.grad(f(x, b), x)[0] for b in ("warp", "torch") for x in [dens.clone().requires_grad_()]]
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-9)
    assert_grad_close(f, [dens.clone().requires_grad_()], rtol=1e-5, atol=1e-8, max_elements=20)
