"""Native hand-off between the calling thread and the launch workers of a split CPU launch.

A split launch (:func:`~diffvc._kernels.bridge.parallel_launch`) gives each launch worker one
chunk: a direct call of a kernel's CPU entry point. Handing it over through Python locks costs two
thread wake-ups per launch (the worker's, then the caller's when the worker is done), each
30-50 us on the 2-core dev VM: ~110 us per split launch (an empty 2-thread split launch took
~140 us against ~30 us on one thread), ~1.6 ms of a 100k-triangle raster iteration with its 16
split launches. Here the threads meet in shared memory instead, in native code that holds no GIL:

* a worker (:class:`Worker`) runs ``handoff_worker_loop`` (one long native call): it spins on its
  control block's job counter, calls each posted entry point itself and publishes its completion;
  after ``IDLE_US`` without a job it *parks* (returns to Python and blocks on its ``go`` lock;
  ``handoff_post`` then tells the caller to release that lock);
* the caller posts a job (``handoff_post``), runs its own chunk and spins on the completion
  counter (``handoff_wait``) for up to ``WAIT_US`` before it too sleeps on a lock (the worker's
  loop then returns to release it).

Each side publishes its state before re-checking the other's counter (sequentially consistent
atomics, Dekker-style), so a posted job is never missed and a sleeping caller is always woken;
a wake-up that turns out not to be needed is harmless (both sides re-check the counters after a
lock returns). A posted job with entry point 0 is a Python job (a queue of callables): the
worker's loop returns to run it in Python and reports completion with ``handoff_finish``.
Spinning is switched off when there are more launch threads than cores.

Control block: an int64 tensor of ``_WORDS`` entries, the fields on separate cache lines.
"""

from __future__ import annotations

import torch

from .bridge import wp

JOB, DONE, FN, BOUNDS, ARGS, WSTATE, MSTATE, WRET, MRET, IDLE, WAIT = 0, 8, 16, 17, 18, 24, 32, 40, 48, 56, 57
_WORDS = 64
PARKED, WAKE_CALLER, PY_JOB, CONTINUE = 0, 1, 2, 3  # worker_loop's and finish's return codes (word WRET)

_HEAD = r"""
#if defined(__x86_64__) || defined(__i386__)
#define DVC_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define DVC_PAUSE() __asm__ __volatile__("yield")
#else
#define DVC_PAUSE() do {} while (0)
#endif
#define LD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
wp::int64* c = (wp::int64*)ctl.data;
"""

_WORKER_LOOP = _HEAD + r"""
typedef void (*dvc_entry_t)(void*, void*);
wp::int64 last = LD(&c[%(DONE)d]);
ST(&c[%(WSTATE)d], (wp::int64)0);
for (;;) {
    wp::int64 idle = 0;
    while (LD(&c[%(JOB)d]) == last) {
        DVC_PAUSE();
        if (++idle > c[%(IDLE)d]) {
            ST(&c[%(WSTATE)d], (wp::int64)1);  // parked; then re-check the job counter
            if (LD(&c[%(JOB)d]) != last) {
                ST(&c[%(WSTATE)d], (wp::int64)0);
                break;
            }
            c[%(WRET)d] = %(PARKED)d;
            return;
        }
    }
    const wp::int64 seq = LD(&c[%(JOB)d]);
    const wp::int64 fn = c[%(FN)d];
    if (fn == 0) {  // a Python job: run by the caller of this loop, then finish()
        c[%(WRET)d] = %(PY_JOB)d;
        return;
    }
    ((dvc_entry_t)fn)((void*)c[%(BOUNDS)d], (void*)c[%(ARGS)d]);
    last = seq;
    ST(&c[%(DONE)d], seq);
    if (LD(&c[%(MSTATE)d]) == 1) {  // the caller sleeps on its lock: wake it from Python
        c[%(WRET)d] = %(WAKE_CALLER)d;
        return;
    }
}
"""

_FINISH = _HEAD + r"""
ST(&c[%(DONE)d], LD(&c[%(JOB)d]));
c[%(WRET)d] = LD(&c[%(MSTATE)d]) == 1 ? %(WAKE_CALLER)d : %(CONTINUE)d;
"""

