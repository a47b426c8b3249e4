#!/usr/bin/env python3
"""Ray's overhead: the default suite with `--ray` (a local Ray instance, one worker per core) against `--workers N`
on this machine, and the projection to a cluster of N such nodes from the measured parts.

  python bench/ray_overhead.py                       the default MLP suite both ways (a few minutes on 2 cores)
  python bench/ray_overhead.py --max-steps 50        a quick pass (the per-run overhead does not depend on the steps)
  python bench/ray_overhead.py --beam 2 --workers 2  both ways with --beam 2 (as README's Speed figures)

Needs the ray extra (pip install -e '.[ray]'). Time it on a quiet machine: the two ways run one after the other, so
a load that changes between them shows up as Ray's overhead. Prints markdown."""
from __future__ import annotations
import argparse, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if r.returncode != 0: raise SystemExit(f"bench: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
  return wall, r.stdout


def records(results: Path) -> dict[str, dict]:
  return {(r := json.loads(f.read_text()))["name"]: r for f in results.glob("runs/*/*/*/*.json")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
  p.add_argument("--workers", type=int, default=2, help="processes of the --workers way (default 2)")
  p.add_argument("--max-steps", type=int, help="cap every run's steps (a quick pass)")
  p.add_argument("--beam", type=int, default=0)
  p.add_argument("--data-dir", default=os.environ.get("DATA_DIR"), help="MNIST IDX folder (env DATA_DIR; default: where the explorer looks)")
  args = p.parse_args(argv)
  env = {**os.environ, "JIT": "1", "RAY_USAGE_STATS_ENABLED": "0"}
  cli = [sys.executable, str(ROOT / "mnist_explorer.py"), args.model, "--rerun", *(["--data-dir", args.data_dir] if args.data_dir else []), "--beam", str(args.beam)]
  if args.max_steps: cli += ["--max-steps", str(args.max_steps)]
  with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
    t_workers, _ = timed(cli + ["--results", f"{tmp}/workers", "--workers", str(args.workers)], env)
    t_ray, out = timed(cli + ["--results", f"{tmp}/ray", "--ray"], env)
    by_workers, by_ray = records(Path(tmp) / "workers"), records(Path(tmp) / "ray")
  m = re.search(r"Ray overhead: ([\d.]+)s to connect, workers ready after ([\d.]+)s, (\d+) ms per run", out)
  n_workers = int(re.search(r"(\d+) worker\(s\) of", out).group(1))
  connect_s, ready_s, per_run_s = float(m.group(1)), float(m.group(2)), int(m.group(3)) / 1000
  train_s = sum(r["wall_s"] for r in by_ray.values())
  runs = len(by_ray)
  worst = max(abs(by_ray[n]["metrics"]["test_acc"] - r["metrics"]["test_acc"]) for n, r in by_workers.items())
  print(f"Default `{args.model}` suite ({runs} runs{f', --max-steps {args.max_steps}' if args.max_steps else ''}, --beam {args.beam}), "
        f"this machine ({os.cpu_count()} cores):\n")
  print("| way | wall s |\n| --- | ---: |")
  print(f"| `--workers {args.workers}` | {t_workers:.1f} |")
  print(f"| `--ray` (local instance, {n_workers} workers) | {t_ray:.1f} |")
  print(f"\nRay's overhead: {100 * (t_ray / t_workers - 1):+.0f} % of the `--workers {args.workers}` wall time. Its parts: "
        f"{connect_s:.1f} s to start the local instance, all workers ready {ready_s:.1f} s after the start "
        f"(actors import tinygrad), {1000 * per_run_s:.0f} ms per run (median: result arrival - hand-out - the run's own time). "
        f"Test accuracy, largest difference between the two ways for one configuration: {100 * worst:.2f} points.")
  print(f"\nProjection to N nodes like this one ({n_workers} workers each), from these parts and the runs' own training time "
        f"({train_s:.1f} s in all): wall ~ start + (training + runs x per-run overhead) / (N x {n_workers}), plus the tail of "
        f"the longest run ({max(r['wall_s'] for r in by_ray.values()):.1f} s) at most:\n")
  print("| nodes | projected wall s |\n| ---: | ---: |")
  for n in (1, 2, 4, 8, 16):
    print(f"| {n} | {ready_s + (train_s + runs * per_run_s) / (n * n_workers):.1f} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
