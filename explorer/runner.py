"""Runs a planned suite: claim each run, skip finished ones, train with live progress, store the record, build reports.
Ctrl-C/SIGTERM: the interrupted run is recorded as interrupted, finished runs stay, reports are rebuilt, exit 130."""
from __future__ import annotations
import math, os, platform, signal, socket, subprocess, sys, time, traceback
from importlib.metadata import version
from pathlib import Path
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from explorer.config import RunSpec, describe
from explorer.data import load_dataset
from explorer.errors import UserError
from explorer import store


def make_record(spec: RunSpec, suite: str, result: dict | None, status: str, error: str | None, started_at: str, beam: int = 0,
                threads: int = 1) -> dict:
  result = result or {}
  return {
    "schema": store.SCHEMA, "suite": suite, "model": spec.config.model, "name": spec.name, "group": spec.group,
    "category": spec.category, "description": spec.description, "axes": spec.axes, "config_hash": spec.config.hash(),
    "capped_from": spec.capped_from, "position": spec.position, "config": spec.config.to_dict(), "status": status, "error": error,
    "metrics": {k: result[k] for k in store.METRIC_KEYS if k in result}, "history": result.get("history", {}),
    **{k: result.get(k) for k in ("params", "wall_s", "train_s", "compile_s", "setup_s", "eval_s", "ms_per_step", "steps_done", "device",
                                   "test_predictions")}, "beam": beam, "threads": threads,
    "tinygrad_version": version("tinygrad"), "code_version": CODE_VERSION, "dataset": spec.config.dataset, "host": platform.node() or socket.gethostname(),
    "started_at": started_at, "finished_at": store.now_iso(),
  }


def code_version() -> str | None:
  """The git commit the explorer ran from (with +dirty for local edits), so results can be traced to code."""
  root = Path(__file__).resolve().parents[1]
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    if head.returncode != 0: return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py"], cwd=root, capture_output=True, text=True, timeout=5)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError): return None


CODE_VERSION = code_version()


def _pct(x) -> str: return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def run_suite(specs: list[RunSpec], suite: str, results: Path, data_dir: str | None, rerun_since: str | None, device: str,
              console: Console, summary: bool = True, beam: int = 0, threads: int = 1, rebuild: bool = True,
              save_weights: str = "best") -> int:
  """rerun_since: with --rerun, the start time of the command: only records finished after it count as done (so the
  worker processes of one --rerun command still share the work)."""
  from explorer.train import Trainer  # imports tinygrad: only once the inputs are known to be good
  for path, info in store.stale_claims(results):
    console.print(f"[yellow]stale claim[/] {path.name}: its explorer (pid {info.get('pid', '?')}) died; the run will be trained again")
  datasets = {name: load_dataset(name, data_dir) for name in sorted({s.config.dataset for s in specs})}
  for name, ds in datasets.items(): console.print(f"data: {name} from {ds.source} ({len(ds.x_train)} train, {len(ds.x_val)} val, {len(ds.x_test)} test)")
  console.print(f"device: {device} · tinygrad {version('tinygrad')} · {len(specs)} runs · results in {results}/")
  trainer = Trainer(beam=beam, threads=threads)
  if trainer.threads > 1: console.print(f"CPU kernels run on {trainer.threads} threads (--threads)")
  if beam: console.print(f"BEAM={beam} kernel search for the compiled steps (cached on disk after the first run of a shape)")
  finished, skipped, failed, busy = [], 0, 0, 0
  started_wall = time.perf_counter()
  try:
    for i, spec in enumerate(specs, 1):
      cfg = spec.config
      path = store.record_path(results, suite, cfg.dataset, cfg.model, spec.name)
      if store.is_complete(store.read_record(path), cfg.hash(), rerun_since):
        skipped += 1
        continue
      claim = store.try_claim(path.parent, spec.name, cfg.hash())
      if claim is None:
        busy += 1
        console.print(f"[dim]{spec.name}: another explorer is training it; skipped[/]")
        continue
      try:
        # the other explorer may have finished it between our check and our claim
        if store.is_complete(store.read_record(path), cfg.hash(), rerun_since):
          skipped += 1
          continue
        console.rule(f"[{i}/{len(specs)}] {cfg.model} · {spec.category} · {spec.name}")
        if spec.description: console.print(spec.description)
        capped = f" (steps capped from {spec.capped_from} by --max-steps)" if spec.capped_from else ""
        console.print(describe(cfg) + capped, style="dim", markup=False, soft_wrap=True)
        started_at = store.now_iso()
        data = datasets[cfg.dataset]
        try:
          result = train_with_progress(trainer, spec, data, console)
          status, error = result["status"], ("loss became NaN/inf: diverged" if result["status"] == "diverged" else None)
        except KeyboardInterrupt:
          store.save_record(path, make_record(spec, suite, None, "interrupted", "interrupted by Ctrl-C/SIGTERM", started_at, beam,
                                                trainer.threads))
          raise
        except (UserError, MemoryError): raise
        except Exception as e:  # a crash inside one run is recorded and the suite goes on
          result, status, error = None, "failed", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
          console.print(f"[red]failed:[/] {error}")
          console.print(f"[dim]{traceback.format_exc(limit=3)}[/]")
        record = make_record(spec, suite, result, status, error, started_at, beam, trainer.threads)
        store.save_record(path, record)
        if status == "done" and save_weights != "none":  # a one-off (env vars) is one explicit run: its weights are kept
          save_weights_of(path, record, result, "all" if spec.category == "one-off" else save_weights, console)
        finished.append(record)
        failed += status == "failed"
        m = record["metrics"]
        colour = {"done": "green", "diverged": "yellow"}.get(status, "red")
        console.print(f"[{colour}]{status}[/] val {_pct(m.get('best_val_acc'))} (best) · test {_pct(m.get('test_acc'))} · "
                      f"{record['ms_per_step'] or 0:.1f} ms/step · compile {record['compile_s'] or 0:.1f}s · {record['wall_s'] or 0:.1f}s")
      finally:
        store.release(claim)
  except KeyboardInterrupt:
    if rebuild: rebuild_reports(results, console, suite, specs, save_weights)
    console.print(f"[red]interrupted[/] after {len(finished)} finished runs (kept in {results}/runs)")
    raise
  if rebuild: rebuild_reports(results, console, suite, specs, save_weights)
  console.print(f"{len(finished)} trained, {skipped} already finished (skipped; --rerun to train again)"
                + (f", {busy} held by another explorer" if busy else "") + f" · {time.perf_counter() - started_wall:.1f}s")
  if finished and summary:
    from explorer.report import summary_table
    console.print(summary_table(finished))
  if failed: console.print(f"[red]{failed} runs failed[/]: see their records and the report")
  return 1 if failed else 0


