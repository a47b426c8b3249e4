"""Where the time of one product train step goes outside the kernels: input creation, JIT call, .item()."""
import os, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np
from tinygrad import Tensor, Device
from bench import default_config, batches
from explorer.data import load_dataset
from explorer import fastpath
fastpath.install()  # the product's CPU fast path, as the CLI installs it
from explorer.train import Trainer
model, B = (sys.argv[1] if len(sys.argv) > 1 else "mlp"), int(sys.argv[2]) if len(sys.argv) > 2 else 128
cfg = default_config(model, B, 40)
data = load_dataset("mnist", os.environ.get("DATA_DIR"))
tr = Trainer(); c = tr.prepare(cfg); tr.reset(c, cfg)
bs = list(batches(data, cfg, 40))
for x, y in bs[:3]: c.train_step(Tensor(x), Tensor(y)).item()
rec = {k: [] for k in ("make", "realize_in", "call", "item", "total")}
fixed = (Tensor(bs[0][0]).realize(), Tensor(bs[0][1]).realize())
for x, y in bs[3:]:
  t0 = time.perf_counter(); xt, yt = Tensor(x), Tensor(y)
  t1 = time.perf_counter(); Tensor.realize(xt, yt)
  t2 = time.perf_counter(); loss = c.train_step(xt, yt)
  t3 = time.perf_counter(); loss.item()
  t4 = time.perf_counter()
  for k, d in zip(rec, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)): rec[k].append(1000 * d)
print(" ".join(f"{k} {np.median(v):.2f}" for k, v in rec.items()), "ms (median)")
ts = []
for _ in range(20):
  t = time.perf_counter(); c.train_step(*fixed).item(); ts.append(time.perf_counter() - t)
print(f"same realized input tensors every step: {1000 * np.median(ts):.2f} ms")
ts = []
for _ in range(20):
  t = time.perf_counter(); Device[Device.DEFAULT].synchronize(); ts.append(time.perf_counter() - t)
