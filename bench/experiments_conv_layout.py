#!/usr/bin/env python3
"""The default CNN's second convolution (batch 128, 16 -> 32 channels, 14x14, 3x3, padding 1), forward and both
gradients in one compiled step, two ways in one process: tinygrad's conv2d on the weights as they are, and the
explorer's Conv2d (models/layers.py: the weights through a copy with the output channels last, and since commit
3ee982a the input's gradient summed over the kernel's real taps). Prints the step's
median time (the two ways in turns, ROUNDS rounds), each kernel's time on the last call (tinygrad's DEBUG=2 lines), and whether all three results match bit
for bit. On the CPU fast path with its fitted tiles, as the product runs.

  python bench/experiments_conv_layout.py [threads]"""
import re, statistics, sys, time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
from explorer import fastpath
fastpath.install()
fastpath.set_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
from tinygrad import Context, Tensor, TinyJit
from models.layers import Conv2d

rng = np.random.default_rng(0)
conv = Conv2d(16, 32, 3)
conv.reset(rng)
x = Tensor(rng.standard_normal((128, 16, 14, 14)).astype(np.float32)).realize()
g = Tensor(rng.standard_normal((128, 32, 14, 14)).astype(np.float32)).realize()
ROUNDS = 8
ways = {"tinygrad's conv2d": lambda: x.conv2d(conv.weight, conv.bias, padding=1), "explorer's Conv2d": lambda: conv(x)}
jits, times, kernels, results = {}, {name: [] for name in ways}, {}, {}
for name, forward in ways.items():
  def step(forward=forward):
    y = forward().relu()
    return [t.contiguous().realize() for t in (y, *(y * g).sum().gradient(x, conv.weight))]
  jits[name] = TinyJit(step)
  with fastpath.fitting_tiles():
    for _ in range(3): jits[name]()
for _ in range(ROUNDS):  # in turns, so a burst of load on this shared machine slows both ways
  for name, jit in jits.items():
    for _ in range(3):
      t0 = time.perf_counter(); jit(); times[name].append(time.perf_counter() - t0)
for name, jit in jits.items():
  out = StringIO()
  with redirect_stdout(out), Context(DEBUG=2): results[name] = [t.numpy() for t in jit()]
  print(f"{name}: {statistics.median(times[name]) * 1e3:.1f} ms a step (median of {len(times[name])}, in turns; "
        f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}), {fastpath.threads()} thread(s); its kernels on the last call:")
  for line in re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).splitlines():
    if m := re.search(r"\*\*\* \S+\s+\d+\s+(\S+).*?tm\s+([\d.]+(?:us|ms))/", line): print(f"  {m.group(2):>10}  {m.group(1)}")
same = all(np.array_equal(a, b) for a, b in zip(*results.values()))
print("output and both gradients bit-identical:", same)
raise SystemExit(0 if same else 1)
