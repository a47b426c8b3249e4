#!/usr/bin/env python3
"""Training-speed benchmark: the explorer's own compiled train step (Trainer) vs the same model and optimizer in PyTorch.

  python bench/bench.py                                  default MLP and CNN, batch 128 and 512, tinygrad and torch
  python bench/bench.py --models mlp --batches 128 --steps 50 --no-torch
  python bench/bench.py --beam 2                         tinygrad with the explorer's --beam 2 (first run searches, minutes)
  python bench/bench.py --models mlp --suite             also the default MLP suite's wall time: one fresh process per
                                                         configuration vs the explorer in one process and with --workers 2

Prints a markdown table (device, versions, CPU) to paste into the README. torch is optional (imported only here); without
it, or with --no-torch, only tinygrad is timed. JIT=1 is forced (it is tinygrad's default too). Timings are the median
of --steps steps after warm-up; each step includes the host->device batch copy and reading the loss, as Trainer.run does.
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("JIT", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from explorer.config import load_toml, make_config, one_off_spec, suite_specs  # noqa: E402
from explorer.data import load_dataset, normalization  # noqa: E402
from explorer.machine import cpu_name  # noqa: E402
from explorer.train import batch_indices  # noqa: E402
from torch_models import torch_model, torch_optimizer  # noqa: E402  (bench/, on sys.path as the script's folder)

DEFAULT_DATA = os.environ.get("DATA_DIR")  # None: the explorer's own search (./data/mnist, its cache, ...; else download)
EXPERIMENTS = ROOT / "experiments.toml"
WARMUP = 3  # steps 1-2 compile and capture the JIT; step 3 is the first replay (caches warm)


def default_config(model: str, batch: int, steps: int, experiments: Path = EXPERIMENTS):
  doc = load_toml(experiments)
  return make_config(model, {**doc[model].get("defaults", {}), "batch": batch, "steps": steps}, f"bench {model} batch {batch}")


def batches(data, cfg, n: int):
  """The batches Trainer.run would draw (same indices, same order)."""
  for _, idx in zip(range(n), batch_indices(len(data.x_train), cfg.batch, cfg.seed)): yield data.x_train[idx], data.y_train[idx]


# ---------------------------------------------------------------- tinygrad (the product's code path)

def bench_tinygrad(trainer, cfg, data, steps: int) -> dict:
  t0 = time.perf_counter()
  c = trainer.prepare(cfg)
  trainer.reset(c, cfg)
  setup_s = time.perf_counter() - t0
  times, losses = [], []
  for i, (xb, yb) in enumerate(batches(data, cfg, WARMUP + steps)):
    ts = time.perf_counter()
    loss = trainer.train_batch(c, xb, yb)
    times.append(time.perf_counter() - ts)
    losses.append(loss)
  ms = 1000 * float(np.median(times[WARMUP:]))
  return {"ms": ms, "compile_s": times[0], "capture_s": times[1], "setup_s": setup_s, "samples_s": cfg.batch / ms * 1000,
          "loss0": losses[0], "loss": losses[-1], "spread": spread(times[WARMUP:])}


def spread(times: list[float]) -> str:
  q1, q3 = np.percentile(times, [25, 75])
  return f"{1000 * q1:.1f}-{1000 * q3:.1f}"


# ---------------------------------------------------------------- PyTorch (optional, bench only)

def bench_torch(torch, cfg, data, steps: int, tiny_model) -> dict:
  from explorer.train import lr_at
  model = torch_model(torch, cfg, tiny_model)
  opt = torch_optimizer(torch, cfg, model.parameters())
  mean, std = normalization(cfg.dataset)
  times, losses = [], []
  for step, (xb, yb) in enumerate(batches(data, cfg, WARMUP + steps)):
    ts = time.perf_counter()
    x = (torch.from_numpy(xb).float() / 255.0 - mean) / std
    for g in opt.param_groups: g["lr"] = lr_at(cfg, step)  # the same cosine schedule, set from Python
    loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(yb).long())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    times.append(time.perf_counter() - ts)
  ms = 1000 * float(np.median(times[WARMUP:]))
  return {"ms": ms, "compile_s": times[0], "samples_s": cfg.batch / ms * 1000, "loss0": losses[0], "loss": losses[-1],
          "spread": spread(times[WARMUP:])}


# ---------------------------------------------------------------- suite wall time

ONE_RUN = """import sys, time; t0 = time.perf_counter(); sys.path.insert(0, {root!r})
from explorer.config import load_toml, suite_specs
from explorer.data import load_dataset
from explorer import fastpath
assert fastpath.install(stock={stock}) is None, "the fast path did not install"
spec = next(s for s in suite_specs(load_toml({cfg!r}), {model!r}, {cfg!r}) if s.name == {name!r})
data = load_dataset(spec.config.dataset, {data!r})
from explorer.train import Trainer
r = Trainer(beam={beam}, threads={threads}).run(spec.config, data)
assert r["status"] == "done", r["status"]
print("ACC", spec.name, r["test_acc"])
"""


FRESH = "one fresh process per configuration (Trainer.run, one after another; lowered kernels read from disk)"
FRESH_COLD = "one fresh process per configuration, each lowering its kernels again (EXPLORER_PROGRAM_CACHE=0: tinygrad's way)"


def run_timed(cmd: list[str], env: dict) -> tuple[float, str]:
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if r.returncode != 0: raise SystemExit(f"bench: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
  return wall, r.stdout


def suite_accuracies(results: Path, model: str) -> dict[str, float]:
  records = [json.loads(f.read_text()) for f in (results / "runs" / "experiments" / "mnist" / model).glob("*.json")]
  return {r["name"]: r["metrics"].get("test_acc") for r in records}


def bench_suite(model: str, data_dir: str | None, modes: list[str], beam: int, workers: int, threads: int | None,
                stock: bool = False) -> tuple[list[tuple[str, int, float]], dict]:
  """Wall time of the whole default suite: the CLI in one process, the CLI with --workers, one CLI process per category,
  one fresh process per configuration; and each run's test accuracy per way (they must agree)."""
  from explorer.fastpath import default_threads
  env = {**os.environ, "JIT": "1"}
  specs = suite_specs(load_toml(EXPERIMENTS), model, EXPERIMENTS)
  categories = list(dict.fromkeys(s.category for s in specs))
  cli = [sys.executable, str(ROOT / "mnist_explorer.py"), model, "--rerun", "--config", str(EXPERIMENTS), "--beam", str(beam)] \
    + (["--threads", str(threads)] if threads else []) + (["--data-dir", data_dir] if data_dir else []) + (["--stock"] if stock else [])
  out, accs = [], {}
  with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
    if "one" in modes:
      out.append(("CLI, one process", 1, run_timed(cli + ["--results", f"{tmp}/one"], env)[0]))
      accs["one"] = suite_accuracies(Path(tmp) / "one", model)
    if "workers" in modes:
      out.append((f"CLI, --workers {workers}", workers, run_timed(cli + ["--results", f"{tmp}/workers", "--workers", str(workers)], env)[0]))
      accs["workers"] = suite_accuracies(Path(tmp) / "workers", model)
    if "category" in modes:
      t = sum(run_timed(cli + ["--results", f"{tmp}/cat", "--category", c], env)[0] for c in categories)
      out.append(("CLI, one process per category", len(categories), t))
    if "oneoff" in modes:  # each configuration as the CLI's one-off: env vars over the baseline, its own record and report
      base = one_off_spec(load_toml(EXPERIMENTS), model, EXPERIMENTS, {}).config.to_dict()
      t, by_hash = 0.0, {s.config.hash()[:8]: s.name for s in specs}
      for s in specs:
        changed = {k.upper(): str(v) for k, v in s.config.to_dict().items() if base[k] != v or k == "steps"}  # >= 1 var: one run
        t += run_timed(cli + ["--results", f"{tmp}/oneoff"], {**env, **changed})[0]
      found = {}
      for f in (Path(tmp) / "oneoff" / "runs").rglob("one-off-*.json"):
        r = json.loads(f.read_text())
        found[by_hash.get(r["name"].removeprefix("one-off-"), r["name"])] = r["metrics"].get("test_acc")
      accs["oneoff"] = found
      out.append(("one CLI one-off per configuration (env vars: `STEPS=... LR_MAX=... python mnist_explorer.py`)", len(specs), t))
    for mode, label, cache in (("run", FRESH, "1"), ("runcold", FRESH_COLD, "0")):
      if mode not in modes: continue
      t, accs[mode] = 0.0, {}
      for s in specs:
        code = ONE_RUN.format(root=str(ROOT), cfg=str(EXPERIMENTS), model=model, name=s.name, data=data_dir, beam=beam,
                              threads=threads or default_threads(1), stock=stock)
        wall, stdout = run_timed([sys.executable, "-c", code], {**env, "EXPLORER_PROGRAM_CACHE": cache})
        t += wall
        name, acc = stdout.split("ACC", 1)[1].split()
        accs[mode][name] = float(acc)
      out.append((label, len(specs), t))
  print(f"# suite {model}: {len(specs)} configurations, {sum(s.config.steps for s in specs)} steps", file=sys.stderr)
  return out, accs


