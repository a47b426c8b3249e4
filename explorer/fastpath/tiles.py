"""Register tiles fitted to this CPU in about a second per kernel, without a BEAM search, with the same bits as stock tinygrad.

tinygrad's hand-coded optimizations give a big matmul or convolution kernel a 4x4 register tile (UPCAST 4 on two
output axes) and unroll its reduce by 4. With loads of 8 floats (wide_loads.py) an 8x8 tile runs its multiply-adds in
256-bit registers: on this machine the MLP suite's matmuls ran 1.6-3.7x faster on one thread. Most convolutions gain
nothing (bench/README.md). So each big reduce kernel (at least MIN_OPS multiply-adds) of a step the explorer compiles
is lowered as its candidates, in tinygrad's compile pool: the stock kernel, and the first of ROLLED that fits without
the stock's UNROLLs: the 8x8 tile with its reduce rolled (clang then keeps the 64 sums in registers), or the rolled
4x4 where the 8x8 does not fit; where the stock tile is only whole small axes (a weight gradient's 3x3 window), that
window for WIDER output channels at once; for a matmul the command runs for long (WIDE_PAYS_S), also the rolled 16x8
(a kernel tuned before without it is tuned again once, when such a command comes). Each runs on the same random inputs
(standard normals, values that tie, and each float input made loud in turn: _random_starts); a candidate that wrote
exactly the bytes the stock kernel wrote every time is timed against it on one thread, alternately, best of ROUNDS
(one over DROP x the other after the first round is not timed again), and the faster is used. Where the stock kernel
wins, a second round (again all of a step's kernels at once) tries the 8x8 tile with the stock's unrolled reduce kept
(_unrolled). (A bigger tile only changes which outputs one loop iteration computes, not the order of each output's
sum; the check catches the rolled reduces whose order does change, as in a padded 3x3 convolution, and those where
clang fuses into an FMA a product the stock kernel rounds first.) A column sum (one reduce axis, no UPCAST in the
stock opts: tinygrad sums one output at a time) from ROW_MIN_OPS adds also gets ROW outputs at once as a candidate
(the only one below MIN_OPS); another big kernel without any UPCAST in the stock opts, FEW outputs at once.

Only kernels the command runs long enough to pay the tuning back are tuned, where the runs it plans are known
(fitting(calls): the CLI's Trainer.plan): each one's stock program is lowered and timed once first, and one whose
planned calls would take under PAYS_S on one thread keeps it, without a verdict (a CNN quick pass, `--max-steps 3`, on
a new machine: 106.9 s before, 74.9 s with it).

The choice is kept in tinygrad's disk cache (table TABLE), so each kernel is tuned once per machine, and the program
the pool lowered for it is the one the step runs: tuning adds the candidates' lowering (all of a step's kernels' at
once, in parallel) and the check, not a second lowering. Lowering is most of a first run's tuning, so candidates are
few. The unrolled 8x8 lowers at about twice a rolled one's cost; as a first-round candidate (until 2026-11-26) it took
half of all the lowering (the MLP suite's tuning: 39.9 s with it, 21.5 s without) for 3 % on the MLP's tuned kernels,
so it went; but on the CNN's biggest kernel (its second convolution's input gradient: about 40 % of the batch-128 step)
it is the only candidate faster than the stock one, so it came back for the kernels the first round leaves stock. Wider
tiles (16x8, 16x4) gained 5-20 % more on a few of the MLP's kernels but more than doubled a first run's tuning time.

It works where tinygrad lowers the kernels of a schedule (realize.lower_and_compile): inside `fitting()`, each big
kernel's AST is given the chosen opts (`opts_to_apply`, tinygrad's own way to fix a kernel's opts) before tinygrad
lowers the schedule's kernels in its pool as usual. Off with EXPLORER_TILES=0; --beam N uses BEAM's choices instead, and
so does tinygrad's own BEAM env var when set."""
from __future__ import annotations
import contextlib, fcntl, functools, os, time
from dataclasses import replace
from typing import Callable
import numpy as np
from tinygrad import Device, dtypes
from tinygrad.codegen.opt import KernelOptError, Opt, OptOps, heuristic, search
from tinygrad.codegen.opt.postrange import Scheduler, args_from_ast
from tinygrad.engine import realize
from tinygrad.helpers import BEAM, CACHEDB, diskcache_get, diskcache_put, prod
from tinygrad.uop.ops import AxisType, Ops
from explorer.fastpath import cpu_threads
from explorer.machine import cpu_name

