"""Load an :class:`~diffvc.physics.ArticulatedModel` from a subset of MuJoCo's MJCF.

Supported (everything else raises a ``ValueError`` naming the element or attribute):

* ``<mujoco>`` with ``<compiler angle="degree|radian" eulerseq="xyz" inertiafromgeom autolimits
  coordinate="local">``, ``<option timestep gravity integrator="Euler|RK4">``, ``<default>`` classes
  (nested, ``childclass``/``class``) for ``joint``, ``geom`` and ``motor``;
* ``<worldbody>`` with nested ``<body name pos quat|euler|axisangle childclass>``;
* ``<joint type="hinge|slide|ball|free" axis pos ref springref range limited damping armature
  stiffness>``
  and ``<freejoint>``;
* ``<inertial pos quat mass diaginertia|fullinertia>``; without it the body's mass and inertia
  come from its geoms (``density`` or ``mass``) as MuJoCo computes them;
* ``<geom type="plane|sphere|capsule|box|cylinder" size fromto pos quat|euler|axisangle mass
  density contype conaffinity>``: planes in the world body become contact planes; spheres,
  capsules and boxes on bodies become collision points (capsule: end spheres; box: corners;
  cylinder: 8 points on each rim circle);
* ``<actuator><motor joint gear ctrlrange ctrllimited></actuator>``;
* ignored (no effect on dynamics): ``visual``, ``asset``, ``statistic``, ``size``, ``light``,
  ``camera``, ``site``, ``sensor``, ``contact`` (parent/child exclusion is built in), and the
  ``name``, ``rgba``, ``material``, ``group``, ``friction``, ``condim`` ... attributes listed in
  ``_IGNORED_ATTRS``.

Coordinates are kept as written in the file (MuJoCo files are usually z-up: gravity
(0, 0, -9.81) and a ground plane z = 0). Quaternions are (w, x, y, z) in both.
Contact parameters (penalty ``ke``, ``kd``, friction ...) are diffvc's, given to :func:`load_mjcf`.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import torch

from .articulated import ArticulatedModel, ArticulationBuilder

__all__ = ["load_mjcf", "MJCFInfo"]

_IGNORED_ELEMENTS = {"visual", "asset", "statistic", "size", "light", "camera", "site", "sensor", "contact",
                     "custom", "extension"}
_IGNORED_ATTRS = {"name", "rgba", "material", "group", "class", "childclass", "friction", "condim", "solref",
                  "solimp", "margin", "gap", "priority", "conaffinity", "contype", "user", "mocap", "gravcomp",
                  "solreflimit", "solimplimit", "frictionloss", "hfield", "mesh", "fitscale", "texture",
                  "actuatorfrclimited", "actuatorfrcrange", "springdamper", "limited_margin", "fluidshape",
                  "fluidcoef", "solmix", "actuatorgravcomp"}
_JOINT_TYPES = {"hinge": "revolute", "slide": "prismatic", "ball": "ball", "free": "free"}
_DEFAULT_DENSITY = 1000.0


class MJCFInfo(dict):
    """What the file says beyond the model: ``timestep`` (s), ``integrator``, ``model_name``."""


def _floats(s: str, n: int | None = None, what: str = "") -> list[float]:
    vals = [float(x) for x in s.split()]
    if n is not None and len(vals) != n:
        raise ValueError(f"MJCF: {what} needs {n} numbers, got {s!r}")
    return vals


def _qmul(a, b):  # (w, x, y, z)
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw)


def _axis_quat(axis, angle):
    n = math.sqrt(sum(a * a for a in axis)) or 1.0
    s = math.sin(angle / 2) / n
    return (math.cos(angle / 2), axis[0] * s, axis[1] * s, axis[2] * s)


def _rotate(q, v):  # q (w, x, y, z)
    w, x, y, z = q
    qv = (x, y, z)
    t = [2 * (qv[1] * v[2] - qv[2] * v[1]), 2 * (qv[2] * v[0] - qv[0] * v[2]), 2 * (qv[0] * v[1] - qv[1] * v[0])]
    return [v[i] + w * t[i] + (qv[(i + 1) % 3] * t[(i + 2) % 3] - qv[(i + 2) % 3] * t[(i + 1) % 3]) for i in range(3)]


def _quat_to_mat(q):
    w, x, y, z = q
    return [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]


class _Parser:
    def __init__(self, root: ET.Element, dtype, device, contact_kw):
        if root.tag != "mujoco":
            raise ValueError(f"MJCF: the root element must be <mujoco>, got <{root.tag}>")
        self.root = root
        self.dtype, self.device = dtype, device
        self.angle_scale = math.pi / 180.0
        self.eulerseq = "xyz"
        self.autolimits = True
        self.inertia_from_geom = "auto"
        self.gravity = (0.0, 0.0, -9.81)
        self.info = MJCFInfo(timestep=0.002, integrator="Euler", model_name=root.get("model", ""))
        self.defaults: dict[str, dict] = {}
        self.contact_kw = contact_kw

    # ---------------------------------------------------------------- helpers
    def _check_attrs(self, el: ET.Element, allowed: set[str]):
        for a in el.attrib:
            if a not in allowed and a not in _IGNORED_ATTRS:
                raise ValueError(f"MJCF: unsupported attribute '{a}' on <{el.tag}> (supported: {sorted(allowed)})")

    def _attrs(self, el: ET.Element, kind: str, cls: str | None) -> dict:
        """Element attributes merged over its default class chain."""
        cls = el.get("class", cls) or "main"
        merged = dict(self.defaults.get(cls, {}).get(kind, {}))
        merged.update(el.attrib)
        return merged

    def _orientation(self, a: dict, where: str):
        keys = [k for k in ("quat", "euler", "axisangle", "xyaxes", "zaxis") if k in a]
        if len(keys) > 1:
            raise ValueError(f"MJCF: {where} has several orientations {keys}")
        if not keys:
            return (1.0, 0.0, 0.0, 0.0)
        k = keys[0]
        if k == "quat":
            q = _floats(a[k], 4, f"{where} quat")
            n = math.sqrt(sum(x * x for x in q))
            return tuple(x / n for x in q)
        if k == "axisangle":
            v = _floats(a[k], 4, f"{where} axisangle")
            return _axis_quat(v[:3], v[3] * self.angle_scale)
        if k == "euler":
            v = _floats(a[k], 3, f"{where} euler")
            q = (1.0, 0.0, 0.0, 0.0)
            for ch, ang in zip(self.eulerseq, v):
                ax = {"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}[ch.lower()]
                r = _axis_quat(ax, ang * self.angle_scale)
                q = _qmul(q, r) if ch.islower() else _qmul(r, q)
            return q
        raise ValueError(f"MJCF: unsupported orientation '{k}' on {where} (use quat, euler or axisangle)")

    # ---------------------------------------------------------------- top level
    def parse(self):
        self._check_attrs(self.root, {"model"})
        for el in self.root:
            if el.tag == "compiler":
                self._compiler(el)
        for el in self.root:
            if el.tag == "default":
                self._default(el, "main", {})
        b = None
        actuators = []
        for el in self.root:
            tag = el.tag
            if tag in ("compiler", "default") or tag in _IGNORED_ELEMENTS:
                continue
            if tag == "option":
                self._option(el)
            elif tag == "worldbody":
                b = self._worldbody(el)
            elif tag == "actuator":
                actuators.append(el)
            else:
                raise ValueError(f"MJCF: unsupported element <{tag}>")
        if b is None:
            raise ValueError("MJCF: no <worldbody>")
        b.gravity = self.gravity
        for el in actuators:
            self._actuators(el, b)
        return b

    def _compiler(self, el):
        self._check_attrs(el, {"angle", "eulerseq", "inertiafromgeom", "autolimits", "coordinate", "meshdir",
                               "texturedir", "assetdir", "boundmass", "boundinertia", "settotalmass", "balanceinertia",
                               "strippath", "discardvisual", "fusestatic", "inertiagrouprange", "exactmeshinertia",
                               "usethread", "alignfree"})
        if el.get("coordinate", "local") != "local":
            raise ValueError("MJCF: unsupported attribute value coordinate='global' on <compiler>")
        for a in ("boundmass", "boundinertia", "settotalmass", "balanceinertia", "fusestatic"):
            if a in el.attrib and el.get(a) not in ("0", "false"):
                raise ValueError(f"MJCF: unsupported attribute '{a}' on <compiler>")
        self.angle_scale = math.pi / 180.0 if el.get("angle", "degree") == "degree" else 1.0
        self.eulerseq = el.get("eulerseq", "xyz")
        self.autolimits = el.get("autolimits", "true") == "true"
        self.inertia_from_geom = el.get("inertiafromgeom", "auto")

    def _option(self, el):
        self._check_attrs(el, {"timestep", "gravity", "integrator", "iterations", "solver", "tolerance", "cone",
                               "jacobian", "ls_iterations", "noslip_iterations", "impratio"})
        for child in el:
            if child.tag != "flag":
                raise ValueError(f"MJCF: unsupported element <{child.tag}> in <option>")
        if "timestep" in el.attrib:
            self.info["timestep"] = float(el.get("timestep"))
        if "gravity" in el.attrib:
            self.gravity = tuple(_floats(el.get("gravity"), 3, "option gravity"))
        integ = el.get("integrator", "Euler")
        if integ not in ("Euler", "RK4"):
            raise ValueError(f"MJCF: unsupported integrator '{integ}' (diffvc has Euler and RK4)")
        self.info["integrator"] = integ

    def _default(self, el, name, parent: dict):
        self._check_attrs(el, {"class"})
        cls = el.get("class", name)
        d = {k: dict(v) for k, v in parent.items()}
        children = []
        for child in el:
            if child.tag == "default":
                children.append(child)
            elif child.tag in ("joint", "geom", "motor"):
                d.setdefault(child.tag, {}).update(child.attrib)
            elif child.tag in ("site", "camera", "light", "mesh", "material", "texture"):
                continue
            else:
                raise ValueError(f"MJCF: unsupported element <{child.tag}> in <default>")
        self.defaults[cls] = d
        for child in children:
            self._default(child, child.get("class"), d)

    # ---------------------------------------------------------------- bodies
    def _worldbody(self, el):
        b = ArticulationBuilder(**self.contact_kw)
        for child in el:
            if child.tag == "body":
                self._body(child, b, -1, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), None)
            elif child.tag == "geom":
                a = self._attrs(child, "geom", None)
                if a.get("type", "sphere") != "plane":
                    raise ValueError("MJCF: only plane geoms are supported in <worldbody> (static world geometry)")
                q = self._orientation(a, "plane geom")
                n = _rotate(q, [0.0, 0.0, 1.0])
                pos = _floats(a.get("pos", "0 0 0"), 3, "geom pos")
                b.planes.append([n[0], n[1], n[2], sum(ni * pi for ni, pi in zip(n, pos))])
            elif child.tag in _IGNORED_ELEMENTS:
                continue
            else:
                raise ValueError(f"MJCF: unsupported element <{child.tag}> in <worldbody>")
        return b

    def _body(self, el, b: ArticulationBuilder, parent: int, _p, _q, cls):
        self._check_attrs(el, {"name", "pos", "quat", "euler", "axisangle", "childclass"})
        cls = el.get("childclass", cls)
        pos = _floats(el.get("pos", "0 0 0"), 3, "body pos")
        q = self._orientation(el.attrib, f"body '{el.get('name', '')}'")
        inertial, geoms, joints, bodies = None, [], [], []
        for child in el:
            if child.tag == "inertial":
                inertial = child
            elif child.tag == "geom":
                geoms.append(child)
            elif child.tag in ("joint", "freejoint"):
                joints.append(child)
            elif child.tag == "body":
                bodies.append(child)
            elif child.tag in _IGNORED_ELEMENTS:
                continue
            else:
                raise ValueError(f"MJCF: unsupported element <{child.tag}> in <body>")
        geom_data = [self._geom(g, cls) for g in geoms]
        use_geoms = self.inertia_from_geom == "true" or (self.inertia_from_geom == "auto" and inertial is None)
        if use_geoms:
            mass, com, inertia = _combine_inertia([g for g in geom_data if g["mass"] is not None])
        elif inertial is not None:
            mass, com, inertia = self._inertial(inertial)
        else:
            mass, com, inertia = 0.0, [0.0, 0.0, 0.0], [[0.0] * 3 for _ in range(3)]
        idx = b.add_body(parent, pos=pos, quat=q, mass=mass, com=com, inertia=inertia,
                         name=el.get("name"))
        for j in joints:
            self._joint(j, b, idx, cls)
        for g in geom_data:
            g["add"](b, idx)
        for child in bodies:
            self._body(child, b, idx, pos, q, cls)

    def _inertial(self, el):
        self._check_attrs(el, {"pos", "quat", "euler", "axisangle", "mass", "diaginertia", "fullinertia"})
        mass = float(el.get("mass"))
        com = _floats(el.get("pos", "0 0 0"), 3, "inertial pos")
        if "fullinertia" in el.attrib:
            a = _floats(el.get("fullinertia"), 6, "fullinertia")  # Ixx Iyy Izz Ixy Ixz Iyz
            I = [[a[0], a[3], a[4]], [a[3], a[1], a[5]], [a[4], a[5], a[2]]]
        else:
            d = _floats(el.get("diaginertia"), 3, "diaginertia")
            R = _quat_to_mat(self._orientation(el.attrib, "inertial"))
            I = [[sum(R[i][k] * d[k] * R[j][k] for k in range(3)) for j in range(3)] for i in range(3)]
        return mass, com, I

    def _joint(self, el, b, body, cls):
        if el.tag == "freejoint":
            self._check_attrs(el, {"name", "align"})
            b.add_joint(body, "free", name=el.get("name"))
            return
        a = self._attrs(el, "joint", cls)
        allowed = {"type", "axis", "pos", "ref", "range", "limited", "damping", "armature", "stiffness", "springref",
                   "name", "class"}
        for k in a:
            if k not in allowed and k not in _IGNORED_ATTRS:
                raise ValueError(f"MJCF: unsupported attribute '{k}' on <joint>")
        t = a.get("type", "hinge")
        if t not in _JOINT_TYPES:
            raise ValueError(f"MJCF: unsupported joint type '{t}'")
        kind = _JOINT_TYPES[t]
        rng = _floats(a.get("range", "0 0"), 2, "joint range")
        limited = a.get("limited", "auto")
        limited = (rng[0] < rng[1] and self.autolimits) if limited == "auto" else limited == "true"
        scale = self.angle_scale if kind == "revolute" else 1.0
        if kind == "ball" and limited:
            raise ValueError("MJCF: unsupported ball joint limit (range) on <joint>")
        b.add_joint(body, kind, axis=_floats(a.get("axis", "0 0 1"), 3, "joint axis"),
                    pos=_floats(a.get("pos", "0 0 0"), 3, "joint pos"), ref=float(a.get("ref", 0.0)) * scale,
                    limited=limited, range=[r * scale for r in rng] if limited else (0.0, 0.0),
                    damping=float(a.get("damping", 0.0)), armature=float(a.get("armature", 0.0)),
                    stiffness=float(a.get("stiffness", 0.0)), springref=float(a.get("springref", 0.0)) * scale,
                    name=a.get("name"))

    def _geom(self, el, cls) -> dict:
        a = self._attrs(el, "geom", cls)
        allowed = {"type", "size", "fromto", "pos", "quat", "euler", "axisangle", "mass", "density", "name", "class"}
        for k in a:
            if k not in allowed and k not in _IGNORED_ATTRS:
                raise ValueError(f"MJCF: unsupported attribute '{k}' on <geom>")
        t = a.get("type", "sphere")
        if t not in ("sphere", "capsule", "box", "cylinder"):
            raise ValueError(f"MJCF: unsupported geom type '{t}' on a body (supported: sphere, capsule, box, cylinder)")
        size = _floats(a.get("size", "0"))
        collide = a.get("contype", "1") != "0" or a.get("conaffinity", "1") != "0"
        if "fromto" in a:
            if t not in ("capsule", "cylinder", "box"):
                raise ValueError(f"MJCF: 'fromto' on a {t} geom is unsupported")
            ft = _floats(a["fromto"], 6, "geom fromto")
            p0, p1 = ft[:3], ft[3:]
            d = [p1[i] - p0[i] for i in range(3)]
            half = 0.5 * math.sqrt(sum(x * x for x in d))
            pos = [0.5 * (p0[i] + p1[i]) for i in range(3)]
            q = _quat_from_z(d)
            radius = size[0]
            if t == "box":
                raise ValueError("MJCF: 'fromto' on a box geom is unsupported")
        else:
            pos = _floats(a.get("pos", "0 0 0"), 3, "geom pos")
            q = self._orientation(a, "geom")
            radius = size[0]
            if t in ("capsule", "cylinder"):
                if len(size) < 2:
                    raise ValueError(f"MJCF: a {t} geom needs size='radius half-length' or fromto")
                half = size[1]
            elif t == "box" and len(size) != 3:
                raise ValueError("MJCF: a box geom needs size='hx hy hz'")
        # mass properties (MuJoCo's formulas)
        if t == "sphere":
            vol = 4.0 / 3.0 * math.pi * radius ** 3
            Id = [0.4 * radius ** 2] * 3
        elif t == "box":
            hx, hy, hz = size[:3]
            vol = 8 * hx * hy * hz
            Id = [(hy * hy + hz * hz) / 3, (hx * hx + hz * hz) / 3, (hx * hx + hy * hy) / 3]
        elif t == "cylinder":
            vol = math.pi * radius ** 2 * 2 * half
            Id = [(3 * radius ** 2 + 4 * half ** 2) / 12] * 2 + [radius ** 2 / 2]
        else:  # capsule: cylinder + two hemispheres
            h = 2 * half
            vc = math.pi * radius ** 2 * h
            vs = 4.0 / 3.0 * math.pi * radius ** 3
            vol = vc + vs
            Izc = vc * radius ** 2 / 2 + vs * 0.4 * radius ** 2
            Ixc = vc * (3 * radius ** 2 + h * h) / 12 + vs * (0.4 * radius ** 2 + h * h / 4 + 3 * h * radius / 8)
            Id = [Ixc / vol, Ixc / vol, Izc / vol]
        if "mass" in a:
            mass = float(a["mass"])
        else:
            mass = float(a.get("density", _DEFAULT_DENSITY)) * vol
        R = _quat_to_mat(q)
        I = [[sum(R[i][k] * mass * Id[k] * R[j][k] for k in range(3)) for j in range(3)] for i in range(3)]

        def add(b: ArticulationBuilder, body: int, t=t, pos=pos, q=q, R=R):
            if not collide:
                return
            if t == "sphere":
                b.add_sphere(body, radius, pos)
            elif t == "capsule":
                ez = [R[0][2], R[1][2], R[2][2]]
                b.add_capsule(body, radius, [pos[i] - half * ez[i] for i in range(3)],
                              [pos[i] + half * ez[i] for i in range(3)])
            elif t == "box":
                b.add_box(body, size[:3], pos, q)
            else:  # cylinder rims
                for zs in (-half, half):
                    for k in range(8):
                        ang = 2 * math.pi * k / 8
                        loc = [radius * math.cos(ang), radius * math.sin(ang), zs]
                        b.points.append(dict(body=body, pos=[pos[i] + sum(R[i][m] * loc[m] for m in range(3)) for i in range(3)],
                                             radius=0.0))
                b.geoms.append((body, "cylinder", (radius, half), pos, q))

        return {"mass": mass, "com": pos, "inertia": I, "add": add}

    # ---------------------------------------------------------------- actuators
    def _actuators(self, el, b: ArticulationBuilder):
        joint_names = [j["name"] for j in b.joints]
        for m in el:
            if m.tag != "motor":
                raise ValueError(f"MJCF: unsupported actuator <{m.tag}> (only <motor>)")
            a = self._attrs(m, "motor", None)
            for k in a:
                if k not in {"joint", "gear", "ctrlrange", "ctrllimited", "name", "class", "forcerange",
                             "forcelimited"} and k not in _IGNORED_ATTRS:
                    raise ValueError(f"MJCF: unsupported attribute '{k}' on <motor>")
            if a.get("forcelimited", "false") == "true":
                raise ValueError("MJCF: unsupported attribute 'forcelimited' on <motor>")
            jn = a.get("joint")
            if jn not in joint_names:
                raise ValueError(f"MJCF: <motor> names joint {jn!r}, which is not in the model")
            gear = _floats(a.get("gear", "1"))[0]
            rng = _floats(a.get("ctrlrange", "0 0"), 2, "ctrlrange")
            lim = a.get("ctrllimited", "auto")
            lim = (rng[0] < rng[1] and self.autolimits) if lim == "auto" else lim == "true"
            b.add_actuator(joint_names.index(jn), gear=gear, ctrl_range=rng if lim else None, name=a.get("name"))


def _quat_from_z(d):
    n = math.sqrt(sum(x * x for x in d))
    z = [x / n for x in d]
    c = z[2]
    if c < -1 + 1e-12:
        return (0.0, 1.0, 0.0, 0.0)
    axis = [-z[1], z[0], 0.0]  # (0,0,1) x z
    s = math.sqrt(sum(x * x for x in axis))
    if s < 1e-12:
        return (1.0, 0.0, 0.0, 0.0)
    return _axis_quat(axis, math.atan2(s, c))


def _combine_inertia(geoms):
    """Mass, centre of mass and inertia (about it) of several geoms (parallel-axis theorem)."""
    mass = sum(g["mass"] for g in geoms)
    if mass <= 0:
        return 0.0, [0.0, 0.0, 0.0], [[0.0] * 3 for _ in range(3)]
    com = [sum(g["mass"] * g["com"][i] for g in geoms) / mass for i in range(3)]
    I = [[0.0] * 3 for _ in range(3)]
    for g in geoms:
        d = [g["com"][i] - com[i] for i in range(3)]
        dd = sum(x * x for x in d)
        for i in range(3):
            for j in range(3):
                I[i][j] += g["inertia"][i][j] + g["mass"] * ((dd if i == j else 0.0) - d[i] * d[j])
    return mass, com, I


def xml_root(source: str | os.PathLike) -> ET.Element:
    """The root element of an XML model given as a file path or as the XML text itself."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or an XML string, got {type(source).__name__}")
    text = str(source)
    if text.lstrip().startswith("<"):
        return ET.fromstring(text)
    if not os.path.exists(text):
        raise ValueError(f"source: no such file {text!r}")
    return ET.parse(text).getroot()


def load_mjcf(source: str | os.PathLike, dtype=torch.float32, device="cpu", pairs="auto", ke=1e4, kd=10.0,
              mu=0.5, friction_smoothing=0.01, contact_smoothing=0.0, limit_ke=1e4, limit_kd=10.0,
              limit_smoothing=0.0, return_info: bool = False):
    """Build an :class:`ArticulatedModel` from an MJCF file path or XML string (subset: module doc).

    Contact/limit parameters are diffvc's penalty parameters (MJCF's solref/solimp are ignored).
    Returns the model, or ``(model, info)`` with ``return_info`` (``info['timestep']`` etc.).
    """
    root = xml_root(source)
    p = _Parser(root, dtype, device, dict(ke=ke, kd=kd, mu=mu, friction_smoothing=friction_smoothing,
                                          contact_smoothing=contact_smoothing, limit_ke=limit_ke,
                                          limit_kd=limit_kd, limit_smoothing=limit_smoothing))
    b = p.parse()
    model: ArticulatedModel = b.build(dtype=dtype, device=device, pairs=pairs,
                                      integrator="rk4" if p.info["integrator"] == "RK4" else "euler")
    return (model, p.info) if return_info else model
