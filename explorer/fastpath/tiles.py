"""Register tiles fitted to this CPU in seconds, without a BEAM search, with the same bits as stock tinygrad.

tinygrad's hand-coded optimizations give a big matmul or convolution kernel a 4x4 register tile (UPCAST 4 on two
output axes) and unroll its reduce by 4. With loads of 8 floats (wide_loads.py) a tile 8 or 16 wide runs its
multiply-adds in 256-bit registers, and on this machine the MLP's matmuls ran 3.7-4.8x faster on one thread with
their best tile; but which tile is best depends on the kernel, and most convolutions gain nothing (bench/README.md,
"Wide loads"). So each big reduce kernel (at least MIN_OPS multiply-adds) is compiled up to five ways: the stock
kernel, its first and second UPCAST scaled by each of SCALES, and ROLLED of those without the stock's UNROLLs (in
tinygrad's compile pool). Each runs once on the same random inputs; those that wrote exactly the bytes the stock
kernel wrote are timed on one thread, alternately, best of ROUNDS (one that took over DROP x the fastest in the first
round is not timed again), and the fastest is used. (A bigger tile only changes which outputs one loop iteration
computes, not the order of each output's sum; the check catches the rolled reduces whose order does change, as in a
padded 3x3 convolution.) The choice is kept in tinygrad's disk cache (table TABLE), so each kernel is tuned once per
machine: 2-4 s per kernel, where BEAM takes minutes. Bounded by construction: at most five compiles and 5 x ROUNDS
timed runs per kernel.

It runs where tinygrad runs BEAM, which lowers kernels in the main process with the device open: the explorer compiles
its steps with BEAM set to SENTINEL, a width only this module answers (tinygrad's search never sees it). Off with
EXPLORER_TILES=0; --beam N uses BEAM's choices instead, and so does tinygrad's own BEAM env var when set."""
from __future__ import annotations
import functools, os, time
from typing import Callable
import numpy as np
from tinygrad import dtypes
from tinygrad.codegen.opt import KernelOptError, Opt, OptOps, heuristic, search
from tinygrad.helpers import diskcache_get, diskcache_put, prod
from tinygrad.uop.ops import Ops
from explorer.machine import cpu_name

SENTINEL = 7_007_007  # the BEAM width that asks for tiles (no one searches with a beam this wide)
MIN_OPS = 1 << 20  # smaller kernels run in well under a millisecond: not worth two more compiles
ROUNDS = 3
DROP = 1.5
SCALES = ((2, 2), (4, 2), (4, 1))  # the stock 4x4 tile becomes 8x8, 16x8 and 16x4 (the first UPCAST is the wider)
ROLLED = ((1, 1),)  # the stock tile with the reduce rolled: 0.9x for the CNN's big convolutions (rolled bigger tiles gained <5%)
TABLE = "explorer_tiles2"  # a new candidate set needs a new name: kernels tuned with the old set are tuned again
HOST = cpu_name()
stats = {"tuned": 0, "cached": 0, "kept_stock": 0, "not_identical": 0}  # totals (tests read them)
_since_notice = [0, 0.0]  # kernels tuned and seconds spent since the last notice
on_tuned: Callable[[int], None] | None = None  # called with the kernels tuned since the last notice (a progress line)


def check() -> None:
  from explorer.fastpath import require
  require(search, "beam_search", "_try_compile", "_time_program", "_ensure_buffer_alloc", "get_worker_pool")
  require(heuristic, "hand_coded_optimizations")
  require(Ops, "STAGE")


def enabled() -> bool: return os.environ.get("EXPLORER_TILES", "1") != "0"


def install() -> None:
  """Put the SENTINEL dispatch in front of tinygrad's beam_search, outside the BEAM guard and the program cache's
  recorder (cpu_threads' splitter, wrapped around it later, passes SENTINEL kernels through unsplit)."""
  if not getattr(search.beam_search, "tiles", False): search.beam_search = _dispatch(search.beam_search)


def _dispatch(beam_search):
  @functools.wraps(beam_search)
  def dispatched(s, rawbufs, var_vals, amt, *args, **kwargs):
    if amt != SENTINEL: return beam_search(s, rawbufs, var_vals, amt, *args, **kwargs)
    return tuned(s, rawbufs, var_vals)
  dispatched.tiles = True
  return dispatched


def stock_kernel(s):
  """What tinygrad does without BEAM (postrange.apply_opts): its hand-coded optimizations, none for multi-block kernels."""
  if any(u.op is Ops.STAGE for u in s.ast.backward_slice): return s.copy()
  return heuristic.hand_coded_optimizations(s.copy())