MIN_OPS = 1 << 20  # smaller kernels run in well under a millisecond: not worth another compile, except...
ROW_MIN_OPS = 1 << 15  # ...a column sum (one reduce axis, no UPCAST in the stock opts) from this size: its ROW candidate only
ROW = 16  # outputs of a column sum's first axis at once: the stock sums one column at a time, reading one float a row
FEW = 4  # outputs at once for another big kernel the stock computes one output at a time (a CNN step's kernel over the
# first convolution's 3x3 windows, one channel at a time: 22.1 ms on one thread, 9.7 with 4 channels at once)
ROUNDS = 3
DROP = 1.5
# A candidate must write the stock kernel's bytes from standard normals, from values that tie, and from each float
# input made loud in turn (_random_starts). Normals alone let through a rolled sum in which clang fused a product
# into an FMA where the stock kernel rounded it first: the product was 1e-5 of the sum, so it showed only in real runs
# (the CNN's batchnorm records).
LOUD = 2.0 ** 20
ROLLED = ((2, 2), (1, 1))  # the 8x8 tile with its reduce rolled, or the stock 4x4 rolled where 8x8 does not fit
WIDER = 8  # outputs at once on a further axis where the stock tile is whole small axes (the CNN's second convolution's
# weight gradient: its 3x3 window per output and input channel, 17.2 ms on one thread; 7.7 with 8 output channels)
UNROLLED = 2  # the second round's tile: the stock's first two UPCASTs times this, its UNROLLs kept (_unrolled)
# A kernel is tuned only where this command runs it long enough to pay the tuning back (fitting(calls)): its stock
# program, timed once on one thread, times the calls planned, must reach PAYS_S. Tuning one costs about 0.5 s (the MLP
# suite's first run: 25 kernels in 12.3 s, 9.7 of them lowering) and tuned kernels took 30-93 % less time (most over
# half), so a kernel whose planned calls take 2 s on one thread (1 s on two) gains its tuning back where its tile
# saves half its time. A quick pass (--max-steps 3) or a short configuration (the MLP suite's 100 steps at batch 64)
# keeps the stock kernels: no verdict is stored, so a longer command later tunes them.
PAYS_S = 2.0
# A matmul (one reduce axis) whose planned calls take WIDE_PAYS_S on one thread also gets the 16x8 tile (WIDE: the
# stock's first UPCAST times 4 and its second times 2, else the other way round) as a candidate. It lowers at about
# twice the 8x8's cost (1.0-1.2 s against 0.55-0.64), and on the MLP's kernels it took 20-37 % less time than the 8x8:
# the batch-128 weight gradients 1.75 -> 1.14 and 1.14 -> 0.73 ms, the first layer's forward 1.42 -> 1.17 ms, one
# thread. On the CNN's convolution kernels it lost 7 times of 8 and doubled a new machine's first CNN study's tuning
# (36.1 -> 71.2 s), so convolutions do not get it.
WIDE = ((4, 2), (2, 4))
WIDE_PAYS_S = 10.0
TABLE = "explorer_tiles14"  # a new name tunes every kernel again: for new candidates (dropping one needs none)
HOST = cpu_name()
stats = {"tuned": 0, "cached": 0, "kept_stock": 0, "not_identical": 0, "brief": 0}  # totals (tests read them)
_since_notice = [0, 0.0, 0]  # kernels tuned, seconds spent and kernels too brief to tune since the last notice
on_tuned: Callable[[int], None] | None = None  # called with the kernels tuned since the last notice (a progress line)
_fitting = False  # inside fitting(): the kernels lowered now get fitted tiles
_calls: int | None = None  # inside fitting(calls): how often this command will run them (None: not known, all tuned)
_stock_s: dict[str, float] = {}  # the stock kernels timed in this process, by tile-cache key: a step's capture lowers
# its kernels a second time, and a kernel too brief to tune then is still too brief


def check() -> None:
  from explorer.fastpath import require
  require(realize, "lower_and_compile", "_compile_kernel", "to_program_key", "to_program_context", "terminate_worker_pool")
  require(search, "_time_program", "_ensure_buffer_alloc", "get_worker_pool")
  require(heuristic, "hand_coded_optimizations")
  require(Scheduler, "convert_loop_to_global", "apply_opt", "copy")
  require(Ops, "STAGE", "SINK", "CALL")


