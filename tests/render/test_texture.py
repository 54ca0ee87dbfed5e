"""Textures: texel-centre exactness, bilinear blending, wrap modes, mipmaps, gradients w.r.t.
texture and uv vs float64 finite differences, a textured mesh rendered through the rasterizer."""

import pytest
import torch

from diffvc.render import Cameras, interpolate, rasterize
from diffvc.render.texture import level_of_detail, mipmaps, texture
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _centres(Ht, Wt):
    i, j = torch.meshgrid(torch.arange(Ht, dtype=D64), torch.arange(Wt, dtype=D64), indexing="ij")
    return torch.stack([(j + 0.5) / Wt, 1 - (i + 0.5) / Ht], -1)[None]


@pytest.mark.parametrize("wrap", ["repeat", "clamp"])
def test_texel_centres_and_bilinear_midpoints(wrap):
    tex = torch.rand(5, 7, 3, dtype=D64)
    out = texture(tex, _centres(5, 7), wrap=wrap)
    assert torch.allclose(out[0], tex, atol=1e-12)
    # halfway between texel (1, 2) and (1, 3) -> their mean
    uv = torch.tensor([[[[3.0 / 7, 1 - 1.5 / 5]]]], dtype=D64)
    assert torch.allclose(texture(tex, uv, wrap=wrap)[0, 0, 0], (tex[1, 2] + tex[1, 3]) / 2)


def test_wrap_modes():
    tex = torch.rand(4, 6, 2, dtype=D64)
    uv = torch.rand(1, 3, 5, 2, dtype=D64)
    assert torch.allclose(texture(tex, uv + 1.0, wrap="repeat"), texture(tex, uv, wrap="repeat"))
    assert torch.allclose(texture(tex, uv - 2.0, wrap="repeat"), texture(tex, uv, wrap="repeat"))
    # repeat blends across the seam: u = 0 is halfway between the last and the first column
    seam = texture(tex, torch.tensor([[[[0.0, 1 - 0.5 / 4]]]], dtype=D64), wrap="repeat")[0, 0, 0]
    assert torch.allclose(seam, (tex[0, 0] + tex[0, -1]) / 2)
    # clamp extends the border texels
    far = texture(tex, torch.tensor([[[[5.0, -3.0]]]], dtype=D64), wrap="clamp")[0, 0, 0]
    assert torch.allclose(far, tex[-1, -1])


def test_mipmap_pyramid_and_levels():
    tex = torch.rand(1, 8, 8, 3, dtype=D64)
    pyr = mipmaps(tex)
    assert [p.shape[1] for p in pyr] == [8, 4, 2, 1]
    assert torch.allclose(pyr[1][0, 0, 0], tex[0, :2, :2].mean((0, 1)))
    assert torch.allclose(pyr[-1][0, 0, 0], tex[0].mean((0, 1)))
    uv = torch.rand(1, 4, 4, 2, dtype=D64)
    zero = torch.zeros(1, 4, 4, dtype=D64)
    assert torch.allclose(texture(tex, uv, "mipmap", lod=zero), texture(tex, uv))
    assert torch.allclose(texture(tex, uv, "mipmap", lod=zero + 1), texture(pyr[1], uv))
    half = texture(tex, uv, "mipmap", lod=zero + 0.5)
    assert torch.allclose(half, 0.5 * (texture(pyr[0], uv) + texture(pyr[1], uv)))
    # level of detail: a pixel spanning 4 texels -> level 2
    uv_img = _centres(4, 4) * 1.0  # 4x4 pixels covering an 16x16 texture: 4 texels per pixel
    assert torch.allclose(level_of_detail(uv_img, (16, 16)), torch.full((1, 4, 4), 2.0, dtype=D64))
    const = torch.full((16, 16, 1), 0.3, dtype=D64)
    assert torch.allclose(texture(const, uv_img, "mipmap"), torch.full((1, 4, 4, 1), 0.3, dtype=D64))


@pytest.mark.parametrize("wrap", ["repeat", "clamp"])
def test_gradients_texture_and_uv(wrap):
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(5, 6, 2, generator=g, dtype=D64).requires_grad_()
    uv = (torch.rand(2, 3, 4, 2, generator=g, dtype=D64) * 1.4 - 0.2).requires_grad_()
    assert_grad_close(lambda t, u: texture(t, u, wrap=wrap), (tex, uv), rtol=1e-6)
    lod = torch.rand(2, 3, 4, generator=g, dtype=D64) * 2
    tex8 = torch.rand(8, 8, 2, generator=g, dtype=D64).requires_grad_()
    assert_grad_close(lambda t, u: texture(t, u, "mipmap", wrap, lod=lod), (tex8, uv), rtol=1e-6)


