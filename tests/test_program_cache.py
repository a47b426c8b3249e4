"""explorer.fastpath.program_cache: a second process reads the lowered kernels from disk and trains bit-identically."""
import json, os, pickle, sqlite3, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# trains a small MLP a few steps and evaluates it, in a fresh process (tinygrad reads CACHEDB when it is imported)
SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from tests.conftest import make_digits
from explorer.config import make_config
from explorer.train import Trainer, batch_indices
from explorer import fastpath
from explorer.fastpath import program_cache
from explorer.fastpath.program_cache import codegen, diskcache_get, diskcache_put, search
def fake_search(s, rawbufs, var_vals, amt, allow_test_size=True, disable_cache=False):
  # stands in for BEAM (a real search takes a minute): stores 'no options' as its choice unless one is stored
  key = {{"ast": s.ast.key, "amt": amt, "allow_test_size": allow_test_size, "device": s.ren.target.device, "suffix": s.ren.suffix}}
  if diskcache_get("beam_search", key) is None: diskcache_put("beam_search", key, [])
  return s
search.beam_search = fake_search
# as the CLI at start-up (it starts the device, whose own helper kernels are not counted); after the stand-in, so it wraps it
assert fastpath.install() is None and fastpath.active()
lowered = []
_lower = codegen.do_to_program
codegen.do_to_program = lambda *a, **k: lowered.append(1) or _lower(*a, **k)
x, y = make_digits(600, 0)
cfg = make_config("mlp", {{"width": 48, "depth": 2, "batch": 32, "steps": 6, "lr_max": 3e-3}}, "test")
trainer = Trainer(threads=1, beam=int(sys.argv[1]))
c = trainer.prepare(cfg)
trainer.reset(c, cfg)
losses = [trainer.train_batch(c, x[i], y[i]) for _, i in zip(range(6), batch_indices(len(x), cfg.batch, cfg.seed))]
print(json.dumps({{"losses": losses, "eval": trainer.evaluate(c, x[:300], y[:300]), "lowered": len(lowered), **program_cache.stats}}))
"""


def run(db: Path, beam: int = 0, **env) -> dict:
  out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT)), str(beam)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CACHEDB": str(db), "JIT": "1", **env})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_lowered_kernels_from_disk_and_trains_bit_identically(tmp_path):
  db = tmp_path / "cache.db"
  first = run(db)
  assert first["lowered"] > 10 and first["disk_writes"] >= first["lowered"] and first["disk_hits"] == 0
  second = run(db)
  assert second["lowered"] == 0 and second["disk_hits"] >= first["lowered"] and second["disk_writes"] == 0
  assert second["losses"] == first["losses"] and second["eval"] == first["eval"]
  off = run(db, EXPLORER_PROGRAM_CACHE="0")  # the switch: lowers everything again, same numbers
  assert off["lowered"] == first["lowered"] and off["disk_hits"] == 0 and off["losses"] == first["losses"]


def test_a_damaged_entry_is_lowered_again_and_rewritten(tmp_path):
  db = tmp_path / "cache.db"
  first = run(db)
  with sqlite3.connect(db) as conn:
    (table,), = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'mnist_explorer_program%'").fetchall()
    conn.execute(f"UPDATE '{table}' SET val = ?", (b"not a pickle",))
  damaged = run(db)
  assert damaged["lowered"] == first["lowered"] and damaged["disk_hits"] == 0 and damaged["losses"] == first["losses"]
  assert run(db)["lowered"] == 0  # the damaged entries were written again, good this time


def test_a_program_is_lowered_again_when_beam_has_chosen_differently_since(tmp_path):
  """A stored program is used only while tinygrad's BEAM cache holds the choices it was made with."""
  db = tmp_path / "cache.db"
  first = run(db, beam=1)
  assert first["lowered"] > 10 and run(db, beam=1)["lowered"] == 0
  with sqlite3.connect(db) as conn:
    (table,), = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'beam_search%'").fetchall()
    conn.execute(f"UPDATE '{table}' SET val = ? WHERE rowid = (SELECT min(rowid) FROM '{table}')", (pickle.dumps(["a new choice"]),))
  again = run(db, beam=1)
  # one choice can be shared by kernels that differ before scheduling: each of them, and only they, are lowered again
  assert again["stale"] >= 1 and again["lowered"] == again["stale"] < first["lowered"] and again["losses"] == first["losses"]
  assert run(db, beam=1)["lowered"] == 0  # stored again with the new choice
