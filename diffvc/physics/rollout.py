"""Rolling a simulator out over time: checkpointing, truncation, controllers, substeps, and
forward-mode sensitivities.

A simulator is a transition ``q_{t+1} = S(q_t)``. :func:`rollout` takes either

* a **model** following the simulator contract (:mod:`diffvc.physics`): an object with
  ``model.step(state, dt, control=None) -> state``; ``dt`` is then given to :func:`rollout`.
  If the model also has ``segment(state, dt, n, control=None, recompute=False,
  return_all=False) -> (state, states)`` (a fused multi-step segment, e.g.
  :class:`~diffvc.physics.SpringModel`) rollout uses it; ``backend="torch"`` rolls out the
  model's plain-torch twin ``model.step_torch`` instead (for forward mode and reference runs);
* or any callable ``step(state) -> state`` (``step(state, control) -> state`` with a controller),
  e.g. a closure or a learned step.

States are frozen dataclasses of tensors (like :class:`~diffvc.physics.ParticleState`), a tensor,
or a tuple of tensors. Any tensor in the state, in the model, or in a controller module may
require grad.

Memory (reverse mode). By default (``checkpoint_every="auto"``) rollouts longer than 128 frames
checkpoint every ``ceil(sqrt(steps))`` frames. Beyond 2,048 frames they checkpoint on two levels:
for a dataclass model without a fused segment, outer segments of ``T^(2/3)`` frames re-run in
backward with checkpoints every ``T^(1/3)``; for a model with a fused segment (e.g.
:class:`~diffvc.physics.SpringModel`), outer segments of ``T^(2/3)`` frames, each of which re-runs
its backward in blocks of ~``T^(1/3)`` steps from states it keeps at the block starts. A model
with a fused segment recomputes its segments (all segments of a rollout share one scratch
workspace, ``model.segment_workspace()``, and the adjoint keeps two rolling rows, so nothing is
allocated per segment or per step), and a dataclass model without one runs each segment as a
single autograd node that keeps only its inputs (:class:`_ModelSegment`: no per-step
bookkeeping), so the peak memory of a 10,000-step rollout stays at or below that of a 100-step
one on both paths (bench/rollout_memory.py, default paths).
``checkpoint_every=None`` keeps the full tape. Without checkpointing the autograd tape keeps
every intermediate of every step. ``checkpoint_every=k`` keeps only every k-th frame's state and recomputes a segment's steps
in the backward pass (``torch.utils.checkpoint``, non-reentrant, so tensors captured by closures
and controller modules receive gradients and Warp ``kernel_op`` steps are recomputed like any
other op). The recomputation runs the same deterministic ops on the same inputs, so gradients are
equal to the full tape's (tests: 1e-6 relative). Tensor memory drops from O(T) to O(T/k + k)
states, but torch's non-reentrant checkpoint still keeps every step's autograd nodes and one
small holder per saved tensor: about 20 KB per ``spring_step`` (measured, bench/rollout_memory),
so for small states the saving is modest (216 particles, 10,000 steps: 366 -> 212 MB); a fused
segment keeps nothing per step. With a fused segment and no controller, whole
checkpoint segments run as one node; with a controller, each frame's substeps run fused with the
control held.

Truncation. ``truncate=h`` detaches the state every h frames (truncated backpropagation through
time): the gradient of a loss at frame t reaches states back to frame ``h * floor(t / h)`` only,
while tensors captured by the step (model parameters, controller weights) still collect the
gradient contributions of every segment. It bounds exploding gradients over long horizons at the
price of a biased gradient.

Forward mode. :func:`rollout_jvp` pushes tangents of a few parameters forward with the state
(``torch.func.jvp``), cheaper than reverse mode when parameters are few and outputs many, and
with no tape at all (memory O(1) in T). Warp kernels have no forward mode, so forward mode runs
over the plain-torch twins (``backend="torch"``), which compute the same function; a Warp
``kernel_op`` inside raises an error saying so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
import torch.utils.checkpoint as _ckpt

__all__ = ["step", "rollout", "rollout_jvp", "flatten_state", "unflatten_state", "auto_checkpoint"]


# --------------------------------------------------------------------------------------------
# states as flat tuples of tensors (what checkpointing and autograd.Functions need)
# --------------------------------------------------------------------------------------------

def flatten_state(state) -> tuple[list[torch.Tensor], Any]:
    """Split a state into its tensors and a spec that :func:`unflatten_state` rebuilds it from.

    Supported: a tensor, a tuple/list of states, or a dataclass whose fields are states or
    non-tensor values (kept in the spec).
    """
    if isinstance(state, torch.Tensor):
        return [state], ("t",)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        tensors, specs = [], []
        for f in dataclasses.fields(state):
            v = getattr(state, f.name)
            if isinstance(v, torch.Tensor) or dataclasses.is_dataclass(v) or isinstance(v, (tuple, list)):
                ts, sp = flatten_state(v)
                tensors += ts
                specs.append((f.name, len(ts), sp))
            else:
                specs.append((f.name, None, v))
        return tensors, ("d", type(state), specs)
    if isinstance(state, (tuple, list)):
        tensors, specs = [], []
        for v in state:
            ts, sp = flatten_state(v)
            tensors += ts
            specs.append((len(ts), sp))
        return tensors, ("s", type(state), specs)
    raise TypeError(f"state must be a tensor, a tuple of tensors or a dataclass of tensors, got {type(state).__name__}")


def unflatten_state(tensors: Sequence[torch.Tensor], spec):
    """Inverse of :func:`flatten_state`: ``tensors`` (as many as the spec holds) placed back
    into the state structure ``spec`` describes."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list or tuple of tensors (from flatten_state), got {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
    n = _spec_count(spec)
    if n != len(tensors):
        raise ValueError(f"tensors: the spec holds {n} tensors, got {len(tensors)}")
    return _unflatten(tensors, spec)


