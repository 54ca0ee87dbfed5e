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


# --------------------------------------------------------------------------------------------
# fused segment
# --------------------------------------------------------------------------------------------

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
    fs = torch.zeros((K, n, 3), dtype=x0.dtype, device=dev)
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
    ax = torch.zeros_like(xs)
    av = torch.zeros_like(vs)
    af = torch.zeros_like(fs)
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
    lf = _record(spring_forces, s, [wx, wv, *spring, wa], [wf], dev,
                 adj_inputs=[wx, wv, *a_spring, wa], adj_outputs=[wf])
    li = _record(integrate_particles, n, [wx, wv, *integ, wf, fdt], [wx, wv], dev,
                 adj_inputs=[wx, wv, *a_integ, wf, fdt], adj_outputs=[wx, wv])
    stream = _stream(dev)
    for k in range(K - 1, -1, -1):
        for key, c in (("x", xc[k]), ("v", vc[k]), ("f", fc[k]), ("x_out", xc[k + 1]), ("v_out", vc[k + 1])):
            li.set_param_at_index_from_ctype(_IP[key], c)
        for key, c in (("x", axc[k]), ("v", avc[k]), ("f", afc[k]), ("x_out", axc[k + 1]), ("v_out", avc[k + 1])):
            li.set_param_at_index_from_ctype(_IP[key], c, adjoint=True)
        li.launch(stream=stream) if stream is not None else li.launch()
        for key, c in (("x", xc[k]), ("v", vc[k]), ("act", ac[k]), ("f", fc[k])):
            lf.set_param_at_index_from_ctype(_SF[key], c)
        for key, c in (("x", axc[k]), ("v", avc[k]), ("act", aac[k]), ("f", afc[k])):
            lf.set_param_at_index_from_ctype(_SF[key], c, adjoint=True)
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
