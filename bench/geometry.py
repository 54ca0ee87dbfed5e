"""Geometry hot ops at ~100k faces: diffvc vs a plain-torch baseline, in the same process.

Mesh: a torus with 316 x 158 segments (99,856 faces, 49,928 vertices), float32, CPU.

* ``normals``: face + vertex normals, forward + backward of their sum. diffvc as two calls
  (``face_normals`` + ``vertex_normals``: two validations, two cross products) and as one
  ``mesh_normals`` call, vs a textbook torch version (``F.normalize``, ``scatter_add``).
* ``cot_laplacian``: build the cotangent Laplacian. diffvc (cross-product cotangents, one
  coalesce) vs a law-of-cosines version (edge lengths, Heron area, per-corner cotangents; the
  PyTorch3D formulation).
* ``sample_chamfer``: sample N points on the mesh (differentiable) + Chamfer distance to another
  N-point sample + backward. diffvc (SciPy k-d tree search, torch distances) vs chunked
  brute-force ``torch.cdist`` (the diffvc ``method='brute'`` path, what runs on GPU). At N=100k the
  brute-force baseline is too slow for this CPU, so it is timed on ``baseline_queries`` query
  points against all N targets and reported per query as well as extrapolated (labelled).
* ``winding``: generalized winding number of 20k points w.r.t. a 5,120-face sphere: Warp kernel vs
  its torch twin (chunked; timed on 2k queries, scaled linearly, labelled).
* ``nearest_face``: closest face of 20k points on the 100k-face torus: Warp BVH vs chunked brute force
  (brute on 50/200 points, reported per 1k queries).

    python -m bench.geometry [--quick]     or     diffvc bench geometry
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

import diffvc.geometry as G
from diffvc._kernels.geometry import nearest_faces, winding_numbers
from diffvc.geometry.distance import _nearest_face
from diffvc.geometry.knn import _knn_brute


def _median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def _normals_torch(v, f):
    v0, v1, v2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    vn = torch.zeros_like(v)
    for k in range(3):
        vn = vn.scatter_add(0, f[:, k:k + 1].expand(-1, 3), n)
    return torch.nn.functional.normalize(n, dim=1), torch.nn.functional.normalize(vn, dim=1)


def _cot_laplacian_torch(v, f):
    V = v.shape[0]
    v0, v1, v2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    A = (v1 - v2).norm(dim=1)
    B = (v0 - v2).norm(dim=1)
    C = (v0 - v1).norm(dim=1)
    s = 0.5 * (A + B + C)
    area = (s * (s - A) * (s - B) * (s - C)).clamp(min=1e-12).sqrt()
    A2, B2, C2 = A * A, B * B, C * C
    cota = (B2 + C2 - A2) / area
    cotb = (A2 + C2 - B2) / area
    cotc = (A2 + B2 - C2) / area
    cot = torch.stack([cota, cotb, cotc], 1) / 8.0  # PyTorch3D divides by 4; /8 = diffvc's (cot a + cot b) / 2
    ii = f[:, [1, 2, 0]]
    jj = f[:, [2, 0, 1]]
    idx = torch.stack([ii, jj], 0).view(2, -1)
    W = torch.sparse_coo_tensor(idx, cot.view(-1), (V, V), check_invariants=False)
    W = W + W.t()
    deg = torch.sparse.sum(W, dim=1).to_dense()
    ar = torch.arange(V)
    D = torch.sparse_coo_tensor(torch.stack([ar, ar]), deg, (V, V), check_invariants=False)
    return (D - W).coalesce()


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    repeats = 3 if quick else 7
    v, f = G.torus(1.0, 0.3, 316, 158)
    res: dict = {"faces": int(f.shape[0]), "verts": int(v.shape[0]), "threads": torch.get_num_threads(),
                 "dtype": "float32", "device": "cpu", "load_average_1min_start": os.getloadavg()[0]}

    # normals, forward + backward
    def ours_normals():
        x = v.clone().requires_grad_()
        (G.face_normals(x, f).sum() + G.vertex_normals(x, f).sum()).backward()

    def base_normals():
        x = v.clone().requires_grad_()
        fn, vn = _normals_torch(x, f)
        (fn.sum() + vn.sum()).backward()

    def ours_mesh_normals():
        x = v.clone().requires_grad_()
        fn, vn = G.mesh_normals(x, f)
        (fn.sum() + vn.sum()).backward()

    a, b = _median_ms(ours_normals, repeats), _median_ms(base_normals, repeats)
    c = _median_ms(ours_mesh_normals, repeats)
    res["normals_fwd_bwd_ms"] = {"diffvc_two_calls": a, "diffvc_mesh_normals": c, "torch_baseline": b,
                                 "speedup_two_calls": b / a, "speedup_mesh_normals": b / c}

    # cotangent Laplacian build
    a, b = _median_ms(lambda: G.cotangent_laplacian(v, f), repeats), _median_ms(lambda: _cot_laplacian_torch(v, f), repeats)
    diff = (G.cotangent_laplacian(v.double(), f) - _cot_laplacian_torch(v.double(), f)).coalesce().values()
    res["cot_laplacian_build_ms"] = {"diffvc": a, "torch_baseline": b, "speedup": b / a,
                                     "max_abs_entry_diff_float64": float(diff.abs().max())}
    res["uniform_laplacian_build_ms"] = _median_ms(lambda: G.uniform_laplacian(f, v.shape[0]), repeats)

    # sampling + Chamfer
    n = 20_000 if quick else 100_000
    target = G.sample_points(v, f, n, generator=torch.Generator().manual_seed(1)) * 1.01

    def ours_chamfer():
        x = v.clone().requires_grad_()
        p = G.sample_points(x, f, n, generator=torch.Generator().manual_seed(2))
        G.chamfer_distance(p, target).backward()

    a = _median_ms(ours_chamfer, max(1, repeats // 2))
    sample_ms = _median_ms(lambda: G.sample_points(v, f, n, generator=torch.Generator().manual_seed(2)), repeats)
    entry = {"points": n, "diffvc_ms": a, "sample_only_ms": sample_ms}
    p = G.sample_points(v, f, n, generator=torch.Generator().manual_seed(2))
    if n <= 20_000:
        def base_chamfer():
            x = v.clone().requires_grad_()
            q = G.sample_points(x, f, n, generator=torch.Generator().manual_seed(2))
            G.chamfer_distance(q, target, method="brute").backward()

        b = _median_ms(base_chamfer, 1, warmup=0)
        entry.update({"torch_brute_ms": b, "speedup": b / a})
    else:
        nq = 2_000
        t = _median_ms(lambda: _knn_brute(p[:nq], target, 1, 4_000_000), 1, warmup=0)
        entry.update({"baseline_queries": nq, "torch_brute_ms_per_1k_queries": t / nq * 1e3,
                      "torch_brute_extrapolated_ms_both_directions": t / nq * 2 * n,
                      "extrapolated_speedup": t / nq * 2 * n / a})
    d_ours = G.chamfer_distance(p[:5000], target[:5000])
    d_brute = G.chamfer_distance(p[:5000], target[:5000], method="brute")
    entry["kdtree_vs_brute_abs_diff_5k"] = float((d_ours - d_brute).abs())
    res["sample_chamfer_fwd_bwd"] = entry

    # winding numbers
    sv, sf = G.icosphere(4, dtype=torch.float64)
    q = torch.rand(20_000 if not quick else 5_000, 3, dtype=torch.float64) * 2.4 - 1.2
    a = _median_ms(lambda: winding_numbers(sv, sf, q), repeats)
    b = _median_ms(lambda: G.winding_number(sv, sf, q[:2000], method="torch"), 1, warmup=0) * q.shape[0] / 2000
    res["winding_number_ms"] = {"queries": q.shape[0], "faces": int(sf.shape[0]), "warp": a,
                                "torch_twin_scaled_from_2k_queries": b,
                                "speedup": b / a}

    # nearest face on the torus
    qq = torch.rand(20_000, 3) * 2.6 - 1.3
    a = _median_ms(lambda: nearest_faces(v, f, qq), repeats)
    nb = 50 if quick else 200
    b = _median_ms(lambda: _nearest_face(v, f, qq[:nb], 500_000), 1, warmup=0)
    res["nearest_face_ms"] = {"queries": qq.shape[0], "faces": int(f.shape[0]), "warp_bvh_incl_build": a,
                              "torch_brute_per_1k_queries": b / nb * 1e3,
                              "speedup_per_query": (b / nb) / (a / qq.shape[0])}
    res["load_average_1min_end"] = os.getloadavg()[0]  # the machine is shared: timings scale with load
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
