"""Validation of the splat projection and SH against gsplat's pure-PyTorch reference
(``gsplat.cuda._torch_impl``; the optional `validation` extra). gsplat's rasterizer and its torch
reference need gsplat's CUDA extension, so the compositing is checked against diffvc's own twin
and finite differences (tests/render/test_splat.py) instead.

Stated tolerance: float64 values and gradients agree to 1e-10 (relative). Measured with gsplat
1.5.3 on this machine (bench/splat.py, 2,000 Gaussians): means2d 5.7e-14 px, conics 6.2e-16
relative, depths 0, SH 4.4e-16; gradients 1.7e-16 (means), 1.8e-16 (scales), 3.3e-16 (quats),
3.1e-16 (SH).

Run with ``pytest -m validation tests/render/test_splat_gsplat.py`` (needs ``gsplat``; without it
these tests fail with an ImportError that says how to install it).
"""

import pytest

pytestmark = pytest.mark.validation


def _gsplat():
    try:
        import gsplat  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("these validation tests need gsplat: pip install 'diffvc[validation]'") from e


def test_projection_and_sh_match_gsplat_reference():
    _gsplat()
    from bench.splat import validate_gsplat

    r = validate_gsplat()
    assert r["gsplat_projection_compared"] > 1000
    assert r["gsplat_max_abs_diff_means2d_px"] < 1e-9
    assert r["gsplat_max_rel_diff_conics"] < 1e-10
    assert r["gsplat_max_abs_diff_depths"] < 1e-12
    assert r["gsplat_sh_max_abs_diff"] < 1e-12
    for k in ("means", "scales", "quats"):
        assert r[f"gsplat_grad_rel_diff_{k}"] < 1e-10
    assert r["gsplat_sh_grad_rel_diff"] < 1e-10