def enabled() -> bool: return os.environ.get("EXPLORER_TILES", "1") != "0"


def install() -> None:
  """Put the tile choice in front of tinygrad's lowering of a schedule's kernels."""
  if not getattr(realize.lower_and_compile, "tiles", False): realize.lower_and_compile = _with_tiles(realize.lower_and_compile)


@contextlib.contextmanager
def fitting(calls: int | None = None):
  """The kernels lowered inside this block (a step's first call) get the tiles fitted to this CPU, where enabled and
  no BEAM is set. calls: how often this command will run them, where known: only those that run long enough to pay
  for their tuning (PAYS_S) are tuned."""
  global _fitting, _calls
  saved, (_fitting, _calls) = (_fitting, _calls), (enabled() and BEAM.value == 0, calls)
  try: yield
  finally: _fitting, _calls = saved


def _with_tiles(lower_and_compile):
  @functools.wraps(lower_and_compile)
  def lowered(linear):
    if _fitting:
      fitted = _fitted([c for c in linear.toposort() if c.op is Ops.CALL])
      if fitted: linear = linear.substitute({c: c.replace(src=(sink, *c.src[1:])) for c, sink in fitted.items()}, name="fitted tiles")
    return lower_and_compile(linear)
  lowered.tiles = True
  return lowered


def _fitted(calls) -> dict:
  """{call: its kernel AST with the opts of its fitted tile} for the calls whose tile is not the stock one. Kernels not
  tuned on this machine yet are tuned first, their candidates lowered all together in tinygrad's compile pool (one
  kernel at a time left a worker idle: 18 s against 12-15 s for the MLP suite's 25 kernels)."""
  verdicts, todo = {}, {}
  for c in calls:
    if (kernel := _big_reduce(c)) is None: continue
    if (verdict := _cached_verdict(kernel)) is not None and not _widens(verdict, kernel): verdicts[c] = verdict
    elif verdict is None and _calls is not None and _calls * _stock_s.get(repr(kernel["key"]), PAYS_S) < PAYS_S: continue  # still too brief
    else: todo.setdefault(repr(kernel["key"]), (kernel, []))[1].append(c)  # the same kernel twice: tuned once
  if todo:
    if on_tuned: on_tuned(_since_notice[0])  # the progress line says tiles are being fitted while their candidates lower
    with _one_tuner():
      t0 = time.perf_counter()  # the notice's seconds: tuning, not waiting for another process's
      for key, (kernel, same_calls) in list(todo.items()):  # tuned by another process while this one waited
        if (verdict := _cached_verdict(kernel)) is not None and not _widens(verdict, kernel):
          verdicts.update(dict.fromkeys(same_calls, verdict))
          del todo[key]
      _tune_all(todo, verdicts)
      _since_notice[1] += time.perf_counter() - t0
  return {c: _fixed(c.src[0], v["opts"]) for c, v in verdicts.items() if v["opts"] is not None}


def _widens(verdict: dict, kernel) -> bool:
  """Whether a matmul tuned without the 16x8 candidate runs long enough in this command to be tuned again with it
  (once: the new verdict says it was considered)."""
  return not verdict.get("wide") and _wide_enough(kernel, verdict.get("stock_s") or 0.0)


def _wide_enough(kernel, stock_s: float) -> bool:
  """Whether the 16x8 tile is a candidate: a matmul (one reduce axis) whose planned calls take WIDE_PAYS_S."""
  return _calls is not None and _calls * stock_s >= WIDE_PAYS_S and sum(t is AxisType.REDUCE for t in kernel["s"].axis_types) == 1


def _cached_verdict(kernel) -> dict | None:
  """The kernel's verdict, where a process of this machine has tuned it, else None."""
  if (verdict := diskcache_get(TABLE, kernel["key"])) is not None: stats["cached"] += 1
  return verdict


