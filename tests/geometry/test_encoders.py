"""Geometry encoders: permutation invariance / equivariance, batching, gradients to the inputs
(float64 FD), bad input."""

import pytest
import torch

from diffvc.geometry import icosphere
from diffvc.geometry.encoders import (DGCNNEncoder, EdgeConv, MeshConv, MeshEncoder, PointNetEncoder, knn_graph,
                                      normalized_adjacency)
from diffvc.testing import assert_grad_close


def test_pointnet_and_dgcnn_are_permutation_invariant_and_batch():
    pts = torch.randn(3, 100, 3)
    perm = torch.randperm(100)
    for enc in (PointNetEncoder(out_dim=16), DGCNNEncoder(out_dim=16, k=8)):
        y = enc(pts)
        assert y.shape == (3, 16)
        assert torch.allclose(enc(pts[:, perm]), y, atol=1e-5)
        assert torch.allclose(enc(pts[1]), y[1], atol=1e-5)  # unbatched == batch row


def test_edgeconv_neighbourhoods():
    x = torch.randn(2, 30, 4)
    idx = knn_graph(x, 5)
    assert idx.shape == (2, 30, 5) and bool((idx[..., 0] == torch.arange(30)).all())  # itself first
    y = EdgeConv(4, 8, k=5)(x)
    assert y.shape == (2, 30, 8)
    # unbatched (N, C): k neighbours (not capped at C), the batch row's; k above N gives N
    assert torch.equal(knn_graph(x[1], 5), idx[1])
    assert knn_graph(x[0, :3], 10).shape == (3, 3)


def test_mesh_conv_is_equivariant_to_vertex_relabelling():
    v, f = icosphere(1, dtype=torch.float64)
    V = v.shape[0]
    A = normalized_adjacency(f, V, torch.float64)
    assert torch.allclose(torch.sparse.sum(A, 1).to_dense(), torch.ones(V, dtype=torch.float64))
    conv = MeshConv(3, 5).double()
    perm = torch.randperm(V)
    inv = torch.argsort(perm)
    A2 = normalized_adjacency(inv[f], V, torch.float64)  # vertex i of the new mesh is old vertex perm[i]
    assert torch.allclose(conv(v[perm], A2), conv(v, A)[perm], atol=1e-12)
    enc = MeshEncoder(out_dim=7).double()
    assert torch.allclose(enc(v[perm], A2), enc(v, A), atol=1e-12)
    assert enc(torch.stack([v, 2 * v]), A).shape == (2, 7)


def test_gradients_reach_the_geometry():
    torch.manual_seed(1)
    pts = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    pn = PointNetEncoder(out_dim=4, widths=(16, 32)).double()
    assert_grad_close(lambda p: pn(p), (pts,), rtol=1e-6)
    v, f = icosphere(0, dtype=torch.float64)
    A = normalized_adjacency(f, v.shape[0], torch.float64)
    me = MeshEncoder(out_dim=4, widths=(8, 16)).double()
    vv = v.clone().requires_grad_()
    assert_grad_close(lambda x: me(x, A), (vv,), rtol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="points"):
        PointNetEncoder()(torch.randn(10, 2))
    with pytest.raises(ValueError, match="points"):
        DGCNNEncoder()(torch.randn(1, 0, 3))
    v, f = icosphere(0)
    with pytest.raises(ValueError, match="faces"):
        normalized_adjacency(f, 5)
    eye = torch.sparse_coo_tensor(torch.arange(5).repeat(2, 1), torch.ones(5), (5, 5), check_invariants=False)
    with pytest.raises(ValueError, match="adj"):
        MeshEncoder()(v, eye)
