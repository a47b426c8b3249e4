#!/usr/bin/env python3
"""Speed of the default MLP and CNN train steps: tinygrad (the explorer's own compiled step) vs the identical model and
optimizer in PyTorch (when installed) in the same run. A script that prints figures, never a test.

  python bench/bench.py                       # MLP and CNN, batch 128 and 512
  python bench/bench.py --models mlp --batches 128 --steps 30
"""
from __future__ import annotations
import argparse, os, platform, statistics, sys, time
from importlib.metadata import version
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JIT", "1")
from tinygrad import Device, Tensor  # noqa: E402
from explorer.config import load_toml, suite_specs, with_overrides  # noqa: E402
from explorer.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def default_config(model: str, batch: int):
  spec = next(s for s in suite_specs(load_toml(ROOT / "experiments.toml"), model, "experiments.toml") if s.category == "baseline")
  return with_overrides(spec.config, {"batch": batch}, "bench")


def fake_batches(batch: int, n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8), rng.integers(0, 10, batch, dtype=np.uint8)) for _ in range(n)]


def bench_tinygrad(cfg, steps: int) -> dict:
  trainer = Trainer()
  t0 = time.perf_counter()
  c = trainer.prepare(cfg)
  trainer.reset(c, cfg)
  times = []
  for i, (x, y) in enumerate(fake_batches(cfg.batch, steps + 2)):
    ts = time.perf_counter()
    c.train_step(Tensor(x), Tensor(y)).item()  # .item(): the explorer reads every loss (NaN check), so we time it too
    times.append(time.perf_counter() - ts)
    if i == 1: first = time.perf_counter() - t0
  return {"ms": 1000 * statistics.median(times[2:]), "first_s": first}


def bench_torch(cfg, steps: int) -> dict | None:
  try: import torch
  except ImportError: return None
  nn = torch.nn
  act = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}[cfg.act]
  if cfg.model == "mlp":
    layers, n_in = [nn.Flatten()], 784
    for w in cfg.hidden_widths: layers += [nn.Linear(n_in, w), act()]; n_in = w
    model = nn.Sequential(*layers, nn.Linear(n_in, 10))
  else:
    layers, c_in, size = [], 1, 28
    for c in cfg.channels:
      layers += [nn.Conv2d(c_in, c, cfg.kernel, padding=cfg.kernel // 2), act()]
      if cfg.pool != "none" and size // 2 >= 4: layers.append(nn.MaxPool2d(2)); size //= 2
      c_in = c
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * size * size, cfg.width), act(), nn.Linear(cfg.width, 10))
  opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr_max, weight_decay=cfg.wd)
  times = []
  t0 = time.perf_counter()
  for i, (x, y) in enumerate(fake_batches(cfg.batch, steps + 2)):
    ts = time.perf_counter()
    xb = (torch.from_numpy(x).float().unsqueeze(1) / 255 - 0.1307) / 0.3081
    loss = nn.functional.cross_entropy(model(xb), torch.from_numpy(y).long())
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
    times.append(time.perf_counter() - ts)
    if i == 1: first = time.perf_counter() - t0
  return {"ms": 1000 * statistics.median(times[2:]), "first_s": first, "threads": torch.get_num_threads(), "version": torch.__version__}


def cpu_name() -> str:
  try: return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
  except (OSError, StopIteration): return platform.processor() or "unknown"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mlp,cnn")
  p.add_argument("--batches", default="128,512")
  p.add_argument("--steps", type=int, default=30, help="timed steps after 2 warm-up steps")
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  print(f"device {Device.DEFAULT} · tinygrad {version('tinygrad')} · CPU {cpu_name()} ({os.cpu_count()} cores) · "
        f"BEAM={os.environ.get('BEAM', '0')}\n")
  print("| model | batch | tinygrad ms/step | tinygrad samples/s | first 2 steps (compile) s | torch ms/step | torch threads | tinygrad / torch |")
  print("|---|---|---|---|---|---|---|---|")
  for model in args.models.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      cfg = default_config(model, batch)
      tg = bench_tinygrad(cfg, args.steps)
      th = None if args.no_torch else bench_torch(cfg, args.steps)
      torch_cols = f"{th['ms']:.1f} | {th['threads']} | {tg['ms'] / th['ms']:.1f}x" if th else "- | - | -"
      print(f"| {model} | {batch} | {tg['ms']:.1f} | {batch * 1000 / tg['ms']:.0f} | {tg['first_s']:.1f} | {torch_cols} |", flush=True)


if __name__ == "__main__":
  main()