@contextlib.contextmanager
def _one_tuner():
  """One process of this machine tunes at a time. --workers helpers on a new machine start with the same shapes: each
  tuned the same kernels at once, and `--workers 2` finished a first MLP suite no sooner than one process (106.6 and
  109.0 s against 111.8 and 106.7; with the lock, d627307, 105.6 and 101.5 against 116.7 and 115.0). Now the
  others wait, then read the choices (a lock file beside tinygrad's cache database; where it cannot be made, no lock)."""
  try: f = open(f"{CACHEDB}.explorer-tiles.lock", "a")
  except OSError: f = None
  try:
    if f is not None: fcntl.flock(f, fcntl.LOCK_EX)
    yield
  finally:
    if f is not None: f.close()  # closing releases the lock


def _tune_all(todo: dict, verdicts: dict) -> None:
  """Tune todo's kernels ({key: (kernel, its calls)}), their candidates lowered all at once, and note each verdict for
  its calls and on disk. Where the stock kernel beat every candidate, a second round lowers the 8x8 tile with the
  stock's reduce unrolled as it is (_unrolled), again all at once, and times it against the stock kernel. Where the
  calls planned are known (fitting(calls)), the stock kernels are lowered and timed first, and only those that pay
  for their tuning (PAYS_S) are tuned."""
  if not todo: return
  kernels = [kernel for kernel, _ in todo.values()]
  programs = {} if _calls is None else _stock_programs(kernels)
  for k in range(len(kernels)):
    if (k, 0) in programs: _stock_s[repr(kernels[k]["key"])] = _stock_seconds(kernels[k], programs[k, 0])
  tuned = [k for k in range(len(kernels)) if (k, 0) not in programs or _calls * _stock_s[repr(kernels[k]["key"])] >= PAYS_S]
  for k in set(range(len(kernels))) - set(tuned):  # too brief to pay for its tuning: the stock kernel, no verdict kept
    _keep(kernels[k]["ast"], kernels[k]["ren"], programs[k, 0])
    stats["brief"] += 1
    _since_notice[2] += 1
  wide = {k for k in tuned if _wide_enough(kernels[k], _stock_s.get(repr(kernels[k]["key"]), 0.0))}
  candidates = {k: _candidates(kernels[k], k in wide) for k in tuned}
  programs.update(_lowered({(k, i): (ast, kernels[k]["ren"]) for k in tuned for i, ast in enumerate(candidates[k]) if (k, i) not in programs}))
  def lowered(k: int) -> dict: return {i: programs[k, i] for i in range(len(candidates[k])) if (k, i) in programs}
  found = {k: _fastest(kernels[k], lowered(k)) for k in tuned}  # (best, times) of each kernel
  second = {k: ast for k in tuned if found[k][0] == 0 and (ast := _unrolled(kernels[k])) is not None}
  for k, program in _lowered({k: (ast, kernels[k]["ren"]) for k, ast in second.items()}).items():
    if (k, 0) not in programs: continue
    i = len(candidates[k])
    candidates[k].append(second[k])
    programs[k, i] = program
    best, times = _fastest(kernels[k], {0: programs[k, 0], i: program})
    found[k] = (best, {**found[k][1], **times})
  for k, (kernel, same_calls) in enumerate(todo.values()):
    if k not in found: continue
    verdict = {**_tune(kernel, candidates[k], lowered(k), *found[k]), "wide": k in wide}
    try: diskcache_put(TABLE, kernel["key"], verdict)
    except Exception: pass  # a read-only disk: tuned again next time
    verdicts.update(dict.fromkeys(same_calls, verdict))


def _stock_programs(kernels: list) -> dict:
  """{(index, 0): program} of each kernel's stock program: from tinygrad's program cache (on disk too:
  program_cache.py) where a process lowered it before, else lowered now, all at once in the compile pool."""
  cache, found = realize.to_program_cache, {}
  for k, kernel in enumerate(kernels):
    if (key := realize.to_program_key(kernel["ast"], kernel["ren"])) in cache: found[k, 0] = cache[key]
  return {**found, **_lowered({(k, 0): (kernel["ast"], kernel["ren"]) for k, kernel in enumerate(kernels) if (k, 0) not in found})}


def _stock_seconds(kernel, program) -> float:
  """One run of the kernel's stock program on one thread (the faster of two: the first also touches new memory)."""
  rawbufs, var_vals = args_from_ast(kernel["ast"], kernel["ren"].target.device)
  bufs = search._ensure_buffer_alloc(rawbufs)
  with cpu_threads.one_thread(): return min(search._time_program(program, var_vals, bufs, allow_test_size=False, cnt=2))


