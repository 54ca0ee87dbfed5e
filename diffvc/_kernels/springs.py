"""Warp kernels for mass-spring systems, and a fused multi-step segment with a hand-run adjoint.

One step is two launches: :func:`spring_forces` (one thread per spring, accumulating forces with
atomics) and :func:`~diffvc._kernels.particles.integrate_particles` (one thread per particle:
forces + gravity + penalty plane contact with friction, semi-implicit Euler), reused as is.

:func:`spring_segment` runs K such steps entirely in Warp as ONE torch autograd node, and its
backward launches hand-written adjoint kernels of each step in reverse
(:func:`spring_forces_adjoint`, :func:`integrate_particles_adjoint`) with two rolling adjoint
rows. With ``recompute=True`` the node keeps only its inputs: its forward pass runs through two
ping-pong state rows, and its backward re-runs the steps into per-step rows (in blocks of
~sqrt(K) from block-start states when K > 128), in scratch rows of a :class:`SegmentWorkspace`
that the segments of a rollout share. Per-step torch-autograd overhead disappears, which is what
makes long rollouts faster than a raw Warp loop with ``wp.Tape``, at a memory that does not grow
with the steps per segment. On the CPU the segment's spring kernels are native loops over every
spring (:data:`SPRING_NATIVE`: the same arithmetic in SIMD lanes, equal bit for bit to
:func:`spring_forces` and :func:`spring_forces_adjoint`, ~2x faster); elsewhere the Warp kernels.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import torch

from .bridge import _SCALAR, _Recorded, _Replay, _desc, _stream, kernel_guard, to_warp, warp_device, wp
from .particles import integrate_particles

LENGTH_EPS2 = 1e-12  # m^2 added under the square root of a spring's length: finite at coincident ends


@wp.kernel
def spring_forces(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    si: wp.array(dtype=wp.int32),
    sj: wp.array(dtype=wp.int32),
    rest: wp.array(dtype=Any),
    ke: wp.array(dtype=Any),
    kd: wp.array(dtype=Any),
    gain: wp.array(dtype=Any),
    act: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
):
    """Spring s joins particles si[s], sj[s]: force ke (l - l0) + kd (dv . u) along u = d / l, with
    actuated rest length l0 = rest (1 + gain act). Accumulated into f (atomics; zero f first)."""
    s = wp.tid()
    i = si[s]
    j = sj[s]
    d = x[j] - x[i]
    r = rest[s]
    one = type(r)(1.0)
    ln = wp.sqrt(wp.dot(d, d) + type(r)(LENGTH_EPS2))
    u = d / ln
    l0 = r * (one + gain[s] * act[s])
    fs = ke[s] * (ln - l0) + kd[s] * wp.dot(v[j] - v[i], u)
    fv = u * fs
    wp.atomic_add(f, i, fv)
    wp.atomic_sub(f, j, fv)


@wp.kernel
def spring_forces_adjoint(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    si: wp.array(dtype=wp.int32),
    sj: wp.array(dtype=wp.int32),
    rest: wp.array(dtype=Any),
    ke: wp.array(dtype=Any),
    kd: wp.array(dtype=Any),
    gain: wp.array(dtype=Any),
    act: wp.array(dtype=Any),
    adj_f: wp.array(dtype=Any),
    adj_x: wp.array(dtype=Any),
    adj_v: wp.array(dtype=Any),
    adj_rest: wp.array(dtype=Any),
    adj_ke: wp.array(dtype=Any),
    adj_kd: wp.array(dtype=Any),
    adj_gain: wp.array(dtype=Any),
    adj_act: wp.array(dtype=Any),
):
    """Hand-written reverse mode of :func:`spring_forces` (the fused segment's backward): from the
    force adjoint ``adj_f`` (N, 3), accumulate the adjoints of x, v (atomics) and of the spring's
    own rest, ke, kd, gain, act (one thread per spring: plain adds). Same values as Warp's
    generated adjoint, without its replay and zero-initialised temporaries."""
    s = wp.tid()
    i = si[s]
    j = sj[s]
    g = adj_f[i] - adj_f[j]  # f_i += fv, f_j -= fv
    d = x[j] - x[i]
    r = rest[s]
    one = type(r)(1.0)
    ln = wp.sqrt(wp.dot(d, d) + type(r)(LENGTH_EPS2))
    u = d / ln
    a = act[s]
    gn = gain[s]
    l0 = r * (one + gn * a)
    vr = v[j] - v[i]
    vu = wp.dot(vr, u)
    k = ke[s]
    c = kd[s]
    fs = k * (ln - l0) + c * vu
    gs = wp.dot(g, u)  # adjoint of fs
    au = g * fs + vr * (gs * c)  # adjoint of u
    gl0 = -gs * k
    gd = (au - u * wp.dot(u, au)) / ln + u * (gs * k)  # through u = d / ln and ln = |d|
    gv = u * (gs * c)
    wp.atomic_add(adj_x, j, gd)
    wp.atomic_sub(adj_x, i, gd)
    wp.atomic_add(adj_v, j, gv)
    wp.atomic_sub(adj_v, i, gv)
    adj_ke[s] = adj_ke[s] + gs * (ln - l0)
    adj_kd[s] = adj_kd[s] + gs * vu
    adj_rest[s] = adj_rest[s] + gl0 * (one + gn * a)
    adj_gain[s] = adj_gain[s] + gl0 * r * a
    adj_act[s] = adj_act[s] + gl0 * r * gn


# --------------------------------------------------------------------------------------------
# the same two kernels as native loops (CPU): one launch runs every spring, LANES at a time
# --------------------------------------------------------------------------------------------

# Written in Warp's language a spring costs ~13 ns forward and ~27 ns in the adjoint on the 2-core
# dev machine (one generated call per thread; every array access goes through its strides); as
# the loops below ~7 and ~13 ns (5,000 springs, float32). In one loop in clang vector types
# (LANES springs per iteration: the gathers of the end points, the arithmetic in SIMD registers,
# the force scatter lane by lane in spring order) the arithmetic is the same, operation for
# operation, and so are the results: the tests compare them bit for bit
# with the Warp kernels. CUDA keeps the Warp kernels (one thread per spring, atomics): these
# natives are launched on the CPU only (dim 1) and compile to nothing elsewhere.
SPRING_LANES = 8

_SPRING_NATIVE_HEAD = r"""
#if defined(__CUDA_ARCH__)
return;  // never launched on CUDA (spring_kernels)
#elif !defined(__clang__)
#error "the native spring loops need clang's vector extensions (Warp compiles CPU kernels with clang)"
#else
typedef REAL vr __attribute__((ext_vector_type(LANES)));
typedef REAL vu_ __attribute__((ext_vector_type(LANES), aligned(sizeof(REAL))));  // unaligned rows
const REAL* X = (const REAL*)x.data;
const REAL* V = (const REAL*)v.data;
const int* I = si.data;
const int* J = sj.data;
const REAL* R = (const REAL*)rest.data;
const REAL* KE = (const REAL*)ke.data;
const REAL* KD = (const REAL*)kd.data;
const REAL* GN = (const REAL*)gain.data;
const REAL* AC = (const REAL*)act.data;
const int n = si.shape[0];
for (int s0 = 0; s0 < n; s0 += LANES) {
    // lanes past the last spring repeat it; they are computed and never stored
    const int m = n - s0 < LANES ? n - s0 : LANES;
    int ii[LANES], jj[LANES];
    vr dx, dy, dz, wx, wy, wz, r, k, c, gn, a;
    for (int l = 0; l < LANES; ++l) {
        const int s = s0 + (l < m ? l : m - 1);
        const int i = 3 * I[s], j = 3 * J[s];
        ii[l] = i;
        jj[l] = j;
        dx[l] = X[j] - X[i];
        dy[l] = X[j + 1] - X[i + 1];
        dz[l] = X[j + 2] - X[i + 2];
        wx[l] = V[j] - V[i];
        wy[l] = V[j + 1] - V[i + 1];
        wz[l] = V[j + 2] - V[i + 2];
    }
    if (m == LANES) {  // the springs' own parameters: one vector load each
        r = *(const vu_*)(R + s0);
        k = *(const vu_*)(KE + s0);
        c = *(const vu_*)(KD + s0);
        gn = *(const vu_*)(GN + s0);
        a = *(const vu_*)(AC + s0);
    } else {
        for (int l = 0; l < LANES; ++l) {
            const int s = s0 + (l < m ? l : m - 1);
            r[l] = R[s];
            k[l] = KE[s];
            c[l] = KD[s];
            gn[l] = GN[s];
            a[l] = AC[s];
        }
    }
    // as spring_forces: ln = sqrt(d.d + eps), u = d / ln, l0 = rest (1 + gain act)
    const vr ln = __builtin_elementwise_sqrt(dx * dx + dy * dy + dz * dz + (REAL)EPS2);
    const vr ux = dx / ln, uy = dy / ln, uz = dz / ln;
    const vr l0 = r * ((REAL)1.0 + gn * a);
    const vr vu = wx * ux + wy * uy + wz * uz;
    const vr fs = k * (ln - l0) + c * vu;
"""

_SPRING_NATIVE_FORWARD = _SPRING_NATIVE_HEAD + r"""
    REAL* F = (REAL*)f.data;
    const vr fx = ux * fs, fy = uy * fs, fz = uz * fs;
    for (int l = 0; l < m; ++l) {
        const int i = ii[l], j = jj[l];
        F[i] += fx[l];
        F[i + 1] += fy[l];
        F[i + 2] += fz[l];
        F[j] -= fx[l];
        F[j + 1] -= fy[l];
        F[j + 2] -= fz[l];
    }
}
return;
#endif
"""

_SPRING_NATIVE_ADJOINT = _SPRING_NATIVE_HEAD + r"""
    const REAL* AF = (const REAL*)g_f.data;
    REAL* AX = (REAL*)g_x.data;
    REAL* AV = (REAL*)g_v.data;
    vr gx, gy, gz;
    for (int l = 0; l < LANES; ++l) {
        const int i = ii[l], j = jj[l];
        gx[l] = AF[i] - AF[j];
        gy[l] = AF[i + 1] - AF[j + 1];
        gz[l] = AF[i + 2] - AF[j + 2];
    }
    // as spring_forces_adjoint
    const vr gs = gx * ux + gy * uy + gz * uz;
    const vr gsc = gs * c;
    const vr aux = gx * fs + wx * gsc, auy = gy * fs + wy * gsc, auz = gz * fs + wz * gsc;
    const vr gl0 = -gs * k;
    const vr uau = ux * aux + uy * auy + uz * auz;
    const vr gsk = gs * k;
    const vr gdx = (aux - ux * uau) / ln + ux * gsk;
    const vr gdy = (auy - uy * uau) / ln + uy * gsk;
    const vr gdz = (auz - uz * uau) / ln + uz * gsk;
    const vr gvx = ux * gsc, gvy = uy * gsc, gvz = uz * gsc;
    const vr d_ke = gs * (ln - l0), d_kd = gs * vu, d_rest = gl0 * ((REAL)1.0 + gn * a);
    const vr d_gain = gl0 * r * a, d_act = gl0 * r * gn;
    REAL* ARE = (REAL*)g_rest.data;
    REAL* AKE = (REAL*)g_ke.data;
    REAL* AKD = (REAL*)g_kd.data;
    REAL* AGN = (REAL*)g_gain.data;
    REAL* AAC = (REAL*)g_act.data;
    for (int l = 0; l < m; ++l) {
        const int i = ii[l], j = jj[l];
        AX[j] += gdx[l];
        AX[j + 1] += gdy[l];
        AX[j + 2] += gdz[l];
        AX[i] -= gdx[l];
        AX[i + 1] -= gdy[l];
        AX[i + 2] -= gdz[l];
        AV[j] += gvx[l];
        AV[j + 1] += gvy[l];
        AV[j + 2] += gvz[l];
        AV[i] -= gvx[l];
        AV[i + 1] -= gvy[l];
        AV[i + 2] -= gvz[l];
    }
    if (m == LANES) {  // each spring's own adjoints: one vector add each
        *(vu_*)(AKE + s0) += d_ke;
        *(vu_*)(AKD + s0) += d_kd;
        *(vu_*)(ARE + s0) += d_rest;
        *(vu_*)(AGN + s0) += d_gain;
        *(vu_*)(AAC + s0) += d_act;
    } else {
        for (int l = 0; l < m; ++l) {
            const int s = s0 + l;
            AKE[s] += d_ke[l];
            AKD[s] += d_kd[l];
            ARE[s] += d_rest[l];
            AGN[s] += d_gain[l];
            AAC[s] += d_act[l];
        }
    }
}
return;
#endif
"""


def _spring_native(src: str, real: str) -> str:
    return src.replace("REAL", real).replace("LANES", str(SPRING_LANES)).replace("EPS2", repr(LENGTH_EPS2))


def _native_spring_kernels(real: str, scalar, vec):
    """``(forward, adjoint)`` native spring kernels for one precision (``real``: the C type of
    ``scalar``, ``vec`` the matching Warp vector): same arguments as :func:`spring_forces` and
    :func:`spring_forces_adjoint`, launched with dim 1 on contiguous arrays."""
    arr = {"v": wp.array(dtype=vec), "s": wp.array(dtype=scalar), "i": wp.array(dtype=wp.int32)}
    fwd_args = dict(x="v", v="v", si="i", sj="i", rest="s", ke="s", kd="s", gain="s", act="s", f="v")
    adj_args = dict(x="v", v="v", si="i", sj="i", rest="s", ke="s", kd="s", gain="s", act="s", adj_f="v",
                    adj_x="v", adj_v="v", adj_rest="s", adj_ke="s", adj_kd="s", adj_gain="s", adj_act="s")

    def typed(fn, args, name=None):
        # annotations as objects (this module's string annotations cannot see the closure)
        fn.__annotations__ = {k: arr[t] for k, t in args.items()}
        if name is not None:  # the kernel's name in Warp's cache and in profiles
            fn.__name__ = fn.__qualname__ = name
        return fn

    def forces_loop(x, v, si, sj, rest, ke, kd, gain, act, f):
        ...

    def adjoint_loop(x, v, si, sj, rest, ke, kd, gain, act, g_f, g_x, g_v, g_rest, g_ke, g_kd, g_gain, g_act):
        ...  # (not adj_*: Warp gives that name to the adjoints of a function's arguments)

    forces_loop = wp.func_native(_spring_native(_SPRING_NATIVE_FORWARD, real))(typed(forces_loop, fwd_args))
    adjoint_loop = wp.func_native(_spring_native(_SPRING_NATIVE_ADJOINT, real))(
        typed(adjoint_loop, {k.replace("adj_", "g_"): t for k, t in adj_args.items()}))

    def forces(x, v, si, sj, rest, ke, kd, gain, act, f):
        forces_loop(x, v, si, sj, rest, ke, kd, gain, act, f)

    def adjoint(x, v, si, sj, rest, ke, kd, gain, act, adj_f, adj_x, adj_v, adj_rest, adj_ke, adj_kd, adj_gain,
                adj_act):
        adjoint_loop(x, v, si, sj, rest, ke, kd, gain, act, adj_f, adj_x, adj_v, adj_rest, adj_ke, adj_kd, adj_gain,
                     adj_act)

    tag = "f64" if real == "double" else "f32"
    return (wp.kernel(typed(forces, fwd_args, f"spring_forces_native_{tag}"), enable_backward=False, module="unique"),
            wp.kernel(typed(adjoint, adj_args, f"spring_forces_adjoint_native_{tag}"), enable_backward=False,
                      module="unique"))


# (forward, adjoint) native kernels by torch dtype
SPRING_NATIVE = {torch.float32: _native_spring_kernels("float", wp.float32, wp.vec3),
                 torch.float64: _native_spring_kernels("double", wp.float64, wp.vec3d)}


def spring_kernels(dtype: torch.dtype, device: torch.device, n_springs: int) -> tuple:
    """``(forward, adjoint, dim)`` spring kernels of a fused segment over ``n_springs`` springs and
    their launch dim: the native loops (dim 1) on the CPU in float32 and float64, the Warp kernels
    (one thread per spring) elsewhere."""
    if torch.device(device).type == "cpu" and dtype in SPRING_NATIVE:
        fwd, adj = SPRING_NATIVE[dtype]
        return fwd, adj, 1
    return spring_forces, spring_forces_adjoint, n_springs


@wp.kernel(enable_backward=False)
def integrate_particles_adjoint(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    inv_mass: wp.array(dtype=Any),
    radius: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
    dt: Any,
    adj_x_out: wp.array(dtype=Any),
    adj_v_out: wp.array(dtype=Any),
    adj_x: wp.array(dtype=Any),
    adj_v: wp.array(dtype=Any),
    adj_f: wp.array(dtype=Any),
    adj_inv_mass: wp.array(dtype=Any),
    adj_radius: wp.array(dtype=Any),
    adj_planes: wp.array(dtype=Any),
    adj_contact: wp.array(dtype=Any),
    adj_gravity: wp.array(dtype=Any),
):
    """Hand-written reverse mode of :func:`~diffvc._kernels.particles.integrate_particles` (the
    fused segment's backward): from the adjoints of the step's outputs ``adj_x_out``,
    ``adj_v_out``, accumulate those of x, v, the applied force ``f`` and the particle's inverse
    mass and radius (one thread per particle: plain adds), and of the planes, contact parameters
    and gravity (atomics). Same values as Warp's generated adjoint, including its one-sided
    conventions (contact only when c < 0; the min/max branches of the normal force), without its
    replay of the forward pass and zero-initialised temporaries (measured ~7x faster on CPU)."""
    i = wp.tid()
    xi = x[i]
    vi = v[i]
    w = inv_mass[i]
    zero = w - w
    ax1 = adj_x_out[i]
    gv1 = adj_v_out[i] + ax1 * dt  # adjoint of v1 (x_out = x + v1 dt, v_out = v1)
    gt = gv1 * dt  # adjoint of (f w + g)
    gf = gt * w  # adjoint of the total force
    ke = contact[0]
    kd = contact[1]
    mu = contact[2]
    vs = contact[3]
    ri = radius[i]
    ftot = f[i]
    gx = ax1
    gv = gv1
    gr = zero
    for k in range(planes.shape[0]):
        p = planes[k]
        n = type(xi)(p[0], p[1], p[2])
        c = wp.dot(n, xi) - p[3] - ri
        if c < zero:
            vn = wp.dot(n, vi)
            fraw = -(ke * c + kd * wp.min(vn, zero))
            fn = wp.max(fraw, zero)
            vt = vi - n * vn
            den = wp.sqrt(wp.dot(vt, vt) + vs * vs)
            s = mu * fn / den
            ftot = ftot + n * fn - vt * s
            # reverse of f = n fn - vt s, s = mu fn / den, den = sqrt(|vt|^2 + vs^2)
            gn = gf * fn
            gfn = wp.dot(gf, n)
            gs = -wp.dot(gf, vt)
            gfn = gfn + gs * mu / den
            gq = -gs * s / (den * den) * type(w)(0.5)  # adjoint of |vt|^2 + vs^2
            gvt = gf * (-s) + vt * (gq + gq)
            gmu = gs * fn / den
            gvs = (vs + vs) * gq
            gv = gv + gvt
            gvn = -wp.dot(gvt, n)
            gn = gn - gvt * vn
            gke = zero
            gkd = zero
            gc = zero
            if fraw > zero:  # max(fraw, 0): the gradient goes to fraw only when it is the larger
                gke = -gfn * c
                gc = -gfn * ke
                if vn < zero:  # min(vn, 0): to vn only when it is the smaller
                    gkd = -gfn * vn
                    gvn = gvn - gfn * kd
            gn = gn + vi * gvn
            gv = gv + n * gvn
            gn = gn + xi * gc
            gx = gx + n * gc
            gr = gr - gc
            wp.atomic_add(adj_planes, k, type(p)(gn[0], gn[1], gn[2], -gc))
            wp.atomic_add(adj_contact, 0, gke)
            wp.atomic_add(adj_contact, 1, gkd)
            wp.atomic_add(adj_contact, 2, gmu)
            wp.atomic_add(adj_contact, 3, gvs)
    adj_x[i] = adj_x[i] + gx
    adj_v[i] = adj_v[i] + gv
    adj_f[i] = adj_f[i] + gf
    adj_inv_mass[i] = adj_inv_mass[i] + wp.dot(gt, ftot)
    adj_radius[i] = adj_radius[i] + gr
    if w > zero:  # kinematic particles feel no gravity
        wp.atomic_add(adj_gravity, 0, gt)


# --------------------------------------------------------------------------------------------
# fused segment
# --------------------------------------------------------------------------------------------

def _zeros(shape, like: torch.Tensor) -> torch.Tensor:
    """Zeroed buffer; on the CPU from calloc'd NumPy memory (pages zeroed lazily, on the thread that
    first touches them) instead of torch's multi-threaded fill, whose idle OpenMP workers spin
    and take the core from the single-threaded Warp launches that follow (measured: with torch's
    two threads the fused 1,000-step lattice used 2.5 s of CPU against 1.0 s with one)."""
    if like.device.type != "cpu":
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    import numpy as np

    return torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=like.dtype).numpy().dtype))


BLOCK_MIN = 128  # steps; a recomputed segment longer than this re-runs its backward in blocks


def block_length(K: int) -> int:
    """Steps per block of a recomputed segment's backward: all ``K`` up to :data:`BLOCK_MIN`,
    else ``ceil(sqrt(K))`` (states kept at block starts, one block's steps stored at a time)."""
    return K if K <= BLOCK_MIN else int(math.ceil(math.sqrt(K)))


class SegmentWorkspace:
    """Scratch buffers of fused spring segments, allocated once and reused by every segment that
    is given the same workspace (:func:`~diffvc.physics.rollout` makes one per rollout): the
    ping-pong state rows of a recomputed forward pass, the per-step rows a backward block
    recomputes into, the block-start checkpoints and the two rolling adjoint rows. A segment
    only uses it while it runs (forward, or its backward), so segments run one after another
    (as autograd runs them) may share one. Without a workspace, a segment allocates its own."""

    def __init__(self):
        self._bufs: dict = {}
        self.plans: dict = {}  # recorded launches by (dtype, device, N, S, planes, dt, adjoint)

    def get(self, name: str, rows: int, row_shape: tuple, like: torch.Tensor, kind: str | None):
        """(tensor of >= ``rows`` rows of ``row_shape``, its row descriptors), reused while the row
        shape, dtype and device match."""
        ent = self._bufs.get(name)
        if (ent is None or ent[0].shape[0] < rows or tuple(ent[0].shape[1:]) != tuple(row_shape)
                or ent[0].dtype != like.dtype or ent[0].device != like.device):
            t = torch.empty((rows, *row_shape), dtype=like.dtype, device=like.device)
            ent = (t, _rows(t, kind))
            self._bufs[name] = ent
        return ent

    def clear(self) -> None:
        self._bufs.clear()
        self.plans.clear()


class _Call:
    """A recorded launch, called directly on the CPU with the data pointers of its array
    arguments rewritten in place (:class:`~diffvc._kernels.bridge._Replay`); elsewhere through
    ``set_param_at_index_from_ctype`` and ``launch``."""

    __slots__ = ("r", "cmd", "stream", "fwd", "adj")

    def __init__(self, cmd, dev):
        self.cmd = cmd
        self.r = _Replay(_Recorded(cmd, None), dev)
        self.stream = _stream(dev)
        self.fwd = self.r.ptrs if self.r.direct else None
        self.adj = self.r.adj_ptrs if self.r.direct else None

    def set(self, i: int, desc, adjoint: bool = False) -> None:
        if self.fwd is not None:
            (self.adj if adjoint else self.fwd)[i].value = desc.data
        else:
            self.cmd.set_param_at_index_from_ctype(i, desc, adjoint=adjoint)

    def run(self) -> None:
        if self.fwd is not None:
            self.r.fn(*self.r.call_args)
        elif self.stream is not None:
            self.cmd.launch(stream=self.stream)
        else:
            self.cmd.launch()


class _RowFill:
    """Sets a row (a force accumulator, or a rolling adjoint row) to zero or to a fixed tensor
    before a step: a memset / memmove on the CPU, a torch op elsewhere."""

    def __init__(self, t: torch.Tensor, descs: list, nrows: int = 1, src: torch.Tensor | None = None):
        self.t, self.descs, self.src, self.nrows = t, descs, src, nrows
        self.cpu = t.device.type == "cpu"
        self.nbytes = nrows * t[0].numel() * t.element_size()
        self.src_ptr = None if src is None else src.data_ptr()

    def __call__(self, r: int) -> None:
        if self.cpu:
            if self.src_ptr is None:
                ctypes.memset(self.descs[r].data, 0, self.nbytes)
            else:
                ctypes.memmove(self.descs[r].data, self.src_ptr, self.nbytes)
        elif self.src is None:
            self.t[r:r + self.nrows].zero_()
        else:
            self.t[r].copy_(self.src)


class _Plan:
    """The launches of a spring segment (forward and, when asked, adjoint) pointed at the model's
    constant arguments, and the per-step rewrites of their row pointers. The recorded launches
    are kept in the workspace and re-pointed for the next segment of the same shapes (recording
    a launch costs ~100 us; re-pointing its arrays, a few)."""

    def __init__(self, K, dt, inputs, ws: SegmentWorkspace, adjoint_grads=None):
        x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external = inputs
        self.K, self.n, self.s = K, x0.shape[0], si.shape[0]
        self.dev = dev = x0.device
        self.like = x0
        self.fdt = _SCALAR[x0.dtype](dt)
        self.act_rows = _rows(act, None)
        self.act_held = act.shape[0] == 1
        self.external = external
        key = (x0.dtype, str(dev), self.n, self.s, planes.shape[0], float(dt), adjoint_grads is not None)
        calls = ws.plans.get(key)
        if calls is None:
            spring, integ = _model_args(inputs)
            wx, wv, wf, wa = to_warp(x0, "vec"), to_warp(v0, "vec"), to_warp(x0, "vec"), to_warp(act[0])
            sf, sfa, s_dim = spring_kernels(x0.dtype, dev, self.s)
            calls = [_Call(_record(sf, s_dim, [wx, wv, *spring, wa], [wf], dev), dev),
                     _Call(_record(integrate_particles, self.n, [wx, wv, *integ, wf, self.fdt], [wx, wv], dev), dev)]
            if adjoint_grads is not None:
                g_im, g_rad, g_pl, g_c, g_g, g_rest, g_ke, g_kd, g_gain, g_act = adjoint_grads
                calls.append(_Call(_record(sfa, s_dim,
                                           [wx, wv, *spring, wa, wf, wx, wv, to_warp(g_rest), to_warp(g_ke),
                                            to_warp(g_kd), to_warp(g_gain), to_warp(g_act[0])], [], dev), dev))
                calls.append(_Call(_record(integrate_particles_adjoint, self.n,
                                           [wx, wv, *integ, wf, self.fdt, wx, wv, wx, wv, wx, to_warp(g_im),
                                            to_warp(g_rad), to_warp(g_pl, "vec"), to_warp(g_c),
                                            to_warp(g_g.reshape(1, 3), "vec")], [], dev), dev))
            ws.plans[key] = calls
        self.lf, self.li = calls[0], calls[1]
        # this segment's constant arrays (and gradient arrays), in place of the recorded ones
        spring = [(si, None), (sj, None), (rest, None), (ke, None), (kd, None), (gain, None)]
        integ = [(inv_mass, None), (radius, None), (planes, "vec"), (contact, None), (gravity.reshape(1, 3), "vec")]
        for c in (self.lf,) + ((calls[2],) if adjoint_grads is not None else ()):
            for i, (t, kind) in enumerate(spring):
                c.set(2 + i, _desc(t, kind))
        for c in (self.li,) + ((calls[3],) if adjoint_grads is not None else ()):
            for i, (t, kind) in enumerate(integ):
                c.set(2 + i, _desc(t, kind))
        if adjoint_grads is not None:
            g_im, g_rad, g_pl, g_c, g_g, g_rest, g_ke, g_kd, g_gain, g_act = adjoint_grads
            self.lfa, self.lia = calls[2], calls[3]
            for i, t in enumerate((g_rest, g_ke, g_kd, g_gain)):
                self.lfa.set(12 + i, _desc(t, None))
            for i, (t, kind) in enumerate(((g_im, None), (g_rad, None), (g_pl, "vec"), (g_c, None),
                                           (g_g.reshape(1, 3), "vec"))):
                self.lia.set(14 + i, _desc(t, kind))
            self.gact_rows = _rows(g_act, None)

    def act(self, k):
        return self.act_rows[0 if self.act_held else k]

    def forward(self, k0, xd, vd, fd, fill):
        """Steps ``k0 .. k0 + len(fd) - 1``: step ``j`` reads ``xd[j], vd[j]``, accumulates forces in
        ``fd[j]`` (set by ``fill(j)`` first when given) and writes ``xd[j + 1], vd[j + 1]``."""
        lf, li = self.lf, self.li
        for j in range(len(fd)):
            if fill is not None:
                fill(j)
            lf.set(0, xd[j])
            lf.set(1, vd[j])
            lf.set(8, self.act(k0 + j))
            lf.set(9, fd[j])
            lf.run()
            li.set(0, xd[j])
            li.set(1, vd[j])
            li.set(7, fd[j])
            li.set(9, xd[j + 1])
            li.set(10, vd[j + 1])
            li.run()


class _Adjoint:
    """The rolling adjoint of a segment: the adjoints of the current and the next state in two
    rows (with the force adjoint beside each), so memory does not grow with the steps."""

    def __init__(self, plan: _Plan, ws: SegmentWorkspace, gx, gv, gxs, gvs, g_ext):
        n = plan.n
        self.plan = plan
        self.R, self.rd = ws.get("adjoint", 6, (n, 3), plan.like, "vec")  # rows 3p + (x, v, f), p = parity
        self.fill = _RowFill(self.R, self.rd, nrows=3)
        self.gxs, self.gvs, self.g_ext = gxs, gvs, g_ext
        K = plan.K
        p = K % 2
        self.fill(3 * p)
        for r, g, gs in ((3 * p, gx, gxs), (3 * p + 1, gv, gvs)):
            if g is not None:
                self.R[r] += g
            if gs is not None:
                self.R[r] += gs[K - 1]

    def steps(self, k0, xd, vd, fd):
        """Adjoints of steps ``k0 + len(fd) - 1`` down to ``k0``, their primal rows as in
        :meth:`_Plan.forward`."""
        plan, R, rd = self.plan, self.R, self.rd
        lia, lfa = plan.lia, plan.lfa
        for j in range(len(fd) - 1, -1, -1):
            k = k0 + j
            p, q = 3 * (k % 2), 3 * ((k + 1) % 2)
            self.fill(p)
            if k >= 1:
                if self.gxs is not None:
                    R[p] += self.gxs[k - 1]
                if self.gvs is not None:
                    R[p + 1] += self.gvs[k - 1]
            lia.set(0, xd[j])
            lia.set(1, vd[j])
            lia.set(7, fd[j])
            lia.set(9, rd[q])
            lia.set(10, rd[q + 1])
            lia.set(11, rd[p])
            lia.set(12, rd[p + 1])
            lia.set(13, rd[p + 2])
            lia.run()
            lfa.set(0, xd[j])
            lfa.set(1, vd[j])
            lfa.set(8, plan.act(k))
            lfa.set(9, rd[p + 2])
            lfa.set(10, rd[p])
            lfa.set(11, rd[p + 1])
            lfa.set(16, plan.gact_rows[0 if plan.act_held else k])
            lfa.run()
            if self.g_ext is not None:
                self.g_ext += R[p + 2]

    def result(self):
        return self.R[0].clone(), self.R[1].clone()


class _SpringSegment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, K, dt, recompute, return_all, ws, x0, v0, inv_mass, radius, planes, contact, gravity,
                si, sj, rest, ke, kd, gain, act, external):
        ctx.K, ctx.dt, ctx.recompute, ctx.return_all = K, dt, recompute, return_all
        inputs = (x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external)
        ctx.ws = ws
        ws = ws or SegmentWorkspace()
        plan = _Plan(K, dt, inputs, ws)
        n = x0.shape[0]
        if not recompute or return_all:
            # every state kept (the node's tape, or the states it returns); forces per step only
            # when they are the tape
            xs = torch.empty((K + 1, n, 3), dtype=x0.dtype, device=x0.device)
            vs = torch.empty((K + 1, n, 3), dtype=x0.dtype, device=x0.device)
            xs[0] = x0
            vs[0] = v0
            xd, vd = _rows(xs, "vec"), _rows(vs, "vec")
            if recompute:
                ft, fd1 = ws.get("f", 1, (n, 3), x0, "vec")
                fill, fd = _RowFill(ft, fd1, src=external), [fd1[0]] * K
                fill = _IndexFill(fill)
            else:
                fs = torch.empty((K, n, 3), dtype=x0.dtype, device=x0.device)
                fd = _rows(fs, "vec")
                fill = _RowFill(fs, fd, src=external)
            plan.forward(0, xd, vd, fd, fill)
            ctx.bufs = None if recompute else (xs, vs, fs, xd, vd, fd)
            x_out, v_out = xs[K].clone(), vs[K].clone()
        else:
            # checkpoint: run through two ping-pong rows and keep nothing but the inputs
            xt, xr = ws.get("x", 2, (n, 3), x0, "vec")
            vt, vr = ws.get("v", 2, (n, 3), x0, "vec")
            ft, fr = ws.get("f", 1, (n, 3), x0, "vec")
            xt[0] = x0
            vt[0] = v0
            xd = [xr[j % 2] for j in range(K + 1)]
            vd = [vr[j % 2] for j in range(K + 1)]
            plan.forward(0, xd, vd, [fr[0]] * K, _IndexFill(_RowFill(ft, fr, src=external)))
            ctx.bufs = None
            x_out, v_out = xt[K % 2].clone(), vt[K % 2].clone()
        ctx.save_for_backward(*inputs)
        if return_all:
            return x_out, v_out, xs[1:], vs[1:]
        return x_out, v_out

    @staticmethod
    def backward(ctx, gx, gv, gxs=None, gvs=None):
        inputs = ctx.saved_tensors
        K, dt = ctx.K, ctx.dt
        ws = ctx.ws or SegmentWorkspace()
        x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external = inputs
        grads = tuple(torch.zeros_like(t) for t in (inv_mass, radius, planes, contact, gravity, rest, ke, kd, gain,
                                                    act))
        plan = _Plan(K, dt, inputs, ws, adjoint_grads=grads)
        g_ext = torch.zeros_like(external) if external is not None and ctx.needs_input_grad[19] else None
        adj = _Adjoint(plan, ws, gx, gv, gxs, gvs, g_ext)
        n = x0.shape[0]
        if ctx.bufs is not None:
            xs, vs, fs, xd, vd, fd = ctx.bufs
            adj.steps(0, xd, vd, fd)
        else:
            m = block_length(K)
            nb = -(-K // m)
            bt, bxd = ws.get("x", m + 1, (n, 3), x0, "vec")
            vt_, bvd = ws.get("v", m + 1, (n, 3), x0, "vec")
            ft, bfd = ws.get("f", m, (n, 3), x0, "vec")
            fill = _RowFill(ft, bfd, src=external)
            if nb == 1:
                bt[0] = x0
                vt_[0] = v0
                cxd, cvd = bxd[:1], bvd[:1]
            else:
                ct, cxd = ws.get("cx", nb, (n, 3), x0, "vec")
                cv, cvd = ws.get("cv", nb, (n, 3), x0, "vec")
                ct[0] = x0
                cv[0] = v0
                # states at the block starts (through the block rows 1 and 2 as ping-pong rows)
                for b in range(nb - 1):
                    L = m
                    xd = [cxd[b]] + [bxd[1 + j % 2] for j in range(L - 1)] + [cxd[b + 1]]
                    vd = [cvd[b]] + [bvd[1 + j % 2] for j in range(L - 1)] + [cvd[b + 1]]
                    plan.forward(b * m, xd, vd, [bfd[0]] * L, _IndexFill(fill))
            for b in range(nb - 1, -1, -1):
                L = min(m, K - b * m)
                xd = [cxd[b]] + bxd[1:L + 1]
                vd = [cvd[b]] + bvd[1:L + 1]
                fd = bfd[:L]
                plan.forward(b * m, xd, vd, fd, fill)
                adj.steps(b * m, xd, vd, fd)
        ctx.bufs = None
        gx0, gv0 = adj.result()
        g_im, g_rad, g_pl, g_c, g_g, g_rest, g_ke, g_kd, g_gain, g_act = grads
        return (None, None, None, None, None, gx0, gv0, g_im, g_rad, g_pl, g_c, g_g, None, None, g_rest, g_ke, g_kd,
                g_gain, g_act, g_ext)


class _IndexFill:
    """A fill for a force row list that repeats one row: always fills row 0."""

    __slots__ = ("fill",)

    def __init__(self, fill):
        self.fill = fill

    def __call__(self, j):
        self.fill(0)


def _rows(t: torch.Tensor, kind: str | None) -> list:
    """Warp argument structs (``array_t``) for each row ``t[r]`` of a contiguous tensor, made by
    pointer arithmetic on one template (about 1 us each, against ~7 us for a Warp view)."""
    base = to_warp(t[0], kind).__ctype__()
    step = t[0].numel() * t.element_size()
    out = []
    for r in range(t.shape[0]):
        c = type(base).from_buffer_copy(base)
        c.data = base.data + r * step
        out.append(c)
    return out


def _record(kernel, dim, inputs, outputs, dev, adj_inputs=None, adj_outputs=None):
    """A recorded launch (``wp.Launch``): replaying it after swapping pointer arguments costs a few
    microseconds, against ~100 us of argument packing for each ``wp.launch`` on this CPU."""
    kw = {} if adj_inputs is None else dict(adj_inputs=adj_inputs, adj_outputs=adj_outputs, adjoint=True)
    with kernel_guard(kernel):
        return wp.launch(kernel, dim=dim, inputs=inputs, outputs=outputs, device=warp_device(dev),
                         record_tape=False, record_cmd=True, **kw)


def _model_args(inputs):
    x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external = inputs
    spring = [to_warp(si), to_warp(sj), to_warp(rest), to_warp(ke), to_warp(kd), to_warp(gain)]
    integ = [to_warp(inv_mass), to_warp(radius), to_warp(planes, "vec"), to_warp(contact),
             to_warp(gravity.reshape(1, 3), "vec")]
    return spring, integ


def spring_segment(K: int, dt: float, x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd,
                   gain, act, external=None, recompute: bool = False, return_all: bool = False,
                   workspace: SegmentWorkspace | None = None):
    """K fused mass-spring steps as one differentiable torch op (see module doc).

    act: (1, S) held for every step or (K, S) per step. external: optional (N, 3) force held over
    the segment. Returns (x_K, v_K) and, if ``return_all``, the stacked states of steps 1..K
    ``(K, N, 3)`` twice.

    ``recompute``: keep only the inputs; the forward pass runs through two state rows, and the
    backward re-runs the steps -- all of them into per-step rows up to :data:`BLOCK_MIN` steps,
    else in blocks of :func:`block_length` steps from states kept at the block starts (one more
    forward pass, memory O(sqrt K) states). ``workspace``: a :class:`SegmentWorkspace` for those
    scratch rows, shared by the segments of a rollout (allocated once instead of per segment).
    The adjoint holds two rolling rows, not one per step. Gradients are exact in every mode.
    """
    if workspace is not None and not isinstance(workspace, SegmentWorkspace):
        raise TypeError(f"workspace must be a SegmentWorkspace or None, got {type(workspace).__name__}")
    if not recompute and not (torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad
            for t in (x0, v0, inv_mass, radius, planes, contact, gravity, rest, ke, kd, gain, act, external))):
        recompute = True  # no backward will run: the forward goes through two rows, keeping no tape
    return _SpringSegment.apply(K, dt, recompute, return_all, workspace, x0.contiguous(), v0.contiguous(),
                                inv_mass.contiguous(), radius.contiguous(), planes.contiguous(), contact.contiguous(),
                                gravity.contiguous(), si.contiguous(), sj.contiguous(), rest.contiguous(),
                                ke.contiguous(), kd.contiguous(), gain.contiguous(), act.contiguous(),
                                None if external is None else external.contiguous())


