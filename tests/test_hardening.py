"""Regression tests for every case of the hardening issue (bad input -> a clear error naming the
argument, or a documented finite result; no crash; no poisoned process).

Cases that once crashed the interpreter (segfaults) or poisoned Warp's module state run in a
subprocess, so a regression fails this test instead of killing the test session.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import diffvc.geometry as G
import diffvc.render as R
from diffvc.physics import (FEMModel, FEMState, ParticleModel, ParticleState, RigidBodyModel, RigidBodyState,
                            SpringModel, fem_step, particle_step, rigid_step, spring_step)

D = torch.float64


def _run_isolated(code: str, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last. A crash (segfault:
    negative return code) fails the calling test with the output."""
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"subprocess exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mesh_scene(dtype=torch.float32):
    v, f = G.icosphere(1, dtype=dtype)
    cams = R.Cameras.look_at([[0.0, 0.5, 3.0]], width=32, height=32, dtype=dtype)
    return v, f, cams


# ------------------------------------------------------------------------------- crashes (segfaults)

def test_former_segfaults_are_clear_errors_in_a_fresh_process():
    out = _run_isolated("""
        import dataclasses, json, torch
        import diffvc.geometry as G, diffvc.render as R
        from diffvc.physics import ParticleState, SpringModel, spring_step
        res = {}
        def case(name, fn):
            try:
                fn()
                res[name] = "no error"
            except (ValueError, TypeError) as e:
                res[name] = ("ValueError" if isinstance(e, ValueError) else "TypeError") + ": " + str(e)
        v, f = G.icosphere(1)
        cams = R.Cameras.look_at([[0.0, 0.5, 3.0]], width=32, height=32)
        fr = R.rasterize(cams, v, f)
        col = fr.mask
        other = torch.roll(f, 1, dims=1).flip(0)   # other faces, same count
        case("antialias_other_topology", lambda: R.antialias(col, fr, topology=R.mesh_topology(other)))
        case("antialias_fewer_faces", lambda: R.antialias(col, fr, topology=R.mesh_topology(f[:-7])))
        case("rasterize_tile", lambda: R.rasterize(cams, v, f, tile=-4))
        case("rasterize_tile0", lambda: R.rasterize(cams, v, f, tile=0))
        x = torch.rand(6, 3)
        m = SpringModel.create(x, [[0, 1], [1, 2], [2, 3]])
        st = ParticleState(x, torch.zeros_like(x))
        case("spring_direct", lambda: SpringModel(m.mass, m.radius, torch.tensor([[0, 10 ** 6]], dtype=torch.int32),
                                                  m.rest[:1], m.ke[:1], m.kd[:1], m.gain[:1], m.planes, m.contact,
                                                  m.gravity))
        case("spring_replace", lambda: spring_step(dataclasses.replace(
            m, springs=torch.tensor([[0, 1], [1, 2], [2, 10 ** 7]], dtype=torch.int32)), st, 1e-3))
        case("spring_replace_negative", lambda: dataclasses.replace(
            m, springs=torch.tensor([[0, 1], [1, 2], [-5, 3]], dtype=torch.int32)))
        # the good calls still work afterwards
        img = R.antialias(col, fr)
        res["good_after"] = bool(torch.isfinite(img).all()) and bool(torch.isfinite(spring_step(m, st, 1e-3).x).all())
        print(json.dumps(res))
    """)
    assert out.pop("good_after") is True
    expect = {"antialias_other_topology": "topology", "antialias_fewer_faces": "topology",
              "rasterize_tile": "tile must be >= 1", "rasterize_tile0": "tile must be >= 1",
              "spring_direct": "springs indices must lie in [0, 6)", "spring_replace": "springs indices must lie in [0, 6)",
              "spring_replace_negative": "springs indices must lie in [0, 6)"}
    for k, msg in expect.items():
        assert out[k].startswith("ValueError") and msg in out[k], (k, out[k])


# ------------------------------------------------------------------------------- poisoned process