def _keep(ast, ren, program) -> None:
  """The program a step will run for ast: put where tinygrad's lowering finds it (and program_cache.py stores it), so
  it is not lowered a second time."""
  cache, key = realize.to_program_cache, realize.to_program_key(ast, ren)
  if key not in cache: cache[key] = program


def _fastest(kernel, programs: dict) -> tuple[int, dict[int, float]]:
  """The index of the fastest of programs ({index: program}, 0 the stock) that writes the stock kernel's bytes, and the
  times measured; the stock kernel, untimed, where nothing else lowered."""
  return _fastest_identical(programs, kernel["ast"], kernel["ren"]) if len(programs) > 1 and 0 in programs else (0, {})


def _big_reduce(call) -> dict | None:
  """The call's kernel where it is a big reduce on the CPU (a column sum from ROW_MIN_OPS adds, anything else from
  MIN_OPS): its AST, scheduler, renderer, the tile cache's key and, for a small one, its stock kernel. Else None."""
  ast = call.src[0]
  if ast.op is not Ops.SINK or ast.tag is not None or ast.arg.opts_to_apply is not None or ast.arg.beam: return None
  device = call.device if isinstance(call.device, str) else call.device[0]
  if not device.startswith("CPU") or any(u.op is Ops.STAGE for u in ast.backward_slice): return None  # multi-block: no opts
  ren = Device[device].renderer
  s = Scheduler(ast, ren)
  s.convert_loop_to_global()  # as tinygrad's apply_opts starts
  if s.reduceop is None or (n := prod(s.full_shape)) < ROW_MIN_OPS: return None
  stock = stock_kernel(s) if n < MIN_OPS else None  # a kernel this small is tuned only as a column sum
  if stock is not None and not _column_sum(s, stock): return None
  return {"ast": ast, "s": s, "ren": ren, "stock": stock, "key": {"ast": ast.key, "device": ren.target.device, "suffix": ren.suffix, "host": HOST}}


def _column_sum(s, stock=None) -> bool:
  """One reduce axis and no UPCAST in the stock opts: tinygrad sums one output at a time (the MLP's bias gradients,
  a batch of 128 rows of 512, took 0.2 ms each per step on one thread, walking each column 2 KiB a row)."""
  return sum(t is AxisType.REDUCE for t in s.axis_types) == 1 and not any(o.op is OptOps.UPCAST for o in (stock or stock_kernel(s)).applied_opts)


def stock_kernel(s):
  """What tinygrad does without BEAM (postrange.apply_opts): its hand-coded optimizations, none for multi-block kernels."""
  if any(u.op is Ops.STAGE for u in s.ast.backward_slice): return s.copy()
  return heuristic.hand_coded_optimizations(s.copy())


def _fixed(ast, opts):
  """ast with its opts fixed (tinygrad applies them to a fresh scheduler, as it applies its heuristic's)."""
  return ast.replace(arg=replace(ast.arg, opts_to_apply=tuple(opts)))


def _candidates(kernel, wide: bool = False) -> list:
  """The kernel's AST as it is (the stock tile) and with the opts of each candidate tile that fits it (wide: the 16x8
  tile too)."""
  s, ast = kernel["s"], kernel["ast"]
  stock = kernel["stock"] or stock_kernel(s)
  variants = _variants(stock.applied_opts, _column_sum(s, stock), wide)
  if prod(s.full_shape) < MIN_OPS: variants = variants[-1:]  # a small column sum: its ROW candidate only
  fitting_ones = (next((k for k in map(functools.partial(_with, s), alternatives) if k is not None), None) for alternatives in variants)
  return [ast, *(_fixed(ast, k.applied_opts) for k in fitting_ones if k is not None)]


def _tune(kernel, asts: list, programs: dict, best: int, times: dict) -> dict:
  """The verdict for a kernel whose candidate asts were lowered into programs ({index: program}, 0 the stock), of which
  best was the fastest with the stock kernel's bytes."""
  if best in programs: _keep(asts[best], kernel["ren"], programs[best])  # not lowered a second time
  stats["tuned"] += 1
  stats["kept_stock"] += best == 0
  _since_notice[0] += 1
  if on_tuned: on_tuned(_since_notice[0])
  return {"opts": None if best == 0 else list(asts[best].arg.opts_to_apply), "stock_s": times.get(0), "chosen_s": times.get(best)}


