"""--ray: a suite on a Ray cluster (an optional extra: this is the only module that imports ray, and only when called).

The driver (this process) keeps every guarantee of explorer.runner: it checks what is finished, claims each run in the
results folder, writes every record (atomically) and the reports, so worker machines need no shared filesystem.
Workers only train: each worker slot is a long-lived Ray actor holding a Trainer, so the steps it compiled serve every
later run of the same shape there, and the driver sends a run to an actor that has its shape compiled when it can.
The datasets go into Ray's object store once; the explorer's code travels with the job (runtime_env py_modules), so
a worker machine needs only Python, ray, tinygrad and numpy (this module imports nothing else at its top).
A worker that dies mid-run (its process or its node) has its run trained again by another worker, MAX_ATTEMPTS
attempts in all; then the run is recorded as failed with the reason, and the suite goes on."""
from __future__ import annotations
import ipaddress, logging, os, platform, socket, time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from explorer import stop, store
from explorer.config import RunSpec
from explorer.errors import UserError

MAX_ATTEMPTS = 3  # a run whose worker dies is trained at most this often in all
START_TIMEOUT_S = float(os.environ.get("EXPLORER_RAY_START_TIMEOUT", "300"))  # no worker at all for this long: give up
ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "install it with: pip install -e '.[ray]'"


class TrainerWorker:
  """One worker slot: a long-lived process whose Trainer keeps the compiled steps of every shape it has trained."""
  def __init__(self, datasets: dict, beam: int, threads: int, stock: bool):
    from explorer import fastpath
    fastpath.install(stock=stock)  # each worker process its own (CPU nodes only; other devices run stock tinygrad)
    from explorer.train import Trainer  # tinygrad is imported on the worker, where the device is
    self.datasets, self.trainer = datasets, Trainer(beam=beam, threads=threads)

  def describe(self) -> dict:
    import ray
    return {"host": platform.node(), "node_id": ray.get_runtime_context().get_node_id(), "device": self.trainer.device,
            "pid": os.getpid(), "threads": self.trainer.threads}

  def run(self, cfg) -> dict:
    result = self.trainer.run(cfg, self.datasets[cfg.dataset])
    return {**result, "host": platform.node(), "compile_count": self.trainer.compile_count}


@dataclass
class Job:
  spec: RunSpec
  path: Path
  claim: store.Claim | None = None
  attempts: int = 0
  started_at: str = ""
  sent: float = 0.0  # perf_counter when handed to a worker (Ray's own time per run = result arrival - sent - training)


@dataclass
class Slot:
  """A worker slot: its actor, the call in flight (`describe` while it starts, then `run`) and the shapes it compiled."""
  number: int
  actor: object
  call: object = None
  info: dict | None = None
  job: Job | None = None
  shapes: set = field(default_factory=set)


def is_loopback(address: str) -> bool:
  if address == "local": return True
  host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
  try: return host == "localhost" or ipaddress.ip_address(host).is_loopback
  except ValueError: return False


def import_ray(address: str):
  if is_loopback(address):
    # Ray swaps 127.0.0.1 for this machine's outward IP (and its servers then listen on every interface) unless its
    # multi-node switch is off; off, a local instance and a driver of a loopback cluster stay on 127.0.0.1
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # an instance started for one command reports nothing outside
  try:
    import ray
  except ImportError as e:
    raise UserError(f"--ray needs Ray ({e}); {INSTALL_HINT}") from None
  return ray


def runtime_env() -> dict:
  """The explorer's own code travels with the job, so workers run the driver's version of it; tinygrad's device
  choice passes on only when the user made one (DEV=...): otherwise each worker uses what tinygrad finds on its node."""
  env = {k: os.environ[k] for k in ("DEV", "JIT", "EXPLORER_PROGRAM_CACHE") if k in os.environ}
  return {"py_modules": [str(ROOT / "explorer"), str(ROOT / "models")], "excludes": ["__pycache__"], **({"env_vars": env} if env else {})}


def check_reachable(address: str) -> None:
  """HOST:PORT and ray://HOST:PORT must accept a connection: ray.init itself retries an unreachable address for minutes."""
  if address in ("local", "auto"): return
  host, _, port = address.removeprefix("ray://").rpartition(":")
  if not host or not port.isdigit(): raise UserError(f"--ray address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=10): pass
  except OSError as e:
    raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): is it started (ray start --head) and the port right?") from None


