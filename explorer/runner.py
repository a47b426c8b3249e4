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
from explorer.text import plural


def make_record(spec: RunSpec, suite: str, result: dict | None, status: str, error: str | None, started_at: str, beam: int = 0,
                threads: int = 1) -> dict:
  result = result or {}
  return {
    "schema": store.SCHEMA, "suite": suite, "model": spec.config.model, "name": spec.name, "group": spec.group,
    "category": spec.category, "description": spec.description, "axes": spec.axes, "config_hash": spec.config.hash(),
    "capped_from": spec.capped_from, "position": spec.position, "config": spec.config.to_dict(), "status": status, "error": error,
    "metrics": {k: result[k] for k in store.METRIC_KEYS if k in result}, "history": result.get("history", {}),
    **{k: result.get(k) for k in ("params", "wall_s", "train_s", "compile_s", "setup_s", "eval_s", "ms_per_step", "steps_done", "device")}, "beam": beam, "threads": threads,
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


def heading(console: Console, text: str) -> None:
  """A rule across a terminal; in a log (no terminal, where the console is wide so tables are never cut) a short one."""
  if console.is_terminal: console.rule(text)
  else: console.print(f"── {text} ──")


def result_line(record: dict) -> str:
  """One run's outcome. val: the final validation accuracy (the one the tables and reports use), then the best one seen."""
  m, status = record["metrics"], record["status"]
  colour = {"done": "green", "diverged": "yellow"}.get(status, "red")
  best = f" (best {_pct(m.get('best_val_acc'))} at step {m.get('best_val_step')})" if m.get("best_val_acc") is not None else ""
  search = " incl. BEAM search" if record.get("beam") else ""
  return (f"[{colour}]{status}[/] final val {_pct(m.get('final_val_acc'))}{best} · test {_pct(m.get('test_acc'))} · "
          f"{record['ms_per_step'] or 0:.1f} ms/step · training {record['train_s'] or 0:.1f}s · "
          f"compile{search} {record['compile_s'] or 0:.1f}s · {record['wall_s'] or 0:.1f}s in all")


def run_suite(specs: list[RunSpec], suite: str, results: Path, data_dir: str | None, rerun_since: str | None, device: str,
              console: Console, summary: bool = True, beam: int = 0, threads: int = 1, rebuild: bool = True, verbose: bool = False) -> int:
  """rerun_since: with --rerun, the start time of the command: only records finished after it count as done (so the
  worker processes of one --rerun command still share the work). verbose: print each run's whole configuration."""
  started_at_iso = store.now_iso()  # records finished after this were trained by another process during this command
  from explorer.train import Trainer  # imports tinygrad: only once the inputs are known to be good
  for path, info in store.stale_claims(results):
    console.print(f"[yellow]stale claim[/] {path.name}: its explorer (pid {info.get('pid', '?')}) died; the run will be trained again")
  datasets = {name: load_dataset(name, data_dir) for name in sorted({s.config.dataset for s in specs})}
  for name, ds in datasets.items(): console.print(f"data: {name} from {ds.source} ({len(ds.x_train)} train, {len(ds.x_val)} val, {len(ds.x_test)} test)")
  console.print(f"device: {device} · tinygrad {version('tinygrad')} · {plural(len(specs), 'run')} · results in {results}/")
  trainer = Trainer(beam=beam, threads=threads)
  if trainer.threads > 1: console.print(f"CPU kernels run on {trainer.threads} threads (--threads)")
  if beam: console.print(f"BEAM={beam} kernel search for the compiled steps (cached on disk after the first run of a shape)")
  finished, skipped, by_others, failed, busy = [], 0, 0, 0, 0
  started_wall = time.perf_counter()
  try:
    for i, spec in enumerate(specs, 1):
      cfg = spec.config
      path = store.record_path(results, suite, cfg.dataset, cfg.model, spec.name)
      if store.is_complete(record := store.read_record(path), cfg.hash(), rerun_since):
        if str(record.get("finished_at", "")) >= started_at_iso: by_others += 1
        else: skipped += 1
        continue
      claim = store.try_claim(path.parent, spec.name, cfg.hash())
      if claim is None:
        busy += 1
        console.print(f"[dim]{spec.name}: another explorer is training it; skipped[/]")
        continue
      try:
        # the other explorer may have finished it between our check and our claim
        if store.is_complete(store.read_record(path), cfg.hash(), rerun_since):
          by_others += 1
          continue
        heading(console, f"[{i}/{len(specs)}] {cfg.model} · {spec.category} · {spec.name}")
        if spec.description: console.print(spec.description)
        capped = f" · steps capped from {spec.capped_from} by --max-steps" if spec.capped_from else ""
        changed = "" if verbose else " · the other keys at their defaults (-v shows all)"
        console.print(describe(cfg, changed_only=not verbose) + capped + changed, style="dim", markup=False, soft_wrap=True)
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
        finished.append(record)
        failed += status == "failed"
        console.print(result_line(record))
      finally:
        store.release(claim)
  except KeyboardInterrupt:
    if rebuild: rebuild_reports(results, console, suite, specs)
    console.print(f"[red]interrupted[/] after {plural(len(finished), 'finished run')} (kept in {results}/runs)")
    raise
  if rebuild: rebuild_reports(results, console, suite, specs)
  console.print(closing_line(len(finished), by_others, skipped, busy) + f" · {time.perf_counter() - started_wall:.1f}s")
  if finished and summary:
    from explorer.report import summary_table
    console.print(summary_table(finished))
  if failed: console.print(f"[red]{plural(failed, 'run')} failed[/]: see their records and the report")
  return 1 if failed else 0


def closing_line(trained: int, by_others: int, skipped: int, busy: int) -> str:
  """What happened to every planned run: trained here, by another process of this command (--workers helpers, or a
  second explorer), already finished before it started (skipped), or still held by another explorer."""
  parts = [f"{trained} trained here" if by_others or busy else f"{trained} trained"]
  if by_others: parts.append(f"{by_others} trained meanwhile by another explorer process (e.g. a --workers helper)")
  if skipped: parts.append(f"{skipped} already finished before (skipped; --rerun to train again)")
  if busy: parts.append(f"{busy} still held by another explorer")
  return ", ".join(parts)


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
  console.print(f"{plural(workers - 1, 'helper process', 'helper processes')} started; their output: {log_dir}/worker-*.log")
  try:
    code = run_suite(specs, suite, results, console=console, summary=False, rebuild=False, **suite_args)  # rebuilt once, below
  except KeyboardInterrupt:  # Ctrl-C reaches the whole process group, a SIGTERM only this process: pass it on
    for p, _ in children:
      if p.poll() is None: p.send_signal(signal.SIGTERM)
    raise
  finally:
    codes = [p.wait() for p, _ in children]  # Ctrl-C reaches the whole process group: they stop and record too
    for _, log in children: log.close()
    rebuild_reports(results, console, suite, specs)
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

    def compiling(step: str, seconds: float | None) -> None:
      # the first calls of a compiled step compile (with --beam: search) its kernels: say so, a search takes minutes
      if seconds is None:
        what = f"kernel search (BEAM={trainer.beam}) for the {step}" if trainer.beam else f"compiling the {step}"
        bar.update(task, description=f"{spec.name}: {what}")
        if trainer.beam: console.print(f"[dim]{what}: minutes for a new shape, seconds once tinygrad's cache has it…[/]")
      else:
        bar.update(task, description=spec.name)
        if trainer.beam: console.print(f"[dim]{step}: kernel search and compile took {seconds:.1f}s (not counted as training time)[/]")

    trainer.on_compile = compiling
    try: return trainer.run(cfg, data, progress)
    finally: trainer.on_compile = None


def rebuild_reports(results: Path, console: Console, suite: str, specs: list[RunSpec]) -> None:
  if os.environ.get(WORKER_ENV): return  # a helper process: the main one rebuilds once all are done
  try:
    from explorer.report import write_reports  # matplotlib too: a broken install must not hide the stored runs either
    paths = write_reports(results, redraw={(suite, s.config.dataset, s.config.model) for s in specs})
  except UserError: raise
  except Exception as e:  # a report bug must not hide the stored runs
    console.print(f"[red]report failed[/] ({type(e).__name__}: {e}); runs are safe in {results}/runs; retry with: python mnist_explorer.py report")
    return
  if paths: console.print(f"reports: {', '.join(str(p) for p in paths if str(p).endswith('.md'))}")
