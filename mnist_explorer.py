#!/usr/bin/env python3
"""mnist-explorer: hyperparameter studies of tinygrad MLPs and CNNs on MNIST-style data.

  JIT=1 python mnist_explorer.py mlp                       every configuration of [mlp] in experiments.toml
  python mnist_explorer.py cnn --category learning_rate   a subset (repeat --category for more)
  STEPS=5000 BATCH=256 LR_MAX=1e-3 ACT=silu python mnist_explorer.py mlp   one-off: the baseline with these values
  python mnist_explorer.py report                          rebuild the markdown and plots from stored runs
  python mnist_explorer.py evaluate RUN                    reload a run's saved weights, measure its test accuracy again
  python mnist_explorer.py predict RUN digit.png test:12   classify image files or test-set images with a run's weights
"""
from __future__ import annotations
import argparse, os, platform, shutil, sys
from dataclasses import replace
from pathlib import Path
from explorer.config import KEYS, MODELS, RunSpec, describe, env_overrides, load_toml, one_off_spec, suite_specs, with_overrides
from explorer import stop
from explorer.errors import UserError

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
  # DATASET is not among them: it picks the dataset of the whole suite, like --dataset
  keys = "\n".join(f"  {k.name.upper():12s} {k.help}" + (f" ({', '.join(k.choices)})" if k.choices else "") for k in KEYS if k.name != "dataset")
  p = argparse.ArgumentParser(
    prog="mnist_explorer.py", formatter_class=argparse.RawDescriptionHelpFormatter,
    description="Train every configuration of an experiments file with tinygrad and write markdown tables and loss curves.",
    epilog=f"Hyperparameter env vars (setting any of them runs ONE configuration: the model's baseline with them):\n{keys}\n"
           "  aliases: BS=BATCH, LR=LR_MAX\n\nDATASET=mnist|fashion runs the whole suite on that dataset (like --dataset), not a one-off.\n"
           "tinygrad's own variables keep their meaning: JIT=1, DEV=CPU|CUDA|METAL, BEAM=2, DEBUG=2.\n"
           "Saved weights: 'mnist_explorer.py evaluate RUN' and 'mnist_explorer.py predict RUN IMAGE...' (see their -h).\n"
           "Exit codes: 0 done, 1 some runs failed, 2 bad input (nothing trained), 130 interrupted (re-run to resume).")
  p.add_argument("model", choices=[*MODELS, "all", "report"], help="which suite to run, or 'report' to rebuild reports only")
  p.add_argument("--category", action="append", default=[], metavar="NAME", help="run only this category (repeatable)")
  p.add_argument("--max-steps", type=int, metavar="N", help="cap every configuration's steps at N (a quick pass: stored and reported apart, never replacing full-length runs)")
  p.add_argument("--config", default=os.environ.get("EXPERIMENTS", str(ROOT / "experiments.toml")), metavar="FILE",
                 help="experiments file (env EXPERIMENTS; default experiments.toml)")
  p.add_argument("--results", default=os.environ.get("RESULTS_DIR", "results"), metavar="DIR", help="results folder (env RESULTS_DIR)")
  p.add_argument("--data-dir", default=os.environ.get("DATA_DIR"), metavar="DIR", help="folder with the four IDX .gz files (env DATA_DIR)")
  p.add_argument("--dataset", default=os.environ.get("DATASET"), choices=["mnist", "fashion"], help="dataset for every run (env DATASET)")
  p.add_argument("--rerun", action="store_true", help="train again even configurations already finished")
  p.add_argument("--workers", type=int, default=1, metavar="N",
                 help="train N configurations at once in N processes (they share the cores: --threads defaults to cores / N)")
  p.add_argument("--beam", type=int, default=0, metavar="N",
                 help="tinygrad BEAM kernel search of width N for the compiled train/eval steps (0: off). "
                      "About 2x faster steps on CPU; the first run of each shape searches for minutes, later runs read "
                      "tinygrad's on-disk cache. On the CPU, a choice slower than tinygrad's stock kernel is not used, "
                      "and a search that shared the cores with other processes is reported")
  p.add_argument("--threads", type=int, metavar="N",
                 help="CPU threads per explorer process for tinygrad's kernels (default: the cores divided by --workers, "
                      "at most tinygrad's NUM_CPU_THREADS split); 1 is tinygrad's own one-thread execution")
  p.add_argument("--stock", action="store_true",
                 help="run stock tinygrad: none of the CPU fast path (explorer/fastpath: replay, kernel threads, lowered-kernel "
                      "disk cache); the same numbers, slower (env EXPLORER_STOCK=1)")
  p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                 help="train on a Ray cluster (pip install -e '.[ray]'): no ADDRESS starts a local Ray instance for the command "
                      "(or uses env RAY_ADDRESS when set); 'auto', HOST:PORT or ray://HOST:10001 joins an existing cluster")
  p.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="CPUs one run needs on the Ray cluster (default 1)")
  p.add_argument("--ray-gpus", type=float, default=0.0, metavar="N", help="GPUs one run needs, e.g. 0.25: four runs share a GPU (default 0)")
  p.add_argument("--list", action="store_true", help="print the resolved runs and exit without training")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="print each run's whole configuration (default: only the keys that differ from the defaults); "
                      "with report: every file written")
  p.add_argument("--save-weights", choices=["best", "all", "none"], default="best",
                 help="keep finished runs' weights as safetensors next to their records: best (default: the best configuration "
                      "of each report), all, or none")
  try:
    return p.parse_args(argv)
  except SystemExit as e:
    if e.code not in (0, None): raise SystemExit(2)  # argparse already printed its one-line error
    raise