def _spec_count(spec) -> int:
    """Number of tensors a :func:`flatten_state` spec holds (ValueError for anything else)."""
    try:
        kind = spec[0] if isinstance(spec, tuple) else None
        if kind == "t" and len(spec) == 1:
            return 1
        if kind == "d" and len(spec) == 3:
            return sum(_spec_count(sp) for _, n, sp in spec[2] if n is not None)
        if kind == "s" and len(spec) == 3:
            return sum(_spec_count(sp) for _, sp in spec[2])
    except (TypeError, ValueError, IndexError):
        pass
    raise ValueError(f"spec must be the spec returned by flatten_state, got {type(spec).__name__}")


def _unflatten(tensors: Sequence[torch.Tensor], spec):
    kind = spec[0]
    if kind == "t":
        return tensors[0]
    if kind == "d":
        _, cls, specs = spec
        kw, i = {}, 0
        for name, n, sp in specs:
            if n is None:
                kw[name] = sp
            else:
                kw[name] = _unflatten(tensors[i:i + n], sp)
                i += n
        return cls(**kw)
    _, cls, specs = spec
    out, i = [], 0
    for n, sp in specs:
        out.append(_unflatten(tensors[i:i + n], sp))
        i += n
    return cls(out) if cls in (tuple, list) else cls(*out)


def _detach(state):
    ts, spec = flatten_state(state)
    return _unflatten([t.detach() for t in ts], spec)


def _functorch_active() -> bool:
    try:
        return torch._C._functorch.maybe_current_level() is not None
    except AttributeError:  # pragma: no cover - private API moved
        return False


# --------------------------------------------------------------------------------------------
# rollout
# --------------------------------------------------------------------------------------------

AUTO_CHECKPOINT_MIN = 128  # frames; longer differentiable rollouts checkpoint by default
AUTO_TWO_LEVEL_MIN = 2048  # frames; longer ones checkpoint on two levels