# --------------------------------------------------------------------------------------------
# fused segment with a closed-loop MLP controller (DiffTaichi's mass-spring robot controller)
# --------------------------------------------------------------------------------------------

@wp.kernel
def ctrl_center(x: wp.array(dtype=Any), inv_n: Any, center: wp.array(dtype=Any)):
    """center[0] += x[i] / n (zero center first)."""
    i = wp.tid()
    wp.atomic_add(center, 0, x[i] * inv_n)


@wp.kernel
def ctrl_features(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    center: wp.array(dtype=Any),
    goal: wp.array(dtype=Any),
    waves: wp.array(dtype=Any),
    scale: Any,
    n_waves: int,
    n: int,
    dims: int,
    feat: wp.array(dtype=Any),
):
    """Controller input j: the n_waves time features, then per particle its first ``dims``
    coordinates' offsets from the centre and velocities (times ``scale``), then goal - centre."""
    j = wp.tid()
    c0 = center[0]
    if j < n_waves:
        feat[j] = waves[j]
    else:
        k = j - n_waves
        if k < 2 * dims * n:
            p = k // (2 * dims)
            c = k - p * 2 * dims
            if c < dims:
                feat[j] = (x[p][c] - c0[c]) * scale
            else:
                feat[j] = v[p][c - dims] * scale
        else:
            c = k - 2 * dims * n
            feat[j] = goal[0][c] - c0[c]


