"""Warp kernels for particles: semi-implicit Euler with gravity and penalty plane contact, and a
fused multi-step segment of it (:func:`particle_segment`: all steps in one launch)."""

from __future__ import annotations

from typing import Any

import torch

from .bridge import fast_launch, vec, wp


MAX_PLANES = 8  # contact planes per model (unrolled in the step kernel)


@wp.func
def plane_contact_force(n: Any, c: Any, v: Any, ke: Any, kd: Any, mu: Any, vs: Any):
    """Penalty contact force on a point at signed distance ``c`` (< 0: penetrating) from a plane
    with unit normal ``n``, moving with velocity ``v``.

    normal:   f_n = -(ke * c + kd * min(v.n, 0))  (only when c < 0; pushes out, damps approach)
    friction: regularised Coulomb, f_t = -mu * |f_n| * v_t / sqrt(|v_t|^2 + vs^2)
    ``vs`` (m/s) is the friction smoothing velocity: below it friction is viscous, above Coulomb.
    """
    zero = c - c
    f = n * zero
    if c < zero:
        vn = wp.dot(n, v)
        fn = -(ke * c + kd * wp.min(vn, zero))
        fn = wp.max(fn, zero)
        vt = v - n * vn
        denom = wp.sqrt(wp.dot(vt, vt) + vs * vs)
        f = n * fn - vt * (mu * fn / denom)
    return f


@wp.func
def particle_velocity(xi: Any, vi: Any, w: Any, ri: Any, planes: wp.array(dtype=Any), contact: wp.array(dtype=Any),
                      g: Any, fi: Any, dt: Any):
    """The velocity after one semi-implicit Euler step of a particle at ``xi`` with velocity
    ``vi``, inverse mass ``w``, radius ``ri``, external force ``fi`` and gravity ``g`` (its
    position after the step is ``xi + v1 dt``). Shared by :func:`integrate_particles` and
    :func:`particle_rollout`, so both run the same arithmetic."""
    f = fi
    ke = contact[0]
    kd = contact[1]
    mu = contact[2]
    vs = contact[3]
    n_planes = planes.shape[0]
    # constant trip count: Warp unrolls the loop, which keeps the adjoint of the accumulated
    # force exact (reassigning a variable inside a dynamic loop is not differentiable in Warp)
    for k in range(MAX_PLANES):
        if k < n_planes:
            p = planes[k]
            n = type(xi)(p[0], p[1], p[2])
            c = wp.dot(n, xi) - p[3] - ri
            f = f + plane_contact_force(n, c, vi, ke, kd, mu, vs)
    # kinematic particles (inverse mass 0) feel no gravity
    ga = g * wp.where(w > w - w, type(w)(1.0), type(w)(0.0))
    return vi + (f * w + ga) * dt


@wp.kernel
def integrate_particles(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    inv_mass: wp.array(dtype=Any),
    radius: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    external: wp.array(dtype=Any),
    dt: Any,
    x_out: wp.array(dtype=Any),
    v_out: wp.array(dtype=Any),
):
    """One semi-implicit Euler step. planes[k] = (nx, ny, nz, d): plane n.x = d, free side n.x > d.
    contact = (ke, kd, mu, friction_smoothing). external[i]: extra force on particle i (N)."""
    i = wp.tid()
    xi = x[i]
    v1 = particle_velocity(xi, v[i], inv_mass[i], radius[i], planes, contact, gravity[0], external[i], dt)
    x_out[i] = xi + v1 * dt
    v_out[i] = v1