POISON = """
import json, torch
from diffvc._kernels import Out, kernel_op, vec, mat
res = {}

def check(name, bad, good):
    before = good()
    try:
        bad()
        res[name] = "no error"
        return
    except (TypeError, ValueError) as e:
        err = ("ValueError" if isinstance(e, ValueError) else "TypeError") + ": " + str(e)[:200]
    after = good()
    same = all(torch.equal(a, b) for a, b in zip(before, after))
    res[name] = {"error": err, "good_after_bad": bool(same)}

# particles: the issue's case, a float64 external with a float32 model (public), then the kernel itself
from diffvc.physics import ParticleModel, ParticleState, particle_step, SpringModel, spring_step
from diffvc._kernels.particles import integrate_particles
pm32 = ParticleModel.create(torch.ones(5), 0.05)
pm64 = ParticleModel.create(torch.ones(5), 0.05, dtype=torch.float64)
x = torch.rand(5, 3)
s32, s64 = ParticleState(x, torch.zeros_like(x)), ParticleState(x.double(), torch.zeros(5, 3, dtype=torch.float64))
def good_particles():
    return [particle_step(pm32, s32, 1e-3).x, particle_step(pm64, s64, 1e-3).x]
check("particles_public", lambda: particle_step(pm32, s32, 1e-3, torch.zeros(5, 3, dtype=torch.float64)), good_particles)
check("particles_kernel", lambda: kernel_op(integrate_particles, 5, [vec(s32.x), vec(s32.v), pm32.inv_mass, pm32.radius,
      vec(pm32.planes), pm32.contact, vec(pm32.gravity.reshape(1, 3)), vec(torch.zeros(5, 3, dtype=torch.float64)),
      1e-3], [Out((5, 3), "vec"), Out((5, 3), "vec")]), good_particles)

# springs: float64 external with a float32 model (the issue's case), then the spring kernel itself
from diffvc._kernels.springs import spring_forces
sm32 = SpringModel.create(x, [[0, 1], [1, 2], [3, 4]])
sm64 = SpringModel.create(x.double(), [[0, 1], [1, 2], [3, 4]])
def good_springs():
    return [spring_step(sm32, s32, 1e-3).x, spring_step(sm64, s64, 1e-3).x, sm32.segment(s32, 1e-3, 3)[0].x]
check("springs_public", lambda: spring_step(sm32, s32, 1e-3, external=torch.zeros(5, 3, dtype=torch.float64)),
      good_springs)
check("springs_kernel", lambda: kernel_op(spring_forces, 3, [vec(s32.x), vec(s32.v), sm32.springs[:, 0].contiguous(),
      sm32.springs[:, 1].contiguous(), sm64.rest, sm32.ke, sm32.kd, sm32.gain, torch.zeros(3)],
      [Out((5, 3), "vec")]), good_springs)

# rigid bodies
from diffvc.physics import RigidBodyModel, RigidBodyState, rigid_step
from diffvc._kernels.rigid import integrate_bodies
rm32 = RigidBodyModel.spheres([0.1], [1.0])
rm64 = RigidBodyModel.spheres([0.1], [1.0], dtype=torch.float64)
r32 = RigidBodyState.create([[0.0, 0.09, 0.0]])
r64 = RigidBodyState.create([[0.0, 0.09, 0.0]], dtype=torch.float64)
def good_rigid():
    return [rigid_step(rm32, r32, 1e-3).x, rigid_step(rm64, r64, 1e-3).q]
check("rigid_public", lambda: rigid_step(rm32, r32, 1e-3, force=torch.zeros(1, 3, dtype=torch.float64)), good_rigid)
body = torch.cat([r32.x, r32.q, r32.v, r32.w], 1)
check("rigid_kernel", lambda: kernel_op(integrate_bodies, 1, [body, rm64.mass, mat(rm32.inertia), torch.zeros(1, 6),
      torch.zeros(5), 1e-3], [Out((1, 3), "vec"), Out((1, 4), "vec"), Out((1, 3), "vec"), Out((1, 3), "vec")]),
      good_rigid)

# FEM
from diffvc.geometry import tet_box
from diffvc.physics import FEMModel, fem_step
from diffvc._kernels.fem import tet_forces
tv, tt = tet_box((0.1, 0.1, 0.1), 1)
fm32 = FEMModel.create(tv + 0.01, tt)
fm64 = FEMModel.create((tv + 0.01).double(), tt)
def good_fem():
    return [fem_step(fm32, fm32.initial_state(), 1e-4).x, fem_step(fm64, fm64.initial_state(), 1e-4).x]
check("fem_public", lambda: fem_step(fm32, fm32.initial_state(), 1e-4, torch.zeros(tv.shape[0], 3, dtype=torch.float64)),
      good_fem)
st = fm32.initial_state()
check("fem_kernel", lambda: kernel_op(tet_forces, tt.shape[0], [vec(st.x), vec(st.v), fm32.tets, mat(fm64.Dm_inv),
      fm32.volume, vec(fm32.lame), fm32.damping, 0], [Out((tv.shape[0], 3), "vec")]), good_fem)

# rasterizer
import diffvc.geometry as G, diffvc.render as R
from diffvc._kernels import raster as K
v, f = G.icosphere(1)
cams = R.Cameras.look_at([[0.0, 0.5, 3.0]], width=24, height=24)
def good_raster():
    out = []
    for dt in (torch.float32, torch.float64):
        c, vv = cams.to(dt), v.to(dt)
        fr = R.rasterize(c, vv, f)
        out.append(R.antialias(R.interpolate(vv, fr), fr))
    return out
check("raster_public", lambda: R.rasterize(cams.to(torch.float64), v, f), good_raster)
fr = R.rasterize(cams, v, f)
check("raster_kernel", lambda: K.interpolate_op(v.double()[None], fr.faces, fr.face_id, fr.bary), good_raster)

# geometry kernels (winding numbers: float64 only)
from diffvc._kernels import geometry as GK
from diffvc._kernels import parallel_launch, to_warp
q = torch.rand(7, 3) - 0.5
def good_geometry():
    return [G.winding_number(v, f, q), G.winding_number(v.double(), f, q.double())]
a = torch.rand(3, 3)
check("geometry_kernel", lambda: parallel_launch(GK._winding_kernel, 7, [to_warp(q, "vec"), to_warp(a, "vec"),
      to_warp(a, "vec"), to_warp(a, "vec")], [torch.zeros(7, dtype=torch.float64)]), good_geometry)

# path tracer (public boundary)
from diffvc.render import cornell_box, cornell_camera, path_trace
scene, _ = cornell_box()
cam = cornell_camera(width=8, height=8)
def good_pt():
    return [path_trace(scene, cam, spp=1, max_depth=1, seed=0)]
check("pathtrace_public", lambda: path_trace(scene, cam, spp=0), good_pt)
print(json.dumps(res))
"""


