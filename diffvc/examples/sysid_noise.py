"""``sysid`` with 1% Gaussian pixel noise (standard deviation 0.01, linear RGB) added to the target
videos: the estimate still sees only pixels, now noisy ones.

    diffvc run sysid_noise [--quick]
"""

from __future__ import annotations

from . import sysid

DESCRIPTION = "sysid with 1% Gaussian pixel noise in the target videos"
NOISE = 0.01


def run(cfg) -> dict:
    return sysid.run(cfg, noise=NOISE)
