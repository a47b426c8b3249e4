"""Runs a planned suite: claim each run, skip finished ones, train with live progress, store the record, build reports.
Ctrl-C/SIGTERM: the interrupted run is recorded as interrupted, finished runs stay, reports are rebuilt, exit 130."""
from __future__ import annotations
import ctypes, math, os, shlex, signal, subprocess, sys, time, traceback
from importlib.metadata import version
from pathlib import Path
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from explorer.config import RunSpec, describe
from explorer.data import Dataset
from explorer.errors import UserError
from explorer import fastpath, record, stop, store
from explorer.text import plural


def make_record(spec: RunSpec, suite: str, result: dict | None, status: str, error: str | None, started_at: str, beam: int = 0,
                threads: int = 1, study_file: str | None = None) -> dict:
  return record.make(spec, suite, result, status, error, started_at, store.now_iso(), beam, threads, CODE_VERSION, study_file)


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


def run_suite(specs: list[RunSpec], suite: str, results: Path, datasets: dict[str, Dataset], rerun_since: str | None, device: str,
              console: Console, summary: bool = True, beam: int = 0, threads: int = 1, rebuild: bool = True,
              study_file: str | None = None, verbose: bool = False, save_weights: str = "best") -> int:
  """rerun_since: with --rerun, the start time of the command: only records finished after it count as done (so the
  worker processes of one --rerun command still share the work). verbose: print each run's whole configuration."""
  started_at_iso = store.now_iso()  # records finished after this were trained by another process during this command
  from explorer.train import Trainer  # imports tinygrad: only once the inputs are known to be good
  for path, info, why in store.clear_stale(results):
    owner = f"its explorer (pid {info.get('pid', '?')}) died" if why is None else f"it is invalid ({why})"
    console.print(f"[yellow]stale claim[/] {escape(str(path))}: {owner}; cleared (its run is trained again unless it finished)")
  for name, ds in datasets.items():
    console.print(f"data: {name} from {escape(ds.source)} ({len(ds.x_train)} train, {len(ds.x_val)} val, {len(ds.x_test)} test)")
  console.print(f"device: {device} · tinygrad {version('tinygrad')} · {plural(len(specs), 'run')} · results in {escape(str(results))}/")
  trainer = Trainer(beam=beam, threads=threads)
  trainer.plan([(spec.config, datasets[spec.config.dataset]) for spec in specs])  # kernels too brief to tune stay stock
  if trainer.threads > 1: console.print(f"CPU kernels run on {trainer.threads} threads (--threads)")
  if beam: console.print(f"BEAM={beam} kernel search for the compiled steps (cached on disk after the first run of a shape)")
  finished, skipped, by_others, failed, busy = [], 0, 0, 0, 0
  started_wall = time.perf_counter()
  try:
    for i, spec in enumerate(specs, 1):
      if parent_gone(): raise KeyboardInterrupt  # a helper whose explorer died stops (where PR_SET_PDEATHSIG does not exist)
      cfg = spec.config
      path = store.record_path(results, suite, cfg.dataset, cfg.model, spec.name, cfg.hash())
      def done_record() -> dict | None:
        found = store.find_record(results, suite, cfg.dataset, cfg.model, spec.name, cfg.hash())
        return found if store.is_complete(found, cfg.hash(), rerun_since) else None
      if found := done_record():
        if str(found.get("finished_at", "")) >= started_at_iso: by_others += 1
        else: skipped += 1
        continue
      claim = store.try_claim(path.parent, path.name.removesuffix(".json"), cfg.hash(),
                              warn=lambda m: console.print(f"[yellow]warning:[/] {escape(m)}"))
      if claim is None:
        busy += 1
        console.print(f"[dim]{escape(spec.name)}: another explorer is training it; skipped[/]")
        continue
      try:
        if done_record():  # the other explorer may have finished it between our check and our claim
          by_others += 1
          continue
        heading(console, escape(f"[{i}/{len(specs)}] {cfg.model} · {spec.category} · {spec.name}"))
        if spec.description: console.print(spec.description, markup=False)
        capped = f" · steps capped from {spec.capped_from} by --max-steps (a quick pass, reported apart)" if spec.capped_from else ""
        changed = "" if verbose else " · the other keys at their defaults (-v shows all)"
        console.print(describe(cfg, changed_only=not verbose) + capped + changed, style="dim", markup=False, soft_wrap=True)
        started_at = store.now_iso()
        data = datasets[cfg.dataset]
        try:
          result = train_with_progress(trainer, spec, data, console)
          status, error = result["status"], ("loss became NaN/inf: diverged" if result["status"] == "diverged" else None)
        except KeyboardInterrupt:
          store.save_record(path, make_record(spec, suite, None, "interrupted", "interrupted by Ctrl-C/SIGTERM", started_at, beam,
                                              trainer.threads, study_file))
          raise
        except UserError: raise
        except MemoryError as e:  # numpy's or tinygrad's: this configuration is too big for the machine, the next may fit
          trainer.compiled.pop(cfg.shape_key(), None)  # a half-built step is not reused
          result, status, error = None, "failed", f"out of memory: {' '.join(str(e).split())[:200] or 'MemoryError'}"
          console.print(f"[red]failed:[/] {escape(error)}")
        except Exception as e:  # a crash inside one run is recorded and the suite goes on
          result, status, error = None, "failed", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
          console.print(f"[red]failed:[/] {escape(error)}")
          console.print(traceback.format_exc(limit=3), style="dim", markup=False)
        rec = make_record(spec, suite, result, status, error, started_at, beam, trainer.threads, study_file)
        store.save_record(path, rec)
        if status == "done" and save_weights != "none":  # a one-off (env vars) is one explicit run: its weights are kept
          save_weights_of(path, rec, result, "all" if spec.category == "one-off" else save_weights, console)
        finished.append(rec)
        failed += status == "failed"
        console.print(result_line(rec))
      finally:
        store.release(claim)
  except KeyboardInterrupt:
    if rebuild: rebuild_reports(results, console, suite, specs, save_weights)
    console.print(f"[red]interrupted[/] after {plural(len(finished), 'finished run')} (kept in {escape(str(results))}/runs)")
    raise
  if rebuild: rebuild_reports(results, console, suite, specs, save_weights)
  stop.check()  # a stop during the reports may have been swallowed by a matplotlib callback: still exit 130
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
PARENT_ENV = "MNIST_EXPLORER_PARENT"
HELPER_STOP_S = 60  # after a stop, how long helpers get to record their interrupted run before they are killed


