"""BEAM choices that never make a step slower (explorer/fastpath/beam_guard.py): a choice slower than tinygrad's stock
kernel is detected, not used and remembered; a search that shares the cores with other processes is reported."""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

BAD_SEARCH = """
import sys
import numpy as np
from tinygrad import Context, Tensor
from tinygrad.codegen.opt import search
def bad_search(s, rawbufs, var_vals, amt, allow_test_size=True, *args, **kwargs):
  return s.copy()  # what a search timed on a busy machine can keep: nothing upcast, unrolled or split
search.beam_search = bad_search
from explorer import fastpath
assert fastpath.install() is None, "the fast path is on"
from explorer.fastpath import beam_guard
rng = np.random.default_rng(0)
a, b = Tensor(rng.standard_normal((256, 512), dtype=np.float32)), Tensor(rng.standard_normal((512, 256), dtype=np.float32))
with Context(BEAM=1): got = (a @ b).numpy()
assert np.allclose(got, a.numpy() @ b.numpy(), rtol=1e-4, atol=1e-3), "the right numbers"
print(beam_guard.stats["checked"], beam_guard.stats["rejected"], beam_guard.stats["rejected_cached"])
print(beam_guard.notice("python mnist_explorer.py mlp --beam 1"))
"""


def run(code: str, cache: Path, **env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "DEV": "CPU", "CACHEDB": str(cache), **env})


def test_a_choice_slower_than_the_stock_kernel_is_not_used_and_remembered(tmp_path):
  first = run(BAD_SEARCH, tmp_path / "cache.db")
  assert first.returncode == 0, first.stdout + first.stderr
  counts, line = first.stdout.splitlines()[:2]
  checked, rejected, rejected_cached = map(int, counts.split())
  assert checked >= 1 and rejected >= 1, "the unoptimized matmul kernel was timed against the stock one and rejected"
  assert "slower than its stock kernels and are not used" in line or "1 of its choices ran slower" in line, line
  assert "IGNORE_BEAM_CACHE=1 python mnist_explorer.py mlp --beam 1" in line
  # lowered again (the explorer's own program cache off): the choice comes back, its verdict is read from disk
  again = run(BAD_SEARCH, tmp_path / "cache.db", EXPLORER_PROGRAM_CACHE="0")
  assert again.returncode == 0, again.stdout + again.stderr
  checked, rejected, rejected_cached = map(int, again.stdout.splitlines()[0].split())
  assert checked == 0 and rejected_cached >= 1, "the verdict is read from the disk cache, the kernels are not timed again"
  assert "not used" in again.stdout.splitlines()[1], "and the user is told again"


LOADED_SEARCH = """
import subprocess, sys, os
import numpy as np
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import beam_guard
from tinygrad import Context, Tensor
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
try:
  a, b = Tensor.ones(64, 96).contiguous().realize(), Tensor.ones(96, 32).contiguous().realize()
  with Context(BEAM=1): assert ((a @ b).numpy() == 96).all()
finally:
  for p in busy: p.kill()
print(beam_guard.stats["searched"], beam_guard.stats["searched_busy"])
print(beam_guard.notice("python mnist_explorer.py mlp --beam 1"))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the load is read from /proc/stat")
def test_a_search_that_shares_the_cores_with_other_processes_is_reported(tmp_path):
  r = run(LOADED_SEARCH, tmp_path / "cache.db")
  assert r.returncode == 0, r.stdout + r.stderr
  searched, busy = map(int, r.stdout.splitlines()[0].split())
  assert searched >= 1 and busy >= 1, "the search ran next to the busy loops"
  line = r.stdout.splitlines()[1]
  assert line.startswith("notice: kernel search ran while other processes kept") and "IGNORE_BEAM_CACHE=1" in line


def test_the_search_again_command_is_one_process(monkeypatch):
  from explorer import runner
  monkeypatch.setattr(sys, "argv", ["mnist_explorer.py", "mlp", "--workers", "2", "--beam", "2", "--threads=1", "--results", "my results"])
  assert runner.search_again_command() == "python mnist_explorer.py mlp --beam 2 --results 'my results'"
