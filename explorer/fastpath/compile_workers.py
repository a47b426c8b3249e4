"""tinygrad's compile workers (the processes that lower kernels in parallel): what each sets up as it starts.

- The wide loads (wide_loads.py): a worker imports tinygrad afresh, without the explorer's change.
- It ends when the explorer does. A worker waits on the pool's task queue, whose write end it holds itself, so it never
  sees the explorer go. The pool starts new workers on its own (for one that died, and every 16 tasks): one started
  while the explorer was stopping was left behind for good after a SIGTERM to the whole process group (seen in the
  test suite). So each worker exits once its parent is gone, and takes SIGTERM's default action again (one started
  while stop.leave ignores SIGTERM would otherwise inherit that)."""
from __future__ import annotations
import multiprocessing, os, signal, threading, time
from tinygrad.engine import worker
from explorer.fastpath import wide_loads


def check() -> None:
  from explorer.fastpath import require
  require(worker, "_init_worker", "worker_pool", "terminate_worker_pool")


def install() -> None:
  """For every compile worker started from now on (a pool already running is stopped: the next compile starts one)."""
  if worker._init_worker is _init_worker: return
  worker._init_worker = _init_worker
  if worker.worker_pool is not None: worker.terminate_worker_pool()


_stock_init_worker = worker._init_worker


def _init_worker() -> None:
  """A compile worker's initializer: tinygrad's own, then the explorer's."""
  _stock_init_worker()
  wide_loads.install()
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  if (parent := multiprocessing.parent_process()) is not None:
    threading.Thread(target=_exit_with, args=(parent.pid,), daemon=True, name="exit-with-parent").start()


def _exit_with(parent: int, every_s: float = 0.5) -> None:
  # by process id, nothing else: a worker is reparented when its parent dies (a wait on an inherited file descriptor
  # could also end while the parent lives, and a worker cut mid-reply leaves the pool's result reader garbage)
  while os.getppid() == parent: time.sleep(every_s)
  os._exit(0)