@wp.kernel
def ctrl_dense(W: wp.array2d(dtype=Any), b: wp.array(dtype=Any), inp: wp.array(dtype=Any), n_in: int,
               pre: wp.array(dtype=Any)):
    """pre[i] += W[i, j] inp[j] (+ b[i] once): one thread per weight (zero pre first)."""
    t = wp.tid()
    i = t // n_in
    j = t - i * n_in
    w = W[i, j] * inp[j]
    if j == 0:
        w = w + b[i]
    wp.atomic_add(pre, i, w)


@wp.kernel
def ctrl_tanh(pre: wp.array(dtype=Any), out: wp.array(dtype=Any)):
    i = wp.tid()
    out[i] = wp.tanh(pre[i])


class _ControlledSegment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, K, dt, dims, scale, x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd,
                gain, waves, goal, w1, b1, w2, b2):
        inputs = (x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, waves, goal,
                  w1, b1, w2, b2)
        ctx.K, ctx.dt, ctx.dims, ctx.scale = K, dt, dims, scale
        bufs = _ctrl_run(K, dt, dims, scale, inputs, None)
        ctx.save_for_backward(*inputs)
        ctx.bufs = bufs
        return bufs["x"][K].clone(), bufs["v"][K].clone(), bufs["act"].clone()

    @staticmethod
    def backward(ctx, gx, gv, gact):
        inputs = ctx.saved_tensors
        grads = _ctrl_run(ctx.K, ctx.dt, ctx.dims, ctx.scale, inputs, (ctx.bufs, gx, gv, gact))
        ctx.bufs = None
        return (None, None, None, None, *grads)


