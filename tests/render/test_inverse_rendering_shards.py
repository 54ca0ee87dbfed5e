"""inverse_rendering's sample-chunk sharding: two gloo processes on loopback render the same image
as one process (exactly: each chunk comes from one process) and their all-reduced gradient equals
the single-process gradient."""

import json
from pathlib import Path

import torch

from diffvc.optim import distributed

ROOT = str(Path(__file__).resolve().parents[2])

CHILD = """
import json, os, sys, torch
torch.set_num_threads(1)
from diffvc.examples import inverse_rendering as ir
from diffvc.optim import distributed
from diffvc.render.pt_scene import cornell_box, cornell_camera
distributed.init_from_env()
cam = cornell_camera(8, 8)
scene, _ = cornell_box()
with torch.no_grad():
    target = ir._render(scene, cam, spp=8, max_depth=3, seed=5, rr_depth=100)
light = torch.tensor([4.0, 4.0, 4.0], requires_grad=True)
s, _ = cornell_box(light_radiance=light)
img = ir._render(s, cam, spp=8, max_depth=3, seed=5, rr_depth=100)
loss = ir._share(ir._loss(img, target))
loss.backward()
g = torch.cat([light.grad, loss.detach().reshape(1)])
distributed.all_reduce_([g])
if os.environ.get("RANK", "0") == "0":
    open(sys.argv[1], "w").write(json.dumps({"img": img.detach().reshape(-1).tolist(), "grad": g[:3].tolist(),
                                             "loss": float(g[3]), "world": distributed.world_size()}))
distributed.shutdown()
"""


def _run(nproc, tmp_path):
    out = tmp_path / f"n{nproc}.json"
    status = distributed.launch(["-c", f"import sys; sys.argv = ['x', {str(out)!r}]\n" + CHILD], nproc, threads=1,
                                timeout_s=240, env={"PYTHONPATH": ROOT, "GLOO_SOCKET_IFNAME": "lo"})
    assert status == 0
    return json.loads(out.read_text())


def test_two_processes_render_the_same_image_and_gradient_as_one(tmp_path):
    one, two = _run(1, tmp_path), _run(2, tmp_path)
    assert one["world"] == 1 and two["world"] == 2
    assert one["img"] == two["img"]                              # bit-identical image
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(two["grad"]), torch.tensor(one["grad"]), rtol=1e-5, atol=1e-9)
    assert max(abs(v) for v in one["grad"]) > 1e-4               # the light's radiance really matters