def auto_checkpoint(steps: int) -> int | None:
    """The default ``checkpoint_every`` of a rollout of ``steps`` frames: ``None`` (full tape) up
    to :data:`AUTO_CHECKPOINT_MIN` frames, else ``ceil(sqrt(steps))`` -- about sqrt(T) stored
    states plus one recomputed segment's tape, so the peak memory of a long rollout stays near
    that of a short one (bench/rollout_memory.py)."""
    if steps <= AUTO_CHECKPOINT_MIN:
        return None
    return int(-(-steps ** 0.5 // 1))


class _ModelSegment(torch.autograd.Function):
    """``n`` frames of a model's steps as one autograd node that stores only its inputs (state and
    the model's tensors) and re-runs the frames under autograd in backward. Unlike torch's
    non-reentrant checkpoint it keeps no per-step autograd bookkeeping (measured ~20-40 KB per
    step), so memory does not grow with the number of steps inside a segment."""

    @staticmethod
    def forward(ctx, run, n_state, n_model, *tensors):
        ctx.run, ctx.n_state, ctx.n_model = run, n_state, n_model
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            out = run(tensors[:n_state], tensors[n_state:n_state + n_model])
        return tuple(t.clone() if any(t is u for u in tensors) else t for t in out)

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved]
        with torch.enable_grad():
            out = ctx.run(inputs[:ctx.n_state], inputs[ctx.n_state:ctx.n_state + ctx.n_model])
        pairs = [(o, g) for o, g in zip(out, grads) if g is not None and o.requires_grad]
        wants = [t for t in inputs if t.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], wants, [g for _, g in pairs], allow_unused=True) \
            if pairs and wants else [None] * len(wants)
        it = iter(got)
        return (None, None, None, *[next(it) if t.requires_grad else None for t in inputs])


def _model_tensors(model):
    """(tensors, rebuild) for a dataclass model whose fields are tensors or plain values, else None."""
    if not (dataclasses.is_dataclass(model) and not isinstance(model, type)):
        return None
    try:
        tensors, spec = flatten_state(model)
    except TypeError:
        return None
    return tensors, (lambda ts, _spec=spec: _unflatten(list(ts), _spec))