def threads_per_process(args: argparse.Namespace) -> int:
  from explorer import fastpath
  if not fastpath.active(): return 1  # stock tinygrad runs a kernel's pieces one after another
  return args.threads or fastpath.default_threads(args.workers)


def fastpath_stock_requested() -> bool:
  from explorer import fastpath
  return fastpath.stock_requested()


def install_fastpath(args: argparse.Namespace, console) -> None:
  """The CPU fast path, installed once at start-up (each --workers helper process installs its own), or stock tinygrad."""
  from explorer import fastpath
  notice = fastpath.install(stock=bool(args.stock))
  if notice: print(notice, file=sys.stderr)
  elif not fastpath.active(): console.print(f"tinygrad: {fastpath.status}")


def plan(args: argparse.Namespace) -> list[RunSpec]:
  """Every run to train, fully resolved and checked before anything trains."""
  doc = load_toml(args.config)
  suite_models = list(MODELS) if args.model == "all" else [args.model]
  overrides = env_overrides()
  dataset = overrides.pop("dataset", None) or args.dataset  # DATASET is a suite-wide choice, not a one-off
  if args.dataset: dataset = args.dataset
  if not 1 <= args.workers <= 64: raise UserError(f"--workers must be 1..64, got {args.workers}")
  if not 0 <= args.beam <= 16: raise UserError(f"--beam must be 0..16, got {args.beam}")
  if args.threads is not None and not 1 <= args.threads <= 256: raise UserError(f"--threads must be 1..256, got {args.threads}")
  if args.max_steps is not None and args.max_steps < 1: raise UserError(f"--max-steps must be >= 1, got {args.max_steps}")
  if args.ray is None and (args.ray_cpus != 1.0 or args.ray_gpus != 0.0): raise UserError("--ray-cpus/--ray-gpus need --ray")
  if args.ray is not None:
    if args.workers > 1: raise UserError("--workers runs processes on this machine; with --ray the cluster's size sets the parallelism")
    if not 0 < args.ray_cpus <= 1024: raise UserError(f"--ray-cpus must be > 0, got {args.ray_cpus:g}")
    if not 0 <= args.ray_gpus <= 64: raise UserError(f"--ray-gpus must be 0..64, got {args.ray_gpus:g}")
  specs: list[RunSpec] = []
  for model in suite_models:
    if overrides:
      if args.category: raise UserError("--category selects suite runs; it cannot be combined with hyperparameter env vars (a one-off)")
      specs.append(one_off_spec(doc, model, args.config, overrides))
      continue
    model_specs = suite_specs(doc, model, args.config)
    if args.category:
      known = sorted({s.category for s in model_specs})
      for c in args.category:
        if c not in known: raise UserError(f"unknown category '{c}' for {model} in {args.config} (categories: {', '.join(known)})")
      model_specs = [s for s in model_specs if s.category in args.category]
    specs += model_specs
  if dataset: specs = [replace(s, config=with_overrides(s.config, {"dataset": dataset}, "--dataset")) for s in specs]
  if args.max_steps: specs = [cap_steps(s, args.max_steps) for s in specs]
  return specs