def _ctrl_run(K, dt, dims, scale, inputs, adjoint):
    """Forward (adjoint None): all K steps, returning the per-step buffers. Adjoint
    ((bufs, gx, gv, gact)): the adjoint launches of every step in reverse, returning the input
    gradients. Eight recorded launches per step, replayed with swapped pointers."""
    (x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, waves, goal,
     w1, b1, w2, b2) = inputs
    n, s = x0.shape[0], si.shape[0]
    H, n_in = w1.shape
    n_waves = waves.shape[1]
    dev = x0.device
    fdt = _SCALAR[x0.dtype]
    if adjoint is None:
        z = lambda *shape: _zeros(shape, x0)  # noqa: E731
        bufs = {"x": z(K + 1, n, 3), "v": z(K + 1, n, 3), "f": z(K, n, 3), "center": z(K, 1, 3),
                "feat": z(K, n_in), "pre1": z(K, H), "h": z(K, H), "pre2": z(K, s), "act": z(K, s)}
        bufs["x"][0] = x0
        bufs["v"][0] = v0
    else:
        bufs, gx, gv, gact = adjoint
        adj = {k: _zeros(t.shape, t) for k, t in bufs.items()}
        if gx is not None:
            adj["x"][K] += gx
        if gv is not None:
            adj["v"][K] += gv
        if gact is not None:
            adj["act"] += gact
    rows = {k: _rows(t, "vec" if k in ("x", "v", "f", "center") else None) for k, t in bufs.items()}
    wrows = _rows(waves, None)
    spring = [to_warp(si), to_warp(sj), to_warp(rest), to_warp(ke), to_warp(kd), to_warp(gain)]
    integ = [to_warp(inv_mass), to_warp(radius), to_warp(planes, "vec"), to_warp(contact),
             to_warp(gravity.reshape(1, 3), "vec")]
    sf, sfa, s_dim = spring_kernels(x0.dtype, dev, s)
    wgoal = to_warp(goal.reshape(1, 3), "vec")
    W1, B1, W2, B2 = to_warp(w1), to_warp(b1), to_warp(w2), to_warp(b2)
    b0 = {k: to_warp(t[0], "vec" if k in ("x", "v", "f", "center") else None) for k, t in bufs.items()}
    wv0 = to_warp(waves[0])
    args = {
        "center": (ctrl_center, n, [b0["x"], fdt(1.0 / n)], [b0["center"]]),
        "feat": (ctrl_features, n_in, [b0["x"], b0["v"], b0["center"], wgoal, wv0, fdt(scale), n_waves, n, dims],
                 [b0["feat"]]),
        "l1": (ctrl_dense, H * n_in, [W1, B1, b0["feat"], n_in], [b0["pre1"]]),
        "t1": (ctrl_tanh, H, [b0["pre1"]], [b0["h"]]),
        "l2": (ctrl_dense, s * H, [W2, B2, b0["h"], H], [b0["pre2"]]),
        "t2": (ctrl_tanh, s, [b0["pre2"]], [b0["act"]]),
        "sf": (sf, s_dim, [b0["x"], b0["v"], *spring, b0["act"]], [b0["f"]]),
        "ip": (integrate_particles, n, [b0["x"], b0["v"], *integ, b0["f"], fdt(dt)], [b0["x"], b0["v"]]),
    }
    # per launch: (argument index, buffer name, step offset) of the per-step pointers
    slots = {
        "center": [(0, "x", 0), (2, "center", 0)],
        "feat": [(0, "x", 0), (1, "v", 0), (2, "center", 0), (4, "waves", 0), (9, "feat", 0)],
        "l1": [(2, "feat", 0), (4, "pre1", 0)],
        "t1": [(0, "pre1", 0), (1, "h", 0)],
        "l2": [(2, "h", 0), (4, "pre2", 0)],
        "t2": [(0, "pre2", 0), (1, "act", 0)],
        "sf": [(0, "x", 0), (1, "v", 0), (8, "act", 0), (9, "f", 0)],
        "ip": [(0, "x", 0), (1, "v", 0), (7, "f", 0), (9, "x", 1), (10, "v", 1)],
    }
    order = list(args)
    if adjoint is None:
        plan = []
        for name in order:
            call = _Call(_record(*args[name], dev), dev)
            plan.append((call, [call.r.setter(idx, wrows if buf == "waves" else rows[buf][off:])
                                for idx, buf, off in slots[name]]))
        for k in range(K):
            for call, setters in plan:
                for f in setters:
                    f(k)
                call.run()
        return bufs
    g = {"inv_mass": inv_mass, "radius": radius, "planes": planes, "contact": contact, "gravity": gravity,
         "rest": rest, "ke": ke, "kd": kd, "gain": gain, "goal": goal, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    g = {k: torch.zeros_like(t) for k, t in g.items()}
    arows = {k: _rows(t, "vec" if k in ("x", "v", "f", "center") else None) for k, t in adj.items()}
    a0 = {k: to_warp(t[0], "vec" if k in ("x", "v", "f", "center") else None) for k, t in adj.items()}
    a_spring = [None, None, to_warp(g["rest"]), to_warp(g["ke"]), to_warp(g["kd"]), to_warp(g["gain"])]
    a_integ = [to_warp(g["inv_mass"]), to_warp(g["radius"]), to_warp(g["planes"], "vec"), to_warp(g["contact"]),
               to_warp(g["gravity"].reshape(1, 3), "vec")]
    wz = torch.zeros_like(waves[0])
    adj_args = {
        "center": ([a0["x"], fdt(1.0 / n)], [a0["center"]]),
        "feat": ([a0["x"], a0["v"], a0["center"], to_warp(g["goal"].reshape(1, 3), "vec"), to_warp(wz), fdt(scale),
                  n_waves, n, dims], [a0["feat"]]),
        "l1": ([to_warp(g["w1"]), to_warp(g["b1"]), a0["feat"], n_in], [a0["pre1"]]),
        "t1": ([a0["pre1"]], [a0["h"]]),
        "l2": ([to_warp(g["w2"]), to_warp(g["b2"]), a0["h"], H], [a0["pre2"]]),
        "t2": ([a0["pre2"]], [a0["act"]]),
    }
    plan = []
    for name in reversed(order):
        if name == "sf":  # hand-written adjoints of the physics step (no replay of the forward)
            call = _Call(_record(sfa, s_dim, [b0["x"], b0["v"], *spring, b0["act"], a0["f"], a0["x"],
                                                            a0["v"], *a_spring[2:], a0["act"]], [], dev), dev)
            setters = [call.r.setter(0, rows["x"]), call.r.setter(1, rows["v"]), call.r.setter(8, rows["act"]),
                       call.r.setter(9, arows["f"]), call.r.setter(10, arows["x"]), call.r.setter(11, arows["v"]),
                       call.r.setter(16, arows["act"])]
        elif name == "ip":
            call = _Call(_record(integrate_particles_adjoint, n,
                                 [b0["x"], b0["v"], *integ, b0["f"], fdt(dt), a0["x"], a0["v"], a0["x"], a0["v"],
                                  a0["f"], *a_integ], [], dev), dev)
            setters = [call.r.setter(0, rows["x"]), call.r.setter(1, rows["v"]), call.r.setter(7, rows["f"]),
                       call.r.setter(9, arows["x"][1:]), call.r.setter(10, arows["v"][1:]),
                       call.r.setter(11, arows["x"]), call.r.setter(12, arows["v"]), call.r.setter(13, arows["f"])]
        else:
            call = _Call(_record(*args[name], dev, adj_inputs=adj_args[name][0], adj_outputs=adj_args[name][1]), dev)
            setters = []
            for idx, buf, off in slots[name]:
                if buf == "waves":
                    setters.append(call.r.setter(idx, wrows))
                    continue
                setters.append(call.r.setter(idx, rows[buf][off:]))
                setters.append(call.r.setter(idx, arows[buf][off:], adjoint=True))
        plan.append((call, setters))
    for k in range(K - 1, -1, -1):
        for call, setters in plan:
            for f in setters:
                f(k)
            call.run()
    return (adj["x"][0], adj["v"][0], g["inv_mass"], g["radius"], g["planes"], g["contact"], g["gravity"], None, None,
            g["rest"], g["ke"], g["kd"], g["gain"], None, g["goal"], g["w1"], g["b1"], g["w2"], g["b2"])


def controlled_spring_segment(K: int, dt: float, dims: int, scale: float, x0, v0, inv_mass, radius, planes, contact,
                              gravity, si, sj, rest, ke, kd, gain, waves, goal, w1, b1, w2, b2):
    """K mass-spring steps under a closed-loop two-layer tanh controller, fused in Warp as one
    differentiable torch op (eight recorded launches per step, adjoints replayed in reverse).

    Step k: features [waves[k] (n_waves,), scale (x_p - c)[:dims], scale v_p[:dims] per particle,
    (goal - c)[:dims]] with c the particles' mean position; act = tanh(w2 tanh(w1 feat + b1) +
    b2) (S,) drives the springs' rest lengths; then one :func:`spring_forces` +
    ``integrate_particles`` step. waves: (K, n_waves); goal: (3,); w1: (H, n_waves + 2 dims N +
    dims); w2: (S, H). Returns (x_K, v_K, act (K, S)). Gradients reach x0, v0, the model tensors,
    goal and the controller's weights (not waves).
    """
    c = lambda t: t.contiguous()  # noqa: E731
    return _ControlledSegment.apply(int(K), float(dt), int(dims), float(scale), c(x0), c(v0), c(inv_mass), c(radius),
                                    c(planes), c(contact), c(gravity), c(si), c(sj), c(rest), c(ke), c(kd), c(gain),
                                    c(waves), c(goal), c(w1), c(b1), c(w2), c(b2))