WORKER_ENV = "MNIST_EXPLORER_WORKER"


def run_with_workers(argv: list[str], workers: int, specs: list[RunSpec], suite: str, results: Path, console: Console,
                     **suite_args) -> int:
  """--workers N: N-1 helper processes run the same command next to this one. Each run is claimed before it trains,
  so every configuration is trained once. Each process gets its share of the cores (--threads)."""
  log_dir = results / "workers"
  log_dir.mkdir(parents=True, exist_ok=True)
  children = []
  for i in range(1, workers):
    log = open(log_dir / f"worker-{i}.log", "w")
    env = {**os.environ, WORKER_ENV: str(i), "MNIST_EXPLORER_RERUN_SINCE": suite_args["rerun_since"] or ""}
    children.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "mnist_explorer.py"), *argv,
                                       "--workers", "1", "--threads", str(suite_args["threads"])], env=env, stdout=log, stderr=subprocess.STDOUT), log))
  console.print(f"{workers - 1} helper process(es) started; their output: {log_dir}/worker-*.log")
  try:
    code = run_suite(specs, suite, results, console=console, summary=False, rebuild=False, **suite_args)  # rebuilt once, below
  except KeyboardInterrupt:  # Ctrl-C reaches the whole process group, a SIGTERM only this process: pass it on
    for p, _ in children:
      if p.poll() is None: p.send_signal(signal.SIGTERM)
    raise
  finally:
    codes = [p.wait() for p, _ in children]  # Ctrl-C reaches the whole process group: they stop and record too
    for _, log in children: log.close()
    rebuild_reports(results, console, suite, specs, suite_args.get("save_weights", "best"))
  records = [store.read_record(store.record_path(results, suite, s.config.dataset, s.config.model, s.name)) for s in specs]
  records = [r for r in records if r]
  if records:
    from explorer.report import summary_table
    console.print(summary_table(records))
  return max([code, *codes])


def train_with_progress(trainer, spec: RunSpec, data, console: Console) -> dict:
  cfg = spec.config
  columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
             TextColumn("lr {task.fields[lr]}"), TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
             TimeElapsedColumn(), TimeRemainingColumn())
  with Progress(*columns, console=console, transient=True, refresh_per_second=4) as bar:
    task = bar.add_task(spec.name, total=cfg.steps, lr="-", loss="-", val="-")

    def progress(p: dict) -> None:
      bar.update(task, completed=p["step"], lr=f"{p['lr']:.2e}", loss=f"{p['loss']:.4f}", val=_pct(p["val_acc"]))

    return trainer.run(cfg, data, progress)


def save_weights_of(record_path: Path, record: dict, result: dict, mode: str, console: Console) -> None:
  """The finished run's weights next to its record; a write error is a warning (the record is kept either way)."""
  from explorer import weights
  path = weights.weights_path(record_path)
  try: size = weights.save(path, result["weights"], weights.metadata(record, mode))
  except Exception as e:  # disk full, permissions, tinygrad's disk device: the record is what matters
    console.print(f"[yellow]weights not saved[/] ({path}: {type(e).__name__}: {getattr(e, 'strerror', None) or e}); the run's record is kept")
    return
  console.print(f"[dim]weights: {path} ({size / 1e6:.1f} MB)[/]")


def rebuild_reports(results: Path, console: Console, suite: str, specs: list[RunSpec], save_weights: str = "best") -> None:
  if os.environ.get(WORKER_ENV): return  # a helper process: the main one rebuilds once all are done
  if save_weights == "best":  # keep only the best configuration's weights of each report this suite touched
    from explorer.weights import prune_to_best
    try: prune_to_best(results, {(suite, s.config.dataset, s.config.model) for s in specs})
    except Exception as e: console.print(f"[yellow]weights of non-best runs not pruned[/] ({type(e).__name__}: {e})")
  try:
    from explorer.report import write_reports  # matplotlib too: a broken install must not hide the stored runs either
    paths = write_reports(results, redraw={(suite, s.config.dataset, s.config.model) for s in specs})
  except UserError: raise
  except Exception as e:  # a report bug must not hide the stored runs
    console.print(f"[red]report failed[/] ({type(e).__name__}: {e}); runs are safe in {results}/runs; retry with: python mnist_explorer.py report")
    return
  if paths: console.print(f"reports: {', '.join(str(p) for p in paths if str(p).endswith('.md'))}")
