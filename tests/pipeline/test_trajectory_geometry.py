"""The pipeline's whole-trajectory placement (video._trajectory_geometry): the built-in bindings
place all frames in one call and are validated once; frames, values, gradients and errors equal
per-state scene_geometry."""

import pytest
import torch

from diffvc.geometry import box
from diffvc.pipeline import RigidBinding, Scene, SoftBinding
from diffvc.pipeline.video import _trajectory_geometry, scene_geometry
from diffvc.render import AmbientLight, Cameras

D = torch.float64


class _Soft:
    def __init__(self, x, q=None):
        self.x, self.q = x, q


def _scene():
    cams = Cameras.look_at([[0.0, 0.8, 1.6]], target=(0.0, 0.1, 0.0), width=8, height=8, fov_y=40.0, dtype=D)
    sc = Scene(cams, [AmbientLight.create([0.5, 0.5, 0.5], dtype=D)])
    v, f = box((0.4, 0.2, 0.4), dtype=D)
    sc.add_shape("box", f, RigidBinding(v), color=(0.8, 0.3, 0.1), body="rigid")
    sc.add_shape("jelly", f, SoftBinding(torch.arange(8).flip(0), num_nodes=10), color=(0.2, 0.7, 0.3),
                 body="soft", smooth=True)
    sc.add_shape("ground", f, v - 1.0, color=(0.4, 0.4, 0.45))                  # static
    sc.add_shape("custom", f, lambda st: v * 2.0, color=(0.1, 0.1, 0.9))        # a plain callable
    return sc


def _states(T=4, bad=None):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(T, 1, 3, generator=g, dtype=D).requires_grad_(True)
    q = torch.randn(T, 1, 4, generator=g, dtype=D).requires_grad_(True)
    nodes = torch.randn(T, 10, 3, generator=g, dtype=D).requires_grad_(True)
    out = []
    for t in range(T):
        x = pos[t] if bad != t else pos[t] * float("nan")
        out.append({"rigid": _Soft(x, q[t]), "soft": _Soft(nodes[t])})        # a state's x and q fields
    return out, (pos, q, nodes)


def test_equals_per_state_scene_geometry():
    sc = _scene()
    states, leaves = _states()
    want = [scene_geometry(sc, s) for s in states]
    got = _trajectory_geometry(sc, states)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert [m.name for m in a.meshes] == [m.name for m in b.meshes] == ["box", "jelly", "ground", "custom"]
        for ma, mb in zip(a.meshes, b.meshes):
            assert torch.equal(ma.verts, mb.verts) and torch.equal(ma.faces, mb.faces)
            assert ma.faces.dtype == torch.int64 and torch.equal(ma.color, mb.color) and ma.smooth == mb.smooth
    loss = lambda fr: sum((m.verts * torch.arange(m.verts.numel(), dtype=D).reshape(m.verts.shape)).sum()  # noqa
                          for f in fr for m in f.meshes)
    ga = torch.autograd.grad(loss(got), leaves)
    gb = torch.autograd.grad(loss(want), leaves)
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)


def test_errors_as_per_state():
    sc = _scene()
    states, _ = _states(bad=2)
    for call in (lambda: _trajectory_geometry(sc, states), lambda: scene_geometry(sc, states[2])):
        with pytest.raises(ValueError, match="position contains non-finite"):   # a NaN pose in one frame
            call()
    states, _ = _states()
    states[1]["soft"] = _Soft(torch.zeros(9, 3, dtype=D))
    with pytest.raises(ValueError, match="binding expects 10"):    # wrong node count in one frame
        _trajectory_geometry(sc, [states[0], states[0]] + [states[1]])
    sc2 = Scene(sc.cameras, sc.lights)
    v, f = box((0.4, 0.2, 0.4), dtype=D)
    sc2.add_shape("soft", f, SoftBinding(torch.arange(6)), body="soft")      # 6 vertices, faces reach 7
    with pytest.raises(ValueError, match="index past its 6 vertices"):
        _trajectory_geometry(sc2, _states()[0])
