import math

import pytest
import torch

from diffvc.render import Cameras
from diffvc.render.pathtrace import bsdf_eval, bsdf_sample, bsdf_torch, path_trace
from diffvc.render.pt_scene import PathTracingScene, PTMaterial, cornell_box, cornell_camera, oriented_box, quad
from diffvc.testing import assert_grad_close


def _plane(material, size=200.0, **kw):
    v, f = quad((-size, 0, -size), (-size, 0, size), (size, 0, size), (size, 0, -size))
    return PathTracingScene.from_meshes([(v, f, 0)], [material], **kw)


def _top_camera(size=16, fov=30.0, dtype=torch.float32):
    return Cameras.look_at([[0.0, 1.0, 0.0]], (0.0, 0.0, 0.0), up=(0.0, 0.0, -1.0), width=size, height=size,
                           fov_y=fov, dtype=dtype)


def _plane_points(cam, sub=8):
    """Hit points on y = 0 of a sub x sub grid of rays per pixel (for pixel-averaged references)."""
    H, W = cam.height, cam.width
    s = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub
    j, i = torch.meshgrid(torch.arange(W, dtype=torch.float64), torch.arange(H, dtype=torch.float64), indexing="xy")
    u = (j[..., None, None] + s[None, None, :, None]).expand(H, W, sub, sub)
    v = (i[..., None, None] + s[None, None, None, :]).expand(H, W, sub, sub)
    K = cam.intrinsics[0].double()
    d = torch.stack([(u - K[2]) / K[0], -(v - K[3]) / K[1], -torch.ones_like(u)], -1) @ cam.R[0].double()
    o = cam.centers[0].double()
    t = -o[1] / d[..., 1]
    return o + d * t[..., None]  # (H, W, sub, sub, 3)


def test_deterministic_for_a_seed():
    scene, _ = cornell_box()
    cam = cornell_camera(16, 16)
    a = path_trace(scene, cam, spp=4, seed=5)
    b = path_trace(scene, cam, spp=4, seed=5)
    c = path_trace(scene, cam, spp=4, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 16, 3) and torch.isfinite(a).all() and a.min() >= 0


def test_furnace_diffuse_plane_under_constant_environment():
    env = torch.full((4, 8, 3), 1.0) * torch.tensor([1.0, 0.5, 2.0])
    scene = _plane(PTMaterial("diffuse", (0.8, 0.5, 0.3)), environment=env)
    img = path_trace(scene, _top_camera(), spp=64, max_depth=4)
    expected = torch.tensor([0.8, 0.25, 0.6])
    torch.testing.assert_close(img.mean((0, 1)), expected, rtol=0.01, atol=0.0)


def test_white_furnace_glossy_materials_do_not_create_energy():
    env = torch.ones(4, 8, 3)
    for kind, lo in (("conductor", 0.85), ("plastic", 0.8)):
        scene = _plane(PTMaterial(kind, (1.0, 1.0, 1.0), roughness=0.5), environment=env)
        mean = path_trace(scene, _top_camera(), spp=64, max_depth=2).mean()
        assert lo < float(mean) <= 1.01, (kind, float(mean))


def test_point_and_directional_lights_closed_form():
    albedo, I, h = 0.7, 3.0, 0.8
    cam = _top_camera(12, fov=60.0)
    scene = _plane(PTMaterial("diffuse", (albedo,) * 3), point_lights=[((0.3, h, 0.1), (I, I, I))])
    img = path_trace(scene, cam, spp=64, max_depth=3)
    p = _plane_points(cam)
    r = torch.tensor([0.3, h, 0.1], dtype=torch.float64) - p
    d2 = (r * r).sum(-1)
    ref = (albedo / math.pi * I * (r[..., 1] / d2.sqrt()) / d2).mean((-1, -2))
    torch.testing.assert_close(img[..., 0].double(), ref, rtol=0.03, atol=1e-4)  # pixel jitter noise
    assert float((img[..., 0].double() - ref).abs().sum() / ref.sum()) < 0.005
    E = 2.0
    d = torch.tensor([1.0, 2.0, 0.5])
    scene = _plane(PTMaterial("diffuse", (albedo,) * 3), directional_lights=[(d, (E, E, E))])
    img = path_trace(scene, cam, spp=8, max_depth=3)
    expected = albedo / math.pi * E * float(d[1] / d.norm())
    torch.testing.assert_close(img, torch.full_like(img, expected), rtol=1e-4, atol=1e-5)


