"""explorer/fastpath against stock tinygrad, through the CLI as a user runs it: a short MLP and CNN suite gives
bit-identical numbers with --stock; JIT=0, DEBUG=2 and an unsupported tinygrad version train the same numbers; a piece
that fails to install leaves stock tinygrad and one notice line; no private tinygrad name outside explorer/fastpath;
BEAM choices slower than the stock kernels are not used, searches under load are reported."""
import ast, json, os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
from explorer.data import write_idx
from tests.conftest import make_digits

ROOT = Path(__file__).resolve().parents[1]
# dropout (the device RNG), BatchNorm (running stats written by the step), two configurations of one shape (a reused
# compiled step), an evaluation every 4 steps; the MLP wide enough that its matmuls get tiles fitted to this CPU
SUITE = """
[mlp.defaults]
width = 256
steps = 12
batch = 32
eval_every = 4
dropout = 0.2
[[mlp.runs]]
name = "dropout"
category = "baseline"
[[mlp.runs]]
name = "dropout-lr"
category = "learning_rate"
lr_max = 3e-3
[cnn.defaults]
channels = [4, 8]
width = 16
steps = 8
batch = 16
eval_every = 4
[[cnn.runs]]
name = "batchnorm-dropout"
category = "regularization"
norm = "batch"
dropout = 0.1
"""
# the CLI with tinygrad's version faked: what an upgrade to an unknown tinygrad looks like
FAKE_VERSION = """import importlib.metadata as m, sys
real = m.version
m.version = lambda name: "0.99.0" if name == "tinygrad" else real(name)
sys.argv[0] = {script!r}
sys.path.insert(0, {root!r})
import mnist_explorer
mnist_explorer.cli()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
  folder = tmp_path_factory.mktemp("idx")
  x, y = make_digits(10_800, 0)  # 800 to train on after the 10,000 held out for validation
  xt, yt = make_digits(300, 1)
  for name, arr, kind in (("train-images-idx3-ubyte.gz", x, "images"), ("train-labels-idx1-ubyte.gz", y, "labels"),
                          ("t10k-images-idx3-ubyte.gz", xt, "images"), ("t10k-labels-idx1-ubyte.gz", yt, "labels")):
    write_idx(folder / name, arr, kind)
  return folder


def explorer(args: list[str], results: Path, data_dir: Path, env: dict | None = None, fake_version: bool = False):
  (results.parent / "suite.toml").write_text(SUITE)
  base = {k: v for k, v in os.environ.items() if k not in {"EXPLORER_STOCK", "DEBUG", "JIT", "BEAM"}}
  full_env = {**base, "JIT": "1", **(env or {})}
  script = str(ROOT / "mnist_explorer.py")
  cmd = [sys.executable, "-c", FAKE_VERSION.format(script=script, root=str(ROOT))] if fake_version else [sys.executable, script]
  cmd += [*args, "--config", str(results.parent / "suite.toml"), "--results", str(results), "--data-dir", str(data_dir)]
  r = subprocess.run(cmd, env=full_env, cwd=results.parent, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return r


def numbers(results: Path) -> dict[str, tuple]:
  """Every run's status, metrics and histories (losses, LR, val curve): what has to be bit-identical."""
  records = [json.loads(p.read_text()) for p in results.glob("runs/*/*/*/*.json")]
  return {r["name"]: (r["status"], r["metrics"], r["history"]) for r in records}


@pytest.fixture(scope="module")
def fast(tmp_path_factory, data_dir) -> dict[str, tuple]:
  results = tmp_path_factory.mktemp("fast") / "results"
  r = explorer(["all"], results, data_dir)
  assert "stock tinygrad" not in r.stdout + r.stderr
  runs = numbers(results)
  assert sorted(runs) == ["batchnorm-dropout", "dropout", "dropout-lr"] and {s for s, _, _ in runs.values()} == {"done"}
  return runs


def test_stock_tinygrad_trains_the_mlp_and_cnn_suites_bit_identically(fast, tmp_path, data_dir):
  r = explorer(["all", "--stock"], tmp_path / "results", data_dir)
  assert "tinygrad: stock tinygrad (--stock" in r.stdout and "notice" not in r.stderr
  assert numbers(tmp_path / "results") == fast
  records = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("runs/*/*/*/*.json")]
  assert {rec["threads"] for rec in records} == {1}, "stock tinygrad runs a kernel's pieces one after another"