# the job's entry point, bounds and arguments are stored in words FN, BOUNDS, ARGS beforehand (from
# Python, on this thread: the sequentially consistent store below orders them before the counter)
_POST = _HEAD + r"""
ST(&c[%(JOB)d], LD(&c[%(JOB)d]) + 1);
c[%(MRET)d] = LD(&c[%(WSTATE)d]);  // 1: the worker is parked, release its lock
"""

_WAIT = _HEAD + r"""
const wp::int64 seq = LD(&c[%(JOB)d]);
wp::int64 idle = 0;
c[%(MRET)d] = 0;
while (LD(&c[%(DONE)d]) != seq) {
    DVC_PAUSE();
    if (++idle > c[%(WAIT)d]) {
        ST(&c[%(MSTATE)d], (wp::int64)1);  // about to sleep; then re-check the completion counter
        if (LD(&c[%(DONE)d]) == seq) {
            ST(&c[%(MSTATE)d], (wp::int64)0);
            return;
        }
        c[%(MRET)d] = 1;  // sleep on the done lock
        return;
    }
}
"""

_FIELDS = dict(JOB=JOB, DONE=DONE, FN=FN, BOUNDS=BOUNDS, ARGS=ARGS, WSTATE=WSTATE, MSTATE=MSTATE, WRET=WRET,
               MRET=MRET, IDLE=IDLE, WAIT=WAIT, PARKED=PARKED, WAKE_CALLER=WAKE_CALLER, PY_JOB=PY_JOB,
               CONTINUE=CONTINUE)


_ARR = wp.array(dtype=wp.int64)


@wp.func_native(_WORKER_LOOP % _FIELDS)
def _worker_loop(ctl: _ARR):
    ...


@wp.func_native(_FINISH % _FIELDS)
def _finish(ctl: _ARR):
    ...


@wp.func_native(_POST % _FIELDS)
def _post(ctl: _ARR):
    ...


@wp.func_native(_WAIT % _FIELDS)
def _wait(ctl: _ARR):
    ...


def _launchable(native, name: str):
    """A dim-1 kernel ``name(ctl)`` that runs the native function ``native``."""
    def kernel(ctl: _ARR):
        native(ctl)

    kernel.__name__ = kernel.__qualname__ = name
    return wp.kernel(kernel, enable_backward=False, module="unique")


handoff_worker_loop = _launchable(_worker_loop, "handoff_worker_loop")
handoff_finish = _launchable(_finish, "handoff_finish")
handoff_post = _launchable(_post, "handoff_post")
handoff_wait = _launchable(_wait, "handoff_wait")


# spin windows, in microseconds: how long a worker spins for the next job before it parks, and how
# long the calling thread spins for a worker's completion before it sleeps. About twice what a
# wake-up through a lock costs here (30-50 us): spinning longer than that can only save a wake-up
# it already paid for in CPU (the classic spin-then-block rule). Measured on the raster iteration
# (2 threads, alternating, wall / process CPU): worker window 300 us 44.2-45.2 ms / 79 ms, 30 us
# 43.2-44.2 / 70-75, none 42.9-44.6 / 71-76; caller window 1 ms 39.5-42.4 / 71-74, 100 us
# 41.3-41.8 / 68, none 40.8-43.5 / 67-71 (differences in wall within this host's noise).
IDLE_US = 50.0
WAIT_US = 100.0


def _direct(kernel, args):
    """A prepared direct call (bridge._DirectCall) of a dim-1 launch of ``kernel(*args)`` (the
    caller keeps the tensors in ``args`` alive)."""
    from .bridge import _DirectCall, _to_param, record

    keep: list = []
    call = _DirectCall(record(kernel, 1, args, torch.device("cpu"), torch.float64))
    call.prepare((1,), [_to_param(a, torch.float64, keep) for a in args])
    return call


_SPIN_NS: list = []