def connect(ray, address: str) -> None:
  check_reachable(address)
  kwargs = dict(runtime_env=runtime_env(), log_to_driver=False, logging_level=logging.WARNING)
  try:
    if address == "local": ray.init(address="local", include_dashboard=False, **kwargs)
    else: ray.init(address=address, **kwargs)
  except Exception as e:  # unreachable, refused, a token mismatch, another Ray version: one line, nothing trained
    where = "start a local Ray instance" if address == "local" else f"reach the Ray cluster at {address}"
    raise UserError(f"cannot {where}: {' '.join(str(e).split())[:300]}") from None


def cluster_slots(ray, cpus: float, gpus: float) -> tuple[int, list[str]]:
  """How many runs the cluster's live nodes hold at once with `cpus` CPUs and `gpus` GPUs each; one line per node."""
  slots, lines = 0, []
  for node in ray.nodes():
    if not node.get("Alive"): continue
    have = node.get("Resources", {})
    fit = int(have.get("CPU", 0) // cpus)
    if gpus: fit = min(fit, int(have.get("GPU", 0) // gpus))
    slots += fit
    lines.append(f"{node.get('NodeManagerAddress')}: {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs -> {fit} worker(s)")
  return slots, lines


def choose(queue: deque, slot: Slot, slots: list[Slot]) -> Job | None:
  """The next run for this worker: one whose shape it has compiled, else one whose shape no other worker has compiled
  (each shape compiles once), else the next one."""
  if not queue: return None
  elsewhere = set().union(*(s.shapes for s in slots if s is not slot))
  for wanted in (lambda j: j.spec.config.shape_key() in slot.shapes, lambda j: j.spec.config.shape_key() not in elsewhere):
    for job in queue:
      if wanted(job): return job
  return queue[0]


def _line(e: BaseException) -> str: return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def run_on_ray(specs: list[RunSpec], address: str, cpus: float, gpus: float, suite: str, results: Path, datasets: dict,
               rerun_since: str | None, console, beam: int = 0, study_file: str | None = None, save_weights: str = "best",
               stock: bool = False, verbose: bool = False) -> int:
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
  from rich.markup import escape
  from explorer.runner import _pct, make_record, rebuild_reports, save_weights_of
  ray = import_ray(address)
  for path, info, why in store.clear_stale(results):
    owner = f"its explorer (pid {info.get('pid', '?')}) died" if why is None else f"it is invalid ({why})"
    console.print(f"[yellow]stale claim[/] {escape(str(path))}: {owner}; cleared (its run is trained again unless it finished)")
  def complete(spec: RunSpec) -> bool:
    cfg = spec.config
    return store.is_complete(store.find_record(results, suite, cfg.dataset, cfg.model, spec.name, cfg.hash()), cfg.hash(), rerun_since)
  jobs, skipped = [], 0
  for spec in specs:
    path = store.record_path(results, suite, spec.config.dataset, spec.config.model, spec.name, spec.config.hash())
    if complete(spec): skipped += 1
    else: jobs.append(Job(spec, path))
  if not jobs:
    console.print(f"all {skipped} runs already finished (skipped; --rerun to train again)")
    rebuild_reports(results, console, suite, specs, save_weights)
    return 0
  # the driver has read and checked the data (the usual checks and messages); workers get it from the object store
  datasets = {name: ds for name, ds in datasets.items() if any(j.spec.config.dataset == name for j in jobs)}
  for name, ds in datasets.items():
    console.print(f"data: {name} from {escape(ds.source)} ({len(ds.x_train)} train, {len(ds.x_val)} val, {len(ds.x_test)} test)")
  started_wall = time.perf_counter()
  connect(ray, address)
  connected_at = time.perf_counter() - started_wall
  stop.install()  # ray.init sets its own SIGTERM handler: SIGTERM must stop the suite like Ctrl-C, records kept
  slots: list[Slot] = []
  try:
    n_slots, node_lines = cluster_slots(ray, cpus, gpus)
    need = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
    if n_slots == 0: raise UserError(f"no node of the Ray cluster has {need} for one run ({'; '.join(node_lines) or 'no live node'}): lower --ray-cpus/--ray-gpus")
    n_slots = min(n_slots, len(jobs))
    where = "a local Ray instance" if address == "local" else f"the Ray cluster at {address}"
    console.print(f"Ray {ray.__version__}: {where}, {len(node_lines)} node(s); {n_slots} worker(s) of {need} each · "
                  f"{len(jobs)} runs to train ({skipped} already finished) · results in {results}/")
    for line in node_lines: console.print(f"  {line}", style="dim")
    data_ref = ray.put(datasets)  # once: every worker reads it from the object store (its node's copy)
    worker_cls = ray.remote(TrainerWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
    threads = max(1, int(cpus))

    def start(number: int) -> Slot:
      actor = worker_cls.remote(data_ref, beam, threads, stock)
      return Slot(number, actor, call=actor.describe.remote())

    slots = [start(i + 1) for i in range(n_slots)]
    queue, finished, failed, start_failures = deque(jobs), [], 0, 0
    compiles, last_progress, overheads, ready_at = {}, time.monotonic(), [], None

    def save(job: Job, result: dict | None, status: str, error: str | None, slot: Slot | None) -> None:
      nonlocal failed
      info = slot.info if slot and slot.info else {}
      record = make_record(job.spec, suite, result, status, error, job.started_at, beam, info.get("threads", threads), study_file)
      record["host"] = (result or {}).get("host") or info.get("host") or record["host"]  # the machine that trained it
      record["attempts"] = job.attempts
      store.save_record(job.path, record)
      if status == "done" and save_weights != "none" and result and result.get("weights") is not None:
        save_weights_of(job.path, record, result, "all" if job.spec.category == "one-off" else save_weights, console)
      store.release(job.claim)
      job.claim = None
      if status in ("done", "diverged", "failed"): finished.append(record)
      failed += status == "failed"
      m, colour = record["metrics"], {"done": "green", "diverged": "yellow"}.get(status, "red")
      console.print(f"[{colour}]{status}[/] {escape(job.spec.name)} · val {_pct(m.get('best_val_acc'))} (best) · test {_pct(m.get('test_acc'))} · "
                    f"{record['ms_per_step'] or 0:.1f} ms/step · compile {record['compile_s'] or 0:.1f}s · {record['wall_s'] or 0:.1f}s · "
                    + (f"worker {slot.number} on {record['host']}" if slot else "not started") + (f" · attempt {job.attempts}" if job.attempts > 1 else "")
                    + (f"\n  {error}" if error and status == "failed" else ""))

    columns = (TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[running]}"), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, refresh_per_second=2) as bar:
      task = bar.add_task("runs", total=len(jobs), running="")
      while queue or any(s.job for s in slots):
        for slot in slots:  # hand out runs to idle workers
          while slot.info is not None and slot.job is None and (job := choose(queue, slot, slots)):
            queue.remove(job)
            if job.claim is None:
              if complete(job.spec):  # finished meanwhile
                skipped += 1
                bar.update(task, total=bar.tasks[0].total - 1)
                continue
              job.claim = claim(job)
              if job.claim is None:
                console.print(f"[dim]{escape(job.spec.name)}: another explorer is training it; skipped[/]")
                bar.update(task, total=bar.tasks[0].total - 1)
                continue
            job.attempts += 1
            job.started_at, job.sent = store.now_iso(), time.perf_counter()
            slot.job, slot.call = job, slot.actor.run.remote(job.spec.config)
            slot.shapes.add(job.spec.config.shape_key())
        busy = [s for s in slots if s.job]
        bar.update(task, running=f"{len(busy)} training on {sum(s.info is not None for s in slots)} worker(s)")
        calls = {s.call: s for s in slots if s.call is not None}
        if not calls:  # nobody left to train the queue
          _fail_queue(queue, "no Ray worker left to train it (they died or could not start)", save)
          break
        ready, _ = ray.wait(list(calls), num_returns=1, timeout=1.0)
        if not ready and not busy and not any(s.info for s in slots) and time.monotonic() - last_progress > START_TIMEOUT_S:
          _fail_queue(queue, f"no Ray worker started within {START_TIMEOUT_S:g}s (does the cluster have {need} free?)", save)
          break
        for ref in ready:
          slot = calls[ref]
          slot.call = None
          last_progress = time.monotonic()
          job, slot.job = slot.job, None
          try:
            value = ray.get(ref)
          except ray.exceptions.RayTaskError as e:  # the run itself raised: recorded as failed, not retried (like runner)
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError): raise cause from None
            if job is None: raise UserError(f"a Ray worker could not start: {_line(cause or e)}") from None
            save(job, None, "failed", _line(cause) if cause is not None else _line(e), slot)
            bar.advance(task)
            continue
          except ray.exceptions.RayError as e:  # the worker died (process killed, node lost, out of memory)
            what = f"worker {slot.number}" + (f" on {slot.info['host']}" if slot.info else "")
            if job is None:
              start_failures += 1
              console.print(f"[red]{what} could not start[/]: {_line(e)}")
            else:
              console.print(f"[red]{what} died during {job.spec.name}[/] (attempt {job.attempts}/{MAX_ATTEMPTS}): {_line(e)}")
              if job.attempts >= MAX_ATTEMPTS:
                save(job, None, "failed", f"its Ray worker died {job.attempts} times; last: {_line(e)}", slot)
                bar.advance(task)
              else:
                queue.appendleft(job)  # it keeps its claim: trained again by another worker
                console.print(f"[yellow]retrying[/] {job.spec.name} on another worker")
            ray.kill(slot.actor, no_restart=True)
            if start_failures < len(slots):  # a fresh worker in its place (Ray places it where resources are free)
              slots[slots.index(slot)] = start(slot.number)
            else: slots.remove(slot)
            continue
          if job is None:
            slot.info = value
            console.print(f"worker {slot.number} ready on {value['host']} ({value['device']}, pid {value['pid']})", style="dim")
            if ready_at is None and all(s.info for s in slots): ready_at = time.perf_counter() - started_wall
            continue
          compiles[slot.number] = value["compile_count"]
          overheads.append(time.perf_counter() - job.sent - value["wall_s"])
          error = "loss became NaN/inf: diverged" if value["status"] == "diverged" else None
          save(job, value, value["status"], error, slot)
          bar.advance(task)
      bar.update(task, running="")
  except KeyboardInterrupt:
    for slot in slots:
      if slot.job and slot.job.claim:
        record = make_record(slot.job.spec, suite, None, "interrupted", "interrupted by Ctrl-C/SIGTERM", slot.job.started_at, beam,
                             study_file=study_file)
        store.save_record(slot.job.path, record)
    _stop(ray, slots, jobs)
    rebuild_reports(results, console, suite, specs, save_weights)
    console.print(f"[red]interrupted[/]: the cluster's work for this suite is stopped; finished runs are kept in {results}/runs")
    raise
  finally:
    _stop(ray, slots, jobs)
    ray.shutdown()  # a local instance stops with it; on a cluster, the job's actors end with it
  rebuild_reports(results, console, suite, specs, save_weights)
  stop.check()  # a stop during the reports may have been swallowed by a matplotlib callback: still exit 130
  trained = len(finished)
  console.print(f"{trained} trained on {len({r['host'] for r in finished})} machine(s), {skipped} already finished (skipped; --rerun to "
                f"train again) · compiled steps built {sum(compiles.values())} times for {trained} runs · {time.perf_counter() - started_wall:.1f}s")
  if overheads:  # bench/ray_overhead.py reads this line
    console.print(f"Ray overhead: {connected_at:.1f}s to connect, workers ready after {ready_at or 0:.1f}s, {1000 * sorted(overheads)[len(overheads) // 2]:.0f} ms "
                  f"per run (median of {len(overheads)}: result arrival - hand-out - the run's own wall time)", style="dim")
  if finished:
    from explorer.report import summary_table
    console.print(summary_table(finished))
  if failed: console.print(f"[red]{failed} runs failed[/]: see their records and the report")
  return 1 if failed else 0


def _fail_queue(queue: deque, reason: str, save) -> None:
  """Record every run still waiting as failed (the suite ends with exit 1 and a reason, instead of waiting forever)."""
  while queue:
    job = queue.popleft()
    if job.claim is None: job.claim = claim(job)
    if job.claim is not None: save(job, None, "failed", reason, None)  # else another explorer holds it: its record is its own


def claim(job: Job) -> store.Claim | None:
  return store.try_claim(job.path.parent, job.path.name.removesuffix(".json"), job.spec.config.hash())


def _stop(ray, slots: list[Slot], jobs: list[Job]) -> None:
  """Kill every worker actor now, and release the claims of runs that did not finish (the next command trains them)."""
  for slot in slots:
    try: ray.kill(slot.actor, no_restart=True)
    except Exception: pass  # already gone
  for job in jobs:
    if job.claim is not None:
      store.release(job.claim)
      job.claim = None
