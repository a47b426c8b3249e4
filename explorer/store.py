"""The results store: one JSON record per trained configuration, written atomically; a claim file while a run trains.

Layout: <results>/runs/<study>/study.json                                   which study file the folder belongs to
        <results>/runs/<study>/<dataset>/<model>/<name>.<config hash>.json  the record (temp file + rename: never half-written)
        <results>/runs/<study>/<dataset>/<model>/<name>.<config hash>.claim exists while the run trains
A record is identified by what was trained: the study, the dataset, the model, the run's name and the hash of its fully
resolved configuration (steps included). A quick pass or an edited configuration is another file: it never replaces a
finished run. Two study files with the same file name get two study folders (the second gets a -2 suffix).

A claim records its owner's host, boot and process start time, so an explorer that died (even with SIGKILL, even when its
PID was reused since) is recognised; a claim that cannot be read or has the wrong shape is stale too (with a warning)."""
from __future__ import annotations
import errno, json, os, re, tempfile, time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from explorer.errors import UserError
from explorer import record as rec
from explorer.machine import host_name

STUDY_MARKER = "study.json"
LEGACY_SUFFIX = ".json"  # records of explorer versions before the config hash was part of the file name
TEMP_RE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<file>.<pid>.<random>.tmp


def now_iso() -> str: return datetime.now(timezone.utc).isoformat(timespec="seconds")


def safe_path(root: Path, *parts: str) -> Path:
  """root/parts, refusing anything that resolves outside root (names come from configs and from records, which can be
  hand-edited)."""
  root = Path(root).resolve()
  path = root.joinpath(*parts).resolve()
  if path == root or not path.is_relative_to(root): raise UserError(f"refusing to write {path}: it would leave {root}")
  return path


def check_results_folder(results: Path) -> None:
  """Fail before training when the results folder cannot hold a store (one line, exit 2)."""
  results = Path(results)
  for path, want_dir in ((results, True), (results / "runs", True), (results / "index.md", False)):
    if path.exists() and path.is_dir() != want_dir:
      raise UserError(f"results folder {results} is unusable: {path} is a {'file' if want_dir else 'folder'} "
                      f"(move it away or choose another folder with --results DIR)")
  try:
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=results, prefix=".write-test-"): pass
  except OSError as e:
    raise UserError(f"results folder {results} is not writable: {e.strerror or e} (choose another with --results DIR)") from None



# ---------- atomic files ----------

def temp_for(path: Path) -> Path:
  """A temp file next to path, named with this process's pid so a later explorer can tell an orphan from a live write."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
  os.close(fd)
  return Path(tmp)


def write_atomic(path: Path, write) -> Path:
  """write(tmp_path) fills a temp file; it then replaces path in one rename: readers see the old file or the new one."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_for(path)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def write_json_atomic(path: Path, data) -> Path:
  def write(tmp: Path) -> None:
    with open(tmp, "w") as f:
      json.dump(data, f, indent=1, allow_nan=True)
      f.flush()
      os.fsync(f.fileno())
  return write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> Path: return write_atomic(path, lambda tmp: tmp.write_text(text))


def remove_orphan_temps(folder: Path) -> list[Path]:
  """Temp files left by explorers that were killed mid-write (their pid is gone)."""
  removed = []
  if not Path(folder).is_dir(): return removed
  for path in Path(folder).rglob(".*.tmp"):
    m = TEMP_RE.match(path.name)
    if m and (int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1)))): continue
    try:
      path.unlink()
      removed.append(path)
    except OSError: pass
  return removed


# ---------- studies ----------

def slug(text: str) -> str:
  """A file-name-safe form of a study file's name (spaces, accents and the like become '-')."""
  s = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-.") or "study"
  s = re.sub(r"\.\.+", ".", s)
  return s[:60] if rec.is_safe_name(s[:60]) else "study"