def _die_with_parent() -> None:
  """In a helper, before exec: SIGTERM when the explorer that started it dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG)."""
  try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
  except (OSError, AttributeError): pass  # not Linux: helpers also check their parent before each run (parent_gone)


def parent_gone() -> bool:
  parent = os.environ.get(PARENT_ENV) if os.environ.get(WORKER_ENV) else None
  return bool(parent) and str(os.getppid()) != parent


def run_with_workers(argv: list[str], workers: int, specs: list[RunSpec], suite: str, results: Path, console: Console,
                     **suite_args) -> int:
  """--workers N: N-1 helper processes run the same command next to this one. Each run is claimed before it trains,
  so every configuration is trained once. Each process gets its share of the cores (--threads). A stop (Ctrl-C, SIGTERM,
  at any moment, also while waiting for the helpers) is passed on to them; a helper whose explorer dies stops too."""
  log_dir = results / "workers"
  log_dir.mkdir(parents=True, exist_ok=True)
  children = []
  try:
    for i in range(1, workers):
      with open(log_dir / f"worker-{i}.log", "w") as log:
        env = {**os.environ, WORKER_ENV: str(i), PARENT_ENV: str(os.getpid()), "MNIST_EXPLORER_RERUN_SINCE": suite_args["rerun_since"] or ""}
        children.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "mnist_explorer.py"), *argv,
                                          "--workers", "1", "--threads", str(suite_args["threads"])], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent if sys.platform == "linux" else None))
    console.print(f"{plural(workers - 1, 'helper process', 'helper processes')} started; their output: {escape(str(log_dir))}/worker-*.log")
    code = run_suite(specs, suite, results, console=console, summary=False, rebuild=False, **suite_args)  # rebuilt once, below
    if any(p.poll() is None for p in children): console.print("[dim]waiting for the helper processes to finish their runs…[/]")
    codes = [p.wait() for p in children]
  except KeyboardInterrupt:
    stop_children(children)
    rebuild_reports(results, console, suite, specs, suite_args.get("save_weights", "best"))
    raise
  rebuild_reports(results, console, suite, specs, suite_args.get("save_weights", "best"))
  stop.check()
  found = [store.find_record(results, suite, s.config.dataset, s.config.model, s.name, s.config.hash()) for s in specs]
  found = [r for r in found if r]
  if found:
    from explorer.report import summary_table
    console.print(summary_table(found))
  if any(c not in (0, 1) for c in codes): console.print(f"[red]a helper process stopped with exit code {max(codes)}[/]: see {escape(str(log_dir))}")
  return max([code, *codes])