def cap_steps(spec: RunSpec, max_steps: int) -> RunSpec:
  cfg = spec.config
  if cfg.steps <= max_steps: return spec
  # the schedule's step counts shrink with the run, so a quick pass keeps each run's LR shape (and configurations that
  # differ only in warmup or decay period stay different); 0 means "derived from steps" and stays 0
  scale = max_steps / cfg.steps
  def shrink(n: int) -> int: return max(1, round(n * scale)) if n else 0
  capped = replace(cfg, steps=max_steps, warmup=min(shrink(cfg.warmup), max_steps - 1), decay_every=shrink(cfg.decay_every),
                   eval_every=min(cfg.eval_every, max_steps))
  return replace(spec, config=capped, capped_from=cfg.steps)


# tinygrad reads these as integers when it is imported: a bad value would be a traceback from deep inside it
TINYGRAD_INT_VARS = ("DEBUG", "JIT", "BEAM", "NOOPT", "CACHELEVEL", "IGNORE_BEAM_CACHE", "NUM_CPU_THREADS", "JIT_BATCH_SIZE", "IMAGE",
                     "FLOAT16", "CCACHE", "VIZ", "PROFILE", "PARALLEL", "TC", "SPLIT_REDUCEOP", "TRANSCENDENTAL")


def check_tinygrad_env() -> None:
  for name in TINYGRAD_INT_VARS:
    value = os.environ.get(name)
    if value is None: continue
    try: number = int(value)
    except ValueError: raise UserError(f"tinygrad's variable {name} must be an integer, got {value!r}") from None
    if number < 0 and name not in ("VIZ",): raise UserError(f"tinygrad's variable {name} must be >= 0, got {value!r}")
  if os.environ.get("JIT") not in (None, "0", "1", "2"): raise UserError(f"tinygrad's variable JIT must be 0, 1 or 2, got {os.environ['JIT']!r}")


def check_backend() -> str:
  """The tinygrad device, opened once so that a wrong DEV or a missing driver is one clear line before anything trains."""
  dev = os.environ.get("DEV", "")
  if (dev in ("", "CPU") or dev.startswith("CPU")) and platform.system() == "Linux" and shutil.which("clang") is None:
    raise UserError("tinygrad's CPU backend needs the clang compiler: install it with 'sudo apt-get install -y clang' (or run ./setup.sh)")
  try:
    from tinygrad import Device
  except ValueError as e:  # a tinygrad variable we do not check ourselves
    raise UserError(f"tinygrad refused an environment variable: {' '.join(str(e).split())}") from None
  try:
    Device[Device.DEFAULT]  # opening it loads the backend's library and finds the hardware
    return Device.DEFAULT
  except Exception as e:  # ModuleNotFoundError for an unknown DEV, RuntimeError/AttributeError for a missing driver
    hint = " (on macOS: xcode-select --install)" if platform.system() == "Darwin" else ""
    if isinstance(e, ModuleNotFoundError) and dev: why = f"unknown device DEV={dev} (devices: CPU, CUDA, METAL, AMD, ...)"
    else: why = " ".join(str(e).split()) or type(e).__name__
    raise UserError(f"tinygrad cannot use the device{f' DEV={dev}' if dev else ''}: {why}{hint}") from None


