"""diffvc.render loads its ray/path tracers, volumes, splats and soft silhouettes on first use
(PEP 562), and the rasterizing renderer's unchecked shading core equals the checked ``shade``."""

import subprocess
import sys

import torch

LAZY_KERNELS = ("diffvc._kernels.pathtrace", "diffvc._kernels.volume", "diffvc.render.volume",
                "diffvc.render.pathtrace", "diffvc.render.splat")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_package_import_does_not_load_the_lazy_renderers_and_every_name_resolves():
    out = _run(
        "import sys, types\n"
        "import diffvc.render as R\n"
        f"print(sorted(m for m in {LAZY_KERNELS!r} if m in sys.modules))\n"
        "bad = [n for n in R.__all__ if getattr(R, n) is None or isinstance(getattr(R, n), types.ModuleType)]\n"
        "print(bad)\n"
        "print(type(R.volume).__name__, R.path_trace.__module__)\n"
        "import diffvc.render.texture, diffvc.render.sphere_trace\n"
        "from diffvc.render import texture, sphere_trace\n"
        "print(callable(texture) and not isinstance(texture, types.ModuleType),"
        " callable(sphere_trace) and not isinstance(sphere_trace, types.ModuleType))\n"
        "try:\n"
        "    R.no_such_name\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', 'no_such_name' in str(e))\n")
    lines = out.strip().splitlines()
    assert lines[0] == "[]"                      # nothing lazy loaded by the package import
    assert lines[1] == "[]"                      # every export resolves to its object (not a module)
    assert lines[2] == "module diffvc.render.pathtrace"
    assert lines[3] == "True True"
    assert lines[4] == "AttributeError True"


def test_shading_core_equals_checked_shade_lambert_and_ggx():
    from diffvc.render import AmbientLight, DirectionalLight, Material, PointLight, shade
    from diffvc.render.shading import _shade

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    n = torch.nn.functional.normalize(torch.randn(4, 5, 3, generator=g, dtype=torch.float64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(4, 5, 3, generator=g, dtype=torch.float64), dim=-1)
    albedo = torch.rand(4, 5, 3, generator=g, dtype=torch.float64)
    rough = torch.full((4, 5, 1), 0.4, dtype=torch.float64)
    f0 = torch.full((4, 5, 3), 0.04, dtype=torch.float64)
    lights = [DirectionalLight.create([-0.4, -1.0, -0.6], [2.6, 2.6, 2.6], dtype=torch.float64),
              PointLight.create([0.0, 2.0, 0.0], [3.0, 3.0, 3.0], dtype=torch.float64),
              AmbientLight.create([0.1, 0.1, 0.1], dtype=torch.float64)]
    mat = Material(albedo, rough, f0)
    for specular in (False, True):
        ref = shade(pos, n, v, mat, lights, specular=specular)
        got = _shade(pos, n, v, albedo, rough if specular else None, f0 if specular else None, lights,
                     specular=specular)
        assert torch.equal(ref, got)
