import math
from dataclasses import dataclass

import pytest
import torch

from diffvc.geometry import box
from diffvc.pipeline.binding import RigidBinding, SoftBinding, StaticBinding, rigid_vertices, soft_vertices
from diffvc.pipeline.scene import Scene, traverse
from diffvc.render import Cameras
from diffvc.render.lights import DirectionalLight
from diffvc.testing import assert_grad_close


@dataclass(frozen=True)
class _RigidState:
    x: torch.Tensor
    q: torch.Tensor


def test_rigid_vertices_rotation_and_translation():
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    s = math.sqrt(0.5)
    q = torch.tensor([s, 0.0, 0.0, s], dtype=torch.float64)  # 90 deg about z (wxyz)
    p = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    w = rigid_vertices(v, p, q)
    assert torch.allclose(w, torch.tensor([[1.0, 3.0, 3.0], [0.0, 2.0, 3.0]], dtype=torch.float64), atol=1e-12)
    # one quaternion convention: a rigid-body state's q (w, x, y, z) is read as is
    from diffvc.physics import RigidBodyState
    st = RigidBodyState.create(p[None], q=q[None], dtype=torch.float64)
    assert torch.allclose(RigidBinding(v)(st), w)
    # batched over time
    P = torch.stack([p, 2 * p])
    Q = torch.stack([q, q])
    assert rigid_vertices(v, P, Q).shape == (2, 2, 3)


def test_rigid_vertices_grad():
    v, _ = box(0.5, dtype=torch.float64)
    p = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.9, 0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    vv = v.clone().requires_grad_()
    assert_grad_close(lambda a, b, c: rigid_vertices(a, b, c), (vv, p, q))


def test_rigid_binding_reads_state_fields():
    v, _ = box(1.0, dtype=torch.float64)
    st = _RigidState(torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64),
                     torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=torch.float64))
    out = RigidBinding(v, body=1)(st)
    assert torch.allclose(out, v + torch.tensor([5.0, 0, 0], dtype=torch.float64))
    with pytest.raises(AttributeError, match="pos"):
        RigidBinding(v, position="pos")(st)
    with pytest.raises(TypeError, match="quat_order"):  # one convention, no order argument
        RigidBinding(v, quat_order="xyzw")


def test_soft_binding_gathers_and_grad():
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 3, 3, 9])
    b = SoftBinding(idx, num_nodes=10)
    assert torch.equal(b(x), x.detach()[idx])
    assert_grad_close(lambda y: soft_vertices(y, idx), (x,))
    with pytest.raises(IndexError, match="index"):
        SoftBinding(torch.tensor([0, 11]), num_nodes=10)
    with pytest.raises(ValueError, match="nodes"):
        b(torch.randn(4, 3))


def _scene(dtype=torch.float64):
    cams = Cameras.look_at([[0.0, 1.0, 4.0]], width=16, height=16, dtype=dtype)
    light = DirectionalLight.create([0.0, -1.0, -0.5], [2.0, 2.0, 2.0], dtype=dtype)
    sc = Scene(cams, [light])
    v, f = box(0.5, dtype=dtype)
    sc.add_shape("box", f, RigidBinding(v), color=(0.8, 0.2, 0.1), body="box")
    sc.add_shape("ground", f, v * torch.tensor([10.0, 0.01, 10.0], dtype=dtype))
    sc.add_body("box", mass=2.0, mu=0.4)
    return sc


def test_scene_traverse_and_replace():
    sc = _scene()
    names = traverse(sc)
    for k in ("shape.box.color", "shape.box.verts", "shape.ground.verts", "body.box.mass", "body.box.mu",
              "camera.R", "camera.t", "camera.intrinsics", "light.0.direction", "light.0.irradiance_value",
              "background"):
        assert k in names, k
    m = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    sc2 = sc.replace({"body.box.mass": m, "shape.box.color": c, "light.0.irradiance_value": 2 * c})
    assert sc2.traverse()["body.box.mass"] is m
    assert sc.traverse()["body.box.mass"].item() == 2.0  # original untouched
    assert torch.equal(sc2.shape("box").color, c)
    assert torch.equal(sc2.lights[0].irradiance_value, 2 * c)
    newv = torch.zeros(8, 3, dtype=torch.float64)
    sc3 = sc.replace({"shape.box.verts": newv})
    assert sc3.shape("box").binding.verts is newv and sc.shape("box").binding.verts is not newv
    with pytest.raises(KeyError, match="updates"):
        sc.replace({"body.box.nope": m})
    with pytest.raises(ValueError, match="updates"):
        sc.replace({"shape.box.color": torch.zeros(2)})


def test_scene_bad_input():
    sc = _scene()
    v, f = box(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="name"):
        sc.add_shape("box", f, v)
    with pytest.raises(TypeError, match="faces must be an integer"):
        sc.add_shape("b2", f.double(), v)
    with pytest.raises(ValueError, match=r"faces indices must lie in \[0, 8\)"):
        sc.add_shape("b2", f + 1, v)
    with pytest.raises(ValueError, match="color"):
        sc.add_shape("b3", f, v, color=(1.0, 0.0))
    with pytest.raises(TypeError, match="cameras"):
        Scene(object())
    with pytest.raises(ValueError, match="name"):
        sc.add_body("box", mass=1.0)
