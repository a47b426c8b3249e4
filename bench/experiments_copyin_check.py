"""The preallocated-input feed (memcpy into two buffers the JIT captured) gives the same losses as Tensor(np) per step."""
import os, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np
from tinygrad import Tensor, dtypes
from bench import default_config, batches
from explorer.data import load_dataset
from explorer import fastpath
fastpath.install()  # the product's CPU fast path, as the CLI installs it
from explorer.train import Trainer
cfg = default_config("mlp", 128, 12)
data = load_dataset("mnist", os.environ.get("DATA_DIR"))
bs = list(batches(data, cfg, 12))
tr = Trainer(); c = tr.prepare(cfg); tr.reset(c, cfg)
a = [c.train_step(Tensor(x), Tensor(y)).item() for x, y in bs]
tr.reset(c, cfg)
xt, yt = Tensor.zeros(128, 28, 28, dtype=dtypes.uint8).contiguous().realize(), Tensor.zeros(128, dtype=dtypes.uint8).contiguous().realize()
b = []
for x, y in bs:
  np.frombuffer(xt.uop.buffer.as_memoryview(force_zero_copy=True), np.uint8)[:] = x.reshape(-1)
  np.frombuffer(yt.uop.buffer.as_memoryview(force_zero_copy=True), np.uint8)[:] = y
  b.append(c.train_step(xt, yt).item())
print("Tensor(np):", np.round(a, 5)); print("copyin:    ", np.round(b, 5)); print("max abs diff", np.abs(np.array(a) - b).max())
