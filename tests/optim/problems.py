"""Small optimisation problems run in subprocesses by the resume and distributed tests."""

import json
import sys
import time

import torch

from diffvc.optim import ParameterSet, Free, distributed, optimize, run_context


def views():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]


def view_loss(x, v):
    return ((torch.sin(x * v) - 0.3 * v) ** 2).sum() + 0.1 * (x ** 2).sum()


def resumable(out: str, resume: bool, iters: int, sleep: float) -> None:
    torch.manual_seed(0)
    ps = ParameterSet(x=Free(torch.randn(5, dtype=torch.float64)))

    def loss_fn():
        time.sleep(sleep)
        noise = 0.01 * torch.randn(5, dtype=torch.float64)       # consumes the global RNG every iteration
        return sum(view_loss(ps["x"] + noise, v) for v in views())

    with run_context(out + "/checkpoints", every=3, resume=resume):
        h1 = optimize(ps, loss_fn, iters=iters, lr=0.05, lr_final=0.005, method="adam", progress=False, desc="stage 1")
        h2 = optimize(ps, loss_fn, iters=4, lr=0.5, method="lbfgs", progress=False, desc="stage 2")
    print(json.dumps({"x": ps["x"].tolist(), "loss1": h1.loss, "loss2": h2.loss}))


def sharded(iters: int) -> None:
    """Each process takes its views; optimize all-reduces gradients and losses."""
    distributed.init_from_env()
    x = torch.linspace(-1, 1, 5, dtype=torch.float64).requires_grad_()
    mine = distributed.shard(views())
    grad = torch.autograd.grad(sum(view_loss(x, v) for v in mine), x)[0]
    distributed.all_reduce_([grad])
    hist = optimize([x], lambda: sum(view_loss(x, v) for v in mine), iters=iters, lr=0.05, progress=False)
    if distributed.rank() == 0:
        print(json.dumps({"grad": grad.tolist(), "x": x.tolist(), "loss": hist.loss,
                          "world": distributed.world_size()}))
    distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "resumable":
        resumable(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), float(sys.argv[5]))
    else:
        sharded(int(sys.argv[2]))
