"""The CPU fast path: the one place where the explorer reaches into tinygrad's private internals.

Each piece gives the same numbers as stock tinygrad (tested: tests/test_fastpath.py), only faster on the CPU:
  replay.py         a captured TinyJit step called straight from a plan, without tinygrad's per-call bookkeeping
  cpu_threads.py    the pieces tinygrad splits a big CPU kernel into, run on a native thread pool (pool.c) instead
                    of one by one; a replayed step is one call of it
  program_cache.py  lowered kernels kept in tinygrad's disk cache, so a new process does not lower them again
  beam_guard.py     BEAM choices timed once against tinygrad's stock kernels: a slower one is not used
  tiles.py          without BEAM, the big kernels' register tiles fitted to this CPU in seconds (bit-identical)
  wide_loads.py     loads and stores of 8 floats, so those tiles run in 256-bit registers (same arithmetic)
  compile_workers.py  tinygrad's compile workers get the wide loads and end with the explorer
  buffers.py        batches copied straight into preallocated device buffers, scalars read straight out of theirs

They were written against tinygrad TINYGRAD_VERSION. The CLI calls install() once at start-up (tests and bench scripts
that build a Trainer themselves call it too). Stock tinygrad runs instead, with the same numbers, when --stock or
EXPLORER_STOCK=1 asks for it, on every device other than the CPU, under another tinygrad version, and when any piece
fails to install (one notice line says which). Nothing outside this package imports anything from tinygrad but its
public API (`from tinygrad import ...`, `tinygrad.nn`); the module itself does not import tinygrad until install()."""
from __future__ import annotations
import contextlib, hashlib, os
from pathlib import Path

TINYGRAD_VERSION = "0.14.0"  # the version whose internals these pieces use
STOCK_ENV = "EXPLORER_STOCK"
_on = False
_replay = _buffers = _cpu_threads = _beam_guard = _tiles = None  # the installed pieces' modules
status = "stock tinygrad (fast path not installed)"  # what runs, in words (the CLI prints it)