def tuned(s, rawbufs, var_vals):
  """s with the fastest bit-identical tile of its stock kernel (the stock kernel itself for small ones)."""
  stock = stock_kernel(s)
  if s.reduceop is None or prod(s.full_shape) < MIN_OPS: return stock
  key = {"ast": s.ast.key, "device": s.ren.target.device, "suffix": s.ren.suffix, "host": HOST}
  if (verdict := diskcache_get(TABLE, key)) is not None:
    stats["cached"] += 1
    return _with(s, verdict["opts"]) or stock
  t0 = time.perf_counter()
  candidates = [stock, *(v for v in (_with(s, opts) for opts in _variants(stock.applied_opts)) if v is not None)]
  best, times = _fastest_identical(candidates, rawbufs, var_vals) if len(candidates) > 1 else (0, {})
  stats["tuned"] += 1
  stats["kept_stock"] += best == 0
  _since_notice[0] += 1
  _since_notice[1] += time.perf_counter() - t0
  if on_tuned: on_tuned(_since_notice[0])
  verdict = {"opts": list(candidates[best].applied_opts), "stock_s": times.get(0), "chosen_s": times.get(best)}
  try: diskcache_put(TABLE, key, verdict)
  except Exception: pass  # a read-only disk: tuned again next time
  return candidates[best]


def _variants(opts) -> list[list]:
  """The stock opts with their first two UPCASTs scaled by each of SCALES, and ROLLED of them without the stock's
  UNROLLs (duplicates and the stock opts themselves left out: a kernel with one UPCAST has fewer)."""
  ups = [i for i, o in enumerate(opts) if o.op is OptOps.UPCAST and o.arg][:2]
  out: list[list] = []
  for scale, rolled in [(sc, False) for sc in SCALES] + [(sc, True) for sc in ROLLED]:
    times = dict(zip(ups, scale))
    v = [Opt(o.op, o.axis, o.arg * times[j]) if j in times else o for j, o in enumerate(opts)]
    if rolled: v = [o for o in v if o.op is not OptOps.UNROLL]
    if v != list(opts) and v not in out: out.append(v)
  return out


def _with(s, opts):
  """s with opts applied, or None where a tile does not fit the kernel's shape."""
  k = s.copy()
  try:
    for o in opts[len(s.applied_opts):]: k = _split(k, o) if o.op is OptOps.THREAD else _applied(k, o)
  except KernelOptError: return None
  return k


def _applied(k, o):
  k.apply_opt(o)
  return k


def _split(k, o):
  """k split into pieces by o (THREAD), on o's axis or else on the next axis the pieces divide: a wider tile can leave
  the stock's axis odd (an eval batch of 1000 rows is 125 tiles of 8). Which outputs a piece computes changes, not
  how any output is summed."""
  for axis in (o.axis, *(a for a in range(len(k.full_shape)) if a != o.axis)):
    try: return _applied(k.copy(), Opt(o.op, axis, o.arg))
    except KernelOptError: continue
  raise KernelOptError(f"no axis takes {o.arg} pieces")


def _fastest_identical(candidates: list, rawbufs, var_vals) -> tuple[int, dict[int, float]]:
  """The index of the fastest candidate that writes the same bytes as the stock one (index 0), and each one's time."""
  pool = search.get_worker_pool()
  compiled = dict((pool.imap_unordered if pool is not None else map)(search._try_compile, enumerate(candidates)))
  if compiled.get(0) is None: return 0, {}  # the stock kernel did not compile here: leave it to tinygrad
  bufs = search._ensure_buffer_alloc(rawbufs)
  start = _random_contents(bufs)
  reference = _run(compiled[0][0], bufs, var_vals, start)
  programs = {0: compiled[0][0]}
  for i, out in compiled.items():
    if i == 0 or out is None: continue
    if _run(out[0], bufs, var_vals, start) == reference: programs[i] = out[0]
    else: stats["not_identical"] += 1
  best = {i: float("inf") for i in programs}
  for r in range(ROUNDS):  # alternately, so a burst of load slows every candidate
    for i, prg in programs.items():
      if r and best[i] > DROP * min(best.values()): continue  # far behind after the first round: not timed again
      best[i] = min(best[i], *search._time_program(prg, var_vals, bufs, allow_test_size=False, cnt=1))
  return min(best, key=best.get), best


def _random_contents(bufs) -> list[bytes]:
  """Random floats in every float buffer, zeros elsewhere (an index buffer of random ints could point anywhere)."""
  rng = np.random.default_rng(0)
  start = []
  for b in bufs:
    n = b.nbytes
    start.append(rng.standard_normal(n // 4).astype(np.float32).tobytes() if b.dtype == dtypes.float32 else bytes(n))
  return start


def _run(prg, bufs, var_vals, start: list[bytes]) -> list[bytes]:
  """Every buffer's bytes after one run of prg from the same start (a kernel may also read what it writes)."""
  for b, data in zip(bufs, start): _view(b)[:] = data
  search._time_program(prg, var_vals, bufs, allow_test_size=False, cnt=1)
  return [bytes(_view(b)) for b in bufs]


def _view(b) -> memoryview: return b.as_memoryview(force_zero_copy=True).cast("B")


def notice() -> str | None:
  """One line when kernels were tuned since the last call (the first run of a shape on this machine), else None."""
  n, seconds = _since_notice
  _since_notice[:] = [0, 0.0]
  if not n: return None
  return f"tuned the register tiles of {n} kernel{'s' * (n != 1)} for this CPU in {seconds:.1f}s (once per machine; EXPLORER_TILES=0 turns it off)"
