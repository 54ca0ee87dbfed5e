"""Malformed-call generator for the fuzz suite.

Each *target* is a public function or class of diffvc with a valid baseline call: a dict of
argument values built from small fixtures. Each argument has a *kind*; every kind has a table of
mutations (wrong type, wrong shape, wrong dtype, non-finite, out-of-range index, negative size,
zero, wrong choice ...). A call is the baseline with ONE argument mutated. Each mutation says
what the library must do with it:

* ``"error"``  - raise ``ValueError``/``TypeError`` whose message names the argument;
* ``"ok"``     - accept it and return a finite, documented result (e.g. faces as a list of ints,
  a non-contiguous tensor, a zero radius);
* ``"either"`` - either of the two (degenerate but meaningful values, e.g. an empty point set).

Calls are generated deterministically (``cases()``), so a failure names a reproducible case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

NAN, INF = float("nan"), float("inf")


@dataclass
class Target:
    name: str                       # e.g. "geometry.face_normals"
    fn: Callable[..., Any]          # called as fn(**kwargs)
    args: Callable[[], dict]        # fresh valid keyword arguments
    kinds: dict                     # argument name -> kind
    names: dict | None = None       # argument name -> names an error may use instead (aliases)
    overrides: dict | None = None   # (argument, mutation label) -> expectation for this target


def _replace(t: torch.Tensor, idx, value) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[idx] = value
    return t


# ----------------------------------------------------------------------------- mutation tables
# each entry: (label, function(valid value, all args) -> mutated value, expectation)

def _float_tensor_mutations(last: int | None):
    muts = [
        ("none", lambda v, a: None, "error"),
        ("string", lambda v, a: "oops", "error"),
        ("int_dtype", lambda v, a: v.long(), "error"),
        ("bool_dtype", lambda v, a: v > 0, "error"),
        ("nan", lambda v, a: _replace(v, 0, NAN), "error"),
        ("inf", lambda v, a: _replace(v, -1, INF), "error"),
        ("noncontiguous", lambda v, a: v.t().contiguous().t() if v.dim() == 2 else v, "ok"),
    ]
    if last is not None:
        muts += [
            ("wrong_last_dim", lambda v, a: torch.zeros(*v.shape[:-1], last + 1, dtype=v.dtype), "error"),
            ("scalar", lambda v, a: torch.tensor(1.0, dtype=v.dtype), "error"),
        ]
    return muts


VERTS = _float_tensor_mutations(3) + [
    ("float64_mixed", lambda v, a: v.double() if v.dtype == torch.float32 else v.float(), "either"),
    ("extra_batch_dim", lambda v, a: v[None, None], "error"),
]

POINTS = _float_tensor_mutations(3) + [
    ("empty", lambda v, a: v[:0], "either"),
]

FACES = [
    ("none", lambda v, a: None, "error"),
    ("string", lambda v, a: "faces", "error"),
    ("float_dtype", lambda v, a: v.float(), "error"),
    ("bool_dtype", lambda v, a: v > 0, "error"),
    ("negative_index", lambda v, a: _replace(v, 0, -1), "error"),
    ("index_too_large", lambda v, a: _replace(v, 1, 10 ** 6), "error"),
    ("wrong_last_dim", lambda v, a: v[:, :2], "error"),
    ("flat", lambda v, a: v.reshape(-1), "error"),
    ("as_list", lambda v, a: v.tolist(), "ok"),
    ("int32", lambda v, a: v.int(), "ok"),
]

TETS = [m for m in FACES if m[0] != "wrong_last_dim"] + [("wrong_last_dim", lambda v, a: v[:, :3], "error")]

INDEX_1D = [
    ("none", lambda v, a: None, "error"),
    ("float_dtype", lambda v, a: v.float(), "error"),
    ("negative_index", lambda v, a: _replace(v, 0, -1), "error"),
    ("index_too_large", lambda v, a: _replace(v, 0, 10 ** 6), "error"),
    ("two_dim", lambda v, a: v[:, None], "error"),
]

POS_FLOAT = [
    ("zero", lambda v, a: 0.0, "error"),
    ("negative", lambda v, a: -1.0, "error"),
    ("nan", lambda v, a: NAN, "error"),
    ("inf", lambda v, a: INF, "error"),
    ("string", lambda v, a: "1.0", "error"),
    ("none", lambda v, a: None, "error"),
]
NONNEG_FLOAT = [m for m in POS_FLOAT if m[0] != "zero"] + [("zero", lambda v, a: 0.0, "either")]
FLOAT = [m for m in POS_FLOAT if m[0] in ("nan", "inf", "string", "none")]

POS_INT = [
    ("zero", lambda v, a: 0, "error"),
    ("negative", lambda v, a: -3, "error"),
    ("float", lambda v, a: 2.5, "error"),
    ("string", lambda v, a: "2", "error"),
    ("none", lambda v, a: None, "error"),
]
NONNEG_INT = [m for m in POS_INT if m[0] != "zero"] + [("zero", lambda v, a: 0, "either")]

VEC3 = [
    ("two_entries", lambda v, a: (0.0, 0.0), "error"),
    ("nan", lambda v, a: (NAN, 0.0, 0.0), "error"),
    ("string", lambda v, a: "xyz", "error"),
    ("none", lambda v, a: None, "error"),
]
POS_VEC3 = VEC3 + [("negative", lambda v, a: (-1.0, 1.0, 1.0), "error")]

CHOICE = [
    ("unknown", lambda v, a: "no-such-option", "error"),
    ("none", lambda v, a: None, "error"),
    ("number", lambda v, a: 3, "error"),
]

DT = [
    ("zero", lambda v, a: 0.0, "error"),
    ("negative", lambda v, a: -1e-3, "error"),
    ("nan", lambda v, a: NAN, "error"),
    ("inf", lambda v, a: INF, "error"),
    ("string", lambda v, a: "0.01", "error"),
    ("none", lambda v, a: None, "error"),
]

OBJ = [
    ("none", lambda v, a: None, "error"),
    ("string", lambda v, a: "object", "error"),
    ("tensor", lambda v, a: torch.zeros(3), "error"),
]

# a per-step load of the model's shape: wrong shape, dtype, NaN
LOAD = [
    ("string", lambda v, a: "force", "error"),
    ("wrong_shape", lambda v, a: torch.zeros(v.shape[0] + 1, *v.shape[1:], dtype=v.dtype), "error"),
    ("float64_mixed", lambda v, a: v.double() if v.dtype == torch.float32 else v.float(), "error"),
    ("int_dtype", lambda v, a: v.long(), "error"),
]

OPT_POS_INT = [m for m in POS_INT if m[0] != "none"] + [("none", lambda v, a: None, "ok")]
# faces of a function that is not told the vertex count: any non-negative index is a valid vertex
FACES_ONLY = [m if m[0] != "index_too_large" else ("index_too_large", m[1], "ok") for m in FACES]
TETS_ONLY = [m if m[0] != "index_too_large" else ("index_too_large", m[1], "ok") for m in TETS]
PAIRS = [m for m in FACES if m[0] != "wrong_last_dim"] + [("wrong_last_dim", lambda v, a: v[:, :1], "error")]
SIGNAL = _float_tensor_mutations(None)  # any trailing size (per-vertex signals, attributes, colours)

KIND_TABLE = {
    "verts": VERTS, "points": POINTS, "faces": FACES, "tets": TETS, "index1d": INDEX_1D,
    "posfloat": POS_FLOAT, "nonnegfloat": NONNEG_FLOAT, "float": FLOAT, "posint": POS_INT, "nonnegint": NONNEG_INT,
    "vec3": VEC3, "posvec3": POS_VEC3, "choice": CHOICE, "dt": DT, "obj": OBJ, "load": LOAD,
    "tensor": _float_tensor_mutations(None), "optposint": OPT_POS_INT, "faces_only": FACES_ONLY,
    "tets_only": TETS_ONLY, "pairs": PAIRS, "signal": SIGNAL,
}


# ----------------------------------------------------------------------------- fixtures

def _mesh(dtype=torch.float32):
    import diffvc.geometry as G

    return G.icosphere(0, dtype=dtype)


def _cams(dtype=torch.float32):
    import diffvc.render as R

    return R.Cameras.look_at([[0.0, 0.5, 3.0]], width=16, height=16, dtype=dtype)


def targets() -> list[Target]:
    import diffvc.geometry as G
    import diffvc.optim as O
    import diffvc.physics as P
    import diffvc.pipeline as PL
    import diffvc.render as R

    T: list[Target] = []

    def add(name, fn, args, kinds, names=None, overrides=None):
        T.append(Target(name, fn, args, kinds, names, overrides))

    def mesh_args():
        v, f = _mesh()
        return {"verts": v, "faces": f}

    vf = {"verts": "verts", "faces": "faces"}
    # geometry: operators on a mesh
    for fname in ("face_normals", "vertex_normals", "mesh_normals", "face_areas", "surface_area", "volume",
                  "mass_properties", "cotangent_laplacian", "cotangent_weights", "vertex_areas",
                  "laplacian_smoothing_loss", "normal_consistency_loss", "edge_length_loss"):
        add(f"geometry.{fname}", getattr(G, fname), mesh_args, vf)
    add("geometry.mass_properties[density]", G.mass_properties, lambda: dict(mesh_args(), density=2.0),
        {"density": "nonnegfloat"})
    for fname in ("edges", "edge_face_counts", "is_watertight", "face_adjacency", "face_neighbors"):
        add(f"geometry.{fname}", getattr(G, fname), lambda: {"faces": _mesh()[1]}, {"faces": "faces_only"})
    add("geometry.boundary_vertices", G.boundary_vertices, lambda: {"faces": _mesh()[1], "num_verts": 12},
        {"faces": "faces", "num_verts": "optposint"})
    add("geometry.uniform_laplacian", G.uniform_laplacian, lambda: {"faces": _mesh()[1], "num_verts": 12},
        {"faces": "faces", "num_verts": "posint"})
    add("geometry.laplacian_apply", G.laplacian_apply,
        lambda: {"L": G.cotangent_laplacian(*_mesh()), "x": _mesh()[0]}, {"x": "signal"})
    # transforms
    add("geometry.axis_angle_to_matrix", G.axis_angle_to_matrix, lambda: {"axis_angle": torch.tensor([0.1, 0.2, 0.3])},
        {"axis_angle": "tensor"})
    add("geometry.quaternion_to_matrix", G.quaternion_to_matrix, lambda: {"q": torch.tensor([1.0, 0.1, 0.0, 0.0])},
        {"q": "tensor"})
    add("geometry.quaternion_apply", G.quaternion_apply,
        lambda: {"q": torch.tensor([1.0, 0.1, 0.0, 0.0]), "v": torch.rand(5, 3)}, {"q": "tensor", "v": "points"})
    add("geometry.euler_to_matrix", G.euler_to_matrix, lambda: {"angles": torch.tensor([0.1, 0.2, 0.3])},
        {"angles": "tensor"})
    add("geometry.transform_points", G.transform_points, lambda: {"points": torch.rand(6, 3), "matrix": torch.eye(3)},
        {"points": "verts", "matrix": "tensor"})
    add("geometry.rigid_transform", G.rigid_transform,
        lambda: {"points": torch.rand(6, 3), "rotation": torch.eye(3), "translation": torch.zeros(3)},
        {"points": "verts", "rotation": "tensor", "translation": "tensor"},
        overrides={("translation", "none"): "ok"})
    add("geometry.scale", G.scale, lambda: {"points": torch.rand(6, 3), "factor": 2.0},
        {"points": "verts", "factor": "float"})
    add("geometry.translate", G.translate, lambda: {"points": torch.rand(6, 3), "offset": (1.0, 0.0, 0.0)},
        {"points": "verts", "offset": "vec3"})
    add("geometry.normalize_to_unit_box", G.normalize_to_unit_box, lambda: {"points": torch.rand(6, 3)},
        {"points": "verts"})
    # primitives
    add("geometry.icosphere", G.icosphere, lambda: {"subdivisions": 1, "radius": 1.0},
        {"subdivisions": "nonnegint", "radius": "posfloat"})
    add("geometry.uv_sphere", G.uv_sphere, lambda: {"rings": 4, "segments": 6, "radius": 1.0},
        {"rings": "posint", "segments": "posint", "radius": "posfloat"})
    add("geometry.box", G.box, lambda: {"size": 1.0, "segments": 1}, {"size": "posfloat", "segments": "posint"})
    add("geometry.cylinder", G.cylinder, lambda: {"radius": 0.5, "height": 1.0, "segments": 8},
        {"radius": "posfloat", "height": "posfloat", "segments": "posint"})
    add("geometry.torus", G.torus, lambda: {"major_radius": 1.0, "minor_radius": 0.25, "major_segments": 8,
                                             "minor_segments": 6},
        {"major_radius": "posfloat", "minor_radius": "posfloat", "major_segments": "posint"})
    add("geometry.grid", G.grid, lambda: {"size": 1.0, "resolution": 2}, {"size": "posfloat", "resolution": "posint"})
    # SDFs
    pts = lambda: torch.rand(10, 3) - 0.5  # noqa: E731
    add("geometry.sdf_sphere", G.sdf_sphere, lambda: {"p": pts(), "center": (0.0, 0.0, 0.0), "radius": 0.5},
        {"p": "points", "center": "vec3", "radius": "nonnegfloat"})
    add("geometry.sdf_box", G.sdf_box, lambda: {"p": pts(), "half_size": (0.5, 0.4, 0.3), "center": (0.0, 0.0, 0.0)},
        {"p": "points", "half_size": "posvec3", "center": "vec3"})
    add("geometry.sdf_torus", G.sdf_torus, lambda: {"p": pts(), "major_radius": 0.5, "minor_radius": 0.2},
        {"major_radius": "nonnegfloat", "minor_radius": "nonnegfloat"})
    add("geometry.sdf_capsule", G.sdf_capsule, lambda: {"p": pts(), "a": (0.0, 0.0, 0.0), "b": (0.0, 1.0, 0.0),
                                                         "radius": 0.2},
        {"a": "vec3", "b": "vec3", "radius": "nonnegfloat"})
    add("geometry.sdf_cylinder", G.sdf_cylinder, lambda: {"p": pts(), "radius": 0.5, "height": 1.0},
        {"radius": "nonnegfloat", "height": "nonnegfloat"})
    add("geometry.sdf_plane", G.sdf_plane, lambda: {"p": pts(), "normal": (0.0, 1.0, 0.0), "offset": 0.0},
        {"normal": "vec3", "offset": "float"})
    add("geometry.smooth_union", G.smooth_union, lambda: {"a": torch.rand(5), "b": torch.rand(5), "k": 0.1},
        {"k": "nonnegfloat", "a": "obj"})
    # tets and queries
    add("geometry.tet_volumes", G.tet_volumes, lambda: dict(zip(("verts", "tets"), G.tet_box(1.0, 1))),
        {"verts": "verts", "tets": "tets"})
    add("geometry.tet_boundary_faces", G.tet_boundary_faces, lambda: {"tets": G.tet_box(1.0, 1)[1]},
        {"tets": "tets_only"})
    add("geometry.tet_box", G.tet_box, lambda: {"size": 1.0, "resolution": 1}, {"size": "posfloat",
                                                                                 "resolution": "posint"})
    add("geometry.winding_number", G.winding_number, lambda: dict(mesh_args(), points=pts()),
        {"verts": "verts", "faces": "faces", "points": "points"})
    add("geometry.point_mesh_distance", G.point_mesh_distance, lambda: dict(mesh_args(), points=pts()),
        {"verts": "verts", "faces": "faces", "points": "points"})
    add("geometry.sample_points", G.sample_points, lambda: dict(mesh_args(), n=20), {"faces": "faces", "n": "posint"})
    add("geometry.knn", G.knn, lambda: {"x": pts(), "y": pts(), "k": 2}, {"x": "points", "y": "points", "k": "posint"})
    add("geometry.chamfer_distance", G.chamfer_distance, lambda: {"x": pts(), "y": pts()},
        {"x": "points", "y": "points"})
    add("geometry.voxelize", G.voxelize, lambda: dict(mesh_args(), resolution=4),
        {"faces": "faces", "resolution": "posint"})

    # render
    def cam_args():
        c = _cams()
        return {"R": c.R, "t": c.t, "intrinsics": c.intrinsics, "width": 16, "height": 16, "near": 1e-3}

    add("render.Cameras", R.Cameras, cam_args, {"R": "tensor", "t": "tensor", "intrinsics": "tensor",
                                                 "width": "posint", "height": "posint", "near": "posfloat"})
    add("render.Cameras.look_at", R.Cameras.look_at, lambda: {"eye": [[0.0, 0.0, 3.0]], "width": 8, "height": 8,
                                                              "fov_y": 45.0, "near": 1e-3},
        {"width": "posint", "height": "posint", "fov_y": "posfloat", "near": "posfloat"})
    add("render.look_at", R.look_at, lambda: {"eye": (0.0, 0.0, 3.0), "target": (0.0, 0.0, 0.0)},
        {"eye": "vec3", "target": "vec3"})
    add("render.focal_from_fov", R.focal_from_fov, lambda: {"fov_y_degrees": 45.0, "height": 16},
        {"fov_y_degrees": "posfloat", "height": "posint"})
    add("render.generate_rays", R.generate_rays, lambda: {"cameras": _cams(), "height": 4, "width": 4},
        {"cameras": "obj", "height": "optposint", "width": "optposint"})

    def raster_args():
        v, f = _mesh()
        return {"cameras": _cams(), "verts": v, "faces": f}

    add("render.rasterize", R.rasterize, raster_args, {"cameras": "obj", "verts": "verts", "faces": "faces"})
    add("render.rasterize[tile]", R.rasterize, lambda: dict(raster_args(), tile=8),
        {"tile": "optposint", "backend": "choice"})

    def frag_args():
        a = raster_args()
        fr = R.rasterize(**a)
        return {"attr": a["verts"], "frags": fr}

    add("render.interpolate", R.interpolate, frag_args, {"attr": "signal", "frags": "obj", "backend": "choice"})

    def aa_args():
        fr = frag_args()["frags"]
        return {"color": fr.mask, "frags": fr}

    add("render.antialias", R.antialias, aa_args, {"color": "tensor", "frags": "obj", "backend": "choice"})
    add("render.mesh_topology", R.mesh_topology, lambda: {"faces": _mesh()[1], "num_verts": 12},
        {"faces": "faces", "num_verts": "optposint"})
    add("render.soft_silhouette", R.soft_silhouette, lambda: dict(raster_args(), sigma=1.0),
        {"verts": "verts", "faces": "faces", "sigma": "posfloat"})
    add("render.texture", R.texture, lambda: {"tex": torch.rand(1, 8, 8, 3), "uv": torch.rand(1, 4, 4, 2)},
        {"tex": "tensor", "uv": "tensor", "filter": "choice", "wrap": "choice"})

    # physics
    add("physics.ParticleModel.create", P.ParticleModel.create, lambda: {"mass": [1.0, 2.0], "radius": 0.1,
                                                                         "mu": 0.2, "friction_smoothing": 0.01,
                                                                         "gravity": (0.0, -9.81, 0.0)},
        {"radius": "nonnegfloat", "mu": "nonnegfloat", "friction_smoothing": "posfloat", "gravity": "vec3"})

    def particle_args():
        m = P.ParticleModel.create(torch.ones(3), 0.05)
        x = torch.rand(3, 3) + 0.1
        return {"model": m, "state": P.ParticleState(x, torch.zeros_like(x)), "dt": 1e-3,
                "external": torch.zeros(3, 3)}

    add("physics.particle_step", P.particle_step, particle_args, {"model": "obj", "state": "obj", "dt": "dt",
                                                                  "external": "load"})

    def spring_args():
        x = torch.rand(4, 3) + 0.1
        m = P.SpringModel.create(x, [[0, 1], [1, 2], [2, 3]])
        return {"model": m, "state": P.ParticleState(x, torch.zeros_like(x)), "dt": 1e-3,
                "actuation": torch.zeros(3), "external": torch.zeros(4, 3)}

    add("physics.spring_step", P.spring_step, spring_args, {"model": "obj", "state": "obj", "dt": "dt",
                                                            "actuation": "load", "external": "load"})
    add("physics.SpringModel.create", P.SpringModel.create,
        lambda: {"x": torch.rand(4, 3), "springs": torch.tensor([[0, 1], [2, 3]]), "ke": 100.0, "mass": 1.0},
        {"x": "verts", "springs": "pairs", "ke": "nonnegfloat", "mass": "nonnegfloat"},
        overrides={("x", "int_dtype"): "ok"})
    add("physics.springs_from_mesh", P.springs_from_mesh, mesh_args, vf)

    def rigid_args():
        m = P.RigidBodyModel.spheres([0.1, 0.1], [1.0, 2.0])
        st = P.RigidBodyState.create([[0.0, 0.2, 0.0], [0.5, 0.2, 0.0]])
        return {"model": m, "state": st, "dt": 1e-3, "force": torch.zeros(2, 3), "torque": torch.zeros(2, 3)}

    add("physics.rigid_step", P.rigid_step, rigid_args, {"model": "obj", "state": "obj", "dt": "dt",
                                                         "force": "load", "torque": "load"})
    add("physics.apply_impulse", P.apply_impulse, lambda: dict(
        {k: v for k, v in rigid_args().items() if k in ("model", "state")}, impulse=torch.zeros(2, 3)),
        {"impulse": "load", "state": "obj"})
    add("physics.RigidBodyModel.spheres", P.RigidBodyModel.spheres, lambda: {"radius": [0.1, 0.2], "mass": [1.0, 2.0],
                                                                           "mu": 0.5},
        {"radius": "nonnegfloat", "mass": "posfloat", "mu": "nonnegfloat"}, names={"radius": ["radius", "point_radius"]})

    def fem_args():
        v, t = G.tet_box(0.1, 1)
        m = P.FEMModel.create(v + 0.1, t)
        return {"model": m, "state": m.initial_state(), "dt": 1e-4, "external": torch.zeros(v.shape[0], 3)}

    add("physics.fem_step", P.fem_step, fem_args, {"model": "obj", "state": "obj", "dt": "dt", "external": "load"})
    add("physics.FEMModel.create", P.FEMModel.create,
        lambda: dict(zip(("verts", "tets"), G.tet_box(0.1, 1)), density=1000.0, youngs_modulus=1e5),
        {"verts": "verts", "tets": "tets", "density": "posfloat", "youngs_modulus": "posfloat"},
        overrides={("verts", "int_dtype"): "ok"})
    add("physics.rollout", P.rollout, lambda: {k: v for k, v in dict(particle_args(), steps=3).items()
                                               if k != "external"},
        {"steps": "posint", "dt": "dt", "model": "obj", "state": "obj"},
        overrides={("steps", "zero"): "ok"})
    add("physics.lame_parameters", P.lame_parameters, lambda: {"youngs_modulus": 1e5, "poisson_ratio": 0.3},
        {"youngs_modulus": "posfloat", "poisson_ratio": "float"})

    # pipeline
    add("pipeline.rigid_vertices", PL.rigid_vertices, lambda: {"verts": _mesh()[0], "position": torch.zeros(3),
                                                               "rotation": torch.tensor([1.0, 0.0, 0.0, 0.0])},
        {"verts": "verts", "position": "tensor", "rotation": "tensor"})
    add("pipeline.soft_vertices", PL.soft_vertices, lambda: {"nodes": torch.rand(6, 3), "index": torch.tensor([0, 2, 5])},
        {"nodes": "verts", "index": "index1d"},
        overrides={("nodes", "extra_batch_dim"): "ok", ("index", "none"): "ok"})
    add("pipeline.RigidBinding", PL.RigidBinding, lambda: {"verts": _mesh()[0]}, {"verts": "verts"})
    add("pipeline.StaticBinding", PL.StaticBinding, lambda: {"verts": _mesh()[0]}, {"verts": "verts"})
    add("pipeline.SoftBinding", PL.SoftBinding, lambda: {"index": torch.tensor([0, 1]), "num_nodes": 4},
        {"index": "index1d"}, overrides={("index", "none"): "ok"})

    def add_shape(faces, binding, color=(0.5, 0.5, 0.5)):
        sc = PL.Scene(_cams())
        sc.add_shape("s", faces, binding, color=color)
        return sc

    add("pipeline.Scene.add_shape", add_shape, lambda: {"faces": _mesh()[1], "binding": _mesh()[0]},
        {"faces": "faces", "color": "vec3"})

    # optim
    add("optim.Positive", O.Positive, lambda: {"value": 2.0}, {"value": "posfloat"})
    add("optim.Bounded", O.Bounded, lambda: {"value": 0.5, "low": 0.0, "high": 1.0}, {"value": "float",
                                                                                      "low": "float", "high": "float"})
    add("optim.pyramid_mse", O.pyramid_mse, lambda: {"pred": torch.rand(1, 8, 8, 3), "target": torch.rand(1, 8, 8, 3)},
        {"pred": "tensor", "target": "tensor", "levels": "posint"})
    return T


def cases() -> list[tuple[str, str, str]]:
    """All calls as ``(target name, argument, mutation label)``, in a fixed order."""
    out = []
    for t in targets():
        for arg, kind in t.kinds.items():
            for label, _, _ in KIND_TABLE[kind]:
                out.append((t.name, arg, label))
    return out