def stop_children(children: list[subprocess.Popen]) -> None:
  """Pass a stop on (a SIGTERM reaches only this process; Ctrl-C the whole group) and wait, however often interrupted,
  until every helper has recorded its interrupted run and exited; one that hangs is killed."""
  for p in children:
    if p.poll() is None:
      try: p.send_signal(signal.SIGTERM)
      except ProcessLookupError: pass
  deadline = time.monotonic() + HELPER_STOP_S
  for p in children:
    while p.poll() is None:
      try: p.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        p.kill()
      except KeyboardInterrupt: continue  # a second Ctrl-C must not leave helpers behind


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

    def tuned(kernels: int) -> None:  # the first run of a shape on this machine: tiles fitted to its CPU, once
      bar.update(task, description=f"{spec.name}: compiling, fitting kernel tiles to this CPU ({kernels} tuned, once per machine)")

    trainer.on_compile = compiling
    fastpath.on_tiles_tuned(tuned)
    try: return trainer.run(cfg, data, progress)
    finally:
      trainer.on_compile = None
      fastpath.on_tiles_tuned(None)
      if line := fastpath.tiles_notice(): console.print(f"[dim]{escape(line)}[/]")
      if trainer.beam and (line := fastpath.beam_notice(search_again_command())): console.print(f"[yellow]{escape(line)}[/]")


def search_again_command() -> str:
  """This command as one explorer process (helpers of --workers would load the cores the new search times on)."""
  argv, kept = sys.argv[1:], []
  while argv:
    arg = argv.pop(0)
    if arg in ("--workers", "--threads"): argv = argv[1:]
    elif not arg.startswith(("--workers=", "--threads=")): kept.append(arg)
  return shlex.join(["python", "mnist_explorer.py", *kept])


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
    paths = write_reports(results, redraw={(suite, s.config.dataset, s.config.model) for s in specs},
                          prefer={(suite, s.config.dataset, s.config.model, s.name): s.config.hash() for s in specs},
                          warn=lambda m: console.print(f"[yellow]warning:[/] {escape(m)}"))
  except (UserError, KeyboardInterrupt): raise
  except Exception as e:  # a report bug must not hide the stored runs
    console.print(f"[red]report failed[/] ({escape(type(e).__name__)}: {escape(str(e))}); runs are safe in {escape(str(results))}/runs; "
                  "retry with: python mnist_explorer.py report")
    return
  if paths: console.print(f"reports: {escape(', '.join(str(p) for p in paths if str(p).endswith('.md')))}")