def test_a_bad_call_does_not_poison_any_kernel_module():
    """For each kernel module: a good call, a bad call (mixed float32/float64 at the public
    boundary and straight into the kernel), then the same good calls in both precisions give
    the same results (was: every later particle/spring step failed with a Warp parse error)."""
    out = _run_isolated(POISON, timeout=600)
    for name in ("particles", "springs", "rigid", "fem", "raster"):
        for kind in ("public", "kernel"):
            r = out[f"{name}_{kind}"]
            assert isinstance(r, dict), (name, kind, r)
            assert r["error"].startswith("TypeError"), (name, kind, r)
            assert r["good_after_bad"], (name, kind, r)
    # public errors name both arguments
    assert "external" in out["particles_public"]["error"] and "the model" in out["particles_public"]["error"]
    assert "external" in out["springs_public"]["error"]
    assert "force" in out["rigid_public"]["error"]
    assert "verts" in out["raster_public"]["error"] and "cameras" in out["raster_public"]["error"]
    assert out["geometry_kernel"]["good_after_bad"] and out["pathtrace_public"]["good_after_bad"]
    assert "spp" in out["pathtrace_public"]["error"]


# ------------------------------------------------------------------------------- silent wrong results

def test_cotangent_weights_rejects_negative_face_index():
    v, f = G.box(1.0)
    bad = f.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=r"faces indices must lie in \[0, 8\)"):
        G.cotangent_weights(v, bad)
    with pytest.raises(ValueError, match="faces indices"):
        G.cotangent_laplacian(v, bad)


