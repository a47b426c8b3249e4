"""Kernel choices from BEAM search that never make a step slower than stock tinygrad.

BEAM times candidate kernels on this machine, and tinygrad keeps its choice on disk for good. A search that ran while
other processes used the cores timed its candidates under noise, and its choice can run several times slower than the
kernel tinygrad's own hand-coded optimizations give the same shape (seen: batch-256 at 47.7 ms/step with --beam 2).

So every choice (searched now, or read from tinygrad's cache) is timed once against that stock kernel, both on the
calling thread, alternately, best of ROUNDS: a choice more than SLOWER slower is not used, the stock kernel is. The
verdict is kept in tinygrad's disk cache next to the choice, so each choice is timed only once per machine. While a
search runs, the CPU time other processes use is measured (/proc/stat less this process and its compile pool): a
search that shared the cores with them is reported, with how to search again."""
from __future__ import annotations
import functools, multiprocessing, os, time
from tinygrad.codegen.opt import search
from tinygrad.helpers import IGNORE_BEAM_CACHE, diskcache_get, diskcache_put
from explorer.fastpath.program_cache import beam_key
from explorer.fastpath.tiles import stock_kernel

ROUNDS = 5  # timings of each kernel, alternating, the best one counts
SLOWER = 1.10  # a choice slower than the stock kernel by more than this is not used
BUSY_CORES = 0.5  # other processes' average use of the cores during a search above which the search counts as loaded
TABLE = "explorer_beam_check"
stats = {"checked": 0, "rejected": 0, "rejected_cached": 0, "searched": 0, "searched_busy": 0}  # totals (tests read them)
MIN_MEASURED_S = 0.5  # shorter searches are too short for /proc/stat's clock ticks
_searching = [0.0, 0.0]  # since the last notice: seconds spent searching, CPU seconds other processes used meanwhile
_rejected = 0  # choices not used since the last notice


def check() -> None:
  from explorer.fastpath import require
  require(search, "beam_search", "_try_compile", "_time_program", "_ensure_buffer_alloc")


def install() -> None:
  if not getattr(search.beam_search, "guards", False): search.beam_search = _guarded(search.beam_search)


def _guarded(beam_search):
  @functools.wraps(beam_search)
  def guarded(s, rawbufs, var_vals, amt, allow_test_size=True, *args, **kwargs):
    key = beam_key(s, amt, allow_test_size)
    searches = IGNORE_BEAM_CACHE or kwargs.get("disable_cache") or diskcache_get("beam_search", key) is None
    before = _cpu_seconds() if searches else None
    chosen = beam_search(s, rawbufs, var_vals, amt, allow_test_size, *args, **kwargs)
    if before is not None:
      stats["searched"] += 1
      wall, total, own = (now - then for now, then in zip(_cpu_seconds(), before))
      if wall > 0 and wall >= MIN_MEASURED_S:
        _searching[0] += wall
        _searching[1] += max(0.0, total - own)
        stats["searched_busy"] += (total - own) / wall > BUSY_CORES
    return _better(s, chosen, rawbufs, var_vals, {**key, "opts": repr(chosen.applied_opts)})
  guarded.guards = True
  return guarded


def _better(s, chosen, rawbufs, var_vals, key: dict):
  """The searched choice, or the stock kernel where the choice runs slower."""
  if (verdict := diskcache_get(TABLE, key)) is None:
    stock = stock_kernel(s)
    if repr(stock.applied_opts) == key["opts"]: return chosen  # the search chose what tinygrad would have
    chosen_s, stock_s = _time_both(chosen, stock, rawbufs, var_vals)
    verdict = {"chosen_s": chosen_s, "stock_s": stock_s, "use_stock": chosen_s > stock_s * SLOWER}
    stats["checked"] += 1
    stats["rejected"] += verdict["use_stock"]
    _count_rejected(verdict["use_stock"])
    try: diskcache_put(TABLE, key, verdict)
    except Exception: pass  # a read-only disk: checked again next time
  elif verdict["use_stock"]:
    stats["rejected_cached"] += 1
    _count_rejected(True)
  return stock_kernel(s) if verdict["use_stock"] else chosen


def _count_rejected(rejected: bool) -> None:
  global _rejected
  _rejected += rejected


def _time_both(chosen, stock, rawbufs, var_vals) -> tuple[float, float]:
  programs = [_compiled(k) for k in (chosen, stock)]
  if programs[1] is None: return 0.0, float("inf")  # the stock kernel does not compile: keep the choice
  if programs[0] is None: return float("inf"), 0.0
  bufs = search._ensure_buffer_alloc(rawbufs)
  best = [float("inf"), float("inf")]
  for _ in range(ROUNDS):  # alternately, so a burst of load slows both
    for i, prg in enumerate(programs):
      best[i] = min(best[i], *search._time_program(prg, var_vals, bufs, allow_test_size=False, cnt=1))
  return best[0], best[1]


def _compiled(k):
  _, out = search._try_compile((0, k))
  return None if out is None else out[0]


def _cpu_seconds() -> tuple[float, float, float]:
  """(wall clock, CPU time of the whole machine, CPU time of this process and its compile pool), in seconds."""
  tick = os.sysconf("SC_CLK_TCK")
  try:
    with open("/proc/stat") as f: fields = [int(x) for x in f.readline().split()[1:]]
  except OSError: return time.monotonic(), 0.0, 0.0  # not Linux: no load measure
  busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
  t = os.times()
  own = t.user + t.system + t.children_user + t.children_system
  for child in multiprocessing.active_children():  # the compile pool that search compiles candidates in
    try:
      with open(f"/proc/{child.pid}/stat") as f: child_fields = f.read().rsplit(")", 1)[1].split()
      own += sum(int(x) for x in child_fields[11:15]) / tick  # utime, stime and those of its reaped children (clang)
    except (OSError, ValueError, IndexError): pass
  return time.monotonic(), busy / tick, own


def notice(command: str) -> str | None:
  """One line about the searches and checks since the last call, or None when there is nothing to tell."""
  global _rejected
  (wall, others), rejected = _searching, _rejected
  busy = wall > 0 and wall >= MIN_MEASURED_S and others / wall > BUSY_CORES
  _searching[:], _rejected = [0.0, 0.0], 0
  if not busy and not rejected: return None
  again = f"to search again on a quiet machine: IGNORE_BEAM_CACHE=1 {command}"
  if busy:
    return (f"notice: kernel search ran while other processes kept {others / wall:.1f} of {os.cpu_count() or 1} cores busy, "
            f"so its timings were noisy; {rejected} of its choices ran slower than tinygrad's stock kernels and are not used; {again}")
  return f"notice: {rejected} BEAM kernel choices run slower than tinygrad's stock kernels and are not used; {again}"
