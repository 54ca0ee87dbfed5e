import pytest
import torch

import diffvc.geometry as G
from diffvc.testing import assert_grad_close


def test_trilinear_sample_exact_on_linear_fields_and_nodes():
    pts = G.grid_points(5, (-1.0, 2.0), dtype=torch.float64)
    lin = pts @ torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64) + 0.5
    g = torch.Generator().manual_seed(0)
    q = torch.rand(100, 3, generator=g, dtype=torch.float64) * 3 - 1
    out = G.trilinear_sample(lin, q, (-1.0, 2.0))
    assert torch.allclose(out, q @ torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64) + 0.5, atol=1e-12)
    # at the nodes it returns the node values, per channel
    vals = torch.randn(2, 5, 5, 5, generator=g, dtype=torch.float64)
    s = G.trilinear_sample(vals, pts.reshape(-1, 3), (-1.0, 2.0))
    assert torch.allclose(s, vals.reshape(2, -1).T, atol=1e-12)


def test_trilinear_grad_fd_and_dense_grid():
    g = torch.Generator().manual_seed(1)
    vals = torch.randn(4, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    q = (torch.rand(10, 3, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert_grad_close(lambda v, p: G.trilinear_sample(v, p), (vals, q))
    grid = G.DenseGrid(8, channels=3, dtype=torch.float64, init=0.5)
    assert torch.allclose(grid(q.detach()), torch.full((10, 3), 0.5, dtype=torch.float64))
    assert grid.points().shape == (8, 8, 8, 3)


def test_voxelize_and_grid_to_mesh_roundtrip():
    v, f = G.icosphere(3, 0.6, dtype=torch.float64)
    occ = G.voxelize(v, f, 13)
    pts = G.grid_points(13, dtype=torch.float64)
    inside = pts.norm(dim=-1) < 0.58
    outside = pts.norm(dim=-1) > 0.62
    assert occ[inside].all() and not occ[outside].any()
    sdf = G.voxelize(v, f, 13, sdf=True)
    mv, mf = G.grid_to_mesh(sdf)
    assert G.is_watertight(mf)
    assert abs(float(G.volume(mv, mf)) - float(G.volume(v, f))) / float(G.volume(v, f)) < 0.05
    # gradient of the extracted mesh's volume w.r.t. grid values
    vals = sdf.detach()[3:10, 3:10, 3:10].clone().requires_grad_()
    assert_grad_close(lambda s: G.volume(*G.grid_to_mesh(s, (-0.5, 0.5))), (vals,), max_elements=12)


def test_positional_and_hash_encodings():
    pe = G.PositionalEncoding(3, 4)
    x = torch.tensor([[0.25, 0.0, -0.5]], dtype=torch.float64)
    e = pe(x)
    assert e.shape == (1, pe.out_dim) and pe.out_dim == 27
    assert torch.allclose(e[0, 3:11], torch.tensor([torch.sin(torch.tensor(0.25 * 3.141592653589793 * 2 ** k)).item() for k in range(4)]
                                                  + [torch.cos(torch.tensor(0.25 * 3.141592653589793 * 2 ** k)).item() for k in range(4)],
                                                  dtype=torch.float64), atol=1e-6)
    he = G.HashGridEncoding(levels=4, features=2, log2_table=10, base_resolution=4, max_resolution=32).double()
    assert he.dense[0] and not he.dense[-1]
    q = (torch.rand(8, 3, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert he(q).shape == (8, 8)
    with torch.no_grad():
        he.table.normal_()
    assert_grad_close(lambda p: he(p), (q,))
    # gradient w.r.t. the table
    t0 = he.table
    out = he(q.detach()).sum()
    (gt,) = torch.autograd.grad(out, t0)
    assert torch.isfinite(gt).all() and gt.abs().sum() > 0


def test_neural_field_fits_sdf():
    torch.manual_seed(0)
    field = G.NeuralField(encoding="frequency", hidden=32, layers=2, num_freqs=2, sphere_init=0.5)
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    x = torch.rand(256, 3) * 2 - 1
    target = G.sdf_box(x, (0.4, 0.3, 0.5))
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = ((field(x) - target) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    v, f = G.sdf_to_mesh(field, 12)
    assert f.shape[0] > 0 and G.is_watertight(f)
    hf = G.NeuralField(encoding="hash", levels=4, log2_table=12, max_resolution=64, hidden=16)
    assert hf(x).shape == (256,)
    with pytest.raises(ValueError, match="encoding"):
        G.NeuralField(encoding="bogus")


def test_heat_diffusion_properties_and_grad():
    v, f = G.icosphere(2, dtype=torch.float64)
    s = (v[:, 1] > 0).double()
    u = G.heat_diffuse(v, f, s, 0.02)
    m = G.vertex_areas(v, f)
    assert abs(float((m * u).sum() - (m * s).sum())) < 1e-10  # heat is conserved
    assert float(u.min()) >= -1e-12 and float(u.max()) <= 1 + 1e-12  # maximum principle
    tv = lambda x: float(((x[G.edges(f)[:, 0]] - x[G.edges(f)[:, 1]]) ** 2).sum())
    assert tv(u) < 0.5 * tv(s)
    # more time, smoother; constants unchanged
    assert tv(G.heat_diffuse(v, f, s, 0.2)) < tv(u)
    one = torch.ones(v.shape[0], 2, dtype=torch.float64)
    assert torch.allclose(G.heat_diffuse(v, f, one, 0.1, steps=3), one, atol=1e-10)
    hd = G.HeatDiffusion(v, f, 0.05, steps=2, laplacian="uniform")
    sig = torch.randn(v.shape[0], 2, dtype=torch.float64).requires_grad_()
    assert_grad_close(hd, (sig,), max_elements=30)


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb", ".stl"])
def test_mesh_io_roundtrip(tmp_path, suffix):
    v, f = G.torus(1.0, 0.3, 12, 6, dtype=torch.float64)
    p = G.save_mesh(tmp_path / f"m{suffix}", v, f)
    v2, f2 = G.load_mesh(p, dtype=torch.float64, process=True)
    assert f2.dtype == torch.long and v2.dtype == torch.float64
    assert abs(float(G.volume(v2, f2)) - float(G.volume(v, f))) < 1e-5
    assert f2.shape == f.shape


def test_points_io_and_errors(tmp_path):
    pts = torch.rand(50, 3, dtype=torch.float64)
    G.save_points(tmp_path / "p.ply", pts)
    assert torch.allclose(G.load_points(tmp_path / "p.ply", dtype=torch.float64), pts, atol=1e-12)
    with pytest.raises(FileNotFoundError, match="path"):
        G.load_mesh(tmp_path / "missing.obj")


def test_grad_positional_encoding_plane_and_neural_field():
    q = (torch.rand(6, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert_grad_close(G.PositionalEncoding(3, 3), (q,))
    n = torch.tensor([0.2, 1.0, -0.3], dtype=torch.float64, requires_grad=True)
    assert_grad_close(lambda p, nn: G.sdf_plane(p, nn, 0.1), (q, n))
    field = G.NeuralField(encoding="frequency", hidden=8, layers=1, num_freqs=2, sphere_init=0.4).double()
    assert_grad_close(field, (q,))
    normals = G.sdf_normal(field, q.detach())
    assert torch.allclose(normals.norm(dim=1), torch.ones(6, dtype=torch.float64))
