"""Loads and stores of 8 floats on the CPU, so a register tile 8 or 16 floats wide runs in 256-bit registers.

tinygrad's memory coalescing folds a kernel's adjacent float loads and stores into vectors of at most 4 (8 only for
half, behind ALLOW_HALF8). On x86 that means 128-bit registers: clang then does even a 16-wide tile's multiply-adds 4
floats at a time, where AVX2 does 8. With 8-float loads the same tile runs its FMAs in ymm registers: on this machine
the MLP's matmuls with their best tile ran 2x faster again than with the best 4-float tile (bench/README.md, "Wide
loads"). Only loads and stores change, never the arithmetic or its order: a kernel computes the same bits (tiles.py
still checks each tuned kernel's bytes against the stock kernel's, and the CLI tests compare whole runs with --stock).

The change is one line of tinygrad's memory_coalescing (the allowed lengths), made on a copy of its source at install:
if tinygrad's line is not there any more, the install fails and the explorer runs stock tinygrad (one notice line).
It must reach tinygrad's compile workers too (separate processes that lower kernels): compile_workers.py does it.
On with the tiles: EXPLORER_TILES=0 turns both off (stock kernels, for comparisons), read each time a kernel is lowered."""
from __future__ import annotations
import functools, inspect
from tinygrad import codegen
from tinygrad.codegen.late import coalesce
from explorer.fastpath import tiles

STOCK_LINE = 'lengths = [8,4,2] if buf.dtype == dtypes.half and getenv("ALLOW_HALF8") else [4,2]'
WIDE_LINE = ('lengths = [8,4,2] if (buf.dtype == dtypes.half and getenv("ALLOW_HALF8")) or '
             '(buf.dtype == dtypes.float and ctx is not None and ctx.target.device == "CPU" and explorer_wide_loads()) else [4,2]')


def check() -> None:
  from explorer.fastpath import require
  require(codegen, "memory_coalescing")
  _widened()


@functools.cache  # check() and install() share one copy
def _widened():
  """tinygrad's memory_coalescing with 8-float vectors allowed for float on the CPU device (nothing else changed)."""
  src = inspect.getsource(coalesce.memory_coalescing)
  if src.count(STOCK_LINE) != 1: raise LookupError("tinygrad's memory_coalescing no longer has the line that caps float vectors at 4")
  scope = dict(vars(coalesce))  # its module's names, so the copy resolves everything as the original does
  scope["explorer_wide_loads"] = active
  exec(compile(src.replace(STOCK_LINE, WIDE_LINE), coalesce.__file__, "exec"), scope)
  widened = scope["memory_coalescing"]
  widened.wide = True
  return widened


def installed() -> bool: return getattr(codegen.memory_coalescing, "wide", False)


def active() -> bool: return tiles.enabled()  # what a kernel lowered now gets (with installed())


def install() -> None:
  """In this process (compile_workers.py does it in each compile worker)."""
  codegen.memory_coalescing = _widened()