# ---------------------------------------------------------------- main

def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp,cnn (default both)")
  p.add_argument("--batches", default="128,512", help="comma-separated batch sizes (default 128,512)")
  p.add_argument("--steps", type=int, default=30, help=f"timed steps per case, after {WARMUP} warm-up steps (default 30)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True, help="also time PyTorch when importable")
  p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads(N) (default 0: torch's own default)")
  p.add_argument("--suite", action="store_true", help="also time the default suite of the first model (minutes)")
  p.add_argument("--suite-modes", default="run,runcold,one,workers", help="which suite variants: run,runcold,one,workers,category,oneoff (default run,runcold,one,workers)")
  p.add_argument("--workers", type=int, default=2, help="processes for the 'workers' suite variant (default 2)")
  p.add_argument("--beam", type=int, default=0, help="the explorer's --beam N: BEAM search for the compiled steps (default 0)")
  p.add_argument("--threads", type=int, default=0,
                 help="CPU threads per kernel, as the explorer's --threads (default 0: its default, cores / processes)")
  p.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                 help="replay captured steps from a plan (explorer/fastpath/replay.py); --no-replay: tinygrad's own JIT call")
  p.add_argument("--stock", action="store_true", help="stock tinygrad: none of explorer/fastpath, as the explorer's --stock")
  p.add_argument("--data-dir", default=DEFAULT_DATA, help="MNIST IDX folder (env DATA_DIR; default: the explorer's own search, "
                                                          "else download)")
  args = p.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
  if args.steps < 1: p.error("--steps must be >= 1")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  from importlib.metadata import version
  from tinygrad import Device
  from explorer import fastpath
  from explorer.train import Trainer
  if notice := fastpath.install(stock=args.stock): print(notice, file=sys.stderr)
  torch = None
  if args.torch:
    try: import torch  # noqa: F811  (optional: never a dependency of the product)
    except ImportError: print("# torch not importable: timing tinygrad only", file=sys.stderr)
    if torch and args.torch_threads > 0: torch.set_num_threads(args.torch_threads)
  data = load_dataset("mnist", args.data_dir)
  trainer = Trainer(beam=args.beam, threads=args.threads or fastpath.default_threads(1), fast_replay=args.replay)
  rows = []
  for model in args.models:
    for b in args.batches:
      cfg = default_config(model, b, WARMUP + args.steps)
      tg = bench_tinygrad(trainer, cfg, data, args.steps)
      th = None
      if torch:
        c = trainer.prepare(cfg)
        trainer.reset(c, cfg)  # torch starts from the same freshly initialized weights as the tinygrad run did
        th = bench_torch(torch, cfg, data, args.steps, c.model)
      rows.append((model, b, tg, th))
      print(f"# {model} batch {b}: tinygrad {tg['ms']:.1f} ms (loss {tg['loss0']:.4f} -> {tg['loss']:.4f})"
            + (f", torch {th['ms']:.1f} ms (loss {th['loss0']:.4f} -> {th['loss']:.4f})" if th else ""), file=sys.stderr)

  dev = Device.DEFAULT
  print(f"**Device** {dev} (tinygrad {version('tinygrad')}, JIT={os.environ.get('JIT')}, renderer "
        f"{type(Device[dev].renderer).__name__}, NUM_CPU_THREADS={fastpath.kernel_pieces()}, --beam {args.beam}, "
        f"--threads {trainer.threads}, {'--replay' if args.replay else '--no-replay'}; {fastpath.status})"
        + (f"; **torch** {torch.__version__}, {torch.get_num_threads()} threads" if torch else "; torch not timed")
        + f"; **CPU** {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}.  ")
  print(f"Median of {args.steps} steps after {WARMUP} warm-up steps (IQR in brackets); first step = trace + compile; "
        f"each step includes the batch copy and reading the loss.\n")
  head = "| model | batch | tinygrad ms/step | tinygrad samples/s | first step s | JIT capture s |"
  sep = "| --- | ---: | ---: | ---: | ---: | ---: |"
  if torch:
    head += " torch ms/step | torch samples/s | tinygrad / torch |"
    sep += " ---: | ---: | ---: |"
  print(head + "\n" + sep)
  for model, b, tg, th in rows:
    line = (f"| {model} | {b} | {tg['ms']:.1f} [{tg['spread']}] | {tg['samples_s']:,.0f} | {tg['compile_s']:.2f} | "
            f"{tg['capture_s']:.2f} |")
    if th: line += f" {th['ms']:.1f} [{th['spread']}] | {th['samples_s']:,.0f} | {tg['ms'] / th['ms']:.1f}x |"
    print(line)

  if args.suite:
    model = args.models[0]
    results, accs = bench_suite(model, args.data_dir, [m.strip() for m in args.suite_modes.split(",")], args.beam, args.workers, args.threads,
                                args.stock)
    print(f"\nDefault `{model}` suite wall time (JIT=1, --beam {args.beam}, fresh results folder, --rerun):\n")
    print("| how | processes | wall s | speed-up vs fresh processes | vs fresh processes lowering again |\n| --- | ---: | ---: | ---: | ---: |")
    bases = [next((t for name, _, t in results if name == label), None) for label in (FRESH, FRESH_COLD)]
    for name, n, t in results:
      print(f"| {name} | {n} | {t:.1f} | " + " | ".join(f"{b / t:.2f}x" if b else "-" for b in bases) + " |")
    if len(accs) > 1:
      ref = next(iter(accs.values()))
      worst = max(abs(a[k] - ref[k]) for a in accs.values() for k in ref if k in a)
      print(f"\nTest accuracy, largest difference between the ways for one configuration: {100 * worst:.2f} points "
            f"({', '.join(f'{k}: {len(v)} runs' for k, v in accs.items())}).")
  return 0


if __name__ == "__main__":
  from explorer.errors import UserError
  try: raise SystemExit(main())
  except UserError as e: raise SystemExit(f"error: {e}")