def _polygon_irradiance(p, n, poly):
    """Lambert's formula: irradiance at p (..., 3) with normal n from a unit-radiance polygon."""
    a = [(q - p) / (q - p).norm(dim=-1, keepdim=True) for q in poly]
    total = 0.0
    for k in range(len(a)):
        u, w = a[k], a[(k + 1) % len(a)]
        c = torch.linalg.cross(u, w, dim=-1)
        theta = torch.acos((u * w).sum(-1).clamp(-1, 1))
        total = total + theta * (c * n).sum(-1) / c.norm(dim=-1)
    return 0.5 * total.abs()


def test_area_light_matches_lambert_polygon_formula():
    """Next-event estimation + MIS with an emissive quad: compare with the exact irradiance."""
    albedo, Le = 0.6, 5.0
    pv, pf = quad((-50, 0, -50), (-50, 0, 50), (50, 0, 50), (50, 0, -50))
    lq = [(-0.2, 0.5, -0.3), (0.4, 0.5, -0.3), (0.4, 0.5, 0.3), (-0.2, 0.5, 0.3)]  # faces down
    lv, lf = quad(*lq)
    scene = PathTracingScene.from_meshes(
        [(pv, pf, 0), (lv, lf, 1)],
        [PTMaterial("diffuse", (albedo,) * 3), PTMaterial("diffuse", (0.0,) * 3, emission=(Le,) * 3)])
    cam = Cameras.look_at([[0.0, 0.45, 0.0]], (0.0, 0.0, 0.0), up=(0.0, 0.0, -1.0), width=10, height=10, fov_y=50.0)
    img = path_trace(scene, cam, spp=256, max_depth=1)
    p = _plane_points(cam, sub=4)
    n = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    E = _polygon_irradiance(p, n, [torch.tensor(q, dtype=torch.float64) for q in lq])
    ref = (albedo / math.pi * Le * E).mean((-1, -2))
    rel = (img[..., 0].double() - ref).abs().sum() / ref.sum()
    assert rel < 0.02, float(rel)
    assert abs(float(img[..., 0].double().mean() / ref.mean()) - 1) < 0.01


def test_bsdf_kernel_matches_torch_twin_and_sampling_is_consistent():
    g = torch.Generator().manual_seed(0)
    N = 2000
    n = torch.tensor([0.0, 0.0, 1.0]).expand(N, 3)

    def hemi(k):
        x = torch.randn(k, 3, generator=g)
        x = x / x.norm(dim=-1, keepdim=True)
        x[:, 2] = x[:, 2].abs()
        return x

    wo, wi = hemi(N), hemi(N)
    albedo = torch.rand(N, 3, generator=g)
    for kind in ("diffuse", "conductor", "plastic"):
        f, pdf = bsdf_eval(kind, albedo, 0.5, n, wo, wi)
        ref = bsdf_torch(kind, albedo.double(), 0.5, n.double(), wo.double(), wi.double())
        torch.testing.assert_close(f.double(), ref, rtol=2e-4, atol=1e-6)
        assert (pdf > 0).all()
        # E_sampling[f cos / pdf] equals the uniform-hemisphere estimate of the same integral
        M = 200000
        n1 = torch.tensor([0.0, 0.0, 1.0]).expand(M, 3)
        wo1 = torch.tensor([0.3, 0.0, 0.954]).expand(M, 3)
        wo1 = wo1 / wo1.norm(dim=-1, keepdim=True)
        a1 = torch.full((M, 3), 0.5)
        ws = bsdf_sample(kind, 0.5, n1, wo1, seed=1)
        fs, ps = bsdf_eval(kind, a1, 0.5, n1, wo1, ws)
        est_is = torch.where(ps > 0, fs[:, 0] * ws[:, 2].clamp_min(0) / ps.clamp_min(1e-12), torch.zeros_like(ps))
        wu = hemi(M)
        fu, _ = bsdf_eval(kind, a1, 0.5, n1, wo1, wu)
        est_u = fu[:, 0] * wu[:, 2] * 2 * math.pi
        assert abs(float(est_is.mean() - est_u.mean())) < 0.01, kind


