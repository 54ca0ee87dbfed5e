
import pytest
import torch

from diffvc.render import Cameras
from diffvc.render.pt_scene import oriented_box, quad
from diffvc.render.raytrace import (TriangleBVH, hit_from_face, intersect, intersect_brute_force, occluded,
                                    render_gbuffer)
from diffvc.testing import assert_grad_close


def _scene(dtype=torch.float64):
    bv, bf = oriented_box((0.0, 0.5, 0.0), (1.0, 1.0, 1.0), 0.4, dtype=dtype)
    pv, pf = quad((-3, 0, -3), (-3, 0, 3), (3, 0, 3), (3, 0, -3), dtype=dtype)
    return torch.cat([bv, pv]), torch.cat([bf, pf + bv.shape[0]])


def _rays(n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([0.3, 2.5, 3.0], dtype=dtype).expand(n, 3).clone()
    target = (torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([4.0, 1.2, 4.0]) -
              torch.tensor([2.0, 0.1, 2.0])).to(dtype)
    d = target - o
    return o, d / d.norm(dim=-1, keepdim=True)


def test_bvh_matches_brute_force_twin():
    v, f = _scene()
    o, d = _rays(500)
    a = intersect(v, f, o, d)
    b = intersect_brute_force(v, f, o, d)
    assert a.hit.sum() > 400 and (a.hit == b.hit).all()
    assert (a.face == b.face).float().mean() > 0.99  # ties only on shared edges
    torch.testing.assert_close(a.t, b.t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.point, b.point, atol=1e-5, rtol=1e-5)
    hb = a.bary[a.hit]
    assert (hb >= -1e-6).all() and torch.allclose(hb.sum(-1), torch.ones_like(hb[:, 0]))
    # the point is the barycentric combination of the hit triangle's vertices
    p = (v[f[a.face[a.hit]]] * hb[..., None]).sum(1)
    torch.testing.assert_close(p, a.point[a.hit], atol=1e-9, rtol=1e-9)


def test_tmax_and_misses():
    v, f = _scene()
    o = torch.tensor([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    h = intersect(v, f, o, d)
    assert h.hit.tolist() == [True, False]
    assert abs(float(h.t[0]) - 4.0) < 1e-5 and h.face[1] == -1
    h = intersect(v, f, o, d, tmax=3.0)
    assert not h.hit.any()


def test_hit_gradients_match_finite_differences():
    v, f = _scene()
    o, d = _rays(40, seed=1)
    face = intersect(v, f, o, d).face

    def fn(vv, oo, dd):
        h = hit_from_face(vv, f, face, oo, dd)
        return h.t, h.bary, h.point, h.normal

    assert_grad_close(fn, (v.clone().requires_grad_(), o.clone().requires_grad_(), d.clone().requires_grad_()),
                      rtol=1e-5, atol=1e-7)


def test_shadow_rays():
    v, f = _scene()
    p = torch.tensor([[0.0, 0.0, 0.0], [2.5, 0.0, 2.5]], dtype=torch.float64)  # under the box / in the open
    light = torch.tensor([[0.0, 4.0, 0.0], [2.5, 4.0, 2.5]], dtype=torch.float64)
    assert occluded(v, f, p, light).tolist() == [True, False]


def _camera(dtype=torch.float64, size=16):
    return Cameras.look_at([[0.0, 2.0, 4.0]], (0.0, 0.3, 0.0), width=size, height=size, fov_y=40.0, dtype=dtype)


def test_gbuffer_gradients_wrt_shading_parameters():
    v, f = _scene()
    cam = _camera()
    g = torch.Generator().manual_seed(0)
    fc = torch.rand(f.shape[0], 3, generator=g, dtype=torch.float64).requires_grad_()
    vc = torch.rand(v.shape[0], 3, generator=g, dtype=torch.float64).requires_grad_()
    assert_grad_close(lambda c: render_gbuffer(v, f, cam, face_colors=c, spp=2)["albedo"], (fc,), rtol=1e-6)
    assert_grad_close(lambda c: render_gbuffer(v, f, cam, vertex_colors=c, spp=2)["albedo"], (vc,), rtol=1e-6)
    out = render_gbuffer(v, f, cam, face_colors=fc)
    assert out["mask"].mean() > 0.5 and out["depth"].max() > 3.0
    n = out["normal"][out["mask"][..., 0] > 0]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones_like(n[:, 0]))


def test_gbuffer_depth_gradient_wrt_vertices_interior():
    # a single large quad filling the view: depth is smooth in the vertices (no silhouette in view)
    v, f = quad((-20, 0, -20), (-20, 0, 20), (20, 0, 20), (20, 0, -20), dtype=torch.float64)
    cam = Cameras.look_at([[0.0, 2.0, 1.0]], (0.0, 0.0, 0.0), width=8, height=8, fov_y=30.0, dtype=torch.float64)
    lift = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)

    def fn(h):
        vv = v + torch.stack([torch.zeros_like(h), h, torch.zeros_like(h)], -1)
        return render_gbuffer(vv, f, cam)["depth"]

    assert_grad_close(fn, (lift,), rtol=1e-5)
    (fn(lift).sum()).backward()
    assert lift.grad.item() < 0  # raising the floor towards the camera shortens every ray


def test_degenerate_triangles_give_finite_values_and_gradients():
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[0, 1, 2]])
    o = torch.tensor([[0.5, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)
    h = hit_from_face(v, f, torch.tensor([0]), o, d)  # forced hit on a zero-area face
    (h.t.sum() + h.point.sum() + h.normal.sum() + h.bary.sum()).backward()
    assert all(torch.isfinite(x).all() for x in (h.t, h.point, h.normal, h.bary, v.grad, o.grad))
    assert not intersect(v.detach(), f, o.detach(), d).hit.any()


def test_bad_inputs_name_the_argument():
    v, f = _scene()
    o, d = _rays(4)
    with pytest.raises(ValueError, match="vertices"):
        intersect(v[:, :2], f, o, d)
    with pytest.raises(ValueError, match="faces"):
        intersect(v, f + 100, o, d)
    with pytest.raises(ValueError, match="origins"):
        intersect(v, f, o[:2], d)
    with pytest.raises(ValueError, match="face_colors"):
        render_gbuffer(v, f, _camera(), face_colors=torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="spp"):
        render_gbuffer(v, f, _camera(), spp=0)


def test_empty_mesh():
    v = torch.zeros(0, 3)
    f = torch.zeros(0, 3, dtype=torch.long)
    o, d = _rays(3, dtype=torch.float32)
    assert not TriangleBVH(v, f).cast(o, d)[0].ge(0).any()
    assert not intersect_brute_force(v, f, o, d).hit.any()