def spin_ns() -> float:
    """Nanoseconds per spin iteration of the hand-off loops on this machine (measured once)."""
    if not _SPIN_NS:
        import time

        ctl = torch.zeros(_WORDS, dtype=torch.int64)
        ctl[JOB] = 1  # a job that never completes: the wait spins its full count
        n = 20000
        ctl[WAIT] = n
        call = _direct(handoff_wait, [ctl])
        call()  # load
        best = float("inf")
        for _ in range(3):
            ctl[MSTATE] = 0
            t0 = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - t0)
        _SPIN_NS.append(max(best * 1e9 / n, 0.5))
    return _SPIN_NS[0]


class Worker:
    """One launch worker: a daemon thread in ``handoff_worker_loop`` with its control block.

    The calling thread (one at a time: the bridge's ``_busy`` lock) posts a job with
    :meth:`post_call` (a direct call: entry point, bounds and argument struct addresses) or
    :meth:`post_queue` (callables taken from a shared queue, run in Python), then :meth:`wait`."""

    def __init__(self, name: str):
        import threading

        self.ctl = torch.zeros(_WORDS, dtype=torch.int64)
        self.words = self.ctl.numpy()
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.queue = None
        self.error: BaseException | None = None
        self.parks = 0  # times this worker parked, and the caller slept on its completion
        self.sleeps = 0
        ns = spin_ns()
        self.spins = (max(1, int(IDLE_US * 1e3 / ns)), max(1, int(WAIT_US * 1e3 / ns)))
        self.spinning(True)
        self._loop = _direct(handoff_worker_loop, [self.ctl])
        self._finish = _direct(handoff_finish, [self.ctl])
        self._post = _direct(handoff_post, [self.ctl])
        self._wait = _direct(handoff_wait, [self.ctl])
        self.thread = threading.Thread(target=self._main, daemon=True, name=name)
        self.thread.start()
        _register(self)

    def _main(self) -> None:
        from .bridge import _drain

        w = self.words
        while True:
            self._loop()
            r = int(w[WRET])
            if r == PY_JOB:
                try:
                    _drain(self.queue)
                except BaseException as e:  # handed to the caller
                    self.error = e
                self._finish()
                r = int(w[WRET])
            if r == WAKE_CALLER:
                if self.done.locked():  # only this thread releases ``done``
                    self.done.release()
            elif r == PARKED:
                self.parks += 1
                self.go.acquire()

    def spinning(self, on: bool) -> None:
        """Spin windows on (the calibrated ``IDLE_US``/``WAIT_US``), or off (park and sleep at once:
        for more launch threads than cores, where a spinning thread would take a core from work)."""
        self.words[IDLE], self.words[WAIT] = self.spins if on else (0, 0)

    def _posted(self) -> None:
        self._post()
        if self.words[MRET] == 1 and self.go.locked():  # only the caller releases ``go``
            self.go.release()

    def post_call(self, fn: int, bounds: int, args: int) -> None:
        w = self.words
        w[FN], w[BOUNDS], w[ARGS] = fn, bounds, args
        self._posted()

    def post_queue(self, queue) -> None:
        self.queue, self.error = queue, None
        self.words[FN] = 0
        self._posted()

    def wait(self) -> None:
        """Returns when the posted job is done (spinning first, then asleep on ``done``)."""
        self._wait()
        w = self.words
        if w[MRET] == 1:
            self.sleeps += 1
            seq = w[JOB]
            while True:
                self.done.acquire()
                if w[DONE] == seq:
                    break
            w[MSTATE] = 0


_ALL: list = []  # (process id, Worker) of every worker started (a forked child has none of them)


def _park_all_at_exit() -> None:
    # runs before Warp's modules are released at interpreter exit (registered after Warp's import):
    # a worker still spinning in its native loop would otherwise run on in unloaded code
    import os
    import time

    for pid, w in _ALL:
        end = time.perf_counter() + 0.05
        while pid == os.getpid() and w.words[WSTATE] != 1 and time.perf_counter() < end:
            time.sleep(IDLE_US * 1e-6)
    time.sleep(1e-3)  # parked workers leave the native call and block on their locks


def _register(w: "Worker") -> None:
    import atexit
    import os

    if not _ALL:
        atexit.register(_park_all_at_exit)
    _ALL.append((os.getpid(), w))