def test_jit0_trains_the_same_numbers(fast, tmp_path, data_dir):
  """JIT=0: tinygrad runs every step eagerly (no capture, so nothing to replay); slower, the same numbers."""
  explorer(["mlp"], tmp_path / "results", data_dir, env={"JIT": "0"})
  assert numbers(tmp_path / "results") == {k: v for k, v in fast.items() if k.startswith("dropout")}


def test_debug2_prints_tinygrads_kernel_lines_and_trains_the_same_numbers(fast, tmp_path, data_dir):
  r = explorer(["mlp", "--category", "baseline"], tmp_path / "results", data_dir, env={"DEBUG": "2"})
  assert r.stdout.count("***") > 100, "tinygrad's per-kernel lines"
  assert numbers(tmp_path / "results") == {"dropout": fast["dropout"]}


def test_an_unsupported_tinygrad_version_is_one_notice_line_and_the_stock_path(fast, tmp_path, data_dir):
  r = explorer(["mlp", "--category", "baseline"], tmp_path / "results", data_dir, fake_version=True)
  notices = [line for line in r.stderr.splitlines() if line.startswith("notice:")]
  assert notices == ["notice: the CPU fast path was written for tinygrad 0.14.0, not 0.99.0: running stock tinygrad (same numbers, slower)"]
  assert numbers(tmp_path / "results") == {"dropout": fast["dropout"]}


INSTALL = """import sys
sys.path.insert(0, {root!r})
from explorer import fastpath
from explorer.fastpath import program_cache, replay
{sabotage}
notice = fastpath.install()
print(notice)
print(fastpath.active(), fastpath.status, type(program_cache.codegen.to_program_cache).__name__, fastpath.default_threads(1))
"""


@pytest.mark.parametrize("sabotage, env, notice, status", [
  ("", {}, "None", "True CPU fast path"),
  ("", {"EXPLORER_STOCK": "1"}, "None", "False stock tinygrad (--stock / EXPLORER_STOCK=1)"),
  ("def renamed(): raise AttributeError('CapturedJit has no plan')\nreplay.check = renamed", {},
   "notice: the CPU fast path could not be installed (AttributeError: CapturedJit has no plan): running stock tinygrad",
   "False stock tinygrad (the fast path failed to install) dict 1"),
])
def test_install_is_all_pieces_or_none(sabotage, env, notice, status):
  """A piece whose tinygrad internals moved (here: replay's check fails) leaves nothing installed: tinygrad's own
  program dict, one thread, and one notice line."""
  r = subprocess.run([sys.executable, "-c", INSTALL.format(root=str(ROOT), sabotage=sabotage)], capture_output=True, text=True,
                     timeout=120, env={**{k: v for k, v in os.environ.items() if k != "EXPLORER_STOCK"}, **env})
  assert r.returncode == 0, r.stderr
  first, second = r.stdout.splitlines()
  assert first.startswith(notice) and second.startswith(status)


def tinygrad_private_names() -> set[str]:
  """Every _name tinygrad defines (functions, module and class attributes, self._attributes)."""
  import tinygrad
  names = set()
  for f in Path(tinygrad.__file__).parent.rglob("*.py"):
    names |= set(re.findall(r"(?:\bdef |\bself\.|^\s*)(_[A-Za-z]\w*)\s*[(:=]", f.read_text(errors="replace"), re.M))
  return names


