"""Stock tiles against tiles fitted to this CPU (explorer/fastpath/tiles.py), in one process, alternating: the
train step (and the eval step) of one model and batch, each compiled both ways, timed in turns of STEPS calls.
  python bench/experiments_tiles_ab.py mlp 128 [rounds]"""
import os, sys, time
# kernels lowered in this process only: EXPLORER_TILES is switched between the two ways below, and tinygrad's compile
# workers would keep the value they started with (wide loads follow it)
os.environ["PARALLEL"] = "0"
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np
from bench import default_config, batches
from explorer.data import load_dataset
from explorer import fastpath
fastpath.install()
from explorer.train import Trainer, EVAL_BATCH

model, b = sys.argv[1], int(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
STEPS = 20
data = load_dataset("mnist", os.environ.get("DATA_DIR"))
cfg = default_config(model, b, 10 ** 6)
ways = {}
for name, tiles in (("stock tiles", "0"), ("fitted tiles", "1")):
  os.environ["EXPLORER_TILES"] = tiles  # read when a step compiles
  tr = Trainer(beam=0, threads=fastpath.default_threads())
  c = tr.prepare(cfg); tr.reset(c, cfg)
  t0 = time.perf_counter()
  it = batches(data, cfg, 3)
  for x, y in it: tr.train_batch(c, x, y)
  tr.evaluate(c, data.x_val[:2 * EVAL_BATCH], data.y_val[:2 * EVAL_BATCH])
  tr.evaluate(c, data.x_val[:EVAL_BATCH], data.y_val[:EVAL_BATCH])
  ways[name] = (tr, c, time.perf_counter() - t0)
  print(f"{name}: compile + first steps {ways[name][2]:.1f}s; {fastpath.tiles_notice() or 'nothing tuned'}", flush=True)

x, y = next(iter(batches(data, cfg, 1)))
times = {n: {"train": [], "eval": []} for n in ways}
for r in range(rounds):
  for name, (tr, c, _) in ways.items():
    t0 = time.perf_counter()
    for _ in range(STEPS): tr.train_batch(c, x, y)
    times[name]["train"].append((time.perf_counter() - t0) / STEPS)
    t0 = time.perf_counter()
    tr.evaluate(c, data.x_val[:5 * EVAL_BATCH], data.y_val[:5 * EVAL_BATCH])
    times[name]["eval"].append((time.perf_counter() - t0) / 5)
print(f"{model} batch {b}, {fastpath.threads()} threads, {rounds} alternating rounds (median; min-max):")
for name, t in times.items():
  print(f"  {name:13} train {1e3*np.median(t['train']):6.2f} ms/step ({1e3*min(t['train']):.2f}-{1e3*max(t['train']):.2f})"
        f"   eval {1e3*np.median(t['eval']):6.1f} ms/1000 images ({1e3*min(t['eval']):.1f}-{1e3*max(t['eval']):.1f})")
s, f = times["stock tiles"], times["fitted tiles"]
print(f"  fitted / stock: train {np.median(f['train'])/np.median(s['train']):.2f}, eval {np.median(f['eval'])/np.median(s['eval']):.2f}")