def test_twin_gradients_finite_differences():
    g = torch.Generator().manual_seed(1)
    n = torch.tensor([[0.0, 0.0, 1.0]] * 5, dtype=torch.float64)
    wo = torch.tensor([[0.3, 0.1, 0.9]] * 5, dtype=torch.float64)
    wi = torch.rand(5, 3, generator=g, dtype=torch.float64) + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    wo, wi = wo / wo.norm(dim=-1, keepdim=True), wi / wi.norm(dim=-1, keepdim=True)
    albedo = torch.rand(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    for kind in ("diffuse", "conductor", "plastic"):
        assert_grad_close(lambda a: bsdf_torch(kind, a, 0.5, n, wo, wi), (albedo,), rtol=1e-6)


# ---------------------------------------------------------------- gradients: path replay


def _weights(H, W, seed=0):
    return torch.rand(H, W, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_prb_gradients_albedo_and_emission_cornell_box():
    scene, _ = cornell_box(dtype=torch.float64)
    cam = cornell_camera(10, 10)
    w = _weights(10, 10)
    kw = dict(spp=16, max_depth=4, rr_depth=100, seed=2)
    alb = scene.albedo.clone().requires_grad_()
    em = scene.emission[3].clone().requires_grad_()  # the light (the set of NEE emitters stays fixed)

    def fn(a, e):
        return path_trace(scene.replace(albedo=a, emission=torch.cat([scene.emission[:3], e[None]])), cam, **kw) * w

    rep = assert_grad_close(fn, (alb, em), eps=1e-2, rtol=0.01, atol=1e-6)
    assert rep.numeric[0].abs().sum() > 0 and rep.numeric[1].abs().sum() > 0


def test_prb_gradients_textures_lights_environment_glossy():
    tex = torch.rand(4, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.8 + 0.1
    pv, pf = quad((-2, 0, -2), (-2, 0, 2), (2, 0, 2), (2, 0, -2))
    uv = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]])
    bv, bf = oriented_box((0.0, 0.3, 0.0), (0.5, 0.6, 0.5), 0.4)
    env = torch.rand(4, 8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.2
    scene = PathTracingScene.from_meshes(
        [(pv, pf, 0, uv), (bv, bf, 1)],
        [PTMaterial("diffuse", texture=tex), PTMaterial("plastic", (0.6, 0.3, 0.2), roughness=0.4)],
        point_lights=[((0.5, 1.5, 0.5), (2.0, 2.0, 2.0))], directional_lights=[((0.3, 1.0, 0.2), (1.0, 0.8, 0.6))],
        environment=env, dtype=torch.float64)
    cam = Cameras.look_at([[1.5, 2.0, 2.5]], (0.0, 0.2, 0.0), width=10, height=10, fov_y=45.0, dtype=torch.float64)
    w = _weights(10, 10, 1)
    kw = dict(spp=16, max_depth=3, rr_depth=100, seed=1)
    t = scene.textures[0].clone().requires_grad_()
    alb = scene.albedo.clone().requires_grad_()
    pi = scene.point_intensity.clone().requires_grad_()
    di = scene.directional_irradiance.clone().requires_grad_()
    en = scene.environment.clone().requires_grad_()

    def fn(t_, a_, pi_, di_, en_):
        s = scene.replace(textures=(t_,), albedo=a_, point_intensity=pi_, directional_irradiance=di_, environment=en_)
        return path_trace(s, cam, **kw) * w

    rep = assert_grad_close(fn, (t, alb, pi, di, en), eps=1e-2, rtol=0.02, atol=1e-6, max_elements=16)
    assert all(r.abs().sum() > 0 for r in rep.numeric)


# ---------------------------------------------------------------- gradients: edge sampling


def test_edge_sampling_geometry_and_camera_gradients_match_finite_differences():
    H = W = 16
    j, i = torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy")
    w = torch.stack([j / W, i / H, (j + i) / (W + H)], -1).double()
    env = torch.ones(4, 8, 3)
    mat = PTMaterial("diffuse", (0.0, 0.0, 0.0), emission=(3.0, 2.0, 0.5))

    def loss(tr, eye, spp, edge_samples):
        v, f = oriented_box(tr, (1.0, 0.8, 0.9), 0.5, dtype=torch.float64)
        scene = PathTracingScene.from_meshes([(v, f, 0)], [mat], environment=env, dtype=torch.float64)
        cam = Cameras.look_at(eye[None], (0.0, 0.0, 0.0), width=W, height=H, fov_y=40.0)
        return (path_trace(scene, cam, spp=spp, max_depth=0, edge_samples=edge_samples, edge_spp=1, seed=1) * w).sum()

    tr = torch.tensor([0.1, -0.05, 0.0], dtype=torch.float64, requires_grad=True)
    eye = torch.tensor([1.0, 1.5, 4.0], dtype=torch.float64, requires_grad=True)
    loss(tr, eye, 4, 20000).backward()
    for x, g in ((tr, tr.grad), (eye, eye.grad)):
        fd = torch.zeros(3, dtype=torch.float64)
        for k in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = 0.03
            with torch.no_grad():  # same seed on both sides; many samples (the image is piecewise constant)
                if x is tr:
                    fd[k] = (loss(tr + e, eye, 8192, 0) - loss(tr - e, eye, 8192, 0)) / 0.06
                else:
                    fd[k] = (loss(tr, eye + e, 8192, 0) - loss(tr, eye - e, 8192, 0)) / 0.06
        rel = (g - fd).norm() / fd.norm()
        assert rel < 0.04, (g, fd)


def test_zero_area_triangles_give_finite_images_and_gradients():
    scene, _ = cornell_box(dtype=torch.float64)
    v = torch.cat([scene.vertices, torch.tensor([[0.0, 1.0, 0.0]] * 3, dtype=torch.float64)])
    f = torch.cat([scene.faces, torch.tensor([[v.shape[0] - 3, v.shape[0] - 2, v.shape[0] - 1]])])
    scene = scene.replace(vertices=v.requires_grad_(), faces=f, face_material=torch.cat([scene.face_material,
                                                                                         torch.tensor([3])]),
                          face_uvs=torch.zeros(f.shape[0], 3, 2, dtype=torch.float64))
    alb = scene.albedo.clone().requires_grad_()
    img = path_trace(scene.replace(albedo=alb), cornell_camera(8, 8), spp=2, edge_samples=200)
    img.sum().backward()
    assert torch.isfinite(img).all() and torch.isfinite(alb.grad).all() and torch.isfinite(v.grad).all()


def test_bad_inputs_name_the_argument():
    scene, _ = cornell_box()
    cam = cornell_camera(8, 8)
    with pytest.raises(ValueError, match="spp"):
        path_trace(scene, cam, spp=0)
    with pytest.raises(ValueError, match="max_depth"):
        path_trace(scene, cam, max_depth=-1)
    with pytest.raises(ValueError, match="albedo"):
        scene.replace(albedo=torch.ones(4, 2))
    with pytest.raises(ValueError, match="face_material"):
        scene.replace(face_material=scene.face_material[:3])
    with pytest.raises(TypeError, match="camera"):
        path_trace(scene, "camera")
    with pytest.raises(ValueError, match="kind"):
        PathTracingScene.from_meshes([(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 0)], [PTMaterial("glass")])


def test_prb_roughness_gradient_matches_finite_differences():
    """Roughness: the BSDF's derivative (in-kernel central difference) through path replay; the
    finite difference also moves the GGX-sampled directions, so both agree only in expectation
    (many samples)."""
    pv, pf = quad((-2, 0, -2), (-2, 0, 2), (2, 0, 2), (2, 0, -2))
    bv, bf = oriented_box((0.0, 0.3, 0.0), (0.5, 0.6, 0.5), 0.4)
    env = torch.rand(4, 8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.2
    scene = PathTracingScene.from_meshes(
        [(pv, pf, 0), (bv, bf, 1)],
        [PTMaterial("conductor", (0.9, 0.6, 0.3), roughness=0.7), PTMaterial("plastic", (0.6, 0.3, 0.2), roughness=0.8)],
        point_lights=[((0.5, 1.5, 0.5), (2.0, 2.0, 2.0))], environment=env, dtype=torch.float64)
    cam = Cameras.look_at([[1.5, 2.0, 2.5]], (0.0, 0.2, 0.0), width=8, height=8, fov_y=45.0, dtype=torch.float64)
    w = _weights(8, 8, 1)
    kw = dict(spp=4096, max_depth=3, rr_depth=100, seed=1)
    r = scene.roughness.clone().requires_grad_()

    def f(rr):
        return (path_trace(scene.replace(roughness=rr), cam, **kw) * w).sum()

    f(r).backward()
    fd = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for k in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[k] = 0.01
            fd[k] = (f(r.detach() + e) - f(r.detach() - e)) / 0.02
    assert (r.grad - fd).norm() / fd.norm() < 0.03, (r.grad, fd)


def _polygon_occlusion_setup():
    env = torch.ones(4, 8, 3)
    pv, pf = quad((-10, 0, -10), (-10, 0, 10), (10, 0, 10), (10, 0, -10), dtype=torch.float64)
    sq = [(-0.5, 0, -0.5), (-0.5, 0, 0.5), (0.5, 0, 0.5), (0.5, 0, -0.5)]
    return env, pv, pf, sq


def test_secondary_edges_match_the_analytic_soft_shadow_derivative():
    """A floor point under a constant sky, a floating square off to the side: the floor's radiance
    is (albedo / pi) (pi - E_square) with E_square from Lambert's polygon formula; its derivative
    w.r.t. the square's position is pure secondary visibility."""
    env, pv, pf, sq = _polygon_occlusion_setup()
    c0 = torch.tensor([1.6, 0.8, 0.2], dtype=torch.float64)
    p = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    c = c0.clone().requires_grad_()
    E = _polygon_irradiance(p, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                            [torch.tensor(q, dtype=torch.float64) + c for q in sq])
    (0.8 / math.pi * (math.pi - E)).backward()
    ref = c.grad.clone()
    cam = Cameras.look_at([[1.0, 3.0, 0.0]], (1.0, 0.0, 0.0), up=(0.0, 0.0, -1.0), width=1, height=1, fov_y=0.001)
    c = c0.clone().requires_grad_()
    bv, bf = quad(*sq, dtype=torch.float64)
    scene = PathTracingScene.from_meshes([(pv, pf, 0), (bv + c, bf, 1)],
                                         [PTMaterial("diffuse", (0.8,) * 3), PTMaterial("diffuse", (0.5, 0.2, 0.1))],
                                         environment=env, dtype=torch.float64)
    scene = scene.replace(dynamic_faces=torch.arange(4) >= 2)
    img = path_trace(scene, cam, spp=16, max_depth=1, seed=1, secondary_spp=100000)
    img[0, 0, 0].backward()
    assert (c.grad - ref).norm() / ref.norm() < 0.02, (c.grad, ref)


def test_secondary_edges_box_shadow_matches_finite_differences():
    H = 6
    env = torch.ones(4, 8, 3)
    cam = Cameras.look_at([[0.5, 3.0, 0.0]], (0.5, 0.0, 0.0), up=(0.0, 0.0, -1.0), width=H, height=H, fov_y=20.0)
    pv, pf = quad((-10, 0, -10), (-10, 0, 10), (10, 0, 10), (10, 0, -10), dtype=torch.float64)
    w = _weights(H, H)

    def loss(c, spp, sec, seed=1):
        bv, bf = oriented_box(c, (1.0, 0.2, 1.0), 0.3, dtype=torch.float64)
        s = PathTracingScene.from_meshes([(pv, pf, 0), (bv, bf, 1)],
                                         [PTMaterial("diffuse", (0.8,) * 3), PTMaterial("diffuse", (0.5, 0.2, 0.1))],
                                         environment=env, dtype=torch.float64)
        s = s.replace(dynamic_faces=torch.arange(s.faces.shape[0]) >= 2)
        return (path_trace(s, cam, spp=spp, max_depth=1, seed=seed, secondary_spp=sec) * w).sum()

    c0 = torch.tensor([1.6, 0.8, 0.2], dtype=torch.float64)
    c = c0.clone().requires_grad_()
    loss(c, 4, 8192).backward()
    # finite differences of a path-traced image are noisy (the y and z components of one 8192-spp
    # central difference vary by ~15% between seeds): average three seeds
    fd = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for seed in (1, 2, 3):
            for k in range(3):
                e = torch.zeros(3, dtype=torch.float64)
                e[k] = 0.02
                fd[k] += (loss(c0 + e, 8192, 0, seed) - loss(c0 - e, 8192, 0, seed)) / 0.04 / 3
    assert (c.grad - fd).norm() / fd.norm() < 0.05, (c.grad, fd)


def test_geometry_gradient_at_every_bounce_matches_finite_differences():
    """The Cornell box with the tall box lifted off the floor (no contact), translated along x,
    three bounces: primary edges + boundary and interior terms at every path vertex against
    central finite differences (d(image sum)/dx: -12.15 (seeds 0, 1) vs -11.99 measured). With
    the terms of the first bounce only (before 2026-12-02) the same setup gave -7.30 and -8.03."""
    H = 16
    cam = cornell_camera(H, H, dtype=torch.float64)
    c0 = torch.tensor([-0.34, 0.85, -0.28], dtype=torch.float64)

    def image_sum(c, spp, seed, **kw):
        s, info = cornell_box(tall_box_center=c, dtype=torch.float64)
        s = s.replace(dynamic_faces=info["tall_box_faces"])
        return path_trace(s, cam, spp=spp, max_depth=3, seed=seed, rr_depth=100, **kw).sum()

    grads = []
    for seed in (0, 1):
        c = c0.clone().requires_grad_()
        image_sum(c, 1, seed, edge_samples=20000, edge_spp=8, secondary_spp=256, interior_spp=256).backward()
        grads.append(float(c.grad[0]))
    g = sum(grads) / len(grads)
    e = torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        fd = sum(float(image_sum(c0 + e, 2048, s) - image_sum(c0 - e, 2048, s)) / 0.02 for s in (100, 101)) / 2
    assert abs(g - fd) < 0.1 * abs(fd), (grads, fd)


def test_empty_scene_shows_the_environment():
    env = torch.ones(2, 4, 3) * torch.tensor([0.5, 1.0, 2.0])
    s = PathTracingScene.from_meshes([(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), 0)], [PTMaterial()],
                                     environment=env)
    img = path_trace(s, cornell_camera(4, 4), spp=2)
    torch.testing.assert_close(img, env[0, 0].expand(4, 4, 3).contiguous())


def test_interior_term_for_a_moving_floor_under_an_area_light():
    """A floor filling the view rises towards a ceiling light: no edge moves in the image, the
    whole derivative is the interior term (hit point moving along the camera ray)."""
    H = 6
    cam = Cameras.look_at([[0.0, 0.9, 0.3]], (0.0, 0.0, 0.0), width=H, height=H, fov_y=30.0, dtype=torch.float64)
    lq = [(-0.3, 1.0, -0.3), (0.3, 1.0, -0.3), (0.3, 1.0, 0.3), (-0.3, 1.0, 0.3)]
    w = _weights(H, H)

    def loss(h, spp, interior_spp):
        fv, ff = quad((-5, 0, -5), (-5, 0, 5), (5, 0, 5), (5, 0, -5), dtype=torch.float64)
        fv = fv + torch.stack([torch.zeros_like(h), h, torch.zeros_like(h)])
        lv, lf = quad(*lq, dtype=torch.float64)
        s = PathTracingScene.from_meshes(
            [(fv, ff, 0), (lv, lf, 1)],
            [PTMaterial("diffuse", (0.7, 0.5, 0.3)), PTMaterial("diffuse", (0.0,) * 3, emission=(4.0,) * 3)],
            dtype=torch.float64)
        s = s.replace(dynamic_faces=torch.arange(4) < 2)
        return (path_trace(s, cam, spp=spp, max_depth=1, seed=1, interior_spp=interior_spp) * w).sum()

    h = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    loss(h, 4, 4096).backward()
    with torch.no_grad():
        fd = (loss(h.detach() + 0.01, 4096, 0) - loss(h.detach() - 0.01, 4096, 0)) / 0.02
    assert abs(float(h.grad) - float(fd)) < 0.02 * abs(float(fd)), (float(h.grad), float(fd))


def test_backward_split_over_cpu_threads_loses_no_atomic_adds():
    """The backward launch is split over CPU threads with one gradient buffer per thread (Warp's CPU
    atomics are not atomic across threads): one thread and two threads must agree."""
    scene, _ = cornell_box()
    cam = cornell_camera(24, 24)
    grads = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            alb = scene.albedo.clone().requires_grad_()
            path_trace(scene.replace(albedo=alb), cam, spp=4, max_depth=3).sum().backward()
            grads.append(alb.grad)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("native", [1, 0])
def test_small_bvh_traversal_matches_warp_mesh_bvh(native):
    """The small-scene BVH (4-wide nodes, leaves of LEAF_LANES parallelogram / triangle primitives,
    finite inverse directions) finds the same closest hits as Warp's mesh BVH, also for axis-aligned rays
    lying in the planes of walls and boxes; any-hit rays hit exactly when a closest hit exists.
    Both traversals: the native one (CPU default) and the Warp-language one (CUDA's)."""
    from diffvc._kernels import pathtrace as K

    scene, _ = cornell_box()
    prep = K.prepare_scene(scene)
    assert prep.struct.n_nodes > 0 and prep.struct.native_bvh == 1  # the small BVH is in use
    prep.struct.native_bvh = native
    # every face of the Cornell box is half of a parallelogram primitive, each in one leaf lane
    lanes = prep.struct.leaf_face.numpy().reshape(-1, 2, K.LEAF_LANES)  # (leaf, near / far face, lane)
    used = lanes[:, 0] >= 0
    assert used.sum() == scene.faces.shape[0] // 2 and bool((lanes[:, 1][used] >= 0).all())
    assert sorted(lanes[:, 0][used].tolist() + lanes[:, 1][used].tolist()) == list(range(scene.faces.shape[0]))
    g = torch.Generator().manual_seed(0)
    n = 20000
    o = torch.rand(n, 3, generator=g) * torch.tensor([1.9, 1.9, 1.9]) + torch.tensor([-0.95, 0.05, -0.95])
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    # axis-aligned directions (1 / 0 components) from points in the planes of the boxes' tops
    # (y = 1.2, y = 0.6: planes of BVH node boxes), grazing no face
    axes = torch.eye(3).repeat(2, 1) * torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])[:, None]
    oa = torch.tensor([[0.3, 1.2, 0.5], [0.8, 0.6, -0.5], [0.0, 0.5, 0.3]])
    o = torch.cat([o, oa.repeat_interleave(6, 0)])
    d = torch.cat([d, axes.repeat(3, 1)])
    tmax = torch.full((o.shape[0],), 1e30)
    f_small, t_small = K.scene_hits(prep, o, d, tmax)
    f_mesh, t_mesh = K.closest_hits(prep.bvh, o, d, tmax)
    hit = f_small >= 0
    assert torch.equal(hit, f_mesh >= 0)  # the box is open towards the camera: some rays escape
    assert float(hit.float().mean()) > 0.5
    # the same distances everywhere; different faces only where two faces are hit at the same
    # distance (the boxes' bottoms lie on the floor: ~0.5% of these rays; shared edges)
    assert torch.allclose(t_small, t_mesh, rtol=1e-5, atol=1e-5)
    other = f_small != f_mesh
    assert float(other.float().mean()) < 0.01
    assert float((t_small[other] - t_mesh[other]).abs().max()) < 1e-6
    f_any, _ = K.scene_hits(prep, o, d, tmax, anyhit=True)
    assert torch.equal(f_any >= 0, hit)
    # a shadow ray stopping short of the closest hit sees nothing
    f_short, t_short = K.scene_hits(prep, o[hit], d[hit], t_small[hit] * 0.999, anyhit=True)
    assert bool((f_short < 0).all()) and torch.equal(t_short, t_small[hit] * 0.999)


