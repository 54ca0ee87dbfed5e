"""Differentiable rendering: cameras, rasterization (rasterize, interpolate, antialias, texture,
soft silhouettes), shading (BRDFs, lights), ray and path tracing."""

from .._lazy import lazy_exports
from .cameras import Cameras, focal_from_fov, generate_rays, look_at, sphere_eyes
from .lights import AmbientLight, DirectionalLight, PointLight, SHEnvironment, sh_basis
from .rasterize import Fragments, rasterize, rasterize_screen
from .interpolate import interpolate
from .antialias import MeshTopology, antialias, face_neighbors, mesh_topology
from .shading import (Material, fresnel_schlick, ggx_brdf, ggx_distribution, ggx_specular, lambert, shade,
                      smith_g, smith_g1)
# eager: these modules share a name with a function they export (a later submodule import would
# otherwise rebind the package attribute to the module)
from .texture import level_of_detail, mipmaps, texture
from .sphere_trace import SDFHits, render_sdf, shade_sdf, sphere_trace

# The ray/path tracers, volumes, splats and soft silhouettes load on
# first use (PEP 562): ``from diffvc.render import path_trace`` works as before, but a command
# that only rasterizes does not import (and load the Warp kernels of) every renderer (~0.5 s CPU).
_LAZY = {
    "raytrace": ("RayHits", "TriangleBVH", "intersect", "occluded", "render_gbuffer"),
    "pt_scene": ("PathTracingScene", "PTMaterial", "cornell_box", "cornell_camera"),
    "pathtrace": ("path_trace",),
    "soft": ("soft_silhouette",),
    "volume": ("OccupancyGrid", "VolumeRender", "composite_rays", "importance_samples", "ray_aabb", "read_vol",
               "render_field", "render_grid", "render_volume", "stratified_samples", "write_vol"),
    "splat": ("DensityControl", "Gaussians", "SplatImage", "gaussians_from_params", "init_splat_params",
              "points_to_gaussians", "project_gaussians", "rasterize_gaussians", "render_gaussians", "splat_loss",
              "splat_optimizer", "ssim"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = ["Cameras", "look_at", "focal_from_fov", "generate_rays", "sphere_eyes",
           "PointLight", "DirectionalLight", "AmbientLight", "SHEnvironment", "sh_basis",
           "Material", "lambert", "ggx_distribution", "smith_g1", "smith_g", "fresnel_schlick", "ggx_specular",
           "ggx_brdf", "shade",
           "Fragments", "rasterize", "rasterize_screen", "interpolate", "antialias", "MeshTopology", "mesh_topology",
           "face_neighbors", "texture", "mipmaps", "level_of_detail", "soft_silhouette",
           "TriangleBVH", "RayHits", "intersect", "occluded", "render_gbuffer", "PathTracingScene", "PTMaterial",
           "cornell_box", "cornell_camera", "path_trace",
           "VolumeRender", "OccupancyGrid", "ray_aabb", "stratified_samples", "importance_samples", "composite_rays", "render_grid",
           "render_field", "render_volume", "read_vol", "write_vol", "SDFHits", "sphere_trace", "render_sdf", "shade_sdf",
           "Gaussians", "SplatImage", "project_gaussians", "rasterize_gaussians", "render_gaussians",
           "points_to_gaussians", "ssim", "splat_loss", "DensityControl", "init_splat_params", "gaussians_from_params",
           "splat_optimizer"]
