"""Load an :class:`~diffvc.physics.ArticulatedModel` from a subset of URDF.

Supported (anything else raises a ``ValueError`` naming the element):

* ``<robot>`` with ``<link>`` (``<inertial>``: ``origin xyz rpy``, ``mass value``, ``inertia
  ixx ixy ixz iyy iyz izz``; ``<collision>``: ``origin`` and ``<geometry>`` ``box size``,
  ``sphere radius``, ``cylinder radius length`` (8 points on each rim circle) or ``capsule
  radius length``; ``<visual>`` is ignored);
* ``<joint type="revolute|continuous|prismatic|fixed|floating">`` with ``parent``, ``child``,
  ``origin xyz rpy``, ``axis xyz``, ``limit lower upper`` (revolute/prismatic: a joint limit),
  ``dynamics damping`` (``friction`` must be 0);
* ignored: ``material``, ``gazebo``, ``transmission``, ``safety_controller``, ``calibration``.

URDF puts each joint at its child link's frame origin (the joint ``origin`` is the child frame
in the parent frame) with the axis in that frame: the child body's ``pos/quat`` are the joint
origin and the joint sits at the body origin. The root link is welded to the world unless
``floating_base=True`` (a free joint). URDF has no gravity or ground: ``gravity`` defaults to
(0, 0, -9.81) (ROS is z-up) and ``planes`` to none. Without actuators, the control is the joint
forces (``gear`` = identity).
"""

from __future__ import annotations

import math
import os

import torch

from .articulated import ArticulatedModel, ArticulationBuilder
from .mjcf import _axis_quat, _qmul, _quat_to_mat, xml_root

__all__ = ["load_urdf"]

_IGNORED = {"material", "gazebo", "transmission"}
_JOINT_IGNORED = {"safety_controller", "calibration"}


def _vec(el, attr, default, n=3):
    if el is None or attr not in el.attrib:
        return list(default)
    v = [float(x) for x in el.get(attr).split()]
    if len(v) != n:
        raise ValueError(f"URDF: <{el.tag} {attr}> needs {n} numbers, got {el.get(attr)!r}")
    return v


def _origin(parent):
    o = parent.find("origin")
    xyz = _vec(o, "xyz", (0.0, 0.0, 0.0))
    r, p, y = _vec(o, "rpy", (0.0, 0.0, 0.0))
    # fixed-axis roll, pitch, yaw: R = Rz(y) Ry(p) Rx(r)
    q = _qmul(_axis_quat((0, 0, 1), y), _qmul(_axis_quat((0, 1, 0), p), _axis_quat((1, 0, 0), r)))
    return xyz, q


def _check_children(el, allowed, where):
    for c in el:
        if c.tag not in allowed:
            raise ValueError(f"URDF: unsupported element <{c.tag}> in {where}")