def _unrolled(kernel):
  """The second round's candidate: the stock opts with their first two UPCASTs doubled and their UNROLLs kept (the 8x8
  tile with the stock's unrolled reduce), where the stock kernel unrolls and that fits; else None. It lowers at about
  twice the cost of a rolled one, so only kernels the first round left stock get it: the CNN's biggest, its second
  convolution's input gradient, whose rolled 8x8 ran at 73.5 ms on one thread and whose stock at 49.2, took 21.4."""
  if kernel["stock"] is not None: return None  # a small column sum: its ROW candidate only
  opts = stock_kernel(kernel["s"]).applied_opts
  ups = [i for i, o in enumerate(opts) if o.op is OptOps.UPCAST and o.arg][:2]
  if not ups or not any(o.op is OptOps.UNROLL for o in opts): return None
  k = _with(kernel["s"], [Opt(o.op, o.axis, o.arg * UNROLLED) if j in ups else o for j, o in enumerate(opts)])
  return None if k is None else _fixed(kernel["ast"], k.applied_opts)


def _variants(opts, column_sum: bool = False, wide: bool = False) -> list[list[list]]:
  """Candidates, each a list of alternatives of which the first that fits the kernel is lowered: the stock opts
  without their UNROLLs (rolled), their first two UPCASTs scaled by the first of ROLLED that fits (left out where that
  is the stock opts themselves), or, where the stock UPCASTs are all whole small axes, with WIDER outputs at once on
  the first axis (else the second); for a column sum, ROW of its outputs at once (on its first axis, else its second); for
  any other kernel the stock computes one output at a time (no UPCAST), FEW outputs at once (on its second axis, else
  its first: a convolution's channels, which share every input value); where wide, the rolled 16x8 tile (WIDE)."""
  ups = [i for i, o in enumerate(opts) if o.op is OptOps.UPCAST and o.arg][:2]
  def rolled(scale) -> list:
    times = dict(zip(ups, scale))
    return [Opt(o.op, o.axis, o.arg * times[j]) if j in times else o for j, o in enumerate(opts) if o.op is not OptOps.UNROLL]
  out: list[list[list]] = []
  body, threads = [o for o in opts if o.op is not OptOps.THREAD], [o for o in opts if o.op is OptOps.THREAD]
  if not ups and any(o.op is OptOps.UPCAST for o in opts):  # only whole small axes upcast (a 3x3 window): none to scale
    out.append([[o for o in body if o.op is not OptOps.UNROLL] + [Opt(OptOps.UPCAST, axis, WIDER)] + threads for axis in (0, 1)])
  elif alternatives := [v for v in map(rolled, ROLLED) if v != list(opts)]: out.append(alternatives)
  if wide and len(ups) == 2: out.append([rolled(scale) for scale in WIDE])
  if column_sum: out.append([body + [Opt(OptOps.UPCAST, axis, ROW)] + threads for axis in range(2)])
  elif not any(o.op is OptOps.UPCAST for o in opts): out.append([body + [Opt(OptOps.UPCAST, axis, FEW)] + threads for axis in (1, 0)])
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


def _lowered(kernels: dict) -> dict:
  """{key: program} of the {key: (ast, renderer)} that tinygrad lowered and compiled, in its compile pool (as it lowers
  a schedule); a candidate that does not lower or compile is left out."""
  context = {v.key: v.value for v in realize.to_program_context}
  pool = search.get_worker_pool()
  tasks = [(key, ast_ren, context) for key, ast_ren in kernels.items()]
  try: return {key: prg for key, prg in (pool.imap_unordered if pool is not None else map)(_lower_one, tasks) if prg is not None}
  except KeyboardInterrupt:  # as tinygrad's own lowering: a pool cut mid-task is not reused
    if pool is not None: realize.terminate_worker_pool()
    raise


def _lower_one(task):
  try: return realize._compile_kernel(task)
  except Exception: return task[0], None  # this tile does not lower or compile here: not a candidate


