#!/usr/bin/env python3
"""A validation pass, the explorer's against PyTorch's, per 1,000 images: the 10,000 validation images of MNIST in
batches of 1,000, loss and accuracy, each way in turns (ROUNDS rounds, median), in one process.

  python bench/eval_vs_torch.py [mlp|cnn] [rounds]

The explorer's pass is Trainer.evaluate on a freshly initialized default model (uint8 images in, normalization inside
the compiled step, as every validation and test pass of a run). PyTorch's is the same model (bench/torch_models.py) in
eval mode under no_grad on images normalized beforehand (as bench/torch_suite.py does), cross-entropy summed and argmax
compared per batch, on torch's default threads."""
import os, statistics, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np
import torch
from bench import default_config
from torch_models import torch_model
from explorer.data import load_dataset, normalization
from explorer import fastpath
fastpath.install()
from explorer.train import Trainer, EVAL_BATCH

model = sys.argv[1] if len(sys.argv) > 1 else "mlp"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
data = load_dataset("mnist", os.environ.get("DATA_DIR"))
cfg = default_config(model, 128, 10 ** 6)
tr = Trainer(beam=0, threads=fastpath.default_threads())
c = tr.prepare(cfg); tr.reset(c, cfg)
tr.evaluate(c, data.x_val, data.y_val)  # compiles (and, on a new machine, fits the tiles)

mean, std = normalization("mnist")
net = torch_model(torch, cfg).eval()
xv = torch.from_numpy(((data.x_val.astype(np.float32) / 255.0 - mean) / std).reshape(len(data.x_val), 28, 28))
yv = torch.from_numpy(data.y_val.astype(np.int64))


def torch_pass() -> tuple[float, float]:
  loss, correct = 0.0, 0
  with torch.no_grad():
    for i in range(0, len(xv), EVAL_BATCH):
      out = net(xv[i:i + EVAL_BATCH])
      loss += torch.nn.functional.cross_entropy(out, yv[i:i + EVAL_BATCH], reduction="sum").item()
      correct += (out.argmax(1) == yv[i:i + EVAL_BATCH]).sum().item()
  return loss / len(xv), correct / len(xv)


torch_pass()
times = {"explorer": [], "PyTorch": []}
for _ in range(rounds):
  for way, run in (("explorer", lambda: tr.evaluate(c, data.x_val, data.y_val)), ("PyTorch", torch_pass)):
    t0 = time.perf_counter(); run(); times[way].append((time.perf_counter() - t0) / len(data.x_val) * 1000 * 1000)
print(f"{model}: a validation pass of {len(data.x_val):,} images in batches of {EVAL_BATCH}, {rounds} rounds in turns (median; min-max), "
      f"explorer {fastpath.threads()} threads, PyTorch {torch.get_num_threads()}")
for way, t in times.items(): print(f"  {way:9s} {statistics.median(t):7.1f} ms per 1,000 images ({min(t):.1f}-{max(t):.1f})")
print(f"  explorer / PyTorch: {statistics.median(times['explorer']) / statistics.median(times['PyTorch']):.2f}")