def load_urdf(source: str | os.PathLike, floating_base: bool = False, dtype=torch.float32, device="cpu",
              gravity=(0.0, 0.0, -9.81), planes=None, pairs="auto", **contact) -> ArticulatedModel:
    """Build an :class:`ArticulatedModel` from a URDF file path or XML string (subset: module
    doc). ``contact``: the penalty/limit parameters of :class:`ArticulationBuilder` (``ke``,
    ``kd``, ``mu``, ``friction_smoothing``, ``contact_smoothing``, ``limit_ke`` ...)."""
    root = xml_root(source)
    if root.tag != "robot":
        raise ValueError(f"URDF: the root element must be <robot>, got <{root.tag}>")
    links, joints = {}, []
    for el in root:
        if el.tag == "link":
            links[el.get("name")] = el
        elif el.tag == "joint":
            joints.append(el)
        elif el.tag not in _IGNORED:
            raise ValueError(f"URDF: unsupported element <{el.tag}>")
    if not links:
        raise ValueError("URDF: no <link>")
    child_joint = {}
    for j in joints:
        _check_children(j, {"parent", "child", "origin", "axis", "limit", "dynamics"} | _JOINT_IGNORED,
                        f"<joint name='{j.get('name')}'>")
        par, ch = j.find("parent"), j.find("child")
        if par is None or ch is None:
            raise ValueError(f"URDF: joint {j.get('name')!r} needs <parent> and <child>")
        for ln in (par.get("link"), ch.get("link")):
            if ln not in links:
                raise ValueError(f"URDF: joint {j.get('name')!r} names link {ln!r}, which is not defined")
        if ch.get("link") in child_joint:
            raise ValueError(f"URDF: link {ch.get('link')!r} is the child of two joints (not a tree)")
        child_joint[ch.get("link")] = j
    roots = [n for n in links if n not in child_joint]
    if len(roots) != 1:
        raise ValueError(f"URDF: need exactly one root link, found {roots}")
    children: dict[str, list] = {n: [] for n in links}
    for j in joints:
        children[j.find("parent").get("link")].append(j)

    b = ArticulationBuilder(gravity=gravity, planes=planes, **contact)
    order = [(roots[0], -1, None)]
    while order:
        name, parent, joint = order.pop(0)
        link = links[name]
        _check_children(link, {"inertial", "visual", "collision"}, f"<link name='{name}'>")
        mass, com, inertia = 0.0, [0.0, 0.0, 0.0], [[0.0] * 3 for _ in range(3)]
        ine = link.find("inertial")
        if ine is not None:
            _check_children(ine, {"origin", "mass", "inertia"}, f"<inertial> of link {name!r}")
            com, q = _origin(ine)
            m = ine.find("mass")
            mass = float(m.get("value")) if m is not None else 0.0
            ie = ine.find("inertia")
            g = {k: float(ie.get(k, 0.0)) for k in ("ixx", "ixy", "ixz", "iyy", "iyz", "izz")} if ie is not None else {}
            I = [[g.get("ixx", 0.0), g.get("ixy", 0.0), g.get("ixz", 0.0)],
                 [g.get("ixy", 0.0), g.get("iyy", 0.0), g.get("iyz", 0.0)],
                 [g.get("ixz", 0.0), g.get("iyz", 0.0), g.get("izz", 0.0)]]
            R = _quat_to_mat(q)
            inertia = [[sum(R[i][a] * I[a][c] * R[k][c] for a in range(3) for c in range(3)) for k in range(3)]
                       for i in range(3)]
        if joint is None:
            pos, quat = [0.0, 0.0, 0.0], (1.0, 0.0, 0.0, 0.0)
        else:
            pos, quat = _origin(joint)
        body = b.add_body(parent, pos=pos, quat=quat, mass=mass, com=com, inertia=inertia, name=name)
        if joint is None:
            if floating_base:
                b.add_joint(body, "free", name=f"{name}_root")
        else:
            t = joint.get("type")
            if t not in ("revolute", "continuous", "prismatic", "fixed", "floating"):
                raise ValueError(f"URDF: unsupported joint type {t!r} (joint {joint.get('name')!r})")
            if t == "floating":
                raise ValueError(f"URDF: unsupported floating joint below the root (joint {joint.get('name')!r})")
            if t != "fixed":
                axis = _vec(joint.find("axis"), "xyz", (1.0, 0.0, 0.0))
                lim = joint.find("limit")
                limited = t in ("revolute", "prismatic") and lim is not None and ("lower" in lim.attrib or "upper" in lim.attrib)
                rng = (float(lim.get("lower", 0.0)), float(lim.get("upper", 0.0))) if limited else (0.0, 0.0)
                if limited and not rng[0] < rng[1]:
                    limited, rng = False, (0.0, 0.0)
                dyn = joint.find("dynamics")
                if dyn is not None and float(dyn.get("friction", 0.0)) != 0.0:
                    raise ValueError(f"URDF: unsupported joint friction (joint {joint.get('name')!r})")
                b.add_joint(body, "prismatic" if t == "prismatic" else "revolute", axis=axis, limited=limited,
                            range=rng, damping=float(dyn.get("damping", 0.0)) if dyn is not None else 0.0,
                            name=joint.get("name"))
        for col in link.findall("collision"):
            _check_children(col, {"origin", "geometry"}, f"<collision> of link {name!r}")
            cpos, cq = _origin(col)
            geo = col.find("geometry")
            if geo is None or len(geo) != 1:
                raise ValueError(f"URDF: <collision> of link {name!r} needs one <geometry> shape")
            shape = geo[0]
            R = _quat_to_mat(cq)
            if shape.tag == "sphere":
                b.add_sphere(body, float(shape.get("radius")), cpos)
            elif shape.tag == "box":
                size = _vec(shape, "size", (0, 0, 0))
                b.add_box(body, [s / 2 for s in size], cpos, cq)
            elif shape.tag in ("cylinder", "capsule"):
                r, half = float(shape.get("radius")), float(shape.get("length")) / 2
                ez = [R[0][2], R[1][2], R[2][2]]
                if shape.tag == "capsule":
                    b.add_capsule(body, r, [cpos[i] - half * ez[i] for i in range(3)], [cpos[i] + half * ez[i] for i in range(3)])
                else:
                    for zs in (-half, half):
                        for k in range(8):
                            a = 2 * math.pi * k / 8
                            loc = [r * math.cos(a), r * math.sin(a), zs]
                            b.points.append(dict(body=body, pos=[cpos[i] + sum(R[i][m] * loc[m] for m in range(3)) for i in range(3)],
                                                 radius=0.0))
                    b.geoms.append((body, "cylinder", (r, half), cpos, cq))
            else:
                raise ValueError(f"URDF: unsupported collision geometry <{shape.tag}> (link {name!r})")
        for j in children[name]:
            order.append((j.find("child").get("link"), body, j))
    return b.build(dtype=dtype, device=device, pairs=pairs)