def test_no_private_tinygrad_name_outside_explorer_fastpath():
  """`grep` finds tinygrad's internals in one place: imports from tinygrad's submodules other than its public API
  (tinygrad, tinygrad.nn) and tinygrad's _private names appear only under explorer/fastpath/ (and in this check)."""
  parts = lambda f: f.relative_to(ROOT).parts
  # the project's own files: not explorer/fastpath, nor hidden folders (.venv, .git, a local scratch copy)
  files = [f for f in ROOT.rglob("*.py") if "fastpath" not in parts(f) and not any(p.startswith(".") for p in parts(f)) and f != Path(__file__)]
  ours = set()  # _names the project defines itself (ours to use anywhere)
  for f in files: ours |= set(re.findall(r"(?:\bdef |\bclass |\bself\.|^\s*)(_[A-Za-z]\w*)\s*[(:=]", f.read_text(), re.M))
  private = tinygrad_private_names() - ours
  assert {"_rand", "_copyin", "_to_np_dtype", "_written_uops", "_prepare_jit_inputs"} <= private, "the scan finds tinygrad's names"
  found = []
  for f in files:
    for n, line in enumerate(f.read_text().splitlines(), 1):
      imports = re.search(r"\bfrom (tinygrad\.[\w.]+) import|\bimport (tinygrad\.[\w.]+)", line)
      if imports and not (imports.group(1) or imports.group(2)).startswith("tinygrad.nn"): found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
      used = set(re.findall(r"(?<!os\.)\b(_[A-Za-z]\w*)\b", line)) & private  # os._exit is the stdlib's
      if used: found.append(f"{f.relative_to(ROOT)}:{n}: {', '.join(sorted(used))}")
  assert not found, "\n".join(found)


# ---- BEAM choices that never make a step slower (explorer/fastpath/beam_guard.py): a choice slower than tinygrad's
# stock kernel is detected, not used and remembered; a search that shares the cores with other processes is reported

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


def run_with_cache(code: str, cache: Path, **env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "DEV": "CPU", "CACHEDB": str(cache), **env})


def test_a_choice_slower_than_the_stock_kernel_is_not_used_and_remembered(tmp_path):
  first = run_with_cache(BAD_SEARCH, tmp_path / "cache.db")
  assert first.returncode == 0, first.stdout + first.stderr
  counts, line = first.stdout.splitlines()[:2]
  checked, rejected, rejected_cached = map(int, counts.split())
  assert checked >= 1 and rejected >= 1, "the unoptimized matmul kernel was timed against the stock one and rejected"
  assert "slower than tinygrad's stock kernels and are not used" in line, line
  assert "IGNORE_BEAM_CACHE=1 python mnist_explorer.py mlp --beam 1" in line
  # lowered again (the explorer's own program cache off): the choice comes back, its verdict is read from disk
  again = run_with_cache(BAD_SEARCH, tmp_path / "cache.db", EXPLORER_PROGRAM_CACHE="0")
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
beam_guard.MIN_MEASURED_S = 0.0  # a fast machine searches this small kernel in well under the default half second
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
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
  r = run_with_cache(LOADED_SEARCH, tmp_path / "cache.db")
  assert r.returncode == 0, r.stdout + r.stderr
  searched, busy = map(int, r.stdout.splitlines()[0].split())
  assert searched >= 1 and busy >= 1, "the search ran next to the busy loops"
  line = r.stdout.splitlines()[1]
  assert line.startswith("notice: kernel search ran while other processes kept") and "IGNORE_BEAM_CACHE=1" in line


def test_the_search_again_command_is_one_process(monkeypatch):
  from explorer import runner
  monkeypatch.setattr(sys, "argv", ["mnist_explorer.py", "mlp", "--workers", "2", "--beam", "2", "--threads=1", "--results", "my results"])
  assert runner.search_again_command() == "python mnist_explorer.py mlp --beam 2 --results 'my results'"


# ---- register tiles fitted to this CPU (explorer/fastpath/tiles.py): the same bits as the stock kernels, tuned once

TILES = """
import numpy as np
from tinygrad import Context, Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
rng = np.random.default_rng(0)
a, b = (Tensor(rng.standard_normal(s, dtype=np.float32)).realize() for s in ((256, 512), (512, 384)))
x, w = Tensor(rng.standard_normal((16, 1, 28, 28), dtype=np.float32)).realize(), Tensor(rng.standard_normal((16, 1, 3, 3), dtype=np.float32)).realize()
def compute(): return [(a @ b).numpy(), x.conv2d(w, padding=1).numpy(), (a.T @ a).numpy()]
stock = compute()
with tiles.fitting(): fitted = compute()
assert all(s.tobytes() == f.tobytes() for s, f in zip(stock, fitted)), "bit-identical to the stock kernels"
print(tiles.stats["tuned"], tiles.stats["cached"], tiles.stats["not_identical"])
print(tiles.notice())
"""