def _check_int(name: str, value, minimum: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


def _check_dt(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (float(dt) > 0) or dt == float("inf"):
        raise ValueError(f"dt must be a finite number > 0 (seconds), got {dt!r}")
    return float(dt)


def step(model, state, dt: float, control=None):
    """One step of any simulator that follows the contract: ``model.step(state, dt, control)``.

    Args:
        model: a simulator model (:class:`~diffvc.physics.ParticleModel`,
            :class:`~diffvc.physics.SpringModel`, :class:`~diffvc.physics.RigidBodyModel`,
            :class:`~diffvc.physics.FEMModel`, ... or a third party's).
        state: the model's state dataclass.
        dt: time step in seconds (> 0).
        control: the model's control for this step (see its ``step`` docstring), or ``None``.
    """
    fn = getattr(model, "step", None)
    if not callable(fn):
        raise TypeError(f"model must follow the simulator contract (a step(state, dt, control=None) method); "
                        f"{type(model).__name__} has none")
    return fn(state, _check_dt(dt), control)


def _as_step(model, dt, backend, control):
    """(step(state, control=None), fused(state, n, control, recompute, return_all) or None)."""
    if backend not in ("warp", "torch"):
        raise ValueError(f"backend must be 'warp' or 'torch', got {backend!r}")
    if callable(getattr(model, "step", None)):
        dt = _check_dt(dt)
        if backend == "torch":
            twin = getattr(model, "step_torch", None)
            if not callable(twin):
                raise TypeError(f"backend='torch': {type(model).__name__} has no step_torch twin")
            fn, seg = twin, None
        else:
            fn, seg = model.step, getattr(model, "segment", None)

        def stepper(st, u=None):
            return fn(st, dt, control if u is None else u)

        if not callable(seg):
            return stepper, None
        held = control
        # one scratch workspace for every segment of this rollout, when the model's segment takes
        # one (allocated once instead of per segment, forward and backward)
        ws = {}
        make_ws = getattr(model, "segment_workspace", None)
        if callable(make_ws):
            ws["workspace"] = make_ws()

        def fused(st, n, recompute=False, return_all=False, control=None):
            return seg(st, dt, n, control=control if control is not None else held, recompute=recompute,
                       return_all=return_all, **ws)

        return stepper, fused
    if not callable(model):
        raise TypeError(f"model must follow the simulator contract (model.step(state, dt, control)) or be a "
                        f"callable step(state), got {type(model).__name__}")
    if dt is not None or backend != "warp":
        raise ValueError("dt and backend apply to a model; a callable step(state) carries its own")
    if control is not None:
        return (lambda st, u=None: model(st, control if u is None else u)), None
    return model, None


def rollout(
    model,
    state,
    steps: int,
    *,
    dt: float | None = None,
    substeps: int = 1,
    checkpoint_every: int | None | str = "auto",
    truncate: int | None = None,
    controller: Callable | None = None,
    control=None,
    observe: Callable | None = None,
    record: bool = False,
    backend: str = "warp",
):
    """Advance ``state`` by ``steps`` frames of ``substeps`` steps each.

    Args:
        model: a simulator model following the contract (``model.step(state, dt, control)``;
            needs ``dt``), or a callable ``step(state) -> state`` (``step(state, control)`` with a
            controller or a held control).
        state: initial state (dataclass of tensors, tensor, or tuple of tensors).
        steps: number of frames (>= 0).
        dt: time step in seconds, for a model.
        substeps: steps per frame; the control is held over a frame's substeps and
            ``observe``/``record`` see one state per frame.
        checkpoint_every: keep the state of every k-th frame and recompute the frames between in
            backward (gradients equal to the full tape's). ``None``: full tape. Default
            ``"auto"``: :func:`auto_checkpoint` (full tape up to 128 frames, else every
            ``ceil(sqrt(steps))`` frames), so long rollouts have bounded memory by default.
        truncate: detach the state every ``truncate`` frames (truncated BPTT; see module doc).
        controller: ``controller(state, frame) -> control`` called once per frame (``frame`` is
            the int frame index); e.g. an ``nn.Module``. Its parameters receive gradients.
        control: a control held over the whole rollout (e.g. a spring actuation ``(S,)``);
            exclusive with ``controller``.
        observe: ``observe(state, frame) -> tensor``, evaluated on the state after each frame
            (frames 1..steps) instead of storing the states; results are stacked (dim 0).
        record: also return the list of states at frames 0..steps.
        backend: ``"warp"`` (the model's kernels, and its fused segment if it has one) or
            ``"torch"`` (its plain-torch twin ``step_torch``; needed by :func:`rollout_jvp`).

    Returns:
        The final state; or ``(final, trajectory)`` if ``record`` (list of ``steps + 1`` states) or
        ``observe`` (stacked observations, shape ``(steps, ...)``) is given; with both,
        ``(final, states, observations)``.

    Gradient: exactly that of the composed steps (each step's own contract applies, e.g. the
    contact-onset convention of :func:`~diffvc.physics.particle_step`); checkpointing does not
    change it, truncation cuts it as documented.
    """
    _check_int("steps", steps, 0, allow_none=False)
    _check_int("substeps", substeps, 1, allow_none=False)
    auto = isinstance(checkpoint_every, str)
    if auto:
        if checkpoint_every != "auto":
            raise ValueError(f"checkpoint_every must be an int >= 1, None or 'auto', got {checkpoint_every!r}")
        checkpoint_every = auto_checkpoint(steps)
    _check_int("checkpoint_every", checkpoint_every, 1)
    _check_int("truncate", truncate, 1)
    if controller is not None and not callable(controller):
        raise TypeError(f"controller must be callable, got {type(controller).__name__}")
    if controller is not None and control is not None:
        raise ValueError("give either controller (a control per frame) or control (held), not both")
    if observe is not None and not callable(observe):
        raise TypeError(f"observe must be callable, got {type(observe).__name__}")
    step, fused = _as_step(model, dt, backend, control)
    if auto and steps > AUTO_TWO_LEVEL_MIN and fused is not None and controller is None:
        # two levels through the fused segment: outer segments of ~T^(2/3) frames keep only their
        # inputs, and each re-runs its backward in blocks of ~sqrt(its steps) from states kept at
        # the block starts (the segment's own recompute, e.g. diffvc._kernels.springs.block_length)
        checkpoint_every = int(-(-steps ** (2.0 / 3.0) // 1))
    flatten_state(state)  # validates the state's structure
    # the bookkeeping-free checkpoint needs the model's tensors (a dataclass model, Warp backend)
    model_tensors = _model_tensors(model) if (backend == "warp" and callable(getattr(model, "step", None))) else None
    dt_ = _check_dt(dt) if model_tensors is not None else None
    if (auto and steps > AUTO_TWO_LEVEL_MIN and model_tensors is not None and fused is None and controller is None
            and control is None
            and observe is None and not record and truncate is None and torch.is_grad_enabled()
            and not _functorch_active()):
        # two levels: outer segments of ~T^(2/3) frames keep only their inputs; in backward each
        # is re-run with checkpoints every ~T^(1/3) frames, so the stored states and the one live
        # tape are both ~T^(1/3) frames (three forward passes in all)
        k1 = int(-(-steps ** (2.0 / 3.0) // 1))
        k2 = int(-(-k1 ** 0.5 // 1))
        m_tensors, rebuild = model_tensors
        k = 0
        while k < steps:
            n = min(k1, steps - k)
            tensors, spec = flatten_state(state)

            def run_outer(st_ts, m_ts, _spec=spec, _n=n):
                # chunks of k2 frames also without grad: a fused segment allocates its frames' buffers
                inner = rollout(rebuild(m_ts), _unflatten(list(st_ts), _spec), _n, dt=dt_, substeps=substeps,
                                checkpoint_every=k2, backend=backend)
                return tuple(flatten_state(inner)[0])

            out = _ModelSegment.apply(run_outer, len(tensors), len(m_tensors), *tensors, *m_tensors)
            state = _unflatten(list(out), spec)
            k += n
        return state

    def frame(st, k):
        if controller is not None:
            u = controller(st, k)
            if fused is not None:  # the frame's substeps in one fused node, control held
                return fused(st, substeps, control=u)[0]
            for _ in range(substeps):
                st = step(st, u)
        else:
            for _ in range(substeps):
                st = step(st)
        return st

    use_ckpt = (checkpoint_every is not None and torch.is_grad_enabled() and not _functorch_active())
    states = [state] if record else None
    obs: list = [] if observe is not None else None
    k = 0
    while k < steps:
        # frames of this chunk: up to the next checkpoint / truncation boundary
        end = steps
        if checkpoint_every is not None:
            end = min(end, k + checkpoint_every)
        if truncate is not None:
            end = min(end, (k // truncate + 1) * truncate)
        n = end - k
        if truncate is not None and k % truncate == 0 and k > 0:
            state = _detach(state)
        want_all = record or observe is not None
        if fused is not None and controller is None:
            final, inter = fused(state, n * substeps, recompute=use_ckpt, return_all=want_all)
            chunk_states = inter[substeps - 1::substeps] if want_all else []
            chunk_obs = [observe(s, k + 1 + j) for j, s in enumerate(chunk_states)] if observe is not None else []
            state = final
        elif use_ckpt and controller is None and control is None and not want_all and model_tensors is not None:
            # a model's segment as one node that keeps only its inputs (no per-step bookkeeping)
            tensors, spec = flatten_state(state)
            m_tensors, rebuild = model_tensors

            def run(st_ts, m_ts, _spec=spec, _n=n, _start=k):
                m = rebuild(m_ts)
                st = _unflatten(list(st_ts), _spec)
                for j in range(_n):
                    for _ in range(substeps):
                        st = m.step(st, dt_, control)
                return tuple(flatten_state(st)[0])

            out = _ModelSegment.apply(run, len(tensors), len(m_tensors), *tensors, *m_tensors)
            state = _unflatten(list(out), flatten_state(state)[1])
            chunk_states, chunk_obs = [], []
        elif use_ckpt:
            tensors, spec = flatten_state(state)
            start = k

            def segment(*ts, _spec=spec, _n=n, _start=start):
                st = _unflatten(list(ts), _spec)
                outs = []
                for j in range(_n):
                    st = frame(st, _start + j)
                    if want_all:
                        outs.append(st)
                o = [observe(s, _start + 1 + j) for j, s in enumerate(outs)] if observe is not None else []
                return st, (outs if record else []), o

            state, chunk_states, chunk_obs = _ckpt.checkpoint(segment, *tensors, use_reentrant=False)
        else:
            chunk_states, chunk_obs = [], []
            for j in range(n):
                state = frame(state, k + j)
                if want_all:
                    chunk_states.append(state)
                if observe is not None:
                    chunk_obs.append(observe(state, k + j + 1))
        if record:
            states.extend(chunk_states)
        if observe is not None:
            obs.extend(chunk_obs)
        k = end

    if observe is not None:
        obs_out = torch.stack(obs) if obs and all(isinstance(o, torch.Tensor) for o in obs) else obs
    if record and observe is not None:
        return state, states, obs_out
    if record:
        return state, states
    if observe is not None:
        return state, obs_out
    return state


# --------------------------------------------------------------------------------------------
# forward mode
# --------------------------------------------------------------------------------------------

def rollout_jvp(fn: Callable, primals: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor]):
    """Forward-mode sensitivity of ``fn(*primals)`` in the direction ``tangents``.

    ``fn`` builds the model/state from ``primals`` and rolls it out (typically with
    :func:`rollout` over a plain-torch twin step, e.g. ``spring_step_torch``), returning a tensor
    or tuple of tensors. The tangents travel forward with the state: no tape, memory independent
    of the horizon. For k parameters, k calls give the k columns of the Jacobian.

    Implementation: ``torch.func.jvp`` (torch's forward-mode AD; dual numbers through every
    op). Warp kernels have no forward mode, so a ``kernel_op`` inside ``fn`` raises; use the twin.

    Returns:
        ``(outputs, output_tangents)``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (primals -> outputs), got {type(fn).__name__}")
    for name, seq in (("primals", primals), ("tangents", tangents)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(seq).__name__}")
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"tangents: need one per primal ({len(primals)}), got {len(tangents)}")
    for i, (p, t) in enumerate(zip(primals, tangents)):
        if not isinstance(p, torch.Tensor) or not isinstance(t, torch.Tensor):
            raise TypeError(f"primals[{i}] and tangents[{i}] must be tensors")
        if p.shape != t.shape or p.dtype != t.dtype:
            raise ValueError(f"tangents[{i}] must match primals[{i}] in shape and dtype: "
                             f"{tuple(t.shape)} {t.dtype} vs {tuple(p.shape)} {p.dtype}")
    try:
        return torch.func.jvp(fn, primals, tangents)
    except RuntimeError as e:
        msg = str(e)
        if "autograd.Function" in msg or "_KernelOp" in msg or "forward AD" in msg:
            raise RuntimeError("rollout_jvp: a Warp kernel step has no forward mode; roll out the "
                               "plain-torch twin (rollout(..., backend='torch'), or particle_step_torch / spring_step_torch) "
                               f"instead. ({msg})") from e
        raise