def _hits_match_mesh_bvh(K, scene, n=20000, seed=0, native=1):
    prep = K.prepare_scene(scene)
    prep.struct.native_bvh = native
    g = torch.Generator().manual_seed(seed)
    v = scene.vertices.float()
    lo, hi = v.amin(0), v.amax(0)
    o = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(n, 3, generator=g))
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    tmax = torch.full((n,), 1e30)
    f_small, t_small = K.scene_hits(prep, o, d, tmax)
    f_mesh, t_mesh = K.closest_hits(prep.bvh, o, d, tmax)
    hit = f_small >= 0
    assert torch.equal(hit, f_mesh >= 0)
    assert torch.allclose(t_small, t_mesh, rtol=1e-5, atol=1e-5)
    assert float((f_small != f_mesh).float().mean()) < 0.01  # ties at shared edges only
    f_any, _ = K.scene_hits(prep, o, d, tmax, anyhit=True)
    assert torch.equal(f_any >= 0, hit)
    return prep, hit


def test_small_bvh_triangles_and_a_single_primitive():
    """The 4-wide small BVH over a mesh of triangles (an icosphere of 320 faces inside the
    Cornell box: 338 primitives, several levels of 4-wide nodes) and over a single triangle (a
    root with one leaf of one used lane) finds Warp's mesh BVH's hits, with either traversal."""
    from diffvc._kernels import pathtrace as K
    from diffvc.geometry import icosphere

    scene, _ = cornell_box()
    v, f = icosphere(2)
    V = torch.cat([scene.vertices.float(), v.float() * 0.3 + torch.tensor([0.0, 1.0, 0.0])])
    F = torch.cat([scene.faces, f + scene.vertices.shape[0]])
    mat = torch.cat([scene.face_material, torch.zeros(f.shape[0], dtype=scene.face_material.dtype)])
    big = scene.replace(vertices=V, faces=F, face_material=mat, face_uvs=None)
    for native in (1, 0):
        prep, hit = _hits_match_mesh_bvh(K, big, native=native)
        assert prep.struct.n_nodes > 16 and float(hit.float().mean()) > 0.5
    one = scene.replace(vertices=torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [0.0, 1.5, 1.0]]),
                        faces=torch.tensor([[0, 1, 2]]), face_material=scene.face_material[:1], face_uvs=None)
    for native in (1, 0):
        prep, hit = _hits_match_mesh_bvh(K, one, native=native)
        assert prep.struct.n_nodes == 1 and 0.05 < float(hit.float().mean()) < 0.95


