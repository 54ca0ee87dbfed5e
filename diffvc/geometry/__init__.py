"""diffvc.geometry: differentiable geometry (meshes, point clouds, fields, conversions, regularizers).

Functions take plain tensors ``verts (V, 3)`` float and ``faces (F, 3)`` integer (a list of ints is
accepted too), one mesh per call. There is no batched mesh type: no op accepted one, so
several meshes are concatenated with offset faces (as :func:`diffvc.pipeline.scene_geometry`
merges a scene's shapes) or handled in a loop.
"""

from .normals import face_normals, vertex_normals, mesh_normals
from .measures import face_areas, surface_area, volume, mass_properties
from .topology import edges, edge_face_counts, boundary_vertices, is_watertight, face_adjacency, face_neighbors
from .laplacian import uniform_laplacian, cotangent_laplacian, cotangent_weights, vertex_areas, laplacian_apply
from .transforms import (
    axis_angle_to_matrix,
    quaternion_to_matrix,
    quaternion_apply,
    euler_to_matrix,
    transform_points,
    rigid_transform,
    scale,
    translate,
    normalize_to_unit_box,
)
from .primitives import icosphere, uv_sphere, box, grid, plane, cylinder, torus
from .large_steps import AdamUniform, LargeSteps, SparseSolver, system_matrix, solve, to_differential, from_differential
from .sdf import (
    sdf_sphere,
    sdf_box,
    sdf_torus,
    sdf_capsule,
    sdf_cylinder,
    sdf_plane,
    smooth_union,
    smooth_intersection,
    smooth_difference,
    union,
    intersection,
    sdf_normal,
)
from .tet_mesh import (
    tet_grid,
    tet_box,
    tet_volumes,
    orient_tets,
    tet_faces,
    tet_boundary_faces,
    remove_unreferenced,
)
from .marching_tets import marching_tetrahedra, sdf_to_mesh
from .winding import winding_number, occupancy
from .distance import closest_point_on_triangle, closest_points, point_mesh_distance, mesh_to_sdf
from .tetrahedralize import tetrahedralize
from .sampling import sample_points
from .knn import knn, nearest_neighbor
from .chamfer import chamfer_distance
from .voxels import grid_points, trilinear_sample, DenseGrid, voxelize, grid_to_mesh
from .neural import PositionalEncoding, HashGridEncoding, MLP, NeuralField
from .diffusion import HeatDiffusion, heat_diffuse
from .io import load_mesh, save_mesh, load_points, save_points
from .regularizers import laplacian_smoothing_loss, normal_consistency_loss, edge_length_loss
from .curvature import (
    angle_defect,
    angle_weighted_normals,
    corner_angles,
    gaussian_curvature,
    mean_curvature,
    mean_curvature_normal,
    principal_curvatures,
    voronoi_areas,
)
from .encoders import PointNetEncoder, EdgeConv, DGCNNEncoder, MeshConv, MeshEncoder, knn_graph, normalized_adjacency
from .splines import (
    bezier_curve,
    bspline_basis,
    bspline_curve,
    bspline_surface,
    clamped_knots,
    elevate_bezier,
    insert_knot,
    nurbs_circle,
    surface_normals,
    tessellate_surface,
)

__all__ = [
    "face_normals", "vertex_normals", "mesh_normals",
    "face_areas", "surface_area", "volume", "mass_properties",
    "edges", "edge_face_counts", "boundary_vertices", "is_watertight", "face_adjacency", "face_neighbors",
    "uniform_laplacian", "cotangent_laplacian", "cotangent_weights", "vertex_areas", "laplacian_apply",
    "axis_angle_to_matrix", "quaternion_to_matrix", "quaternion_apply", "euler_to_matrix", "transform_points", "rigid_transform",
    "scale", "translate", "normalize_to_unit_box",
    "icosphere", "uv_sphere", "box", "grid", "plane", "cylinder", "torus",
    "AdamUniform", "LargeSteps", "SparseSolver", "system_matrix", "solve", "to_differential", "from_differential",
    "sdf_sphere", "sdf_box", "sdf_torus", "sdf_capsule", "sdf_cylinder", "sdf_plane",
    "smooth_union", "smooth_intersection", "smooth_difference", "union", "intersection", "sdf_normal",
    "tet_grid", "tet_box", "tet_volumes", "orient_tets", "tet_faces", "tet_boundary_faces", "remove_unreferenced",
    "marching_tetrahedra", "sdf_to_mesh",
    "winding_number", "occupancy", "closest_point_on_triangle", "closest_points", "point_mesh_distance", "mesh_to_sdf",
    "tetrahedralize", "sample_points", "knn", "nearest_neighbor", "chamfer_distance",
    "grid_points", "trilinear_sample", "DenseGrid", "voxelize", "grid_to_mesh",
    "PositionalEncoding", "HashGridEncoding", "MLP", "NeuralField",
    "HeatDiffusion", "heat_diffuse",
    "load_mesh", "save_mesh", "load_points", "save_points",
    "laplacian_smoothing_loss", "normal_consistency_loss", "edge_length_loss",
    "angle_defect", "angle_weighted_normals", "corner_angles", "gaussian_curvature", "mean_curvature",
    "mean_curvature_normal", "principal_curvatures", "voronoi_areas",
    "PointNetEncoder", "EdgeConv", "DGCNNEncoder", "MeshConv", "MeshEncoder", "knn_graph", "normalized_adjacency",
    "bezier_curve", "bspline_basis", "bspline_curve", "bspline_surface", "clamped_knots", "elevate_bezier",
    "insert_knot", "nurbs_circle", "surface_normals", "tessellate_surface",
]
