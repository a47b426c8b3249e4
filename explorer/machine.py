"""Names of this machine (host, CPU model) and its usable cores: for records, claims, benchmarks and cache keys."""
from __future__ import annotations
import os, platform, socket


def host_name() -> str: return socket.gethostname() or platform.node()


def cpu_name() -> str:
  """The CPU model (compiled kernels are built for it with -march=native)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"): return line.split(":", 1)[1].strip()
  except OSError: pass
  return platform.processor() or platform.machine()


def available_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