def test_tiles_fitted_to_this_cpu_give_the_stock_kernels_bits_and_are_tuned_once(tmp_path):
  first = run_with_cache(TILES, tmp_path / "cache.db")
  assert first.returncode == 0, first.stdout + first.stderr
  tuned, cached, not_identical = map(int, first.stdout.splitlines()[0].split())
  assert tuned == 3 and cached == 0, "two matmuls and a convolution, each over a million multiply-adds"
  assert not_identical >= 1, "the convolution without its 3x3 unroll sums in another order: that tile is not used"
  assert first.stdout.splitlines()[1].startswith("tuned the register tiles of 3 kernels for this CPU: ")
  # lowered again (the explorer's own program cache off): each kernel's tile is read from disk, nothing is timed again
  again = run_with_cache(TILES, tmp_path / "cache.db", EXPLORER_PROGRAM_CACHE="0")
  assert again.returncode == 0, again.stdout + again.stderr
  assert again.stdout.splitlines()[0].split()[:2] == ["0", "3"] and again.stdout.splitlines()[1] == "None"


FUSED_PRODUCT = """
import numpy as np
from tinygrad import Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
tiles.DROP = float('inf')  # every candidate checked, however slow its first run
rng = np.random.default_rng(1)
# batchnorm's statistics: per image and channel, a sum over the map of x plus a per-channel product. tinygrad's stock
# kernel rounds that product once, outside its unrolled loop; a rolled candidate writes it inside the sum, where clang
# fuses it into an FMA. Standard normals hid the difference; these inputs (a large product next to small values) show it.
x = Tensor((rng.standard_normal((128, 16, 28, 28)) * 1e-3).astype(np.float32)).realize()
m = Tensor((rng.standard_normal(16) * 1e3).astype(np.float32)).realize()
def compute(): return (x + m.reshape(1, 16, 1, 1) * -9.964923265215475e-06).sum(axis=(2, 3)).numpy()
stock = compute()
with tiles.fitting(): fitted = compute()
print(tiles.stats["tuned"], tiles.stats["not_identical"], stock.tobytes() == fitted.tobytes())
"""


def test_a_tile_that_would_fuse_a_rounded_product_into_an_fma_is_not_used(tmp_path):
  r = run_with_cache(FUSED_PRODUCT, tmp_path / "cache.db")
  assert r.returncode == 0, r.stdout + r.stderr
  tuned, not_identical, same = r.stdout.split()
  assert tuned == "1" and int(not_identical) >= 1, "the rolled candidate sums differently and was turned down"
  assert same == "True", "the kernel used writes the stock kernel's bytes"


BRIEF = """
import sys
import numpy as np
from tinygrad import Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
rng = np.random.default_rng(3)
a, b = (Tensor(rng.standard_normal(s, dtype=np.float32)).realize() for s in ((256, 512), (512, 384)))
calls = None if sys.argv[1] == "unknown" else int(sys.argv[1])
with tiles.fitting(calls): out = (a @ b).numpy()
print(tiles.stats["tuned"], tiles.stats["brief"], tiles.stats["cached"])
print(tiles.notice())
"""


def test_a_kernel_run_too_briefly_to_pay_for_its_tuning_keeps_its_stock_tile_and_a_longer_command_tunes_it(tmp_path):
  def run(calls: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", BRIEF, calls], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DEV": "CPU", "CACHEDB": str(tmp_path / "cache.db")})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()
  # 50 million multiply-adds: a few milliseconds on one thread, so once is far below PAYS_S
  counts, line = run("1")
  assert counts.split() == ["0", "1", "0"], "not tuned, counted as too brief"
  assert line == "kept tinygrad's own tiles for 1 kernel: this command runs it too briefly to pay for tuning", line
  # no verdict was stored: a command that runs it a million times tunes it, as does one that does not say (tests, bench)
  counts, line = run("1000000")
  assert counts.split() == ["1", "0", "0"] and line.startswith("tuned the register tiles of 1 kernel "), (counts, line)
  counts, _ = run("unknown")
  assert counts.split() == ["0", "0", "1"], "now read from the cache"