def load_data(specs: list[RunSpec], data_dir: str | None) -> dict:
  """Every dataset the runs use, checked against every run before anything trains (batch and train_size against the
  real training set, no empty split)."""
  from explorer.data import load_dataset
  datasets = {name: load_dataset(name, data_dir) for name in sorted({s.config.dataset for s in specs})}
  for name, ds in datasets.items():
    for split, x in (("training", ds.x_train), ("validation", ds.x_val), ("test", ds.x_test)):
      if len(x) == 0: raise UserError(f"the {name} {split} set from {ds.source} is empty: check the data files")
  for s in specs:
    available = len(datasets[s.config.dataset].x_train)
    n_train = s.config.train_size or available
    if s.config.train_size > available:
      raise UserError(f"run '{s.name}': train_size {s.config.train_size} is larger than the {s.config.dataset} training set "
                      f"({available} images after the validation split)")
    if s.config.batch > n_train:
      raise UserError(f"run '{s.name}': batch {s.config.batch} is larger than its training set ({n_train} {s.config.dataset} images)")
  return datasets


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] in ("evaluate", "predict"):
    from explorer.inference import main as use_weights
    return use_weights(argv)
  args = parse_args(argv)
  from rich.console import Console
  # in a log or a pipe (no terminal) rich would assume 80 columns and cut names in tables: lines there may be long
  console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 250)
  results = Path(args.results)
  if args.model == "report":
    return report(results, console, args.verbose)
  specs = plan(args)
  if not specs: raise UserError(f"{args.config}: no runs to train (the selected sections define none)")
  if args.list:
    for s in specs: console.print(f"{s.config.model} {s.category:16s} {s.name:28s} {describe(s.config, changed_only=not args.verbose)}",
                                  markup=False, soft_wrap=True)
    return 0
  check_tinygrad_env()
  device = check_backend() if args.ray is None else None  # on Ray, each worker uses the backend tinygrad finds on its node
  if args.ray is None: install_fastpath(args, console)  # on Ray, each worker installs its own
  from explorer.store import check_results_folder, now_iso, study_id
  check_results_folder(results)
  datasets = load_data(specs, args.data_dir)
  from explorer.runner import WORKER_ENV, run_suite, run_with_workers
  # --rerun: records finished before this command started do not count (helper processes get the same start time)
  rerun_since = (os.environ.get("MNIST_EXPLORER_RERUN_SINCE") or now_iso()) if args.rerun else None
  suite_args = dict(suite=study_id(results, args.config), results=results, datasets=datasets, rerun_since=rerun_since, device=device,
                    beam=args.beam, threads=threads_per_process(args), study_file=str(Path(args.config).resolve()), verbose=args.verbose,
                    save_weights=args.save_weights)
  if args.workers > 1 or os.environ.get(WORKER_ENV) or args.ray is not None:
    # longest runs first (by images to process), so the processes finish together instead of one waiting on the last long run
    specs = sorted(specs, key=lambda s: -s.config.steps * s.config.batch * (4 if s.config.model == "cnn" else 1))
  if args.ray is not None:
    from explorer.ray_runner import run_on_ray  # one line on how to install Ray when it is missing
    return run_on_ray(specs, args.ray or os.environ.get("RAY_ADDRESS") or "local", args.ray_cpus, args.ray_gpus, console=console,
                      stock=bool(args.stock) or fastpath_stock_requested(), **{k: v for k, v in suite_args.items() if k not in ("device", "threads")})
  if args.workers > 1: return run_with_workers(argv, args.workers, specs, console=console, **suite_args)
  return run_suite(specs, console=console, **suite_args)


def report(results: Path, console, verbose: bool = False) -> int:
  """Rebuild every report: markdown and CSV each time (quick), figures only where their runs (or the plot code) changed."""
  from rich.markup import escape
  from explorer import stop
  from explorer.report import write_reports
  from explorer.store import check_results_folder, load_records
  from explorer.text import plural
  if not (results / "runs").is_dir(): raise UserError(f"no run records under {results}/runs: train something first (python mnist_explorer.py mlp)")
  check_results_folder(results)
  records, warnings = load_records(results)
  if not records and not warnings: raise UserError(f"no run records under {results}/runs: train something first (python mnist_explorer.py mlp)")
  kept: list[Path] = []
  written = write_reports(results, kept=kept, warn=lambda m: console.print(f"[yellow]warning:[/] {escape(m)}"))
  stop.check()  # a stop swallowed by a matplotlib callback still ends the command as interrupted
  if verbose:
    for path in written: console.print(f"wrote {escape(str(path))}")
  pngs = sum(p.suffix == ".png" for p in written)
  reports = [p for p in written if p.suffix == ".md" and p.name not in ("index.md", "comparison.md")]  # one per suite, dataset, model
  console.print(escape(f"{plural(len(records), 'run')} in {plural(len(reports), 'report')}: {plural(len(written) - pngs, 'markdown/CSV file')} "
                       f"written, {plural(pngs, 'figure')} redrawn, {plural(len(kept), 'figure')} unchanged (their runs did not change)"
                       + ("" if verbose else "; -v lists the files") + f"\nindex: {results / 'index.md'}"))
  return 0


def cli() -> None:
  """Entry point: user mistakes are one line on stderr (exit 2), never a traceback."""
  stop.install()  # SIGTERM stops like Ctrl-C: finished runs are kept, the interrupted one is recorded as interrupted
  try:
    code = main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    code = e.exit_code
  except KeyboardInterrupt:
    print("interrupted: finished runs are kept; re-run the same command to resume", file=sys.stderr)
    code = 130
  except BrokenPipeError:  # output piped into head & co.
    code = 0
  stop.leave(code)  # records and reports are on disk: a late SIGTERM or tinygrad's pool cannot change the outcome now


if __name__ == "__main__":
  cli()