def study_id(results: Path, study_file: str | Path) -> str:
  """The folder name under runs/ for a study file: its (slugged) stem, or stem-2, stem-3, ... when another study file of
  the same name already uses it. The marker names the file relative to the results folder, so moving a project with
  its results keeps them; a folder whose study file no longer exists (moved elsewhere) is taken over."""
  results = Path(results)
  source = os.path.relpath(Path(study_file).expanduser().resolve(), results.resolve())
  base = slug(Path(study_file).stem)
  for n in range(1, 1000):
    sid = base if n == 1 else f"{base}-{n}"
    marker = results / "runs" / sid / STUDY_MARKER
    owner = _read_marker(marker)
    if owner is None:  # a new folder, one of an explorer version without markers, or a damaged marker: this study's now
      _write_marker(marker, source, replace=marker.exists())
      owner = _read_marker(marker)  # two explorers starting at once: the first marker wins
    elif owner != source and not (results / owner).exists():
      _write_marker(marker, source, replace=True)
      owner = source
    if owner == source: return sid
  raise UserError(f"too many study files named {Path(study_file).name} share {results / 'runs'}")


def _read_marker(marker: Path) -> str | None:
  try: data = json.loads(marker.read_text())
  except (OSError, ValueError): return None
  return data.get("study_file") if isinstance(data, dict) and isinstance(data.get("study_file"), str) else None


def _write_marker(marker: Path, source: str, replace: bool) -> None:
  marker.parent.mkdir(parents=True, exist_ok=True)
  if replace: write_json_atomic(marker, {"study_file": source})
  else:  # two explorers starting at once: the first marker wins, the other reads it
    try: _link_new(marker, json.dumps({"study_file": source}))
    except FileExistsError: pass


# ---------- records ----------

def run_dir(results: Path, suite: str, dataset: str, model: str) -> Path:
  return Path(results) / "runs" / suite / dataset / model


def record_path(results: Path, suite: str, dataset: str, model: str, name: str, config_hash: str) -> Path:
  return safe_path(run_dir(results, suite, dataset, model), f"{name}.{config_hash}.json")


def read_record(path: Path) -> dict | None:
  """A valid record, or None (missing, unreadable or failing the schema)."""
  try: data = json.loads(Path(path).read_text())
  except (OSError, ValueError): return None
  return data if rec.problem(data) is None else None


def find_record(results: Path, suite: str, dataset: str, model: str, name: str, config_hash: str) -> dict | None:
  """The record of this exact configuration, also from an older explorer's <name>.json."""
  found = read_record(record_path(results, suite, dataset, model, name, config_hash))
  if found is not None: return found
  legacy = read_record(safe_path(run_dir(results, suite, dataset, model), name + LEGACY_SUFFIX))
  return legacy if legacy is not None and legacy.get("config_hash") == config_hash else None


def is_complete(record: dict | None, config_hash: str, finished_since: str | None = None) -> bool:
  """Finished with the same resolved config (and, for --rerun, after `finished_since`): skip it. Interrupted or failed
  runs are trained again."""
  if not record or record.get("config_hash") != config_hash or record.get("status") not in ("done", "diverged"): return False
  return finished_since is None or str(record.get("finished_at", "")) >= finished_since


def load_records(results: Path) -> tuple[list[dict], list[str]]:
  """Every valid record under results/runs (normalized), plus one warning per file that is skipped, naming it and why."""
  records, warnings = [], []
  for path in sorted(Path(results).glob("runs/*/*/*/*.json")):
    try: data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      warnings.append(f"skipped {path}: not readable JSON ({type(e).__name__})")
      continue
    why = rec.problem(data)
    if why: warnings.append(f"skipped {path}: {why}")
    else: records.append(rec.normalize(data) | {"_path": str(path)})
  return records, warnings


def save_record(path: Path, record: dict) -> None:
  """Atomic write; a full disk is a clear one-line error naming the file (the previous record, if any, is intact)."""
  try:
    write_json_atomic(path, record)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT): raise UserError(f"disk full while writing {path}: free space and re-run to resume", 1) from None
    raise UserError(f"cannot write {path}: {e.strerror or e}", 1) from None


# ---------- claims ----------

@dataclass
class Claim:
  path: Path
  stale_from: dict | None = None  # the dead claim this one replaced, if any


def _boot_id() -> str | None:
  try: return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError: return None


