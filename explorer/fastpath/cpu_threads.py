"""Run tinygrad's CPU kernels on several cores.

tinygrad 0.14 already compiles each large CPU kernel as NUM_CPU_THREADS independent pieces (a `core_id` argument picks
the piece's slice of the output), but CPUProgram.__call__ runs the pieces one after the other on the calling thread.
Here the pieces run on a small pool of native threads instead (pool.c, built with clang on first use and kept in the
explorer's cache folder): same kernels and same pieces, so the results are bit-identical. The pool's threads spin
between kernels, so handing out the next one costs no thread wake-up, and a replayed step (replay.py) runs all its
kernels in one call of the pool, without Python between them.

Kernels whose first call takes under MIN_PARALLEL_S stay on the calling thread: sharing them out costs more than they do.

BEAM search runs with one thread (`one_thread()`), as tinygrad alone would: its choices, timed that way and cached on
disk, were faster with threads than choices timed with threads (MLP step 6.7-7.0 vs 7.2-7.8 ms), and they stay shared."""
from __future__ import annotations
import contextlib, ctypes, functools, hashlib, os, shutil, subprocess, time
from pathlib import Path
from tinygrad.codegen.opt import KernelOptError, Opt, OptOps, search
from tinygrad.helpers import NUM_CPU_THREADS, prod
from tinygrad.runtime import ops_cpu
from tinygrad.uop.ops import AxisType
from explorer.machine import available_cores

MIN_PARALLEL_S = 50e-6
MAX_ARGS = 24  # pool.c's
_sequential_call = ops_cpu.CPUProgram.__call__
_pool = None  # the loaded pool.c
_active = 1  # threads in use, the calling one included
stats = {"pieces_on_pool": 0}  # how many kernel pieces ran on a pool thread (tests check it)


class Kernel(ctypes.Structure):  # pool.c's kernel_t
  _fields_ = [("fxn", ctypes.c_void_p), ("nargs", ctypes.c_int32), ("slot", ctypes.c_int32), ("pieces", ctypes.c_int32),
              ("split", ctypes.c_int32), ("args", ctypes.c_uint64 * MAX_ARGS)]


def check() -> None:
  from explorer.fastpath import require
  require(OptOps, "THREAD")
  require(AxisType, "GLOBAL", "WEAK")
  require(ops_cpu.CPUProgram, "__call__")
  require(search, "beam_search")
  pool()


def pool():
  """pool.c, built on first use for this source (a compiler from $CC, clang or cc) and loaded once per process."""
  global _pool
  if _pool is None:
    source = Path(__file__).with_name("pool.c")
    from explorer.data import cache_dir
    built = cache_dir("build") / f"pool-{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}.so"
    if not built.exists():
      compiler = next((c for c in (os.environ.get("CC"), "clang", "cc") if c and shutil.which(c)), None)
      if compiler is None: raise RuntimeError("no C compiler (clang or cc) to build the kernel thread pool")
      built.parent.mkdir(parents=True, exist_ok=True)
      tmp = built.with_name(f"{built.name}.{os.getpid()}.tmp")
      r = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(tmp), str(source)], capture_output=True, text=True)
      if r.returncode != 0: raise RuntimeError(f"building the kernel thread pool failed: {' '.join(r.stderr.split())[:200]}")
      os.replace(tmp, built)  # whole or not at all, also with several explorers building at once
    lib = ctypes.CDLL(str(built))
    lib.pool_start.argtypes, lib.pool_start.restype = [ctypes.c_int], ctypes.c_int
    lib.pool_run.argtypes, lib.pool_run.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_long
    _pool = lib
  return _pool


def default_threads(workers: int = 1) -> int:
  """Cores per explorer process, at most the number of pieces tinygrad splits a kernel into."""
  return max(1, min(NUM_CPU_THREADS.value, available_cores() // max(1, workers)))


def threads() -> int: return _active


def kernel(program, bufs, global_size, vals) -> Kernel | None:
  """One call of a CPU program as pool.c runs it, or None where only tinygrad's call will do (LVP, too many args)."""
  args = [*(b.va_addr for b in bufs), *(v or 0 for v in vals)]  # core_id's value is None: each piece sets its own
  if program.lvp or len(args) > MAX_ARGS: return None
  slot = program.runtimevars.get("core_id")
  return Kernel(program.addr, len(args), -1 if slot is None else slot, global_size[0], not getattr(program, "_small", False),
                (ctypes.c_uint64 * MAX_ARGS)(*args))


class Steps:
  """A replayed step's kernels, run in one call of the pool."""
  def __init__(self, kernels: list[Kernel]):
    self.n, self.array = len(kernels), (Kernel * len(kernels))(*kernels)

  def __call__(self) -> None:
    stats["pieces_on_pool"] += pool().pool_run(self.array, self.n, _active)


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
  if (k := kernel(self, bufs, global_size, vals)) is None:
    return _sequential_call(self, *bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait, timeout=timeout)
  stats["pieces_on_pool"] += pool().pool_run(ctypes.byref(k), 1, _active)
  return time.perf_counter() - st if wait else None


def set_threads(n: int) -> int:
  """Run CPU kernels on n threads (the calling one included) from now on; 1 is tinygrad's own sequential call."""
  global _active
  n = pool().pool_start(n) if n > 1 else 1
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
