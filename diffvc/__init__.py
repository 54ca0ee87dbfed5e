"""diffvc: differentiable visual computing with PyTorch as host.

Threads: diffvc's CPU kernels split their work over ``torch.get_num_threads()`` threads of its
own, between torch ops that use torch's OpenMP pool. With OpenMP's default (active) wait policy,
an idle OpenMP worker keeps spinning on a core for a while after every parallel torch op and takes
that core from the kernel threads (measured: rasterize + antialias, 100k triangles at 512^2 on 2
cores, 123 ms per forward+backward with spinning workers, 93 ms without). Importing diffvc before
torch therefore sets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set; it has no
effect once torch (and its OpenMP runtime) is loaded, so set it in the environment when torch
is imported first.
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