def _start_ticks(pid: int) -> int | None:
  """The process's start time in clock ticks since boot (Linux): with the pid it names one process, even after reuse."""
  try: stat = Path(f"/proc/{pid}/stat").read_text()
  except OSError: return None
  try: return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the command name in (...) may hold spaces
  except (ValueError, IndexError): return None


def _pid_alive(pid: int) -> bool:
  if pid <= 0: return False
  try: os.kill(pid, 0)
  except ProcessLookupError: return False
  except (PermissionError, OverflowError): return True
  return True


def owner_info() -> dict:
  pid = os.getpid()
  return {"pid": pid, "host": host_name(), "boot_id": _boot_id(), "start_ticks": _start_ticks(pid), "time": time.time(),
          "started_at": now_iso()}


def claim_problem(info) -> str | None:
  """Why a claim's content cannot be trusted (garbage, wrong types): such a claim is stale."""
  if not isinstance(info, dict): return "not a JSON object"
  if not isinstance(info.get("pid"), int) or isinstance(info.get("pid"), bool): return "no valid pid"
  if not isinstance(info.get("host"), str): return "no valid host"
  if not isinstance(info.get("time"), (int, float)) or isinstance(info.get("time"), bool): return "no valid time"
  return None


def claim_is_stale(info) -> bool:
  """Stale: garbage, or its process is gone (another boot, a dead pid, or a pid now used by another process). On another
  host we cannot tell: trusted for 24 hours."""
  if claim_problem(info): return True
  if info["host"] != host_name(): return time.time() - info["time"] > 24 * 3600
  boot = _boot_id()
  if info.get("boot_id") and boot and info["boot_id"] != boot: return True
  pid, ticks = info["pid"], info.get("start_ticks")
  if not _pid_alive(pid): return True
  if isinstance(ticks, int) and not isinstance(ticks, bool) and (now := _start_ticks(pid)) is not None: return now != ticks
  # no start time to compare: our own pid in a claim is an earlier process's (containers reuse pid 1 for each start)
  return pid == os.getpid()


def read_claim(path: Path):
  """The claim's content (anything JSON can hold; "unreadable" when it is not JSON). FileNotFoundError when there is none."""
  try: return json.loads(Path(path).read_text())
  except FileNotFoundError: raise
  except (OSError, ValueError, UnicodeDecodeError): return "unreadable"


def _link_new(path: Path, text: str) -> None:
  """Create path with this content atomically, failing with FileExistsError if it exists: a reader never sees it half-written."""
  tmp = temp_for(path)
  try:
    tmp.write_text(text)
    os.link(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def try_claim(folder: Path, stem: str, config_hash: str, warn=None) -> Claim | None:
  """Atomically claim a run (stem: the record file's name without .json). None when a live explorer holds it. A stale
  claim is taken over (and reported through warn)."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  path = safe_path(folder, stem + ".claim")
  stale = None
  for _ in range(5):
    try:
      _link_new(path, json.dumps(owner_info() | {"config_hash": config_hash}))
      return Claim(path, stale)
    except FileExistsError:
      try: held = read_claim(path)
      except FileNotFoundError: continue  # just released: try again
      if not claim_is_stale(held): return None
      stale = held if isinstance(held, dict) else {}
      if warn and (why := claim_problem(held)): warn(f"claim {path} is invalid ({why}): taken over")
      path.unlink(missing_ok=True)
  return None


def release(claim: Claim) -> None: claim.path.unlink(missing_ok=True)


def stale_claims(results: Path) -> list[tuple[Path, dict, str | None]]:
  """Claims left by explorers that died (SIGKILL, power loss), with the reason when the claim itself is garbage."""
  out = []
  for path in sorted(Path(results).glob("runs/*/*/*/*.claim")):
    try: info = read_claim(path)
    except FileNotFoundError: continue
    if claim_is_stale(info): out.append((path, info if isinstance(info, dict) else {}, claim_problem(info)))
  return out


def clear_stale(results: Path) -> list[tuple[Path, dict, str | None]]:
  """Remove dead explorers' claims and half-written temp files (records, weights, reports, plots): their runs are trained
  again (or are already finished) and their reports rebuilt."""
  stale = stale_claims(results)
  for path, _, _ in stale: path.unlink(missing_ok=True)
  remove_orphan_temps(Path(results))
  return stale