def stock_requested() -> bool: return os.environ.get(STOCK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def install(stock: bool = False) -> str | None:
  """Install every piece, or none: returns None, or the one notice line that says why stock tinygrad runs instead."""
  global _on, status, _replay, _buffers, _cpu_threads, _beam_guard, _tiles
  if _on: return None
  if stock or stock_requested():
    status = f"stock tinygrad (--stock / {STOCK_ENV}=1)"
    return None
  from importlib.metadata import version
  from tinygrad import Device
  if not Device.DEFAULT.startswith("CPU"):
    status = f"stock tinygrad (the fast path is for the CPU device; this is {Device.DEFAULT})"
    return None
  if (found := version("tinygrad")) != TINYGRAD_VERSION:
    status = f"stock tinygrad (the fast path was written for tinygrad {TINYGRAD_VERSION}, this is {found})"
    return f"notice: the CPU fast path was written for tinygrad {TINYGRAD_VERSION}, not {found}: running stock tinygrad (same numbers, slower)"
  try:
    from explorer.fastpath import beam_guard, buffers, compile_workers, cpu_threads, program_cache, replay, tiles, wide_loads
    for piece in (beam_guard, buffers, compile_workers, cpu_threads, program_cache, replay, tiles, wide_loads): piece.check()
    beam_guard.install()  # the pieces that patch tinygrad up front (cpu_threads does when --threads > 1)
    program_cache.install()
    tiles.install()
    wide_loads.install()
    compile_workers.install()
  except Exception as e:  # a renamed or removed internal: nothing is left installed
    status = "stock tinygrad (the fast path failed to install)"
    return f"notice: the CPU fast path could not be installed ({type(e).__name__}: {' '.join(str(e).split())[:200]}): running stock tinygrad (same numbers, slower)"
  _replay, _buffers, _cpu_threads, _beam_guard, _tiles = replay, buffers, cpu_threads, beam_guard, tiles
  _on, status = True, "CPU fast path (replay, kernel threads, lowered-kernel disk cache, tiles fitted to this CPU with wide loads, BEAM choices checked)"
  return None


def active() -> bool: return _on


def require(obj, *names: str) -> None:
  """Each piece's check(): the internals it uses are still there (a renamed one fails the install, not a training)."""
  if missing := [n for n in names if not hasattr(obj, n)]: raise AttributeError(f"{getattr(obj, '__name__', obj)} has no {', '.join(missing)}")


# ---- what the trainer calls: the fast piece when installed, stock tinygrad's own way otherwise

def call(jit, *args):
  """jit(*args): replayed from a plan where one applies."""
  return _replay.call(jit, *args) if _on else jit(*args)


def write_input(t, a):
  """The tensor to pass to a compiled step for host array a: t's preallocated buffer filled with a (fast path), or a
  new Tensor (stock)."""
  if _on: return _buffers.write_input(t, a)
  x = host_tensor(a, t.device)
  return x if x.dtype == t.dtype else x.cast(t.dtype)


def fill(t, values) -> None:
  """Write host values into realized tensor t's own buffer, in place, so a compiled step that reads t sees them: the
  allocator's copy on the fast path (no schedule: resetting a run through tinygrad's assign took 0.3 s), tinygrad's
  assign on stock tinygrad. The values are converted to t's dtype on the host either way."""
  import numpy as np
  a = np.asarray(values, np.dtype(t.dtype.fmt)).reshape(t.shape)
  if _on and _buffers.fill(t, a): return
  t.assign(host_tensor(a, t.device)).realize()


def host_tensor(a, device: str):
  """Tensor(a, device=device) for host array a. CUDA's copy-in takes the address of a writable view of the array, so a
  read-only one (a slice of the loaded dataset, weights read from a file) is copied first: otherwise every evaluation
  on a GPU fails with 'underlying buffer is not writable'."""
  import numpy as np
  from tinygrad import Tensor
  return Tensor(a if a.flags.writeable and a.flags.c_contiguous else np.ascontiguousarray(a).copy(), device=device)


def read_scalar(t) -> float:
  return _buffers.read_scalar(t) if _on else t.item()


def set_threads(n: int) -> int:
  """CPU kernel threads per process from now on (the calling one included); always 1 on stock tinygrad."""
  return _cpu_threads.set_threads(n) if _on else 1


def threads() -> int:
  return _cpu_threads.threads() if _on else 1


def default_threads(workers: int = 1) -> int:
  """Threads per explorer process: the cores divided by the processes, at most tinygrad's pieces per kernel."""
  return _cpu_threads.default_threads(workers) if _on else 1


def one_thread():
  """A block in which kernels run on the calling thread only (BEAM search times them that way)."""
  return _cpu_threads.one_thread() if _on else contextlib.nullcontext()


def fitting_tiles(calls: int | None = None):
  """A block whose kernels get register tiles fitted to this CPU (tiles.py): a step's first call. calls: how often the
  command will call that step, where known (kernels too brief to pay for their tuning keep tinygrad's tiles). Nothing
  changes with tiles off, on stock tinygrad, or with BEAM set (tinygrad's env var, or --beam: BEAM's choices are used then)."""
  return _tiles.fitting(calls) if _on else contextlib.nullcontext()


def on_tiles_tuned(callback) -> None:
  """callback(kernels tuned since the last notice) after each kernel tuned, or None: the progress of a first run."""
  if _on: _tiles.on_tuned = callback


def tiles_notice() -> str | None:
  """One line when kernels were tuned for this CPU since the last call (else None)."""
  return _tiles.notice() if _on else None


def beam_notice(command: str) -> str | None:
  """One line when a kernel search since the last call ran under load or a BEAM choice was not used (else None)."""
  return _beam_guard.notice(command) if _on else None


def kernel_pieces() -> int:
  """How many pieces tinygrad compiles a big CPU kernel into (its NUM_CPU_THREADS)."""
  from tinygrad.helpers import NUM_CPU_THREADS
  return NUM_CPU_THREADS.value


# ---- where tinygrad keeps its downloads (no speed-up, but tinygrad-internal knowledge: explorer.data looks there)

def tinygrad_downloads_dir(cache_home: Path) -> Path:
  """tinygrad.helpers._ensure_downloads_dir without importing tinygrad (or running its sudo mkdir on a tinybox)."""
  if Path("/etc/tinybox-release").is_file(): return Path("/raid/downloads")
  return cache_home / "tinygrad" / "downloads"


def tinygrad_download(url: str, cache_home: Path) -> Path:
  """Where tinygrad's fetch(url, gunzip=True) stores the un-gzipped file."""
  return tinygrad_downloads_dir(cache_home) / (hashlib.md5(url.encode()).hexdigest() + ".gunzip")
