#!/usr/bin/env python3
"""A model's default suite (experiments.toml) through the explorer, each way the README recommends, and through the plain
PyTorch script of the same configurations (bench/torch_suite.py): wall time of each whole command, ratios, accuracies.

  python bench/vs_torch.py                                  mlp: the main command, --workers 2 --beam 2 and the PyTorch script
  python bench/vs_torch.py --model cnn --repeat 2           twice, the second time in reverse order
  python bench/vs_torch.py --ways main --max-steps 5        a quick smoke: every configuration capped at 5 steps
  python bench/vs_torch.py --ways main --fresh-cache        the explorer's first run on a new machine (tuning, compiling)

Ways: main = `JIT=1 python mnist_explorer.py <model>`; workers = the same with `--workers 2`; fast = with `--workers 2 --beam 2` (its first run on a
machine searches kernels for minutes and keeps the choice for good: run it on a quiet machine). Each command runs as a
subprocess into a fresh temporary results folder (nothing is skipped), its wall time measured around the whole command
(start-up, data loading, compiling, reports included). Prints markdown to paste into the README.
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, subprocess, sys, tempfile, time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from explorer.config import ALIASES, KEYS, load_toml, suite_specs  # noqa: E402
from explorer.errors import UserError  # noqa: E402
from explorer.machine import available_cores, cpu_name  # noqa: E402
from explorer.store import load_records  # noqa: E402

# the README's main command, the same on two processes, and the fast way (with BEAM's search)
WAYS = {"main": [], "workers": ["--workers", "2"], "fast": ["--workers", "2", "--beam", "2"]}
TORCH = "torch"


def command_text(way: str, model: str) -> str:
  if way == TORCH: return f"plain PyTorch script (`bench/torch_suite.py --model {model}`)"
  return f"`JIT=1 python mnist_explorer.py {' '.join([model] + WAYS[way])}`"


def clean_env() -> dict:
  """JIT=1, and none of the hyperparameter variables that would turn the suite into a one-off."""
  names = {k.name.upper() for k in KEYS} | {a.upper() for a in ALIASES}
  return {**{k: v for k, v in os.environ.items() if k not in names}, "JIT": "1"}


def run(cmd: list[str], log: Path, env: dict | None = None) -> float:
  t0 = time.perf_counter()
  with open(log, "w") as f: rc = subprocess.run(cmd, cwd=ROOT, env={**clean_env(), **(env or {})}, stdout=f, stderr=subprocess.STDOUT).returncode
  wall = time.perf_counter() - t0
  if rc != 0: raise SystemExit(f"vs_torch: `{' '.join(cmd)}` failed (exit {rc}); its last output:\n" + log.read_text()[-3000:])
  return wall


def explorer_way(way: str, args, tmp: Path) -> tuple[float, dict, dict]:
  results = tmp / "results"
  cmd = [sys.executable, str(ROOT / "mnist_explorer.py"), args.model, "--config", args.config, "--results", str(results)] + WAYS[way] \
    + (["--max-steps", str(args.max_steps)] if args.max_steps else []) + (["--data-dir", args.data_dir] if args.data_dir else [])
  # --fresh-cache: tinygrad's cache database (compiled kernels, BEAM's and the tiles' choices, the lowered kernels) starts
  # empty, as on a new machine, and goes with the temporary folder
  wall = run(cmd, tmp / "output.log", {"CACHEDB": str(tmp / "cache.db")} if args.fresh_cache else None)
  records, _ = load_records(results)
  acc = {r["name"]: r["metrics"].get("test_acc") for r in records if r["model"] == args.model and r["status"] == "done"}
  info = next(({"device": r.get("device"), "threads": r.get("threads"), "beam": r.get("beam")} for r in records), {})
  return wall, acc, info


def torch_way(args, tmp: Path) -> tuple[float, dict, dict]:
  out = tmp / "torch.json"
  cmd = [sys.executable, str(ROOT / "bench" / "torch_suite.py"), "--model", args.model, "--config", args.config, "--json", str(out),
         "--threads", str(args.torch_threads), "--device", args.torch_device] + (["--max-steps", str(args.max_steps)] if args.max_steps else []) \
    + (["--data-dir", args.data_dir] if args.data_dir else [])
  wall = run(cmd, tmp / "output.log")
  result = json.loads(out.read_text())
  return wall, result["test_acc"], {"threads": result["threads"], "torch": result["torch"], "device": result["device"]}


def largest_difference(acc: dict, ref: dict) -> tuple[float | None, int]:
  """Largest |test accuracy difference| in points over the configurations both finished, and how many those are."""
  both = [k for k in ref if acc.get(k) is not None and ref[k] is not None]
  return (max(100 * abs(acc[k] - ref[k]) for k in both) if both else None), len(both)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="mlp", choices=("mlp", "cnn"), help="which default suite (default mlp)")
  p.add_argument("--ways", default="main,fast", help="explorer ways, comma-separated: main, workers, fast (default main,fast)")
  p.add_argument("--max-steps", type=int, help="cap every configuration's steps at N, in every way (a quick smoke, not a figure)")
  p.add_argument("--repeat", type=int, default=1, help="run the whole comparison K times, every other time in reverse order")
  p.add_argument("--torch-threads", type=int, default=available_cores(), help="threads of the PyTorch script (default: the cores)")
  p.add_argument("--torch-device", default="cpu", help="device of the PyTorch script: cpu (default) or cuda (with DEV=CUDA for the explorer)")
  p.add_argument("--fresh-cache", action="store_true",
                 help="each explorer command with an empty tinygrad cache of its own: a new machine's first run (tiles tuned, "
                      "every kernel compiled; with the fast way, BEAM's search: minutes)")
  p.add_argument("--logs", help="keep each command's output in this folder (<model>-<way>-<run>.log)")
  p.add_argument("--keep-results", help="keep each explorer command's results folder in this folder (<model>-<way>-<run>/), "
                 "to compare its records with another commit's")
  p.add_argument("--config", default=str(ROOT / "experiments.toml"), help="experiments file (default experiments.toml)")
  p.add_argument("--data-dir", default=os.environ.get("DATA_DIR"), help="MNIST IDX folder (env DATA_DIR; default: where the explorer looks)")
  args = p.parse_args(argv)
  args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
  if bad := [w for w in args.ways if w not in WAYS]: p.error(f"unknown way '{bad[0]}' (ways: {', '.join(WAYS)})")
  if not args.ways: p.error("--ways needs at least one of: main, workers, fast")
  if args.max_steps is not None and args.max_steps < 1: p.error("--max-steps must be >= 1")
  if args.repeat < 1: p.error("--repeat must be >= 1")
  if args.torch_threads < 1: p.error("--torch-threads must be >= 1")
  for folder in (args.logs, args.keep_results):
    if folder: Path(folder).mkdir(parents=True, exist_ok=True)
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  specs = suite_specs(load_toml(args.config), args.model, args.config)  # a bad experiments file: one line, before anything runs
  steps = sum(min(s.config.steps, args.max_steps or s.config.steps) for s in specs)
  order = [TORCH] + args.ways
  walls, accs, infos = {w: [] for w in order}, {w: [] for w in order}, {}
  for rep in range(args.repeat):
    for way in (order if rep % 2 == 0 else order[::-1]):
      with tempfile.TemporaryDirectory(prefix=f"vs-torch-{way}-") as tmp:
        print(f"# run {rep + 1}/{args.repeat}: {command_text(way, args.model)} ...", file=sys.stderr, flush=True)
        wall, acc, infos[way] = torch_way(args, Path(tmp)) if way == TORCH else explorer_way(way, args, Path(tmp))
        if args.logs: shutil.copy(Path(tmp) / "output.log", Path(args.logs) / f"{args.model}-{way}-{rep + 1}.log")
        if args.keep_results and way != TORCH: shutil.copytree(Path(tmp) / "results", Path(args.keep_results) / f"{args.model}-{way}-{rep + 1}")
      walls[way].append(wall)
      accs[way].append(acc)
      print(f"#   {wall:.1f} s, {len(acc)}/{len(specs)} configurations finished", file=sys.stderr, flush=True)

  capped = f", every configuration capped at {args.max_steps} steps (`--max-steps`: a smoke run, not a figure)" if args.max_steps else ""
  print(f"Default `{args.model}` suite of {Path(args.config).name}: {len(specs)} configurations, {steps:,} steps{capped}; "
        f"{args.repeat} run{'s' * (args.repeat > 1)}, every other one in reverse order; wall time of the whole command, "
        f"each into a fresh results folder" + (", the explorer's with an empty tinygrad cache (`--fresh-cache`: a new machine's "
        "first run)" if args.fresh_cache else "") + ".\n")
  print("| way | wall s | × PyTorch script | largest test-accuracy difference vs PyTorch (points) |\n| --- | ---: | ---: | ---: |")
  for way in order:
    ratios = ", ".join(f"{w / t:.2f}×" for w, t in zip(walls[way], walls[TORCH]))
    diffs = [largest_difference(a, t) for a, t in zip(accs[way], accs[TORCH])] if way != TORCH else []
    worst = max((d for d, _ in diffs if d is not None), default=None)
    compared = min((n for _, n in diffs), default=0)
    diff = "-" if way == TORCH else ("no configuration to compare" if worst is None else
                                     f"{worst:.2f} ({compared}/{len(specs)} configurations)")
    print(f"| {command_text(way, args.model)} | {', '.join(f'{w:.1f}' for w in walls[way])} | {ratios} | {diff} |")
  ex = next((infos[w] for w in args.ways if infos.get(w)), {})
  print("\nSingle seeds, different initial weights and batch orders: test accuracies differing by a few tenths of a point "
        "are expected" + (" (after a few steps, as here, by many points)" if args.max_steps and args.max_steps < 200 else "")
        + f".  \n**Machine** {cpu_name()}, {os.cpu_count()} logical cores ({available_cores()} usable), Python "
        f"{platform.python_version()}; **explorer** tinygrad {version('tinygrad')}, device {ex.get('device')}, "
        + ", ".join(f"{w}: {infos[w].get('threads')} thread(s) per process" for w in args.ways if w in infos)
        + f"; **PyTorch** {infos[TORCH]['torch']}, device {infos[TORCH]['device']}, {infos[TORCH]['threads']} threads.", flush=True)
  return 0


if __name__ == "__main__":
  try: raise SystemExit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