def test_small_bvh_too_deep_for_the_stack_uses_the_mesh_bvh(monkeypatch):
    """A tree that would overflow the traversal stack is not used: small_bvh returns None (built
    once per triangle set) and the prepared scene queries Warp's mesh BVH (same hits)."""
    from diffvc._kernels import pathtrace as K

    scene, _ = cornell_box()
    assert K.small_bvh(scene.vertices, scene.faces) is not None
    monkeypatch.setattr(K, "BVH_STACK", 2)  # the Cornell box: a root of 3 leaves
    K._SMALL_BVH_CACHE.clear()
    assert K.small_bvh(scene.vertices, scene.faces) is None
    builds = []
    build = K.small_bvh
    monkeypatch.setattr(K, "small_bvh", lambda v, f: builds.append(1) or build(v, f))
    prep = K.prepare_scene(scene)
    assert prep.struct.n_nodes == 0
    assert K.prepare_scene(scene).struct.n_nodes == 0 and len(builds) == 1  # the None is remembered
    o = torch.tensor([[0.0, 1.0, 0.0]]).repeat(6, 1)
    d = torch.cat([torch.eye(3), -torch.eye(3)])
    f, t = K.scene_hits(prep, o, d, torch.full((6,), 1e30))
    f_mesh, t_mesh = K.closest_hits(prep.bvh, o, d, torch.full((6,), 1e30))
    assert torch.equal(f, f_mesh) and torch.allclose(t, t_mesh)
    K._SMALL_BVH_CACHE.clear()