def test_textured_mesh_through_the_rasterizer():
    """A quad with uv = its (x, y) position, textured with a linear ramp in u: the rendered
    value equals the interpolated u, and gradients reach the uv attributes."""
    verts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], dtype=D64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = ((verts[:, :2] + 1) / 2).clone().requires_grad_()
    cams = Cameras.look_at(torch.tensor([[0.3, 0.2, 3.0]]), width=24, height=20, fov_y=50.0).to(D64)
    Wt = 64
    ramp = ((torch.arange(Wt, dtype=D64) + 0.5) / Wt).reshape(1, Wt, 1).expand(4, Wt, 1)
    fr = rasterize(cams, verts, faces)
    uv = interpolate(uvs, fr)
    img = texture(ramp, uv, wrap="clamp")
    m = fr.face_id >= 0
    inner = m & (uv[..., 0] > 0.5 / Wt) & (uv[..., 0] < 1 - 0.5 / Wt)
    assert inner.sum() > 100
    assert torch.allclose(img[..., 0][inner], uv[..., 0][inner], atol=1e-9)
    assert_grad_close(lambda u: texture(ramp, interpolate(u, fr), wrap="clamp"), (uvs,), rtol=1e-6)


def test_bad_inputs():
    uv = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="tex must"):
        texture(torch.zeros(4, 4), uv)
    with pytest.raises(ValueError, match="uv must"):
        texture(torch.zeros(4, 4, 3), torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match="filter"):
        texture(torch.zeros(4, 4, 3), uv, filter="cubic")
    with pytest.raises(ValueError, match="wrap"):
        texture(torch.zeros(4, 4, 3), uv, wrap="mirror")
    with pytest.raises(ValueError, match="tex must have a positive size"):
        texture(torch.zeros(0, 4, 3), uv)


@pytest.mark.parametrize("wrap", ["repeat", "clamp"])
def test_mipmap_matches_the_hat_weighted_sum_over_every_level(wrap):
    """Trilinear sampling (each pixel looked up in its two nearest levels only) equals the sum over
    every level of ``max(0, 1 - |lod - k|)`` times the bilinear lookup there, values and gradients,
    for per-view textures, integer levels (the last one included) and fractional ones."""
    g = torch.Generator().manual_seed(4)
    tex = torch.rand(2, 16, 16, 3, generator=g, dtype=D64)
    uv = torch.rand(2, 5, 7, 2, generator=g, dtype=D64) * 1.6 - 0.3
    lod = torch.rand(2, 5, 7, generator=g, dtype=D64) * 4.5
    lod[0, 0, :5] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=D64)  # 4 = the 1x1 level

    def reference(t, u):
        pyr = mipmaps(t)
        lv = lod.clamp(0, len(pyr) - 1)
        out = 0
        for k, level in enumerate(pyr):
            out = out + (1 - (lv - k).abs()).clamp_min(0).unsqueeze(-1) * texture(level, u, wrap=wrap)
        return out

    t1, u1 = tex.clone().requires_grad_(), uv.clone().requires_grad_()
    t2, u2 = tex.clone().requires_grad_(), uv.clone().requires_grad_()
    a, b = texture(t1, u1, "mipmap", wrap, lod=lod), reference(t2, u2)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    w = torch.rand(a.shape, generator=g, dtype=D64)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-10, atol=1e-10)
    assert_grad_close(lambda t, u: texture(t, u, "mipmap", wrap, lod=lod), (t1.detach().requires_grad_(),
                                                                          u1.detach().requires_grad_()),
                      rtol=1e-6, max_elements=40)


@pytest.mark.parametrize("wrap", ["repeat", "clamp"])
@pytest.mark.parametrize("dtype,tol", [(D64, 1e-12), (torch.float32, 2e-5)])
def test_lookup_kernels_match_grid_sample(wrap, dtype, tol):
    """The Warp lookups (default backend) against the grid_sample twin: values, texture and uv
    gradients, shared and per-view textures, one and two threads (10,000 lookups per view: split),
    uv far outside [0, 1] (wrapping / clamping); second derivatives through the twin."""
    g = torch.Generator().manual_seed(9)
    for views in (1, 2):
        tex = torch.rand(views, 21, 34, 3, generator=g).to(dtype)
        uv = (torch.rand(2, 100, 100, 2, generator=g) * 5.0 - 2.0).to(dtype)
        w = torch.rand(2, 100, 100, 3, generator=g).to(dtype)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = []
            for backend in ("warp", "torch"):
                t, u = tex.clone().requires_grad_(), uv.clone().requires_grad_()
                out = texture(t, u, wrap=wrap, backend=backend)
                (out * w).sum().backward()
                res.append((out.detach(), t.grad, u.grad))
            for a, b in zip(*res):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())))
    t = torch.rand(5, 6, 2, generator=g, dtype=D64).requires_grad_()
    u = (torch.rand(1, 3, 4, 2, generator=g, dtype=D64) * 1.4 - 0.2).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: texture(a, b, wrap=wrap), (t, u))
    with pytest.raises(ValueError, match="backend"):
        texture(t, u, backend="cuda")
