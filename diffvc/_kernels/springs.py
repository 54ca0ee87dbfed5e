"""Warp kernels for mass-spring systems, and a fused multi-step segment with a hand-run adjoint.

One step is two launches: :func:`spring_forces` (one thread per spring, accumulating forces with
atomics) and :func:`~diffvc._kernels.particles.integrate_particles` (one thread per particle:
forces + gravity + penalty plane contact with friction, semi-implicit Euler), reused as is.

:func:`spring_segment` runs K such steps entirely in Warp as ONE torch autograd node: the states
of every step live in preallocated buffers, and the backward pass launches the two adjoint kernels
of each step in reverse. With ``recompute=True`` the node keeps only its inputs and re-runs its
forward steps at the start of backward (a checkpoint segment), so memory is that of one segment.
Per-step torch-autograd overhead disappears, which is what makes long rollouts as fast as a raw
Warp loop with ``wp.Tape``.
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import _SCALAR, _stream, kernel_guard, to_warp, warp_device, wp
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


class _SpringSegment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, K, dt, recompute, return_all, x0, v0, inv_mass, radius, planes, contact, gravity,
                si, sj, rest, ke, kd, gain, act, external):
        ctx.K, ctx.dt, ctx.recompute, ctx.return_all = K, dt, recompute, return_all
        inputs = (x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external)
        bufs = _run_forward(K, dt, inputs)
        xs, vs = bufs[0], bufs[1]
        ctx.save_for_backward(*inputs)
        ctx.bufs = None if recompute else bufs
        x_out, v_out = xs[K].clone(), vs[K].clone()
        if return_all:
            return x_out, v_out, xs[1:], vs[1:]
        return x_out, v_out

    @staticmethod
    def backward(ctx, gx, gv, gxs=None, gvs=None):
        inputs = ctx.saved_tensors
        K, dt = ctx.K, ctx.dt
        bufs = ctx.bufs if ctx.bufs is not None else _run_forward(K, dt, inputs)
        grads = _run_adjoint(K, dt, inputs, bufs, gx, gv, gxs, gvs)
        ctx.bufs = None
        return (None, None, None, None, *grads)


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


# argument positions in the two kernels
_SF = {"x": 0, "v": 1, "act": 8, "f": 9}
_IP = {"x": 0, "v": 1, "f": 7, "x_out": 9, "v_out": 10}


def _model_args(inputs):
    x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external = inputs
    spring = [to_warp(si), to_warp(sj), to_warp(rest), to_warp(ke), to_warp(kd), to_warp(gain)]
    integ = [to_warp(inv_mass), to_warp(radius), to_warp(planes, "vec"), to_warp(contact),
             to_warp(gravity.reshape(1, 3), "vec")]
    return spring, integ


def _run_forward(K, dt, inputs):
    x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external = inputs
    n, s = x0.shape[0], si.shape[0]
    dev = x0.device
    xs = torch.empty((K + 1, n, 3), dtype=x0.dtype, device=dev)
    vs = torch.empty((K + 1, n, 3), dtype=x0.dtype, device=dev)
    fs = _zeros((K, n, 3), x0)
    xs[0] = x0
    vs[0] = v0
    if external is not None:
        fs += external  # the force buffers start at the external force; springs add to them
    xc, vc, fc, ac = _rows(xs, "vec"), _rows(vs, "vec"), _rows(fs, "vec"), _rows(act, None)
    if act.shape[0] == 1:
        ac = ac * K
    fdt = _SCALAR[x0.dtype](dt)
    spring, integ = _model_args(inputs)
    wx, wv, wf, wa = to_warp(xs[0], "vec"), to_warp(vs[0], "vec"), to_warp(fs[0], "vec"), to_warp(act[0])
    lf = _record(spring_forces, s, [wx, wv, *spring, wa], [wf], dev)
    li = _record(integrate_particles, n, [wx, wv, *integ, wf, fdt], [wx, wv], dev)
    stream = _stream(dev)
    for k in range(K):
        lf.set_param_at_index_from_ctype(_SF["x"], xc[k])
        lf.set_param_at_index_from_ctype(_SF["v"], vc[k])
        lf.set_param_at_index_from_ctype(_SF["act"], ac[k])
        lf.set_param_at_index_from_ctype(_SF["f"], fc[k])
        lf.launch(stream=stream) if stream is not None else lf.launch()
        li.set_param_at_index_from_ctype(_IP["x"], xc[k])
        li.set_param_at_index_from_ctype(_IP["v"], vc[k])
        li.set_param_at_index_from_ctype(_IP["f"], fc[k])
        li.set_param_at_index_from_ctype(_IP["x_out"], xc[k + 1])
        li.set_param_at_index_from_ctype(_IP["v_out"], vc[k + 1])
        li.launch(stream=stream) if stream is not None else li.launch()
    # keep only pointers into buffers this node owns: under torch.utils.checkpoint the input tensors
    # (act included) are dropped after forward and handed back, recomputed, to backward
    return (xs, vs, fs, xc, vc, fc)


def _run_adjoint(K, dt, inputs, bufs, gx, gv, gxs, gvs):
    x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd, gain, act, external = inputs
    xs, vs, fs, xc, vc, fc = bufs
    ac = _rows(act, None)
    n, s = x0.shape[0], si.shape[0]
    dev = x0.device
    ax = _zeros(xs.shape, xs)
    av = _zeros(vs.shape, vs)
    af = _zeros(fs.shape, fs)
    if gx is not None:
        ax[K] += gx
    if gv is not None:
        av[K] += gv
    if gxs is not None:
        ax[1:] += gxs
    if gvs is not None:
        av[1:] += gvs
    g_im, g_rad, g_pl, g_c, g_g = (torch.zeros_like(t) for t in (inv_mass, radius, planes, contact, gravity))
    g_rest, g_ke, g_kd, g_gain, g_act = (torch.zeros_like(t) for t in (rest, ke, kd, gain, act))
    axc, avc, afc, aac = _rows(ax, "vec"), _rows(av, "vec"), _rows(af, "vec"), _rows(g_act, None)
    if act.shape[0] == 1:
        ac, aac = ac * K, aac * K
    fdt = _SCALAR[x0.dtype](dt)
    spring, integ = _model_args(inputs)
    a_spring = [None, None, to_warp(g_rest), to_warp(g_ke), to_warp(g_kd), to_warp(g_gain)]
    a_integ = [to_warp(g_im), to_warp(g_rad), to_warp(g_pl, "vec"), to_warp(g_c), to_warp(g_g.reshape(1, 3), "vec")]
    wx, wv, wf, wa = to_warp(xs[0], "vec"), to_warp(vs[0], "vec"), to_warp(fs[0], "vec"), to_warp(act[0])
    lf = _record(spring_forces_adjoint, s, [wx, wv, *spring, wa, wf, wx, wv, *a_spring[2:], wa], [], dev)
    li = _record(integrate_particles, n, [wx, wv, *integ, wf, fdt], [wx, wv], dev,
                 adj_inputs=[wx, wv, *a_integ, wf, fdt], adj_outputs=[wx, wv])
    stream = _stream(dev)
    for k in range(K - 1, -1, -1):
        for key, c in (("x", xc[k]), ("v", vc[k]), ("f", fc[k]), ("x_out", xc[k + 1]), ("v_out", vc[k + 1])):
            li.set_param_at_index_from_ctype(_IP[key], c)
        for key, c in (("x", axc[k]), ("v", avc[k]), ("f", afc[k]), ("x_out", axc[k + 1]), ("v_out", avc[k + 1])):
            li.set_param_at_index_from_ctype(_IP[key], c, adjoint=True)
        li.launch(stream=stream) if stream is not None else li.launch()
        for idx, c in ((0, xc[k]), (1, vc[k]), (8, ac[k]), (9, afc[k]), (10, axc[k]), (11, avc[k]), (16, aac[k])):
            lf.set_param_at_index_from_ctype(idx, c)
        lf.launch(stream=stream) if stream is not None else lf.launch()
    g_ext = af.sum(0) if external is not None and external.requires_grad else None
    return (ax[0], av[0], g_im, g_rad, g_pl, g_c, g_g, None, None, g_rest, g_ke, g_kd, g_gain, g_act, g_ext)


def spring_segment(K: int, dt: float, x0, v0, inv_mass, radius, planes, contact, gravity, si, sj, rest, ke, kd,
                   gain, act, external=None, recompute: bool = False, return_all: bool = False):
    """K fused mass-spring steps as one differentiable torch op (see module doc).

    act: (1, S) held for every step or (K, S) per step. external: optional (N, 3) force held over
    the segment. Returns (x_K, v_K) and, if ``return_all``, the stacked states of steps 1..K
    ``(K, N, 3)`` twice.
    """
    return _SpringSegment.apply(K, dt, recompute, return_all, x0.contiguous(), v0.contiguous(), inv_mass.contiguous(),
                                radius.contiguous(), planes.contiguous(), contact.contiguous(), gravity.contiguous(),
                                si, sj, rest.contiguous(), ke.contiguous(), kd.contiguous(), gain.contiguous(),
                                act.contiguous(), None if external is None else external.contiguous())


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
        "sf": (spring_forces, s, [b0["x"], b0["v"], *spring, b0["act"]], [b0["f"]]),
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
    stream = _stream(dev)
    order = list(args)
    if adjoint is None:
        rec = {k: _record(*args[k], dev) for k in order}
        for k in range(K):
            for name in order:
                lr = rec[name]
                for idx, buf, off in slots[name]:
                    lr.set_param_at_index_from_ctype(idx, wrows[k] if buf == "waves" else rows[buf][k + off])
                lr.launch(stream=stream) if stream is not None else lr.launch()
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
        "sf": ([a0["x"], a0["v"], *a_spring, a0["act"]], [a0["f"]]),
        "ip": ([a0["x"], a0["v"], *a_integ, a0["f"], fdt(dt)], [a0["x"], a0["v"]]),
    }
    rec = {k: _record(*args[k], dev, adj_inputs=adj_args[k][0], adj_outputs=adj_args[k][1]) for k in order}
    for k in range(K - 1, -1, -1):
        for name in reversed(order):
            lr = rec[name]
            for idx, buf, off in slots[name]:
                if buf == "waves":
                    lr.set_param_at_index_from_ctype(idx, wrows[k])
                    continue
                lr.set_param_at_index_from_ctype(idx, rows[buf][k + off])
                lr.set_param_at_index_from_ctype(idx, arows[buf][k + off], adjoint=True)
            lr.launch(stream=stream) if stream is not None else lr.launch()
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
                                    c(planes), c(contact), c(gravity), si, sj, c(rest), c(ke), c(kd), c(gain),
                                    c(waves), c(goal), c(w1), c(b1), c(w2), c(b2))