def test_small_bvh_cache_follows_geometry():
    """Prepared scenes reuse the small BVH of identical triangles only: moving the tall box moves
    its hits (the cache is keyed on the triangles' float32 corners)."""
    from diffvc._kernels import pathtrace as K
    from diffvc.render.pt_scene import CORNELL_TALL_BOX

    c0 = torch.tensor(CORNELL_TALL_BOX[0], dtype=torch.float32)
    o = torch.tensor([[c0[0].item(), 1.9, c0[2].item()]])  # above the tall box's top, looking down
    d = torch.tensor([[0.0, -1.0, 0.0]])
    ts = []
    for dy in (0.0, 0.0, 0.1):
        scene, _ = cornell_box(tall_box_center=c0 + torch.tensor([0.0, dy, 0.0]))
        f, t = K.scene_hits(K.prepare_scene(scene), o, d, torch.tensor([1e30]))
        assert int(f[0]) >= 0
        ts.append(float(t[0]))
    assert ts[0] == ts[1]
    assert abs((ts[0] - ts[2]) - 0.1) < 1e-5


@pytest.mark.parametrize("native", [1, 0])
def test_small_bvh_degenerate_rays_and_triangles(native):
    """Zero and NaN ray directions miss (face -1, t = tmax, no NaN) in either traversal, like
    Warp's mesh BVH, and a zero-area triangle added to the scene (a lane whose determinant is 0)
    is never hit while the faces behind it still are."""
    from diffvc._kernels import pathtrace as K

    scene, _ = cornell_box()
    V = torch.cat([scene.vertices.float(), torch.tensor([[0.0, 1.0, 0.0], [0.5, 1.0, 0.0], [1.0, 1.0, 0.0]])])
    F = torch.cat([scene.faces, torch.tensor([[0, 1, 2]]) + scene.vertices.shape[0]])  # collinear corners
    mat = torch.cat([scene.face_material, scene.face_material[:1]])
    scene = scene.replace(vertices=V, faces=F, face_material=mat, face_uvs=None)
    prep = K.prepare_scene(scene)
    assert prep.struct.n_nodes > 0
    prep.struct.native_bvh = native
    o = torch.tensor([[0.0, 1.0, 0.0]]).repeat(4, 1) + torch.tensor([0.0, 0.0, 0.3])
    d = torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    tmax = torch.full((4,), 1e30)
    f, t = K.scene_hits(prep, o, d, tmax)
    f_any, _ = K.scene_hits(prep, o, d, tmax, anyhit=True)
    f_mesh, t_mesh = K.closest_hits(prep.bvh, o, d, tmax)
    assert f[:2].tolist() == [-1, -1] and bool(torch.equal(t[:2], tmax[:2]))
    assert torch.equal(f >= 0, f_mesh >= 0) and torch.equal(f_any >= 0, f >= 0)
    assert torch.allclose(t, t_mesh, rtol=1e-5) and bool(torch.isfinite(t).all())
    # rays through the degenerate triangle's line never report it
    g = torch.Generator().manual_seed(1)
    od = torch.tensor([0.5, 1.0, 0.0]) + 0.2 * torch.randn(2000, 3, generator=g)
    dd = torch.nn.functional.normalize(torch.tensor([0.5, 1.0, 0.0]) - od, dim=1)
    fd, td = K.scene_hits(prep, od, dd, torch.full((2000,), 1e30))
    fm, tm = K.closest_hits(prep.bvh, od, dd, torch.full((2000,), 1e30))
    assert not bool((fd == F.shape[0] - 1).any())
    # (Warp's watertight mesh query does report a zero-area triangle that a ray grazes exactly)
    other = fm != F.shape[0] - 1
    assert torch.equal(fd[other] >= 0, fm[other] >= 0) and float((fd >= 0).float().mean()) > 0.5
    assert torch.allclose(td[other], tm[other], rtol=1e-5, atol=1e-5)
