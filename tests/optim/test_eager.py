"""diffvc.optim.eager: torch's optimizers, bit for bit, without importing torch._dynamo."""

import subprocess
import sys

import torch

from diffvc.optim import eager


def _rosen(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2 + (x[2:] ** 2).sum()


def _run(cls, steps=25, sched=False, closure_step=False, **kw):
    x = torch.tensor([-1.2, 1.0, 0.5, -0.3], dtype=torch.float64, requires_grad=True)
    opt = cls([x], **kw)
    sch = torch.optim.lr_scheduler.ExponentialLR(opt, 0.95) if sched else None

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = _rosen(x)
        loss.backward()
        return loss

    for _ in range(steps):
        if closure_step:
            opt.step(closure)
        else:
            closure()
            opt.step()
        if sch is not None:
            sch.step()
    return x.detach().clone(), opt


def test_updates_equal_torch_bit_for_bit():
    cases = [
        (eager.Adam, torch.optim.Adam, dict(lr=0.05), True, False),
        (eager.Adam, torch.optim.Adam, dict(lr=0.05, amsgrad=True, weight_decay=1e-3), False, False),
        (eager.SGD, torch.optim.SGD, dict(lr=1e-3, momentum=0.9, nesterov=True), True, False),
        (eager.LBFGS, torch.optim.LBFGS, dict(lr=1.0, max_iter=5, line_search_fn="strong_wolfe"), False, True),
    ]
    for mine, theirs, kw, sched, closure_step in cases:
        a, _ = _run(mine, sched=sched, closure_step=closure_step, **kw)
        b, _ = _run(theirs, sched=sched, closure_step=closure_step, **kw)
        assert torch.equal(a, b), (mine.__name__, kw, a, b)
        assert not torch.equal(a, torch.tensor([-1.2, 1.0, 0.5, -0.3], dtype=torch.float64))  # it moved


def test_state_dict_round_trip_with_torch_optimizer():
    _, opt = _run(eager.Adam, steps=5, lr=0.05)
    ref = torch.optim.Adam([torch.zeros(4, dtype=torch.float64, requires_grad=True)], lr=0.05)
    ref.load_state_dict(opt.state_dict())   # a checkpoint of ours loads into torch's and back
    opt.load_state_dict(ref.state_dict())
    assert torch.equal(opt.state[opt.param_groups[0]["params"][0]]["exp_avg"],
                       ref.state[ref.param_groups[0]["params"][0]]["exp_avg"])
    assert isinstance(opt, torch.optim.Optimizer)


def test_optimize_does_not_import_dynamo():
    code = ("import sys, torch\n"
            "from diffvc.optim import Free, ParameterSet, optimize\n"
            "p = ParameterSet(x=Free([1.0, 2.0], dtype=torch.float64))\n"
            "for m in ('adam', 'sgd', 'lbfgs'):\n"
            "    optimize(p, lambda: (p['x'] ** 2).sum(), iters=3, method=m, progress=False, lr_final=1e-3 if m != 'lbfgs' else None)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
