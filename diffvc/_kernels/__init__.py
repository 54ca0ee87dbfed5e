"""Private: the Warp kernels of diffvc and their bridge to torch autograd.

This is the only package that imports ``warp``. Everything else calls the autograd-aware
wrappers defined here (see :mod:`diffvc._kernels.bridge`).
"""

from .bridge import (
    wp,
    warp_device,
    to_warp,
    vec,
    mat,
    launch,
    kernel_op,
    Out,
    parallel_launch,
    split_chunks,
    torch_stream,
    cuda_available,
)

__all__ = [
    "wp",
    "warp_device",
    "to_warp",
    "vec",
    "mat",
    "launch",
    "kernel_op",
    "Out",
    "parallel_launch",
    "split_chunks",
    "torch_stream",
    "cuda_available",
]