def test_mass_properties_of_open_and_flat_meshes_are_documented_and_finite():
    v, f = G.box(1.0, dtype=D)
    m_closed, c_closed, _ = G.mass_properties(v, f)
    assert abs(float(m_closed) - 1.0) < 1e-12
    # open box: the solid closed by the cone from the vertex mean (documented); centre inside the box
    m, c, inertia = G.mass_properties(v, f[:-2])
    assert 0 < float(m) < 1 and bool((c.abs() <= 0.5).all()) and torch.isfinite(inertia).all()
    # a flat (zero-volume) open mesh far from the origin: zero mass at the vertex mean (was ~1e15)
    p, pf = G.plane(1.0, 4, dtype=torch.float32)
    p = p + torch.tensor([3.0, 5.0, 7.0])
    m, c, inertia = G.mass_properties(p, pf)
    assert float(m) == 0.0 and torch.allclose(c, p.mean(0)) and float(inertia.abs().max()) == 0.0


def test_negative_sizes_are_rejected():
    with pytest.raises(ValueError, match="half_size must be >= 0"):
        G.sdf_box(torch.zeros(4, 3), half_size=(-0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="radius must be > 0"):
        G.icosphere(radius=-1)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        G.sdf_sphere(torch.zeros(4, 3), radius=-1.0)
    with pytest.raises(ValueError, match="size"):
        G.box(-1.0)


def test_camera_near_plane_and_degenerate_views():
    v, f, cams = _mesh_scene()
    with pytest.raises(ValueError, match="near must be > 0"):
        R.Cameras(cams.R, cams.t, cams.intrinsics, 32, 32, near=-1.0)
    with pytest.raises(ValueError, match="near must be > 0"):
        R.Cameras.look_at([[0.0, 0.0, 3.0]], near=0.0)
    with pytest.raises(ValueError, match="eye and target coincide"):
        R.Cameras.look_at([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="eye and target coincide"):
        R.look_at((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="up must not be zero or parallel"):
        R.look_at((0.0, 3.0, 0.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="height must be >= 1"):
        R.generate_rays(cams, height=0)
    with pytest.raises(ValueError, match="width must be >= 1"):
        R.generate_rays(cams, width=-3)
    o, d = R.generate_rays(cams, height=8, width=4)
    assert o.shape == (1, 8, 4, 3)


def test_topology_of_other_faces_is_rejected():
    v, f, cams = _mesh_scene()
    fr = R.rasterize(cams, v, f)
    img = R.antialias(fr.mask, fr, topology=R.mesh_topology(f))
    assert torch.equal(img, R.antialias(fr.mask, fr))
    for other in (f[:-3], f.flip(0), torch.roll(f, 1, dims=1)):
        with pytest.raises(ValueError, match="topology"):
            R.antialias(fr.mask, fr, topology=R.mesh_topology(other))
    with pytest.raises(ValueError, match="faces indices"):
        R.mesh_topology(f, num_verts=10)


def _models():
    x = torch.rand(4, 3, dtype=D) + torch.tensor([0.0, 0.5, 0.0], dtype=D)
    pm = ParticleModel.create(torch.ones(4), 0.05, dtype=D)
    sm = SpringModel.create(x, [[0, 1], [1, 2]])
    rm = RigidBodyModel.spheres([0.1], [1.0], dtype=D)
    tv, tt = G.tet_box((0.1, 0.1, 0.1), 1, dtype=D)
    fm = FEMModel.create(tv + 0.2, tt)
    ps = ParticleState(x, torch.zeros_like(x))
    return [(pm, ps, particle_step), (sm, ps, spring_step),
            (rm, RigidBodyState.create([[0.0, 0.3, 0.0]], dtype=D), rigid_step), (fm, fm.initial_state(), fem_step)]


@pytest.mark.parametrize("dt", [0.0, -1e-3, float("nan"), float("inf")])
def test_steps_reject_bad_dt(dt):
    for model, state, step in _models():
        with pytest.raises(ValueError, match="dt must be"):
            step(model, state, dt)
        with pytest.raises(ValueError, match="dt must be"):
            model.step(state, dt)


def test_nan_parameters_and_negative_radius_are_rejected_everywhere_a_model_is_built():
    nan = float("nan")
    with pytest.raises(ValueError, match="mu contains non-finite"):
        ParticleModel.create(torch.ones(3), 0.1, mu=nan)
    with pytest.raises(ValueError, match="gravity"):
        ParticleModel.create(torch.ones(3), 0.1, gravity=(0.0, nan, 0.0))
    with pytest.raises(ValueError, match="radius must be >= 0"):
        ParticleModel.create(torch.ones(3), -0.1)
    pm = ParticleModel.create(torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        dataclasses.replace(pm, radius=-pm.radius)
    with pytest.raises(ValueError, match="gravity"):
        dataclasses.replace(pm, gravity=torch.tensor([0.0, nan, 0.0]))
    with pytest.raises(ValueError, match="friction_smoothing contains non-finite"):
        SpringModel.create(torch.rand(3, 3), [[0, 1]], friction_smoothing=nan)
    with pytest.raises(ValueError, match="mu contains non-finite"):
        RigidBodyModel.spheres([0.1], [1.0], mu=nan)
    with pytest.raises(ValueError, match="contact contains non-finite"):  # a model built directly
        dataclasses.replace(pm, contact=torch.tensor([1e4, 10.0, nan, 0.01]))
    with pytest.raises(ValueError, match="radius must be > 0"):
        RigidBodyModel.spheres([-0.1], [1.0])
    with pytest.raises(ValueError, match="point_radius must be >= 0"):
        RigidBodyModel.create([1.0], torch.eye(3), [[0.0, 0.0, 0.0]], point_radius=-0.1)
    tv, tt = G.tet_box((0.1, 0.1, 0.1), 1)
    with pytest.raises(ValueError, match="gravity"):
        FEMModel.create(tv, tt, gravity=(0.0, nan, 0.0))
    fm = FEMModel.create(tv, tt)
    with pytest.raises(ValueError, match="tets indices"):
        dataclasses.replace(fm, tets=fm.tets + 100)


# ------------------------------------------------------------------------------- obscure errors

def test_shape_and_dtype_mistakes_name_the_argument():
    v, f = G.box(1.0)
    L = G.cotangent_laplacian(v, f)
    with pytest.raises(ValueError, match=r"x must have shape \(8, C\)"):
        G.laplacian_apply(L, torch.zeros(3))
    with pytest.raises(TypeError, match="x is torch.float64 but L is torch.float32"):
        G.laplacian_apply(L, v.double())
    with pytest.raises(ValueError, match=r"center must have shape \(3,\)"):
        G.sdf_sphere(torch.zeros(2, 3), center=(0.0, 0.0))
    with pytest.raises(TypeError, match="matrix is torch.float32 but points is torch.float64"):
        G.transform_points(v.double(), torch.eye(3))
    _, _, cams = _mesh_scene()
    with pytest.raises(TypeError, match="verts is torch.float32 but cameras is torch.float64"):
        R.rasterize(cams.to(D), v, f)
    with pytest.raises(TypeError, match="points is torch.float32 but cameras is torch.float64"):
        cams.to(D).project(v)
    with pytest.raises(ValueError, match="fov_y_degrees must be > 0"):
        R.focal_from_fov(0, 64)
    with pytest.raises(ValueError, match=r"fov_y_degrees must lie in \(0, 180\)"):
        R.focal_from_fov(180, 64)
    with pytest.raises(ValueError, match="height must be >= 1"):
        R.focal_from_fov(45, 0)


def test_faces_as_a_list_are_accepted_like_a_tensor():
    v, f = G.box(1.0)
    assert torch.equal(G.face_normals(v, f.tolist()), G.face_normals(v, f))
    assert torch.equal(G.vertex_normals(v, f.tolist()), G.vertex_normals(v, f))
    with pytest.raises(TypeError, match="faces must be an integer tensor"):
        G.face_normals(v, "faces")
    with pytest.raises(TypeError, match="faces must be an integer"):
        G.face_normals(v, f.float())


def test_mixed_dtypes_in_models_name_both_arguments():
    pm = ParticleModel.create(torch.ones(3), 0.1)
    with pytest.raises(TypeError, match="radius is torch.float64 but mass is torch.float32"):
        dataclasses.replace(pm, radius=pm.radius.double())
    x = torch.rand(3, 3)
    with pytest.raises(TypeError, match="state.x is torch.float64 but the model is torch.float32"):
        particle_step(pm, ParticleState(x.double(), x.double()), 1e-3)
    sm = SpringModel.create(x, [[0, 1]])
    with pytest.raises(TypeError, match="actuation is torch.float64"):
        spring_step(sm, ParticleState(x, x), 1e-3, actuation=torch.zeros(1, dtype=D))


def test_quaternions_are_wxyz_across_geometry_physics_and_bindings():
    """One convention: a rigid body spinning about +z by angle a has q = (cos a/2, 0, 0, sin a/2),
    quaternion_to_matrix(q) rotates its points, and RigidBinding places the mesh with it."""
    from diffvc.pipeline import RigidBinding
    rm = RigidBodyModel.spheres([0.1], [1.0], dtype=D, gravity=(0.0, 0.0, 0.0), planes=[])
    w = 2.0
    st = RigidBodyState.create([[0.0, 0.0, 0.0]], w=[[0.0, 0.0, w]], dtype=D)
    assert st.q.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    dt, n = 1e-3, 200
    for _ in range(n):
        st = rigid_step(rm, st, dt)
    a = w * dt * n
    expect = torch.tensor([math.cos(a / 2), 0.0, 0.0, math.sin(a / 2)], dtype=D)
    assert torch.allclose(st.q[0], expect, atol=1e-3)
    R3 = G.quaternion_to_matrix(st.q[0])
    assert torch.allclose(G.quaternion_apply(st.q[0], torch.tensor([1.0, 0.0, 0.0], dtype=D)), R3[:, 0], atol=1e-12)
    v = torch.tensor([[1.0, 0.0, 0.0]], dtype=D)
    assert torch.allclose(RigidBinding(v)(st), (R3 @ v[0])[None], atol=1e-12)


def test_all_finite_one_sum_with_the_entrywise_fallback():
    """``all_finite`` (behind every ``check_finite``): a NaN or an infinity anywhere is found,
    finite entries whose sum overflows are accepted, for float16/32/64, contiguous or not."""
    from diffvc._validate import all_finite, check_finite

    for dtype, big in ((torch.float16, 6e4), (torch.float32, 3e38), (torch.float64, 1.7e308)):
        x = torch.rand(64, 33, dtype=dtype)
        assert all_finite(x) and all_finite(x.t()) and all_finite(x[:, ::2])
        assert all_finite(torch.full((50,), big, dtype=dtype))  # the sum overflows, every entry finite
        assert all_finite(torch.full((50,), -big, dtype=dtype))
        for bad in (float("nan"), float("inf"), -float("inf")):
            y = x.clone()
            y[17, 5] = bad
            assert not all_finite(y) and not all_finite(y.t())
            z = torch.full((50,), big, dtype=dtype)
            z[3] = bad
            assert not all_finite(z)
            with pytest.raises(ValueError, match="tensor_x contains non-finite"):
                check_finite(y, "tensor_x")
    assert check_finite(torch.zeros(0), "empty").numel() == 0
    # tensors without storage (torch.func's jvp wrappers) are checked with torch ops
    x = torch.rand(5, 3, dtype=torch.float64)
    out, tangent = torch.func.jvp(lambda a: check_finite(a, "a") * 2, (x,), (torch.ones_like(x),))
    assert torch.equal(out, 2 * x) and torch.equal(tangent, torch.full_like(x, 2.0))
    with pytest.raises(ValueError, match="a contains non-finite"):
        torch.func.jvp(lambda a: check_finite(a / 0.0, "a"), (x,), (torch.ones_like(x),))
