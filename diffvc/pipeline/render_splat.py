"""The ``"splat"`` renderer: draws the :class:`~diffvc.pipeline.Points` primitives of each frame
(particles of MPM, fluids, spring networks) as isotropic 3D Gaussians with
:func:`diffvc.render.render_gaussians` (EWA projection, tile binning, front-to-back compositing).

Each point becomes a Gaussian with standard deviation ``radius`` (m), its colour (unlit: the
scene's lights do not shade splats) and its opacity; all point sets of a frame are merged and
rendered from every camera of the rig in one batch, over the scene's background.

Gradient contract (see :mod:`diffvc.render.splat`): exact derivatives w.r.t. positions, radii,
colours, opacities, the background and the cameras for the discrete decisions the compositor
takes (depth order, tile lists, alpha cut-offs, early termination), which are discontinuities
of measure zero in the inputs.

    scene.add_points("sand", lambda s: s.x, color=(0.8, 0.7, 0.4), radius=0.02)
    video = render_trajectory(scene, states, renderer="splat")
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..render.splat import points_to_gaussians, render_gaussians
from .primitives import FrameGeometry
from .renderers import register_renderer

__all__ = ["SplatRenderer"]


class SplatRenderer:
    """Gaussian-splat rendering of point primitives.

    Args:
        backend: ``"warp"`` (kernel) or ``"torch"`` (the plain-torch twin).
        eps2d: screen-space low-pass term (px^2) added to every splat's covariance.
        near: splats nearer than this view depth (m) are culled.
    """

    consumes = ("points",)

    def __init__(self, backend: str = "warp", eps2d: float = 0.3, near: float = 0.01):
        if backend not in ("warp", "torch"):
            raise ValueError(f"backend must be 'warp' or 'torch', got {backend!r}")
        if not float(eps2d) >= 0:
            raise ValueError(f"eps2d must be >= 0, got {eps2d!r}")
        if not float(near) > 0:
            raise ValueError(f"near must be > 0, got {near!r}")
        self.backend, self.eps2d, self.near = backend, float(eps2d), float(near)

    def render_frame(self, scene, frame: FrameGeometry) -> torch.Tensor:
        """One frame from every view: ``(V, H, W, 3)``."""
        if not frame.points:
            raise ValueError("frames: the splat renderer needs at least one points shape")
        pts = [p for _, p in frame.points]
        dtype = pts[0].positions.dtype
        for p in pts[1:]:
            dtype = torch.promote_types(dtype, p.positions.dtype)
        cat = [torch.cat([getattr(p, f).to(dtype) for p in pts]) for f in ("positions", "radii", "colors", "opacities")]
        g = points_to_gaussians(*cat)
        cams = scene.cameras if scene.cameras.dtype == dtype else scene.cameras.to(dtype=dtype)
        img = render_gaussians(g, cams, background=scene.background.to(dtype), backend=self.backend,
                               eps2d=self.eps2d, near=self.near)
        return img.color

    def render(self, scene, frames: Sequence[FrameGeometry]) -> torch.Tensor:
        return torch.stack([self.render_frame(scene, f) for f in frames])


register_renderer("splat", SplatRenderer)
