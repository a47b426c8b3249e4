"""Run tinygrad's CPU kernels on several cores.

tinygrad 0.14 already compiles each large CPU kernel as NUM_CPU_THREADS independent pieces (a `core_id` argument picks
the piece's slice of the output), but CPUProgram.__call__ runs the pieces one after the other on the calling thread.
Here the pieces run on a small pool of threads instead. The kernels are machine code called through ctypes, which
releases the GIL, so they really run at once. Same kernels and same pieces, so the results are bit-identical.

Kernels whose first call takes under MIN_PARALLEL_S stay on the calling thread: waking a thread costs more than they do.

BEAM search runs with one thread (`one_thread()`), as tinygrad alone would: its choices, timed that way and cached on
disk, were faster with threads than choices timed with threads (MLP step 6.7-7.0 vs 7.2-7.8 ms), and they stay shared."""
from __future__ import annotations
import contextlib, ctypes, functools, queue, threading, time
from tinygrad.codegen.opt import KernelOptError, Opt, OptOps, search
from tinygrad.helpers import NUM_CPU_THREADS, prod
from tinygrad.runtime import ops_cpu
from tinygrad.uop.ops import AxisType
from explorer import stop
from explorer.machine import available_cores

MIN_PARALLEL_S = 50e-6
_sequential_call = ops_cpu.CPUProgram.__call__
_workers: list[queue.SimpleQueue] = []
_active = 1  # threads in use, the calling one included
_finished: queue.SimpleQueue = queue.SimpleQueue()
stats = {"pieces_on_pool": 0}  # how many kernel pieces ran on a pool thread (tests check it)


def check() -> None:
  from explorer.fastpath import require
  require(OptOps, "THREAD")
  require(AxisType, "GLOBAL", "WEAK")
  require(ops_cpu.CPUProgram, "__call__")
  require(search, "beam_search")


def default_threads(workers: int = 1) -> int:
  """Cores per explorer process, at most the number of pieces tinygrad splits a kernel into."""
  return max(1, min(NUM_CPU_THREADS.value, available_cores() // max(1, workers)))


def threads() -> int: return _active


def _work(jobs: queue.SimpleQueue) -> None:
  while True:
    fxn, calls = jobs.get()
    for args in calls: fxn(*args)
    _finished.put(None)


def _parallel_call(self, *bufs, global_size=(1, 1, 1), local_size=(1, 1, 1), vals=(), wait=False, timeout=None):
  slot, pieces = self.runtimevars.get("core_id"), global_size[0]
  if _active == 1 or slot is None or pieces == 1 or self.lvp or getattr(self, "_small", False):
    return _sequential_call(self, *bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait, timeout=timeout)
  if not hasattr(self, "_small"):  # first call: time it on one thread to learn whether it is worth splitting
    st = time.perf_counter()
    _sequential_call(self, *bufs, global_size=global_size, local_size=local_size, vals=vals)
    self._small = (elapsed := time.perf_counter() - st) < MIN_PARALLEL_S
    return elapsed if wait else None
  st = time.perf_counter()
  args = [*(b.va_addr for b in bufs), *vals]
  calls = [[ctypes.c_uint64(tid if i == slot else x) for i, x in enumerate(args)] for tid in range(pieces)]
  shares = [calls[k::_active] for k in range(_active)]  # piece k runs on executor k % threads
  used = [(w, share) for w, share in zip(_workers, shares[1:]) if share]
  with stop.holding:  # a Ctrl-C raised between handing out pieces and counting them back would leave a hang behind
    for w, share in used: w.put((self.fxn, share))
    for a in shares[0]: self.fxn(*a)
    _wait_for(len(used))
    stats["pieces_on_pool"] += pieces - len(shares[0])
  return time.perf_counter() - st if wait else None


def _wait_for(pieces: int) -> None:
  done = 0
  try:
    while done < pieces: _finished.get(); done += 1
  except KeyboardInterrupt:  # raised by a handler other than explorer.stop's: let the pieces finish, so no stale "done"
    # is left for the next call; the timeout because the interrupt may have come after a get() but before its count
    with contextlib.suppress(queue.Empty):
      while done < pieces: _finished.get(timeout=1.0); done += 1
    raise


def set_threads(n: int) -> int:
  """Run CPU kernels on n threads (the calling one included) from now on; 1 is tinygrad's own sequential call."""
  global _active
  while len(_workers) < n - 1:
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_work, args=(jobs,), daemon=True, name="cpu-kernel").start()
    _workers.append(jobs)
  if n > 1:
    ops_cpu.CPUProgram.__call__ = _parallel_call
    if not hasattr(search.beam_search, "splits"): search.beam_search = _split_after_search(search.beam_search)
  _active = max(1, n)
  return _active


@contextlib.contextmanager
def one_thread():
  """Kernels run on the calling thread only inside this block (BEAM search times them that way)."""
  global _active
  saved, _active = _active, 1
  try: yield
  finally: _active = saved


def _split_after_search(search_fn):
  """BEAM times kernels on one thread, so it has no reason to split one into pieces and leaves some big kernels whole
  (the MLP's first layer: a third of its step). After the search, split those the way tinygrad's own heuristic does."""
  @functools.wraps(search_fn)
  def searched(s, *args, **kwargs):
    k = search_fn(s, *args, **kwargs)
    if not k.ren.has_threads or k.ren.global_max is None or any(o.op is OptOps.THREAD for o in k.applied_opts): return k
    for n in range(min(k.ren.global_max[0], 32), 1, -1):
      if prod(k.full_shape) // (128 << 10) < n: continue  # about 128K operations per piece at least, as the heuristic
      for axis in k.axes_of(AxisType.GLOBAL, AxisType.WEAK):
        if k.full_shape[axis] % n: continue
        split = k.copy()
        try: split.apply_opt(Opt(OptOps.THREAD, axis, n))
        except KernelOptError: continue
        return split
    return k
  searched.splits = True
  return searched
