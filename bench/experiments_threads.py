"""Does tinygrad's CPU backend use more than one core? Times a jitted matmul chain and compares wall vs CPU time.
  THREADS=1 python bench/experiments_threads.py ; THREADS=0 python bench/experiments_threads.py
  EXPLORER_THREADS=2 python bench/experiments_threads.py   # with the explorer's thread pool (explorer/fastpath/cpu_threads.py)"""
import os, sys, time, resource
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from explorer import fastpath
if int(os.environ.get("EXPLORER_THREADS", 1)) > 1:
  fastpath.install()
  fastpath.set_threads(int(os.environ["EXPLORER_THREADS"]))
from tinygrad import Tensor, TinyJit, getenv

a = Tensor(np.random.rand(512, 784).astype(np.float32)).realize()
w1 = Tensor(np.random.rand(784, 512).astype(np.float32)).realize()
w2 = Tensor(np.random.rand(512, 512).astype(np.float32)).realize()

@TinyJit
def f(a): return ((a @ w1).relu().contiguous() @ w2).sum().realize()

for _ in range(3): f(a).item()
times = []
r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(20):
  t = time.perf_counter(); f(a).item(); times.append(time.perf_counter() - t)
r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - c0
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(f"EXPLORER_THREADS={os.environ.get('EXPLORER_THREADS', 1)} THREADS={getenv('THREADS', 1)} NUM_CPU_THREADS={fastpath.kernel_pieces()} median {1000*np.median(times):.2f} ms  "
      f"cpu/wall {cpu/wall:.2f}  GFLOP/s {2*512*(784*512+512*512)/np.median(times)/1e9:.1f}")
