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

# an integer tensor (ids, adjacency): wrong type or dtype
INT_TENSOR = [
    ("none", lambda v, a: None, "error"),
    ("string", lambda v, a: "ids", "error"),
    ("float_dtype", lambda v, a: v.float(), "error"),
    ("bool_dtype", lambda v, a: v > 0, "error"),
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
    "tets_only": TETS_ONLY, "pairs": PAIRS, "signal": SIGNAL, "inttensor": INT_TENSOR,
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
    _more_targets(add, mesh_args, G, R, P, PL, O)
    _state_and_result_targets(add, mesh_args, G, R, P, PL, O)
    return T


def cases() -> list[tuple[str, str, str]]:
    """All calls as ``(target name, argument, mutation label)``, in a fixed order."""
    out = []
    for t in targets():
        for arg, kind in t.kinds.items():
            for label, _, _ in KIND_TABLE[kind]:
                out.append((t.name, arg, label))
    return out


def _more_targets(add, mesh_args, G, R, P, PL, O) -> None:
    """The rest of the public surface: fields, conversions, I/O, curvature, splines, encoders,
    ray tracing, path tracing, volumes, sphere tracing, splats, MPM, cloth, smoke, articulated
    bodies, the renderer contract and the optimisation helpers."""
    import tempfile

    pts = lambda n=10: torch.rand(n, 3) - 0.5  # noqa: E731
    vf = {"verts": "verts", "faces": "faces"}
    sdf_fn = lambda p: G.sdf_sphere(p, (0.0, 0.0, 0.0), 0.5)  # noqa: E731

    # geometry: primitives, CSG, tets, conversions, queries
    add("geometry.plane", G.plane, lambda: {"size": 1.0, "resolution": 2}, {"size": "posfloat", "resolution": "posint"})
    for fname in ("smooth_intersection", "smooth_difference"):
        add(f"geometry.{fname}", getattr(G, fname), lambda: {"a": torch.rand(5), "b": torch.rand(5), "k": 0.1},
            {"k": "nonnegfloat", "a": "obj", "b": "obj"})
    add("geometry.union", lambda a, b: G.union(a, b), lambda: {"a": torch.rand(5), "b": torch.rand(5)},
        {"a": "obj", "b": "obj"}, names={"a": ["ds[0]"], "b": ["ds[1]"]})
    add("geometry.intersection", lambda a, b: G.intersection(a, b), lambda: {"a": torch.rand(5), "b": torch.rand(5)},
        {"a": "obj", "b": "obj"}, names={"a": ["ds[0]"], "b": ["ds[1]"]})
    add("geometry.sdf_normal", G.sdf_normal, lambda: {"sdf_fn": sdf_fn, "p": pts()}, {"sdf_fn": "obj", "p": "points"})
    add("geometry.tet_grid", G.tet_grid, lambda: {"resolution": 2}, {"resolution": "posint"})
    add("geometry.orient_tets", G.orient_tets, lambda: dict(zip(("verts", "tets"), G.tet_box(1.0, 1))),
        {"verts": "verts", "tets": "tets"})
    add("geometry.tet_faces", G.tet_faces, lambda: {"tets": G.tet_box(1.0, 1)[1]}, {"tets": "tets_only"})
    add("geometry.remove_unreferenced", G.remove_unreferenced, lambda: dict(zip(("verts", "cells"), G.icosphere(0))),
        {"verts": "verts", "cells": "faces"},  # any coordinate count and any cell size
        overrides={("verts", "wrong_last_dim"): "ok", ("cells", "wrong_last_dim"): "ok"})

    def mt_args():
        v, t = G.tet_grid(3)
        return {"verts": v, "tets": t, "sdf": v.norm(dim=-1) - 0.6}

    add("geometry.marching_tetrahedra", G.marching_tetrahedra, mt_args,
        {"verts": "verts", "tets": "tets", "sdf": "signal"})
    add("geometry.sdf_to_mesh", G.sdf_to_mesh, lambda: {"sdf_fn": sdf_fn, "resolution": 4},
        {"sdf_fn": "obj", "resolution": "posint"})
    add("geometry.occupancy", G.occupancy, lambda: dict(mesh_args(), points=pts()),
        {"verts": "verts", "faces": "faces", "points": "points", "threshold": "float", "method": "choice"})
    add("geometry.closest_point_on_triangle", G.closest_point_on_triangle,
        lambda: {"p": pts(4), "a": torch.zeros(4, 3), "b": torch.tensor([[1.0, 0, 0]] * 4),
                 "c": torch.tensor([[0.0, 1, 0]] * 4)}, {"p": "verts", "a": "verts", "b": "verts", "c": "verts"},
        overrides={("p", "extra_batch_dim"): "either", ("a", "extra_batch_dim"): "either",
                   ("b", "extra_batch_dim"): "either", ("c", "extra_batch_dim"): "either"})
    add("geometry.closest_points", G.closest_points, lambda: dict(mesh_args(), points=pts()),
        {"verts": "verts", "faces": "faces", "points": "points", "method": "choice"})
    add("geometry.mesh_to_sdf", G.mesh_to_sdf, lambda: dict(mesh_args(), points=pts()),
        {"verts": "verts", "faces": "faces", "points": "points", "method": "choice"})
    add("geometry.tetrahedralize", G.tetrahedralize, lambda: dict(mesh_args(), resolution=3),
        {"verts": "verts", "faces": "faces", "resolution": "posint"})
    add("geometry.nearest_neighbor", G.nearest_neighbor, lambda: {"x": pts(), "y": pts()},
        {"x": "points", "y": "points", "method": "choice"})
    add("geometry.grid_points", G.grid_points, lambda: {"resolution": 3}, {"resolution": "posint"})
    add("geometry.trilinear_sample", G.trilinear_sample, lambda: {"values": torch.rand(4, 4, 4), "points": pts()},
        {"values": "tensor", "points": "points"})
    add("geometry.DenseGrid", G.DenseGrid, lambda: {"resolution": 4, "channels": 2},
        {"resolution": "posint", "channels": "optposint"})
    add("geometry.grid_to_mesh", G.grid_to_mesh,
        lambda: {"values": G.grid_points(6).norm(dim=-1).reshape(6, 6, 6) - 0.6}, {"values": "tensor"})
    # neural fields and encoders
    add("geometry.PositionalEncoding", G.PositionalEncoding, lambda: {"in_dim": 3, "num_freqs": 4},
        {"in_dim": "posint", "num_freqs": "nonnegint"})
    add("geometry.HashGridEncoding", G.HashGridEncoding,
        lambda: {"levels": 2, "features": 2, "log2_table": 8, "base_resolution": 4, "max_resolution": 16},
        {"levels": "posint", "features": "posint", "log2_table": "posint", "base_resolution": "posint"})
    add("geometry.MLP", G.MLP, lambda: {"in_dim": 3, "out_dim": 1, "hidden": 8, "layers": 2, "activation": "relu"},
        {"in_dim": "posint", "out_dim": "posint", "hidden": "posint", "activation": "choice"})
    add("geometry.NeuralField", G.NeuralField, lambda: {"out_dim": 1, "encoding": "frequency", "hidden": 8},
        {"out_dim": "posint", "encoding": "choice", "hidden": "posint", "activation": "choice"})
    add("geometry.NeuralField.__call__", lambda x: G.NeuralField(encoding="frequency", hidden=8)(x),
        lambda: {"x": pts()}, {"x": "points"})
    add("geometry.PointNetEncoder", G.PointNetEncoder, lambda: {"in_dim": 3, "out_dim": 8, "widths": (8, 8)},
        {"in_dim": "posint", "out_dim": "posint"})
    add("geometry.EdgeConv", G.EdgeConv, lambda: {"in_dim": 3, "out_dim": 8, "k": 4},
        {"in_dim": "posint", "out_dim": "posint", "k": "posint"})
    add("geometry.DGCNNEncoder", G.DGCNNEncoder, lambda: {"in_dim": 3, "out_dim": 8, "widths": (8, 8), "k": 4,
                                                          "emb": 16},
        {"in_dim": "posint", "out_dim": "posint", "k": "posint", "emb": "posint"})
    add("geometry.MeshConv", G.MeshConv, lambda: {"in_dim": 3, "out_dim": 8}, {"in_dim": "posint", "out_dim": "posint"})
    add("geometry.MeshEncoder", G.MeshEncoder, lambda: {"in_dim": 3, "out_dim": 8, "widths": (8, 8)},
        {"in_dim": "posint", "out_dim": "posint"})
    add("geometry.knn_graph", G.knn_graph, lambda: {"x": pts(), "k": 3}, {"x": "points", "k": "posint"},
        overrides={("x", "wrong_last_dim"): "ok", ("x", "empty"): "error"})
    add("geometry.normalized_adjacency", G.normalized_adjacency, lambda: {"faces": G.icosphere(0)[1], "num_verts": 12},
        {"faces": "faces", "num_verts": "posint"})
    # reparameterisation and smoothing
    add("geometry.LargeSteps", G.LargeSteps, lambda: dict(mesh_args(), lam=10.0),
        {"verts": "verts", "faces": "faces", "lam": "nonnegfloat", "laplacian": "choice", "method": "choice"})
    L = lambda: G.uniform_laplacian(G.icosphere(0)[1], 12)  # noqa: E731
    add("geometry.system_matrix", G.system_matrix, lambda: {"L": L(), "lam": 10.0}, {"lam": "nonnegfloat", "L": "obj"})
    add("geometry.SparseSolver", G.SparseSolver, lambda: {"M": G.system_matrix(L(), 10.0)},
        {"M": "obj", "method": "choice"})
    add("geometry.to_differential", G.to_differential, lambda: {"L": L(), "x": G.icosphere(0)[0], "lam": 10.0},
        {"x": "signal", "lam": "nonnegfloat", "L": "obj"})
    add("geometry.from_differential", G.from_differential, lambda: {"L": L(), "u": G.icosphere(0)[0], "lam": 10.0},
        {"u": "signal", "lam": "nonnegfloat", "method": "choice"})
    add("geometry.AdamUniform", G.AdamUniform, lambda: {"params": [torch.zeros(3, requires_grad=True)], "lr": 0.1},
        {"lr": "posfloat", "params": "obj"})
    add("geometry.HeatDiffusion", G.HeatDiffusion, lambda: dict(mesh_args(), t=0.1),
        {"verts": "verts", "faces": "faces", "t": "nonnegfloat", "steps": "posint", "laplacian": "choice"})
    add("geometry.heat_diffuse", G.heat_diffuse, lambda: dict(mesh_args(), signal=torch.rand(12), t=0.1),
        {"signal": "signal", "t": "nonnegfloat", "steps": "posint", "laplacian": "choice"})
    # curvature
    for fname in ("angle_defect", "angle_weighted_normals", "corner_angles", "gaussian_curvature", "mean_curvature",
                  "mean_curvature_normal", "principal_curvatures", "voronoi_areas"):
        add(f"geometry.{fname}", getattr(G, fname), mesh_args, vf)
    # I/O: a path in a fresh temporary directory each call
    def tmp(name):
        return tempfile.mkdtemp(prefix="diffvc_fuzz_") + "/" + name

    add("geometry.save_mesh", G.save_mesh, lambda: dict(mesh_args(), path=tmp("m.obj")),
        {"verts": "verts", "faces": "faces", "path": "obj"})
    add("geometry.save_points", G.save_points, lambda: {"points": pts(), "path": tmp("p.ply")},
        {"points": "verts", "path": "obj"})

    def load_mesh_args():
        path = tmp("m.obj")
        G.save_mesh(path, *G.icosphere(0))
        return {"path": path}

    add("geometry.load_mesh", G.load_mesh, load_mesh_args, {"path": "obj"})
    add("geometry.load_points", G.load_points, lambda: {"path": str(G.save_points(tmp("p.ply"), pts()))},
        {"path": "obj"})
    # splines
    ctrl = lambda: torch.rand(5, 3, dtype=torch.float64)  # noqa: E731
    tt = lambda: torch.linspace(0, 1, 7, dtype=torch.float64)  # noqa: E731
    add("geometry.bezier_curve", G.bezier_curve, lambda: {"ctrl": ctrl(), "t": tt()},
        {"ctrl": "tensor", "t": "tensor", "derivatives": "nonnegint"})
    add("geometry.bspline_curve", G.bspline_curve, lambda: {"ctrl": ctrl(), "t": tt(), "degree": 3},
        {"ctrl": "tensor", "t": "tensor", "degree": "nonnegint", "derivatives": "nonnegint"})
    add("geometry.bspline_basis", G.bspline_basis,
        lambda: {"t": tt(), "knots": G.clamped_knots(5, 3), "degree": 3}, {"t": "tensor", "knots": "tensor",
                                                                          "degree": "nonnegint"})
    add("geometry.clamped_knots", G.clamped_knots, lambda: {"n_ctrl": 5, "degree": 3},
        {"n_ctrl": "posint", "degree": "nonnegint"})
    add("geometry.elevate_bezier", G.elevate_bezier, lambda: {"ctrl": ctrl()}, {"ctrl": "tensor"})
    add("geometry.insert_knot", G.insert_knot, lambda: {"ctrl": ctrl(), "knots": G.clamped_knots(5, 3), "degree": 3,
                                                       "t": 0.3},
        {"ctrl": "tensor", "knots": "tensor", "t": "float", "degree": "posint"})
    add("geometry.nurbs_circle", G.nurbs_circle, lambda: {"radius": 1.0}, {"radius": "posfloat"})
    sctrl = lambda: torch.rand(4, 4, 3, dtype=torch.float64)  # noqa: E731
    add("geometry.bspline_surface", G.bspline_surface, lambda: {"ctrl": sctrl(), "u": tt(), "v": tt()},
        {"ctrl": "tensor", "u": "tensor", "v": "tensor"})
    add("geometry.tessellate_surface", G.tessellate_surface, lambda: {"ctrl": sctrl(), "resolution": (4, 4)},
        {"ctrl": "tensor"})
    add("geometry.surface_normals", G.surface_normals,
        lambda: {"Su": torch.rand(5, 3, dtype=torch.float64), "Sv": torch.rand(5, 3, dtype=torch.float64)},
        {"Su": "verts", "Sv": "verts"})

    # render: lights, shading, ray tracing, path tracing
    add("render.sphere_eyes", R.sphere_eyes, lambda: {"n": 4, "radius": 3.0}, {"n": "posint", "radius": "posfloat"})
    add("render.PointLight", R.PointLight, lambda: {"position": torch.tensor([0.0, 2.0, 0.0]),
                                                    "intensity": torch.tensor([1.0, 1.0, 1.0])},
        {"position": "tensor", "intensity": "tensor"})
    add("render.DirectionalLight", R.DirectionalLight, lambda: {"direction": torch.tensor([0.0, -1.0, 0.0]),
                                                                "irradiance_value": torch.ones(3)},
        {"direction": "tensor", "irradiance_value": "tensor"})
    add("render.AmbientLight", R.AmbientLight, lambda: {"radiance_value": torch.ones(3)}, {"radiance_value": "tensor"})
    add("render.SHEnvironment", R.SHEnvironment, lambda: {"coeffs": torch.rand(9, 3)}, {"coeffs": "tensor"})
    dirs = lambda: torch.nn.functional.normalize(torch.rand(6, 3) + 0.1, dim=-1)  # noqa: E731
    add("render.sh_basis", R.sh_basis, lambda: {"dirs": dirs()}, {"dirs": "verts"},
        overrides={("dirs", "extra_batch_dim"): "ok"})  # any leading batch (..., 3)
    add("render.Material", R.Material, lambda: {"albedo": torch.full((6, 3), 0.5), "roughness": torch.full((6, 1), 0.5),
                                                "f0": torch.full((6, 3), 0.04)},
        {"albedo": "tensor", "roughness": "tensor", "f0": "tensor"})
    add("render.lambert", R.lambert, lambda: {"albedo": torch.rand(6, 3)}, {"albedo": "tensor"})
    add("render.ggx_distribution", R.ggx_distribution, lambda: {"n_dot_h": torch.rand(6), "roughness": torch.rand(6)},
        {"n_dot_h": "tensor", "roughness": "tensor"})
    add("render.fresnel_schlick", R.fresnel_schlick, lambda: {"cos_theta": torch.rand(6), "f0": torch.rand(6)},
        {"cos_theta": "tensor", "f0": "tensor"})

    def shade_args():
        return {"positions": torch.rand(6, 3), "normals": dirs(), "view_dirs": dirs(),
                "material": R.Material(torch.full((6, 3), 0.5), torch.full((6, 1), 0.5), torch.full((6, 3), 0.04)),
                "lights": [R.PointLight(torch.tensor([0.0, 2.0, 0.0]), torch.ones(3))]}

    add("render.shade", R.shade, shade_args, {"positions": "verts", "normals": "verts", "view_dirs": "verts",
                                              "material": "obj"},
        overrides={(k, "extra_batch_dim"): "ok" for k in ("positions", "normals", "view_dirs")})  # (..., 3) broadcast
    add("render.rasterize_screen", R.rasterize_screen,
        lambda: {"screen": torch.tensor([[[1.0, 1.0, 0.5], [7.0, 1.0, 0.5], [1.0, 7.0, 0.5]]]),
                 "faces": torch.tensor([[0, 1, 2]]), "height": 8, "width": 8},
        {"screen": "tensor", "faces": "faces", "height": "posint", "width": "posint", "backend": "choice"},
        overrides={("screen", "noncontiguous"): "ok"})
    add("render.face_neighbors", R.face_neighbors, lambda: {"faces": G.icosphere(0)[1]}, {"faces": "faces_only"})
    add("render.mipmaps", R.mipmaps, lambda: {"tex": torch.rand(1, 8, 8, 3)}, {"tex": "tensor", "levels": "optposint"})
    add("render.TriangleBVH", R.TriangleBVH, lambda: dict(zip(("vertices", "faces"), G.icosphere(0))),
        {"vertices": "verts", "faces": "faces"})

    def ray_args():
        v, f = G.icosphere(0)
        o = torch.tensor([[0.0, 0.0, 3.0]] * 4)
        return {"vertices": v, "faces": f, "origins": o, "directions": torch.tensor([[0.0, 0.0, -1.0]] * 4)}

    add("render.intersect", R.intersect, ray_args, {"vertices": "verts", "faces": "faces", "origins": "verts",
                                                    "directions": "verts"})
    add("render.occluded", R.occluded, lambda: {**{k: v for k, v in ray_args().items() if k in ("vertices", "faces")},
                                                "points": torch.tensor([[0.0, 0.0, 3.0]] * 4),
                                                "targets": torch.tensor([[0.0, 0.0, -3.0]] * 4)},
        {"points": "verts", "targets": "verts"})
    add("render.render_gbuffer", R.render_gbuffer, lambda: dict(zip(("vertices", "faces"), G.icosphere(0)),
                                                                camera=_cams()),
        {"vertices": "verts", "faces": "faces", "camera": "obj", "spp": "posint"})
    add("render.PTMaterial", R.PTMaterial, lambda: {"kind": "diffuse", "albedo": (0.5, 0.5, 0.5), "roughness": 0.5},
        {"kind": "choice", "albedo": "vec3", "roughness": "nonnegfloat", "emission": "vec3"})
    add("render.cornell_camera", R.cornell_camera, lambda: {"width": 8, "height": 8},
        {"width": "posint", "height": "posint"})
    add("render.path_trace", R.path_trace, lambda: {"scene": R.cornell_box()[0], "camera": R.cornell_camera(8, 8),
                                                    "spp": 1, "max_depth": 2},
        {"scene": "obj", "camera": "obj", "spp": "posint", "max_depth": "nonnegint", "rr_depth": "posint",
         "edge_samples": "nonnegint"})
    # volumes
    def rays(n=6):
        o = torch.tensor([[0.0, 0.0, 3.0]]).repeat(n, 1)
        d = torch.nn.functional.normalize(torch.rand(n, 3) * 0.2 - 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
        return o, d

    add("render.ray_aabb", R.ray_aabb, lambda: dict(zip(("origins", "directions"), rays()), bbox_min=-1.0,
                                                    bbox_max=1.0),
        {"origins": "verts", "directions": "verts"})
    add("render.stratified_samples", R.stratified_samples,
        lambda: {"t_near": torch.full((6,), 2.0), "t_far": torch.full((6,), 4.0), "n_samples": 8},
        {"t_near": "tensor", "t_far": "tensor", "n_samples": "posint"})
    add("render.composite_rays", R.composite_rays,
        lambda: {"sigma": torch.rand(6, 8), "color": torch.rand(6, 8, 3), "delta": torch.full((6, 8), 0.1)},
        {"sigma": "tensor", "color": "tensor", "delta": "tensor", "backend": "choice"},
        overrides={("color", "none"): "ok"})  # color=None: transmittance and depth only
    add("render.render_grid", R.render_grid, lambda: dict(zip(("origins", "directions"), rays()),
                                                          density=torch.rand(8, 8, 8), n_samples=8),
        {"density": "tensor", "origins": "verts", "directions": "verts", "n_samples": "posint"})
    add("render.render_field", R.render_field,
        lambda: dict(zip(("origins", "directions"), rays()),
                     field=lambda p, d: (torch.relu(1 - p.norm(dim=-1)), torch.sigmoid(p)), n_samples=8),
        {"field": "obj", "origins": "verts", "directions": "verts", "n_samples": "posint"})
    add("render.render_volume", R.render_volume, lambda: {"cameras": _cams(), "density": torch.rand(8, 8, 8),
                                                          "n_samples": 8},
        {"cameras": "obj", "density": "tensor", "n_samples": "posint"})
    add("render.OccupancyGrid", R.OccupancyGrid, lambda: {"resolution": 8, "threshold": 0.01, "decay": 0.9},
        {"resolution": "posint", "threshold": "nonnegfloat"})
    add("render.write_vol", R.write_vol, lambda: {"path": tmp("d.vol"), "values": torch.rand(4, 4, 4)},
        {"values": "tensor", "path": "obj"})
    add("render.read_vol", R.read_vol, lambda: {"path": str(R.write_vol(tmp("d.vol"), torch.rand(4, 4, 4)))},
        {"path": "obj"})
    # sphere tracing
    add("render.sphere_trace", R.sphere_trace, lambda: dict(zip(("origins", "directions"), rays()), sdf=sdf_fn),
        {"sdf": "obj", "origins": "verts", "directions": "verts", "max_steps": "posint", "eps": "posfloat"})
    add("render.render_sdf", R.render_sdf, lambda: {"cameras": _cams(), "sdf": sdf_fn},
        {"cameras": "obj", "sdf": "obj", "albedo": "vec3", "light_dir": "vec3", "ambient": "nonnegfloat"})
    add("render.shade_sdf", R.shade_sdf,
        lambda: {"hits": R.sphere_trace(sdf_fn, *rays()), "albedo": (0.8, 0.8, 0.8), "ambient": 0.2},
        {"hits": "obj", "albedo": "vec3", "light_dir": "vec3", "ambient": "nonnegfloat"})
    # splats
    def gauss_args(n=5):
        return {"means": pts(n), "scales": torch.full((n, 3), 0.1), "quats": torch.tensor([[1.0, 0, 0, 0]] * n),
                "opacities": torch.full((n,), 0.5), "sh": torch.rand(n, 1, 3)}

    add("render.Gaussians", R.Gaussians, gauss_args, {"means": "verts", "scales": "verts", "quats": "tensor",
                                                      "opacities": "tensor", "sh": "tensor"})
    add("render.render_gaussians", R.render_gaussians, lambda: {"gaussians": R.Gaussians(**gauss_args()),
                                                                "cameras": _cams()},
        {"gaussians": "obj", "cameras": "obj", "backend": "choice"})
    add("render.project_gaussians", R.project_gaussians,
        lambda: {**{k: v for k, v in gauss_args().items() if k in ("means", "scales", "quats")}, "cameras": _cams()},
        {"means": "verts", "scales": "verts", "quats": "tensor", "cameras": "obj"})
    add("render.points_to_gaussians", R.points_to_gaussians,
        lambda: {"positions": pts(5), "radii": torch.full((5,), 0.1), "colors": torch.rand(5, 3),
                 "opacities": torch.full((5,), 0.5)},
        {"positions": "verts", "radii": "tensor", "colors": "tensor", "opacities": "tensor"})
    add("render.ssim", R.ssim, lambda: {"pred": torch.rand(1, 16, 16, 3), "target": torch.rand(1, 16, 16, 3)},
        {"pred": "tensor", "target": "tensor", "window": "posint", "sigma": "posfloat"})
    add("render.splat_loss", R.splat_loss, lambda: {"pred": torch.rand(1, 16, 16, 3), "target": torch.rand(1, 16, 16, 3)},
        {"pred": "tensor", "target": "tensor", "lambda_dssim": "nonnegfloat"})
    add("render.init_splat_params", R.init_splat_params, lambda: {"points": pts(8), "sh_degree": 1},
        {"points": "verts", "sh_degree": "nonnegint", "opacity": "posfloat"})
    add("render.DensityControl", R.DensityControl, lambda: {"scene_extent": 1.0}, {"scene_extent": "posfloat",
                                                                                  "n_split": "posint"})

    # physics: twins, implicit FEM, new solvers
    def particle_args():
        m = P.ParticleModel.create(torch.ones(3), 0.05)
        x = torch.rand(3, 3) + 0.1
        return {"model": m, "state": P.ParticleState(x, torch.zeros_like(x)), "dt": 1e-3}

    add("physics.particle_step_torch", P.particle_step_torch, particle_args, {"model": "obj", "state": "obj",
                                                                             "dt": "dt"})
    add("physics.ParticleState", P.ParticleState, lambda: {"x": pts(3), "v": torch.zeros(3, 3)},
        {"x": "verts", "v": "verts"}, names={"x": ["x", "v"]})  # x (1, 1, 3, 3) against v (3, 3): "v must have shape"
    add("physics.step", P.step, particle_args, {"model": "obj", "dt": "dt"})

    def fem_model():
        v, t = G.tet_box(0.1, 1)
        return P.FEMModel.create(v + 0.1, t, youngs_modulus=1e4)

    add("physics.fem_implicit_step", P.fem_implicit_step,
        lambda: (lambda m: {"model": m, "state": m.initial_state(), "dt": 1e-2})(fem_model()),
        {"model": "obj", "state": "obj", "dt": "dt", "newton_iters": "posint"})
    add("physics.fem_static_solve", P.fem_static_solve, lambda: {"model": fem_model()},
        {"model": "obj", "newton_iters": "posint"})
    add("physics.MPMModel.create", P.MPMModel.create,
        lambda: {"x": torch.rand(16, 2) * 0.3 + 0.3, "res": (16, 16), "dx": 1 / 16, "E": 1e3, "nu": 0.2},
        {"x": "tensor", "dx": "posfloat", "E": "posfloat", "nu": "float", "material": "choice", "walls": "choice"})

    def mpm_args():
        x = torch.rand(16, 2) * 0.3 + 0.3
        m = P.MPMModel.create(x, (16, 16), 1 / 16, E=1e3)
        return {"model": m, "state": m.initial_state(x), "dt": 1e-4}

    add("physics.MPMModel.step", lambda model, state, dt: model.step(state, dt), mpm_args,
        {"state": "obj", "dt": "dt"})

    def cloth_verts():
        v, f = G.grid(1.0, 3)
        return v + torch.tensor([0.0, 0.5, 0.0]), f

    add("physics.ClothModel.create", P.ClothModel.create,
        lambda: dict(zip(("verts", "faces"), cloth_verts()), pins=torch.tensor([0, 3])),
        {"verts": "verts", "faces": "faces", "density": "posfloat", "mu": "nonnegfloat", "lam": "nonnegfloat",
         "kb": "nonnegfloat", "pins": "index1d"}, overrides={("pins", "none"): "ok"})

    def cloth_args():
        v, f = cloth_verts()
        m = P.ClothModel.create(v, f)
        return {"model": m, "state": m.state(v), "dt": 1e-3}

    add("physics.ClothModel.step", lambda model, state, dt: model.step(state, dt), cloth_args,
        {"state": "obj", "dt": "dt"})
    add("physics.cloth_hinges", P.cloth_hinges, lambda: {"faces": G.grid(1.0, 2)[1]}, {"faces": "faces_only"})
    add("physics.SmokeModel", P.SmokeModel, lambda: {"resolution": (8, 8), "dx": 1.0},
        {"dx": "posfloat", "boundary": "choice", "advection": "choice", "backtrace": "choice", "tol": "posfloat",
         "max_iter": "posint"})

    def smoke_args():
        m = P.SmokeModel((8, 8))
        return {"model": m, "state": m.state(density=torch.rand(8, 8)), "dt": 0.1}

    add("physics.SmokeModel.step", lambda model, state, dt: model.step(state, dt), smoke_args,
        {"state": "obj", "dt": "dt"})
    add("physics.SmokeModel.state", lambda model, density: model.state(density=density),
        lambda: {"model": P.SmokeModel((8, 8)), "density": torch.rand(8, 8)}, {"density": "tensor"},
        overrides={("density", "none"): "ok"})  # None: the documented default (zero density)

    def pendulum():
        b = P.ArticulationBuilder()
        body = b.add_body(-1, pos=(0.0, 1.0, 0.0), mass=1.0, inertia=(0.01, 0.01, 0.01))
        b.add_joint(body, "revolute", axis=(0.0, 0.0, 1.0))
        return b.build()

    add("physics.ArticulationBuilder.add_body", lambda mass, inertia: P.ArticulationBuilder().add_body(
        -1, mass=mass, inertia=inertia), lambda: {"mass": 1.0, "inertia": (0.01, 0.01, 0.01)},
        {"mass": "nonnegfloat", "inertia": "posvec3"})
    add("physics.ArticulationBuilder.add_joint", lambda type, axis: (lambda b: b.add_joint(b.add_body(
        -1, mass=1.0, inertia=(0.1, 0.1, 0.1)), type, axis=axis))(P.ArticulationBuilder()),
        lambda: {"type": "revolute", "axis": (0.0, 0.0, 1.0)}, {"type": "choice", "axis": "vec3"})
    add("physics.ArticulatedModel.step", lambda model, state, dt: model.step(state, dt),
        lambda: (lambda m: {"model": m, "state": m.initial_state(), "dt": 1e-3})(pendulum()),
        {"state": "obj", "dt": "dt"})
    add("physics.ArticulatedModel.initial_state", lambda model, batch: model.initial_state(batch),
        lambda: {"model": pendulum(), "batch": 2}, {"batch": "posint"})
    add("physics.load_mjcf", P.load_mjcf, lambda: {"source": "<mujoco><worldbody/></mujoco>"}, {"source": "obj"})
    add("physics.load_urdf", P.load_urdf, lambda: {"source": "<robot name='r'><link name='a'/></robot>"},
        {"source": "obj"})

    # plain-torch twins and state containers of the wave-1 solvers
    def spring_args():
        x = torch.rand(4, 3) + 0.1
        m = P.SpringModel.create(x, [[0, 1], [1, 2], [2, 3]])
        return {"model": m, "state": P.ParticleState(x, torch.zeros_like(x)), "dt": 1e-3}

    add("physics.spring_step_torch", P.spring_step_torch, spring_args, {"model": "obj", "state": "obj", "dt": "dt"})
    add("physics.spring_forces_torch", P.spring_forces_torch,
        lambda: {k: v for k, v in spring_args().items() if k != "dt"}, {"model": "obj", "state": "obj"})

    def rigid_args():
        m = P.RigidBodyModel.spheres([0.1, 0.1], [1.0, 2.0])
        return {"model": m, "state": P.RigidBodyState.create([[0.0, 0.2, 0.0], [0.5, 0.2, 0.0]]), "dt": 1e-3}

    add("physics.rigid_step_torch", P.rigid_step_torch, rigid_args, {"model": "obj", "state": "obj", "dt": "dt"})
    add("physics.RigidBodyState.create", P.RigidBodyState.create, lambda: {"x": torch.tensor([[0.0, 0.2, 0.0]])},
        {"x": "verts"}, overrides={("x", "int_dtype"): "ok"})  # cast to the dtype argument

    def fem_args():
        v, t = G.tet_box(0.1, 1)
        m = P.FEMModel.create(v + 0.1, t)
        return {"model": m, "state": m.initial_state(), "dt": 1e-4}

    add("physics.fem_step_torch", P.fem_step_torch, fem_args, {"model": "obj", "state": "obj", "dt": "dt"})
    add("physics.batch_model", P.batch_model,
        lambda: {"model": P.ParticleModel.create(torch.ones(3), 0.05), "n_envs": 2}, {"model": "obj", "n_envs": "posint"})
    add("render.smith_g", R.smith_g, lambda: {"n_dot_wi": torch.rand(6, 1), "n_dot_wo": torch.rand(6, 1),
                                              "roughness": torch.rand(6, 1)},
        {"n_dot_wi": "tensor", "n_dot_wo": "tensor", "roughness": "tensor"})
    add("render.ggx_specular", R.ggx_specular, lambda: {"n": dirs(), "wi": dirs(), "wo": dirs(),
                                                        "roughness": torch.rand(6, 1), "f0": torch.rand(6, 3)},
        {"n": "verts", "wi": "verts", "wo": "verts", "roughness": "tensor", "f0": "tensor"},
        overrides={(k, "extra_batch_dim"): "ok" for k in ("n", "wi", "wo")})

    # pipeline: the renderer contract
    add("pipeline.get_renderer", PL.get_renderer, lambda: {"renderer": "raster"}, {"renderer": "choice"})
    add("pipeline.register_renderer", lambda name, factory: PL.register_renderer(name, factory),
        lambda: {"name": "fuzz_renderer", "factory": PL.RasterRenderer}, {"name": "obj", "factory": "obj"},
        overrides={("name", "string"): "ok"})  # any non-empty string names a renderer
    add("pipeline.Points", PL.Points, lambda: {"positions": pts(4), "radii": torch.full((4,), 0.1),
                                               "colors": torch.rand(4, 3), "opacities": torch.full((4,), 0.5)},
        {"positions": "verts", "radii": "tensor", "colors": "tensor", "opacities": "tensor"})
    add("pipeline.Volume", PL.Volume, lambda: {"density": torch.rand(4, 4, 4), "color": torch.rand(4, 4, 4, 3),
                                               "bbox_min": -torch.ones(3), "bbox_max": torch.ones(3)},
        {"density": "tensor", "color": "tensor", "bbox_min": "tensor", "bbox_max": "tensor"})
    add("pipeline.MeshItem", PL.MeshItem, lambda: {"name": "m", **dict(zip(("verts", "faces"), G.icosphere(0))),
                                                   "color": torch.rand(3)},
        {"verts": "verts", "faces": "faces", "color": "tensor"})
    add("pipeline.RasterRenderer", PL.RasterRenderer, lambda: {"backend": "warp"}, {"backend": "choice"})
    add("pipeline.PathTraceRenderer", PL.PathTraceRenderer, lambda: {"spp": 2, "max_depth": 2},
        {"spp": "posint", "max_depth": "nonnegint", "edge_samples": "nonnegint"})

    def scene_state():
        sc = PL.Scene(_cams())
        v, f = G.icosphere(0)
        sc.add_shape("s", f, PL.StaticBinding(v))
        return sc

    add("pipeline.render_frame", PL.render_frame, lambda: {"scene": scene_state(), "state": None},
        {"scene": "obj", "renderer": "choice"}, overrides={})
    add("pipeline.render_trajectory", PL.render_trajectory,
        lambda: {"scene": scene_state(), "states": [None, None], "every": 1},
        {"scene": "obj", "every": "posint", "renderer": "choice"})
    add("pipeline.scene_geometry", PL.scene_geometry, lambda: {"scene": scene_state(), "state": None},
        {"scene": "obj"})

    # optim
    add("optim.Softplus", O.Softplus, lambda: {"value": 2.0, "minimum": 0.0}, {"value": "float", "minimum": "float"})
    add("optim.Free", O.Free, lambda: {"value": 2.0}, {"value": "float"})
    add("optim.optimize", O.optimize,
        lambda: (lambda x: {"params": [x], "loss_fn": lambda: (x ** 2).sum(), "iters": 2, "lr": 0.1,
                            "progress": False})(torch.ones(2, requires_grad=True)),
        {"params": "obj", "loss_fn": "obj", "iters": "nonnegint", "lr": "posfloat", "method": "choice"})
    add("optim.relative_error", O.relative_error, lambda: {"estimate": 1.0, "target": 2.0},
        {"estimate": "float", "target": "float"})
    add("optim.downsample", O.downsample, lambda: {"images": torch.rand(1, 8, 8, 3)}, {"images": "tensor"})
    add("optim.cg", O.cg, lambda: {"A": lambda x: 2.0 * x, "b": torch.ones(4, dtype=torch.float64)},
        {"A": "obj", "b": "tensor", "tol": "posfloat"})
    add("optim.gmres", O.gmres, lambda: {"A": lambda x: 2.0 * x, "b": torch.ones(4, dtype=torch.float64)},
        {"A": "obj", "b": "tensor", "tol": "posfloat", "restart": "posint"})
    add("optim.root_solve", O.root_solve,
        lambda: {"f": lambda x: x - 0.5, "x0": torch.zeros(3, dtype=torch.float64)},
        {"f": "obj", "x0": "tensor", "tol": "posfloat", "maxiter": "posint"})
    add("optim.fixed_point", O.fixed_point,
        lambda: {"g": lambda x: 0.5 * x + 0.1, "x0": torch.zeros(3, dtype=torch.float64)},
        {"g": "obj", "x0": "tensor", "tol": "posfloat", "maxiter": "posint"})
    add("optim.minimize", O.minimize,
        lambda: {"fun": lambda x: ((x - 0.3) ** 2).sum(), "x0": torch.zeros(3, dtype=torch.float64)},
        {"fun": "obj", "x0": "tensor", "method": "choice", "maxiter": "posint"})
    add("optim.qp_solve", O.qp_solve,
        lambda: {"Q": torch.eye(3, dtype=torch.float64), "p": torch.ones(3, dtype=torch.float64)},
        {"Q": "tensor", "p": "tensor"})
    add("optim.run_context", O.run_context, lambda: {"directory": tmp("ck"), "every": 2},
        {"every": "posint", "directory": "obj"}, overrides={("directory", "string"): "ok"})  # a relative path


# Exports that take no malformed input: exception types, a typing Protocol, a namespace module,
# and a function of no arguments. tests/fuzz/test_fuzz.py checks that every other export of
# geometry, physics, render, pipeline and optim has a target here.
NOT_FUZZED = {
    "optim.NonFiniteGradientError": "an exception type (raised by optimize, never called by users)",
    "optim.CheckpointError": "an exception type (raised by run_context, never called by users)",
    "pipeline.Renderer": "a typing.Protocol (the renderer contract), not callable",
    "pipeline.available_renderers": "takes no arguments",
}


def _state_and_result_targets(add, mesh_args, G, R, P, PL, O) -> None:
    """State containers of every solver, result containers of every renderer, batching and
    state flattening, and the remaining render/pipeline/optim helpers."""
    import tempfile

    pts = lambda n=10: torch.rand(n, 3) - 0.5  # noqa: E731
    st_kinds = {"x": "verts", "v": "verts"}

    # geometry: the large-steps solve
    def solve_args():
        v, f = G.icosphere(0, dtype=torch.float64)
        L = G.cotangent_laplacian(v, f)
        return {"solver": G.SparseSolver(G.system_matrix(L, 10.0)), "b": torch.rand(12, 3, dtype=torch.float64)}

    add("geometry.solve", G.solve, solve_args, {"solver": "obj", "b": "tensor"})

    # physics: state containers (validated on construction, like ParticleState)
    add("physics.FEMState", P.FEMState, lambda: {"x": pts(4), "v": torch.zeros(4, 3)}, st_kinds,
        names={"x": ["x", "v"]})
    add("physics.ClothState", P.ClothState, lambda: {"x": pts(4), "v": torch.zeros(4, 3)}, st_kinds,
        names={"x": ["x", "v"]})

    def mpm_state():
        x = torch.rand(16, 2) * 0.3 + 0.3
        return dataclasses_asdict(P.MPMModel.create(x, (16, 16), 1 / 16, E=1e3).initial_state(x))

    add("physics.MPMState", P.MPMState, mpm_state, {"x": "tensor", "v": "tensor", "C": "tensor", "F": "tensor",
                                                     "Jp": "tensor"},
        names={k: ["x", "v", "C", "F", "Jp"] for k in ("x", "v", "C", "F", "Jp")})
    add("physics.SmokeState", P.SmokeState, lambda: dataclasses_asdict(P.SmokeModel((8, 8)).state(
        density=torch.rand(8, 8))), {"density": "tensor", "velocity": "obj"}, names={"density": ["density", "velocity"]})

    def pendulum_state():
        b = P.ArticulationBuilder()
        body = b.add_body(-1, pos=(0.0, 1.0, 0.0), mass=1.0, inertia=(0.01, 0.01, 0.01))
        b.add_joint(body, "revolute", axis=(0.0, 0.0, 1.0))
        return dataclasses_asdict(b.build().initial_state())

    add("physics.ArticulatedState", P.ArticulatedState, pendulum_state, {"q": "tensor", "qd": "tensor"},
        names={"q": ["q", "qd"], "qd": ["q", "qd"]})
    add("physics.ClothControl", P.ClothControl, lambda: {"pins": pts(2)}, {"pins": "verts"},
        overrides={("pins", "none"): "ok", ("pins", "extra_batch_dim"): "either"})

    # physics: batching and state flattening
    add("physics.BatchedModel", P.BatchedModel,
        lambda: {"model": P.ParticleModel.create(torch.ones(4), 0.05), "n_envs": 2},
        {"model": "obj", "n_envs": "posint"})
    add("physics.batch_state", P.batch_state,
        lambda: {"state": [P.ParticleState(pts(3), torch.zeros(3, 3)) for _ in range(2)], "n_envs": 2},
        {"state": "obj", "n_envs": "optposint"})
    add("physics.unbatch", P.unbatch, lambda: {"state": P.ParticleState(pts(6).reshape(2, 3, 3),
                                                                      torch.zeros(2, 3, 3))}, {"state": "obj"})
    add("physics.flatten_state", P.flatten_state, lambda: {"state": P.ParticleState(pts(3), torch.zeros(3, 3))},
        {"state": "obj"}, overrides={("state", "tensor"): "ok"})  # a bare tensor is a state
    add("physics.unflatten_state", P.unflatten_state,
        lambda: dict(zip(("tensors", "spec"), P.flatten_state(P.ParticleState(pts(3), torch.zeros(3, 3))))),
        {"tensors": "obj", "spec": "obj"})

    def jvp_args():
        x = torch.rand(3, dtype=torch.float64)
        return {"fn": lambda p: (p ** 2).sum(), "primals": [x], "tangents": [torch.ones_like(x)]}

    add("physics.rollout_jvp", P.rollout_jvp, jvp_args, {"fn": "obj", "primals": "obj", "tangents": "obj"})

    # render: BRDF terms, texture LOD, sampling, scenes, splats
    dirs = lambda: torch.nn.functional.normalize(torch.rand(6, 3) + 0.1, dim=-1)  # noqa: E731
    add("render.smith_g1", R.smith_g1, lambda: {"n_dot_w": torch.rand(6, 1), "roughness": torch.rand(6, 1)},
        {"n_dot_w": "tensor", "roughness": "tensor"})
    add("render.ggx_brdf", R.ggx_brdf, lambda: {"n": dirs(), "wi": dirs(), "wo": dirs(), "albedo": torch.rand(6, 3),
                                                "roughness": torch.rand(6, 1), "f0": torch.rand(6, 3)},
        {"n": "verts", "wi": "verts", "wo": "verts", "albedo": "tensor", "roughness": "tensor", "f0": "tensor"},
        overrides={(k, "extra_batch_dim"): "ok" for k in ("n", "wi", "wo")})
    add("render.level_of_detail", R.level_of_detail, lambda: {"uv": torch.rand(1, 8, 8, 2), "size": (16, 16)},
        {"uv": "tensor", "size": "obj"})

    def imp_args():
        t = torch.linspace(0.1, 1.0, 8).expand(4, 8).contiguous()
        return {"t": t, "delta": torch.full((4, 8), 0.9 / 8), "weights": torch.rand(4, 8), "n_samples": 6,
                "padding": 0.01}

    add("render.importance_samples", R.importance_samples, imp_args,
        {"t": "tensor", "delta": "tensor", "weights": "tensor", "n_samples": "posint", "padding": "nonnegfloat"})
    add("render.cornell_box", R.cornell_box,
        lambda: {"short_box_center": None, "tall_box_center": None, "light_radiance": (10.0, 10.0, 10.0)},
        {"short_box_center": "vec3", "tall_box_center": "vec3", "light_radiance": "posvec3"},
        overrides={(k, "none"): "ok" for k in ("short_box_center", "tall_box_center", "light_radiance")})

    def pt_scene_args():
        sc, _ = R.cornell_box()
        return {f: getattr(sc, f) for f in ("vertices", "faces", "face_material", "material_kind", "albedo",
                                            "roughness", "emission")}

    add("render.PathTracingScene", R.PathTracingScene, pt_scene_args,
        {"vertices": "verts", "faces": "faces", "face_material": "index1d", "albedo": "tensor",
         "roughness": "tensor", "emission": "tensor"})

    def topo_args():
        return dataclasses_asdict(R.mesh_topology(_mesh()[1]))

    add("render.MeshTopology", R.MeshTopology, topo_args,
        {"neighbors": "inttensor", "fans": "inttensor", "faces": "faces"})

    def splat_args():
        n = 5
        g = R.Gaussians(means=pts(n), scales=torch.full((n, 3), 0.1), quats=torch.tensor([[1.0, 0, 0, 0]] * n),
                        opacities=torch.full((n,), 0.5), sh=torch.rand(n, 1, 3))
        proj = R.project_gaussians(g.means, g.scales, g.quats, _cams())
        return {"projected": proj, "colors": torch.rand(1, n, 3), "opacities": torch.full((n,), 0.5),
                "height": 16, "width": 16, "backend": "warp", "tile": 16}

    add("render.rasterize_gaussians", R.rasterize_gaussians, splat_args,
        {"projected": "obj", "colors": "tensor", "opacities": "tensor", "height": "posint", "width": "posint",
         "backend": "choice", "tile": "posint"})

    def splat_params():
        return {k: torch.nn.Parameter(v) for k, v in R.init_splat_params(pts(8), sh_degree=0).items()}

    add("render.gaussians_from_params", R.gaussians_from_params, lambda: {"params": splat_params()},
        {"params": "obj"})
    add("render.splat_optimizer", R.splat_optimizer,
        lambda: (lambda p: {"params": p, "lrs": {k: 1e-3 for k in p}})(splat_params()),
        {"params": "obj", "lrs": "obj"})

    # render: result containers
    def frag_args():
        v, f = _mesh()
        return dataclasses_asdict(R.rasterize(_cams(), v, f))

    add("render.Fragments", R.Fragments, frag_args,
        {"face_id": "inttensor", "bary": "tensor", "depth": "tensor", "faces": "faces"})

    def hits_args():
        o = torch.tensor([[0.0, 0.0, 3.0]]).expand(4, 3).contiguous()
        d = torch.tensor([[0.0, 0.0, -1.0]]).expand(4, 3).contiguous()
        return dataclasses_asdict(R.intersect(*_mesh(), o, d))

    add("render.RayHits", R.RayHits, hits_args, {"face": "inttensor", "t": "tensor", "point": "verts",
                                                "normal": "verts"})

    def sdf_hits_args():
        o = torch.tensor([[0.0, 0.0, 3.0]]).expand(4, 3).contiguous()
        d = torch.tensor([[0.0, 0.0, -1.0]]).expand(4, 3).contiguous()
        return dataclasses_asdict(R.sphere_trace(lambda p: G.sdf_sphere(p, (0.0, 0.0, 0.0), 0.5), o, d))

    add("render.SDFHits", R.SDFHits, sdf_hits_args, {"t": "tensor", "points": "verts", "normals": "verts"})
    add("render.VolumeRender", R.VolumeRender,
        lambda: {"color": torch.rand(4, 3), "transmittance": torch.rand(4), "depth": torch.rand(4)},
        {"color": "tensor", "transmittance": "tensor", "depth": "tensor"}, overrides={("color", "none"): "ok"})
    add("render.SplatImage", R.SplatImage,
        lambda: {"color": torch.rand(1, 8, 8, 3), "alpha": torch.rand(1, 8, 8), "depth": torch.rand(1, 8, 8)},
        {"color": "tensor", "alpha": "tensor", "depth": "tensor"})

    # pipeline: shapes, traversal, frame geometry
    def shape_args():
        v, f = _mesh()
        return {"name": "s", "faces": f, "binding": PL.StaticBinding(v), "color": torch.rand(3), "kind": "mesh",
                "radius": 0.01}

    add("pipeline.Shape", PL.Shape, shape_args, {"faces": "faces_only", "binding": "obj", "color": "tensor",
                                                 "kind": "choice", "radius": "posfloat"})

    def scene():
        sc = PL.Scene(_cams())
        v, f = _mesh()
        sc.add_shape("s", f, PL.StaticBinding(v))
        return sc

    add("pipeline.traverse", PL.traverse, lambda: {"scene": scene()}, {"scene": "obj"})
    add("pipeline.FrameGeometry", PL.FrameGeometry,
        lambda: {"meshes": [PL.MeshItem("m", *_mesh(), color=torch.rand(3))], "points": [], "volumes": []},
        {"meshes": "obj", "points": "obj", "volumes": "obj"},
        overrides={(k, "none"): "ok" for k in ("meshes", "points", "volumes")})  # None: no items of that kind

    # optim: parameters, history, metrics, distributed helpers
    add("optim.Param", O.Param, lambda: {"value": 2.0}, {"value": "float"})
    add("optim.ParameterSet", lambda mass, k: O.ParameterSet(mass=mass, k=k),
        lambda: {"mass": O.Positive(1.0), "k": O.Free(2.0)}, {"mass": "obj", "k": "obj"})

    def history():
        h = O.History()
        for i in range(3):
            h.loss.append(1.0 / (i + 1))
            h.params.append({"mass": 1.0 + i})
        return h

    add("optim.History", O.History, lambda: {"loss": [1.0, 0.5], "params": [{"m": 1.0}, {"m": 2.0}], "seconds": 1.0},
        {"loss": "obj", "params": "obj", "seconds": "nonnegfloat"}, overrides={("loss", "none"): "error"})
    add("optim.relative_errors", O.relative_errors, lambda: {"estimates": {"m": 1.1}, "targets": {"m": 1.0}},
        {"estimates": "obj", "targets": "obj"})
    add("optim.parameter_curves", O.parameter_curves, lambda: {"history": history(), "final": {"mass": 3.0}},
        {"history": "obj", "final": "obj"}, overrides={("final", "none"): "ok"})
    add("optim.plot_history", O.plot_history,
        lambda: {"path": tempfile.mkdtemp(prefix="diffvc_fuzz_") + "/h.png", "history": history(),
                 "targets": {"mass": 3.0}},
        {"path": "obj", "history": "obj", "targets": "obj"},
        overrides={("targets", "none"): "ok", ("path", "string"): "ok"})  # a relative path
    D = O.distributed
    add("optim.distributed.shard", D.shard, lambda: {"items": [1, 2, 3]}, {"items": "obj"},
        overrides={("items", "tensor"): "ok"})  # a tensor is a sequence of rows
    add("optim.distributed.shard_range", D.shard_range, lambda: {"n": 5}, {"n": "nonnegint"})
    add("optim.distributed.rank_seed", D.rank_seed, lambda: {"base": 1, "index": 0},
        {"base": "nonnegint", "index": "nonnegint"})
    add("optim.distributed.all_reduce_", D.all_reduce_, lambda: {"tensors": [torch.ones(3)]}, {"tensors": "obj"})
    add("optim.distributed.launch", D.launch, lambda: {"argv": ["-c", "pass"], "nproc": 1},
        {"argv": "obj", "nproc": "posint"})


def dataclasses_asdict(obj) -> dict:
    """Shallow field dict of a dataclass instance (dataclasses.asdict deep-copies tensors)."""
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
