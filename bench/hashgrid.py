"""Hash-grid encoding, forward + backward (to the table): Warp kernel vs the vectorised torch twin.

The encoding of the ``nerf`` example's quick NeuralField (8 levels, 2 features, 2^15 rows per
level, resolutions 16..128, box [-0.85, 0.85]^3) at 49,152 random points (1024 rays x 48
samples, one training batch), float32; loss = weighted sum of the features, backward to the
table. Also the whole :class:`~diffvc.geometry.NeuralField` (encoding + one hidden layer of 64,
13 outputs) on each backend. Medians over repeats of wall and process CPU time, with the torch
thread count given (default 1, as the example trains); the machine is shared, so the 1-minute
load average is recorded.

    python -m bench.hashgrid [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def _time(fn, repeats: int):
    fn()  # warm-up (kernel loading)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points", type=int, default=49152)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffvc.geometry import NeuralField

    torch.manual_seed(0)
    field = NeuralField(out_dim=13, encoding="hash", hidden=64, layers=1, activation="relu", levels=8, features=2,
                        log2_table=15, base_resolution=16, max_resolution=128, bounds=(-0.85, 0.85), init_scale=1e-2)
    enc = field.encoding
    x = torch.rand(args.points, 3) * 1.7 - 0.85
    w_enc = torch.rand(args.points, enc.out_dim)
    w_out = torch.rand(args.points, 13)
    repeats = 3 if args.quick else 9
    load0 = os.getloadavg()[0]
    res: dict = {"benchmark": "hashgrid", "points": args.points, "levels": enc.levels, "resolutions": enc.resolutions,
                 "log2_table": 15, "torch_threads": args.threads, "repeats": repeats,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for backend in ("warp", "torch"):
        enc.backend = backend

        def encode():
            field.zero_grad(set_to_none=True)
            (enc(x) * w_enc).sum().backward()

        def whole():
            field.zero_grad(set_to_none=True)
            (field(x) * w_out).sum().backward()

        res[f"encoding_{backend}_ms"], res[f"encoding_{backend}_cpu_ms"] = _time(encode, repeats)
        res[f"field_{backend}_ms"], res[f"field_{backend}_cpu_ms"] = _time(whole, repeats)
    enc.backend = "warp"
    res["encoding_speedup"] = res["encoding_torch_ms"] / res["encoding_warp_ms"]
    res["encoding_cpu_speedup"] = res["encoding_torch_cpu_ms"] / res["encoding_warp_cpu_ms"]
    res["field_speedup"] = res["field_torch_ms"] / res["field_warp_ms"]
    res["load_avg_1min"] = [load0, os.getloadavg()[0]]
    print(json.dumps(res, indent=1))
    return res


def run(quick: bool = False) -> dict:
    """``bench.run_all``'s entry point: the default point count on one torch thread."""
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