WIDE_TILE = """
import sys
import numpy as np
from tinygrad import Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
rng = np.random.default_rng(4)
a, b = (Tensor(rng.standard_normal(s, dtype=np.float32)).realize() for s in ((256, 512), (512, 256)))  # stock tile 4x4
offered, real_tune = [], tiles._tune
def tune(kernel, asts, programs, best, times):
  offered.append(any(o.arg == 16 for a in asts[1:] for o in a.arg.opts_to_apply))
  return real_tune(kernel, asts, programs, best, times)
tiles._tune = tune
x, w = Tensor(rng.standard_normal((64, 16, 14, 14), dtype=np.float32)).realize(), Tensor(rng.standard_normal((32, 16, 3, 3), dtype=np.float32)).realize()
def compute(): return (a @ b).numpy() if sys.argv[2] == "matmul" else x.conv2d(w, padding=1).numpy()
stock = compute()
calls = None if sys.argv[1] == "unknown" else int(sys.argv[1])
with tiles.fitting(calls): fitted = compute()
print(tiles.stats["tuned"], offered, stock.tobytes() == fitted.tobytes())
"""


def test_a_matmul_a_command_runs_long_is_offered_the_16x8_tile_once_even_after_a_shorter_command_tuned_it(tmp_path):
  def run(calls: str, kind: str = "matmul") -> list[str]:
    r = subprocess.run([sys.executable, "-c", WIDE_TILE, calls, kind], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DEV": "CPU", "CACHEDB": str(tmp_path / "cache.db")})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split(None, 1)[0], r.stdout.split(None, 1)[1].strip()
  assert run("unknown") == ("1", "[False] True"), "no plan: the usual candidates"
  assert run("1000000") == ("1", "[True] True"), "a long command tunes it again, with the 16x8 tile, and keeps the bits"
  assert run("1000000") == ("0", "[] True"), "once: its verdict says the 16x8 tile was considered"
  assert run("1000000", "conv") == ("1", "[False] True"), "a convolution, however long, is not offered it"


COLUMN_SUM = """
import numpy as np
from tinygrad import Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
# a bias gradient: 128 rows of 512 summed per column, 65,536 adds (under MIN_OPS, over ROW_MIN_OPS)
g = Tensor(np.random.default_rng(2).standard_normal((128, 512)).astype(np.float32)).realize()
stock = g.sum(axis=0).numpy()
with tiles.fitting(): fitted = g.sum(axis=0).numpy()
small = Tensor.ones(64, 64).contiguous().realize()
with tiles.fitting(): small.sum(axis=0).numpy()  # 4,096 adds: not tuned
print(tiles.stats["tuned"], stock.tobytes() == fitted.tobytes())
"""


def test_a_column_sum_is_tuned_with_a_row_of_outputs_and_keeps_its_bits(tmp_path):
  r = run_with_cache(COLUMN_SUM, tmp_path / "cache.db")
  assert r.returncode == 0, r.stdout + r.stderr
  assert r.stdout.split() == ["1", "True"], "the bias-gradient-sized sum tuned (not the small one), with the stock bytes"


SECOND_ROUND = """
import numpy as np
from tinygrad import Tensor
from tinygrad.helpers import diskcache_get
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
real, rounds = tiles._fastest_identical, []
def stock_wins_then_unrolled(programs, ast, ren):  # the first round keeps the stock kernel; the second takes its candidate if identical
  rounds.append(sorted(programs))
  best, times = real(programs, ast, ren)
  return (0 if len(rounds) == 1 else max(times)), times
tiles._fastest_identical = stock_wins_then_unrolled
rng = np.random.default_rng(0)
a, b = (Tensor(rng.standard_normal(s, dtype=np.float32)).realize() for s in ((256, 512), (512, 384)))
stock = (a @ b).numpy()
captured = []
real_tune = tiles._tune
tiles._tune = lambda kernel, *rest: captured.append(kernel) or real_tune(kernel, *rest)
with tiles.fitting(): fitted = (a @ b).numpy()
def named(opts): return [(o.op.name, o.arg) for o in opts or []]
print(rounds, stock.tobytes() == fitted.tobytes())
print(named(tiles.stock_kernel(captured[0]["s"]).applied_opts))
print(named(diskcache_get(tiles.TABLE, captured[0]["key"])["opts"]))
"""


def test_where_the_stock_kernel_wins_a_second_round_tries_the_8x8_tile_with_its_reduce_unrolled(tmp_path):
  r = run_with_cache(SECOND_ROUND, tmp_path / "cache.db")
  assert r.returncode == 0, r.stdout + r.stderr
  rounds, stock, chosen = r.stdout.splitlines()
  assert rounds == "[[0, 1], [0, 2]] True", "stock and the rolled tile, then stock and the unrolled one; the stock kernel's bytes"
  stock, chosen = ast.literal_eval(stock), ast.literal_eval(chosen)
  assert [o for o in stock if o[0] == "UNROLL"] == [o for o in chosen if o[0] == "UNROLL"] != [], "the reduce unrolled as the stock's"
  assert [arg for op, arg in chosen if op == "UPCAST"][:2] == [2 * arg for op, arg in stock if op == "UPCAST"][:2], (stock, chosen)


def offered_and_chosen(applies: str, candidate: str, setup: str) -> str:
  """A script that tunes the kernels of setup's compute() (every candidate checked, the last identical one chosen) and
  prints: how many kernels `applies` to (an expression of their stock opts, `stock`), how many of those were offered
  `candidate` (an (op, arg) pair), how many use it, and whether the result has the stock kernels' bytes."""
  return f"""
import numpy as np
from tinygrad import Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
tiles.DROP = float('inf')  # every candidate checked, however slow its first run
real = tiles._fastest_identical
tiles._fastest_identical = lambda *args: (lambda best, times: (max(times), times))(*real(*args))  # the last identical one
def named(opts): return [(o.op.name, o.arg) for o in opts or []]
offered, chosen, real_tune = [], [], tiles._tune
def tune(kernel, asts, programs, best, times):
  stock = named(tiles.stock_kernel(kernel["s"]).applied_opts)
  if {applies}:
    offered.append(any({candidate} in named(a.arg.opts_to_apply) for a in asts[1:]))
    chosen.append({candidate} in named(asts[best].arg.opts_to_apply))
  return real_tune(kernel, asts, programs, best, times)
tiles._tune = tune
rng = np.random.default_rng(0)
{setup}
stock = compute()
with tiles.fitting(): fitted = compute()
print(len(offered), sum(offered), sum(chosen), stock.tobytes() == fitted.tobytes())
"""


FEW_OUTPUTS = offered_and_chosen('not any(op == "UPCAST" for op, _ in stock)', '("UPCAST", tiles.FEW)', """
x = Tensor(rng.standard_normal((128, 1, 28, 28), dtype=np.float32)).realize()
w = Tensor(rng.standard_normal((16, 1, 3, 3), dtype=np.float32)).realize()
def compute(): return x.conv2d(w, padding=1).relu().max_pool2d(2).sum().gradient(w)[0].numpy()  # a CNN's first-layer gradient""")


# the stock tile is whole small axes only (UPCASTs of arg 0)
WIDER_OUTPUTS = offered_and_chosen('[a for op, a in stock if op == "UPCAST"] and not any(a for op, a in stock if op == "UPCAST")',
                                   '("UPCAST", tiles.WIDER)', """
x = Tensor(rng.standard_normal((32, 16, 14, 14), dtype=np.float32)).realize()
w = Tensor(rng.standard_normal((32, 16, 3, 3), dtype=np.float32)).realize()
def compute(): return x.conv2d(w, padding=1).relu().sum().gradient(w)[0].numpy()  # a CNN's second-layer weight gradient""")


@pytest.mark.parametrize("script, offer", [
  (FEW_OUTPUTS, "every big kernel without an UPCAST (the 3x3 windows of a first layer's gradient) is offered FEW outputs at once"),
  (WIDER_OUTPUTS, "a tile of whole small axes (a second layer's 3x3 weight gradient) is offered WIDER output channels at once")],
  ids=["few", "wider"])
def test_a_kernel_tinygrad_tiles_one_output_channel_at_a_time_is_offered_more_and_keeps_its_bits(tmp_path, script, offer):
  r = run_with_cache(script, tmp_path / "cache.db")
  assert r.returncode == 0, r.stdout + r.stderr
  kernels, offered, chosen, same = r.stdout.split()
  assert int(kernels) >= 1 and offered == kernels, offer
  assert int(chosen) >= 1 and same == "True", "where one is used, the gradient has the stock kernels' bytes"


TWO_TUNERS = """
import sys, time
from pathlib import Path
import numpy as np
from tinygrad import Tensor
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles
rng = np.random.default_rng(0)
a, b = (Tensor(rng.standard_normal(s, dtype=np.float32)).realize() for s in ((256, 512), (512, 384)))
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists(): time.sleep(0.01)  # both processes reach the same new kernel at the same moment
with tiles.fitting(): (a @ b).numpy()
print(tiles.stats["tuned"], tiles.stats["cached"])
"""


def test_two_processes_that_meet_the_same_new_kernel_tune_it_once(tmp_path):
  """--workers helpers on a new machine: the second process waits for the first's choice instead of tuning again."""
  go = tmp_path / "go"
  procs = [subprocess.Popen([sys.executable, "-c", TWO_TUNERS, str(tmp_path / f"ready{i}"), str(go)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "DEV": "CPU", "CACHEDB": str(tmp_path / "cache.db")})
           for i in range(2)]
  deadline = time.monotonic() + 120
  while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline: time.sleep(0.05)
  go.touch()
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
  counts = sorted(tuple(map(int, out.split())) for out, _ in outs)
  assert counts == [(0, 1), (1, 0)], f"one process tuned the matmul, the other read its choice: {counts}"


# ---- wide loads (explorer/fastpath/wide_loads.py): 8-float loads for wide tiles, in the compile workers too, same bits

WIDE = """
import os, sys, numpy as np
from tinygrad import Context, Tensor
from tinygrad.engine.worker import get_worker_pool
from explorer import fastpath
assert fastpath.install() is None
from explorer.fastpath import tiles, wide_loads
real = tiles._fastest_identical
def widest(programs, ast, ren):  # the 8x8 tile (the candidate after the stock one), whatever the timing: its loads are the point
  best, times = real(programs, ast, ren)
  return (1 if 1 in times else best), times
tiles._fastest_identical = widest
rng = np.random.default_rng(0)
a, b = (Tensor(rng.standard_normal(s, dtype=np.float32)).realize() for s in ((256, 512), (512, 512)))
stock = (a @ b).numpy()
with tiles.fitting(), Context(DEBUG=4): fitted = (a @ b).numpy()
assert stock.tobytes() == fitted.tobytes()
np.save(sys.argv[1], fitted)
pool = get_worker_pool()
print("workers:", pool.apply(wide_loads.installed), pool.apply(wide_loads.active))
"""


def test_wide_loads_reach_the_compile_workers_and_change_no_bit(tmp_path):
  runs = {}
  for tiles_on in ("1", "0"):
    r = subprocess.run([sys.executable, "-c", WIDE, str(tmp_path / f"out{tiles_on}.npy")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "DEV": "CPU", "CACHEDB": str(tmp_path / f"cache{tiles_on}.db"), "EXPLORER_TILES": tiles_on})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    runs[tiles_on] = r.stdout
  assert "float8" in runs["1"] and "workers: True True" in runs["1"], "an 8x8 tile loads 8 floats at a time, in every process"
  assert "float8" not in runs["0"] and "workers: True False" in runs["0"], "EXPLORER_TILES=0: tinygrad's own 4-float loads"
  assert (tmp_path / "out1.npy").read_bytes() == (tmp_path / "out0.npy").read_bytes()


# ---- compile workers (explorer/fastpath/compile_workers.py): they end with the explorer, however it ends

ORPHANS = """
import multiprocessing, os, signal, time
from explorer import fastpath
assert fastpath.install() is None
from tinygrad.engine.worker import get_worker_pool
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as stop.leave does: a worker started now must not inherit it
pool = get_worker_pool()
pool.map(time.sleep, [0.5, 0.5], chunksize=1)  # two tasks at once: both workers are up and initialized
pids = [c.pid for c in multiprocessing.active_children()]
print(*pids, flush=True)
def alive(pid):  # the pool may reap its worker before we could: /proc, not waitpid
  try: return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError: return False
try:
  os.kill(pids[0], signal.SIGTERM)
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and alive(pids[0]): time.sleep(0.05)
  print("SIGTERM ends a worker:", not alive(pids[0]), flush=True)
finally: os.kill(os.getpid(), signal.SIGKILL)  # the explorer dies without any cleanup
"""


def alive(pid: int) -> bool:
  try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError: return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_compile_workers_take_sigterm_and_end_with_the_explorer(tmp_path):
  """A worker holds its own end of the pool's task queue, so nothing told it that its explorer had gone: after a SIGTERM
  to the whole process group, a worker the pool had just started stayed behind for good (and ignored SIGTERM)."""
  r = subprocess.run([sys.executable, "-c", ORPHANS], cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env={**os.environ, "DEV": "CPU", "CACHEDB": str(tmp_path / "cache.db"), "PARALLEL": "2"})
  lines = r.stdout.splitlines()
  assert r.returncode == -signal.SIGKILL and len(lines) == 2, r.stdout + r.stderr
  pids = [int(p) for p in lines[0].split()]
  assert len(pids) == 2 and lines[1] == "SIGTERM ends a worker: True", r.stdout + r.stderr
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and any(map(alive, pids)): time.sleep(0.1)
  left = [p for p in pids if alive(p)]
  for p in left: os.kill(p, signal.SIGKILL)
  assert not left, f"compile workers left behind: {left}"


# ---- stock tinygrad on a device whose copy-in needs a writable host array (CUDA's does: found on an H100)

# The CLI on stock tinygrad with the CPU's copy of a host array made CUDA's: without _as_buffer, tinygrad hands the
# array's memoryview to _copyin, and CUDA's takes the address of a writable view of it (tinygrad.helpers.mv_address),
# so a read-only array fails with 'underlying buffer is not writable'
STRICT_COPYIN = """import ctypes, sys
from tinygrad import Device
allocator = type(Device["CPU"].allocator)
class NoZeroCopy:  # hasattr(allocator, "_as_buffer") is False, as on CUDA
  def __get__(self, obj, owner): raise AttributeError("_as_buffer")
allocator._as_buffer = NoZeroCopy()
stock_copyin = allocator._copyin
def strict_copyin(self, dest, src):
  ctypes.c_char.from_buffer(src)
  return stock_copyin(self, dest, src)
allocator._copyin = strict_copyin
sys.argv[0] = {script!r}
sys.path.insert(0, {root!r})
import mnist_explorer
mnist_explorer.cli()
"""
HOST_ARRAYS = """
[mlp.defaults]
width = 32
steps = 8
batch = 16
eval_every = 4
[[mlp.runs]]
name = "ema"
category = "baseline"
ema = 0.9
[[mlp.runs]]
name = "plateau"
category = "baseline"
schedule = "plateau"
patience = 1
"""


def test_every_host_array_reaches_a_strict_device_writable(tmp_path, data_dir):
  """With DEV=CUDA every evaluation failed: the validation batches are slices of the read-only loaded dataset. Here
  the CPU's copy-in is as strict as CUDA's, on stock tinygrad (what runs on a GPU): batches, evaluations, the EMA's swap,
  the plateau's restored weights and weights read back from a file (evaluate) all reach the device."""
  (tmp_path / "host.toml").write_text(HOST_ARRAYS)
  env = {**os.environ, "JIT": "1", "DEV": "CPU", "EXPLORER_STOCK": "1", "RESULTS_DIR": str(tmp_path / "results"), "DATA_DIR": str(data_dir)}
  code = STRICT_COPYIN.format(script=str(ROOT / "mnist_explorer.py"), root=str(ROOT))
  def cli(*args): return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  r = cli("mlp", "--config", "host.toml", "--save-weights", "all")
  assert r.returncode == 0 and "not writable" not in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
  assert "stock tinygrad" in r.stdout, "stock tinygrad ran, as on a GPU"
  for name in ("ema", "plateau"):
    r = cli("evaluate", name, "--config", "host.toml")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