@wp.kernel
def particle_rollout(
    x0: wp.array(dtype=Any),
    v0: wp.array(dtype=Any),
    inv_mass: wp.array(dtype=Any),
    radius: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    external: wp.array(dtype=Any),
    dt: Any,
    steps: int,
    xs: wp.array2d(dtype=Any),
    vs: wp.array2d(dtype=Any),
):
    """``steps`` :func:`integrate_particles` steps in one launch: thread i runs particle i through
    all of them (particles do not interact), writing row k of ``xs``/``vs`` ``(steps + 1, N)``
    with the state after k steps (row 0: x0, v0). The step's state lives in the rows, never in a
    loop-carried variable, so Warp's generated adjoint of the dynamic loop (the body replayed in
    reverse from the stored rows) is the exact reverse of the steps."""
    i = wp.tid()
    xs[0, i] = x0[i]
    vs[0, i] = v0[i]
    w = inv_mass[i]
    ri = radius[i]
    g = gravity[0]
    fi = external[i]
    for k in range(steps):
        xi = xs[k, i]
        v1 = particle_velocity(xi, vs[k, i], w, ri, planes, contact, g, fi, dt)
        xs[k + 1, i] = xi + v1 * dt
        vs[k + 1, i] = v1


class _ParticleSegment(torch.autograd.Function):
    """K steps of :func:`particle_rollout` as one autograd node: forward one launch, backward one
    launch of its Warp-generated adjoint (no per-step launches or replays)."""

    @staticmethod
    def forward(ctx, K, dt, recompute, return_all, *inputs):
        xs, vs = _rollout(K, dt, inputs)
        ctx.K, ctx.dt, ctx.return_all = K, dt, return_all
        ctx.save_for_backward(*inputs, *(() if recompute else (xs, vs)))
        finals = (xs[K].clone(), vs[K].clone())
        if return_all:
            return (*finals, xs[1:], vs[1:])
        return finals

    @staticmethod
    def backward(ctx, gx, gv, gxs=None, gvs=None):
        saved = ctx.saved_tensors
        inputs = saved[:len(_KINDS)]
        K, dt = ctx.K, ctx.dt
        xs, vs = saved[len(_KINDS):] if len(saved) > len(_KINDS) else _rollout(K, dt, inputs)
        adj_xs, adj_vs = torch.zeros_like(xs), torch.zeros_like(vs)
        for a, g_final, g_all in ((adj_xs, gx, gxs), (adj_vs, gv, gvs)):
            if g_final is not None:
                a[K] += g_final
            if g_all is not None:
                a[1:] += g_all
        grads = [torch.zeros_like(t) for t in inputs]
        fast_launch(particle_rollout, xs.shape[1], _args(inputs, dt, K, xs, vs), xs.device, xs.dtype,
                    adj_args=_args(grads, None, None, adj_xs, adj_vs))
        return (None, None, None, None, *grads)


# layout of particle_segment's tensor inputs: x0, v0, inv_mass, radius, planes, contact, gravity, external
_KINDS = ("vec", "vec", None, None, "vec", None, "vec", "vec")


def _args(inputs, dt, K, xs, vs) -> list:
    return [vec(t) if k else t for t, k in zip(inputs, _KINDS)] + [dt, K, vec(xs), vec(vs)]


def _rollout(K: int, dt: float, inputs):
    x0 = inputs[0]
    xs = torch.empty((K + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    vs = torch.empty_like(xs)
    fast_launch(particle_rollout, x0.shape[0], _args(inputs, float(dt), K, xs, vs), x0.device, x0.dtype)
    return xs, vs


def particle_segment(K: int, dt: float, x0, v0, inv_mass, radius, planes, contact, gravity, external,
                     recompute: bool = False, return_all: bool = False):
    """K :func:`integrate_particles` steps as one differentiable torch op: ONE launch of
    :func:`particle_rollout` forward and one of its adjoint backward (a one-particle step costs
    ~nothing next to the ~10 us a replayed launch per step cost).

    x0, v0, external: (N, 3); planes: (P, 4); gravity: (1, 3); external is held over the segment.
    Returns (x_K, v_K) and, with ``return_all``, the states of steps 1..K ``(K, N, 3)`` twice.
    ``recompute``: keep only the inputs and re-run the K steps at the start of backward (memory
    of the inputs between forward and backward instead of K states). Values and gradients equal
    those of K :func:`integrate_particles` launches (same arithmetic, :func:`particle_velocity`).
    """
    inputs = [t.contiguous() for t in (x0, v0, inv_mass, radius, planes, contact, gravity, external)]
    return _ParticleSegment.apply(int(K), float(dt), bool(recompute), bool(return_all), *inputs)