def _fastest_identical(programs: dict, ast, ren) -> tuple[int, dict[int, float]]:
  """The index of the fastest program that writes the same bytes as the stock one (index 0) from every start, and
  each one's time. A candidate over DROP x the fastest identical one on its first run is neither checked further nor
  timed (a slow candidate is the costly one to run: a big convolution's 8x8 took 61-121 ms where its stock took 21-42)."""
  rawbufs, var_vals = args_from_ast(ast, ren.target.device)
  bufs = search._ensure_buffer_alloc(rawbufs)
  starts = _random_starts(bufs)
  normals = next(starts)
  first = {i: _run(prg, bufs, var_vals, normals) for i, prg in programs.items()}  # (bytes, seconds)
  same = [i for i in programs if first[i][0] == first[0][0]]
  stats["not_identical"] += len(programs) - len(same)
  near = [i for i in same if i and first[i][1] <= DROP * min(first[j][1] for j in same)]
  if not near: return 0, {0: first[0][1]}  # the stock kernel is the only one left: nothing to time (one took 0.25 s a run)
  others = list(starts)
  references = [_run(programs[0], bufs, var_vals, start)[0] for start in others]
  timed = {0: programs[0]}
  for i in near:
    if all(_run(programs[i], bufs, var_vals, start)[0] == ref for start, ref in zip(others, references)): timed[i] = programs[i]
    else: stats["not_identical"] += 1
  best = {i: float("inf") for i in timed}
  with cpu_threads.one_thread():  # as tinygrad alone runs them (and BEAM times them)
    for r in range(ROUNDS):  # alternately, so a burst of load slows every candidate
      for i, prg in timed.items():
        if r and best[i] > DROP * min(best.values()): continue  # far behind after the first round: not timed again
        best[i] = min(best[i], *search._time_program(prg, var_vals, bufs, allow_test_size=False, cnt=1))
  return min(best, key=best.get), best


def _random_starts(bufs):
  """Contents for every buffer, one list per start, made as they are asked for: random floats in every float buffer,
  zeros elsewhere (an index buffer of random ints could point anywhere). Standard normals; values that tie (one of
  three, a third of them 0: what a max-pool's backward and anything after a ReLU see); then for each float input i, the
  normals with buffer i LOUD times bigger and the others LOUD times smaller: a product of buffer i's values then weighs
  in every sum, and whether it was rounded before it was added shows. Each buffer's values are drawn once, in float32
  (drawing them afresh for every start took 17 s of a CNN suite's first run); scaling by a power of 2 is exact."""
  rng = np.random.default_rng(0)
  floats = [i for i, b in enumerate(bufs) if b.dtype == dtypes.float32]
  def start(values: dict) -> list: return [values[i] if i in values else bytes(b.nbytes) for i, b in enumerate(bufs)]
  normals = {i: rng.standard_normal(bufs[i].nbytes // 4, dtype=np.float32) for i in floats}
  yield start(normals)
  yield start({i: np.array([0.0, 0.7123, -1.3717], np.float32)[rng.integers(0, 3, bufs[i].nbytes // 4, dtype=np.uint8)] for i in floats})
  louder = np.float32(LOUD)
  for i in [i for i in floats if i]:  # each float input (buffer 0 is the output)
    yield start({j: v * louder if j == i else v / louder for j, v in normals.items()})


def _run(prg, bufs, var_vals, start: list) -> tuple[list[bytes], float]:
  """Every buffer's bytes after one run of prg from the same start (a kernel may also read what it writes), and the
  run's seconds."""
  for b, data in zip(bufs, start): np.frombuffer(_view(b), np.uint8)[:] = np.frombuffer(data, np.uint8)
  seconds = min(search._time_program(prg, var_vals, bufs, allow_test_size=False, cnt=1))
  return [bytes(_view(b)) for b in bufs], seconds


def _view(b) -> memoryview: return b.as_memoryview(force_zero_copy=True).cast("B")


def notice() -> str | None:
  """One line when kernels were tuned since the last call (the first run of a shape on this machine), else None."""
  n, seconds, brief = _since_notice
  _since_notice[:] = [0, 0.0, 0]
  if not n and not brief: return None
  if not n: return f"kept tinygrad's own tiles for {brief} kernel{'s' * (brief != 1)}: this command runs {'them' if brief != 1 else 'it'} too briefly to pay for tuning"
  kept = f" ({brief} more run too briefly here to pay for it)" if brief else ""
  return (f"tuned the register tiles of {n} kernel{'s' * (n != 1)} for this CPU{kept}: {seconds:.1f}s with their compiling, once per "
          "machine (EXPLORER_TILES=0 turns it off)")
