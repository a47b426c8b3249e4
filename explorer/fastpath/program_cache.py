"""Keep tinygrad's lowered kernels on disk, so a new process does not lower the same kernels again.

tinygrad caches a compiled kernel's machine code on disk (keyed by its C source) and BEAM's choices (keyed by the
kernel), but lowering a kernel to that source happens in Python in every new process: about 3 s for the MLP's train
step and 1 s for its eval step, 85 % of a first step whose binaries are all cached. tinygrad already keeps the lowered
programs of one process in a dict (`to_program_cache`, keyed by the kernel's AST, device target and compile flags);
here that dict also reads from and writes to tinygrad's own on-disk database, in a table of its own. The programs
are the ones tinygrad made, so the results are bit-identical (tested). Each takes about 7 KB on disk (the MLP's train
and eval steps lower ~70 kernels); deleting the table, or tinygrad's whole cache.db, only costs the lowering again.

A stored program remembers the BEAM choices it was made with and is used only while tinygrad's BEAM cache still holds
the same choices (a new search, e.g. with IGNORE_BEAM_CACHE=1, makes it lowered again).

Off with EXPLORER_PROGRAM_CACHE=0, or tinygrad's CACHELEVEL=0 (which turns off all of tinygrad's disk caches). Not
read with DEBUG>=4 (tinygrad prints each kernel's source while lowering it) or IGNORE_BEAM_CACHE=1 (BEAM searches
again; what it finds replaces the stored programs)."""
from __future__ import annotations
import functools, hashlib, os, pickle, zlib
from tinygrad import codegen
from tinygrad.engine import realize
from tinygrad.helpers import DEBUG, IGNORE_BEAM_CACHE, diskcache_get, diskcache_put
from tinygrad.codegen.opt import search
from explorer.fastpath import tiles, wide_loads
from explorer.machine import cpu_name

TABLE = "mnist_explorer_program_z"  # zlib-compressed pickles: a lowered program is ~25 KB raw, ~7 KB packed
stats = {"disk_hits": 0, "disk_writes": 0, "stale": 0}  # tests check them
_searches: list[tuple[dict, object]] = []  # BEAM choices made while lowering the current kernel: (beam cache key, opts)


HOST = cpu_name()  # the binaries are built for this machine's CPU (-march=native), and a home folder can be shared


def check() -> None:
  from explorer.fastpath import require
  require(codegen, "to_program_cache")
  require(realize, "to_program_cache")
  if not isinstance(codegen.to_program_cache, dict) or realize.to_program_cache is not codegen.to_program_cache:
    raise TypeError("tinygrad's to_program_cache is no longer one dict shared by codegen and realize")


def _search_wrapped_by(mark: str) -> bool:
  """Whether a wrapper marked so is around tinygrad's beam_search (explorer.fastpath.cpu_threads adds one that splits)."""
  fn = search.beam_search
  while fn is not None:
    if getattr(fn, mark, False): return True
    fn = getattr(fn, "__wrapped__", None)
  return False


def disk_key(key: tuple) -> str:
  """tinygrad's in-process key (AST hash, renderer class and target, compile flags) plus what else shapes the program:
  the explorer's split of searched kernels into thread pieces, the CPU it was built on, the tiles' candidate set (a new
  one in tiles.py comes with a new table name: the kernels are tuned and lowered again) and whether loads are wide."""
  ast_key, renderer_type, *rest = key
  return hashlib.sha256(repr((ast_key, renderer_type.__module__, renderer_type.__qualname__, *rest, _search_wrapped_by("splits"), HOST,
                              tiles.TABLE, wide_loads.installed() and wide_loads.active())).encode()).hexdigest()


def enabled() -> bool: return os.environ.get("EXPLORER_PROGRAM_CACHE", "1") != "0"


def readable() -> bool: return enabled() and DEBUG < 4 and not IGNORE_BEAM_CACHE


def beam_key(s, amt: int, allow_test_size) -> dict:
  """The key tinygrad's BEAM cache stores a kernel's choice by (search.beam_search builds the same)."""
  return {"ast": s.ast.key, "amt": amt, "allow_test_size": allow_test_size, "device": s.ren.target.device, "suffix": s.ren.suffix}


def _recording(beam_search):
  """beam_search, noting the choice it returns under the key tinygrad's BEAM cache stores it by."""
  @functools.wraps(beam_search)
  def recorded(s, rawbufs, var_vals, amt, allow_test_size=True, *args, **kwargs):
    key = beam_key(s, amt, allow_test_size)
    k = beam_search(s, rawbufs, var_vals, amt, allow_test_size, *args, **kwargs)
    _searches.append((key, diskcache_get("beam_search", key)))
    return k
  recorded.records = True
  return recorded


class DiskBackedPrograms(dict):
  """tinygrad's to_program_cache, with a miss looked up on disk and every new entry written there."""
  _stale: set = set()
  def _load(self, key) -> bool:
    _searches.clear()  # a miss: tinygrad lowers this kernel next, and its searches are recorded from here
    if not readable(): return False
    try:
      packed = diskcache_get(TABLE, disk_key(key))
      if packed is None: return False
      entry = pickle.loads(zlib.decompress(packed))
      if any(diskcache_get("beam_search", beam_key) != opts for beam_key, opts in entry["searches"]):
        stats["stale"] += key not in self._stale  # BEAM chose differently since: lower it again with the new choice
        self._stale.add(key)
        return False
      prg = entry["program"]
    except Exception: return False  # an unreadable entry (another tinygrad, a damaged file): lower it again
    super().__setitem__(key, prg)
    stats["disk_hits"] += 1
    return True

  def __contains__(self, key) -> bool: return super().__contains__(key) or self._load(key)
  def get(self, key, default=None): return super().get(key) if key in self else default
  def __missing__(self, key):
    if self._load(key): return super().__getitem__(key)
    raise KeyError(key)

  def __setitem__(self, key, prg) -> None:
    known = super().__contains__(key)  # tinygrad stores a new program twice (codegen, then realize): one write
    super().__setitem__(key, prg)
    if known or not enabled(): return
    try:
      diskcache_put(TABLE, disk_key(key), zlib.compress(pickle.dumps({"program": prg, "searches": list(_searches)})))
      stats["disk_writes"] += 1
    except Exception: pass  # a read-only or full disk: the program still works in this process
    _searches.clear()


def install() -> None:
  """Swap the disk-backed dict in for tinygrad's (both modules hold the name); what is already lowered is kept."""
  if isinstance(codegen.to_program_cache, DiskBackedPrograms): return
  if not _search_wrapped_by("records"): search.beam_search = _recording(search.beam_search)
  codegen.to_program_cache = realize.to_program_cache = DiskBackedPrograms(codegen.to_program_cache)
