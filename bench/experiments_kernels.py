"""Per-kernel times of one replayed train step (or, with `eval`, one eval step of 1,000 images) of the product's
Trainer (the DEBUG=2 lines, sorted by time).
  python bench/experiments_kernels.py mlp 128
  python bench/experiments_kernels.py mlp 128 eval"""
import os, re, sys, subprocess
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
if os.environ.get("_INNER"):
  sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
  from tinygrad import Context
  from bench import default_config, batches
  from explorer.data import load_dataset
  from explorer import fastpath
  fastpath.install()  # the product's CPU fast path, as the CLI installs it
  from explorer.train import Trainer
  model, b = sys.argv[1], int(sys.argv[2])
  cfg = default_config(model, b, 10)
  tr = Trainer(beam=int(os.environ.get("EXPLORER_BEAM", 0)), threads=int(os.environ.get("EXPLORER_THREADS", 1))); c = tr.prepare(cfg); tr.reset(c, cfg)
  data = load_dataset("mnist", os.environ.get("DATA_DIR"))
  if sys.argv[3:] == ["eval"]:
    x, y = data.x_val[:1000], data.y_val[:1000]
    for i in range(6):
      if i == 5: print("=====MARK", flush=True)
      with Context(DEBUG=2 if i == 5 else 0): tr.evaluate(c, x, y)
    raise SystemExit
  for i, (x, y) in enumerate(batches(data, cfg, 6)):
    if i == 5: print("=====MARK", flush=True)
    with Context(DEBUG=2 if i == 5 else 0): tr.train_batch(c, x, y)
  raise SystemExit
out = subprocess.run([sys.executable, __file__, *sys.argv[1:]], env={**os.environ, "_INNER": "1"}, capture_output=True, text=True)
if out.returncode != 0: raise SystemExit(f"experiments_kernels: the timed process failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
txt = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr).split("=====MARK", 1)[-1]
rows = []
for line in txt.splitlines():
  m = re.search(r"\*\*\* \S+\s+\d+\s+(\S+).*?tm\s+([\d.]+)(us|ms)/", line)
  if m: rows.append((float(m.group(2)) * (1e-3 if m.group(3) == "us" else 1), m.group(1), line.strip()[:170]))
tot = sum(r[0] for r in rows)
print(f"{len(rows)} kernels, {tot:.1f} ms total")
for t, name, line in sorted(rows, reverse=True)[:int(os.environ.get("TOP", 15))]: print(f"{t:8.2f} ms {100*t/tot:5.1f}%  {line}")
