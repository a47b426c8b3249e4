"""The results store: one JSON record per run, written atomically; a claim file while a run trains.

Layout: <results>/runs/<suite>/<dataset>/<model>/<name>.json   the record (temp file + rename: never half-written)
        <results>/runs/<suite>/<dataset>/<model>/<name>.claim  exists while the run trains (atomic O_EXCL create)
A claim whose process is gone (killed, even with SIGKILL) is stale: the next explorer recognises it, says so and
takes the run over. Two explorers on one folder never train the same run twice: the claim is taken before training."""
from __future__ import annotations
import errno, json, os, tempfile, time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from explorer.errors import UserError
from explorer.machine import host_name

SCHEMA = 1
# the metrics a run record holds (runner writes them, report reads them)
METRIC_KEYS = ("test_acc", "test_loss", "best_val_acc", "best_val_step", "final_val_acc", "final_val_loss", "final_train_loss",
               "train_acc", "train_eval_loss")
REQUIRED = ("schema", "suite", "model", "name", "group", "category", "config", "status")


def now_iso() -> str: return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_dir(results: Path, suite: str, dataset: str, model: str) -> Path:
  return Path(results) / "runs" / suite / dataset / model


def safe_path(root: Path, *parts: str) -> Path:
  """root/parts, refusing anything that resolves outside root (names come from configs and from records, which can be
  hand-edited)."""
  root = Path(root).resolve()
  path = root.joinpath(*parts).resolve()
  if path == root or not path.is_relative_to(root): raise UserError(f"refusing to write {path}: it would leave {root}")
  return path


def check_writable(results: Path) -> None:
  """Fail before training when the results folder cannot be written (one line, exit 2)."""
  try:
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=results, prefix=".write-test-"): pass
  except OSError as e:
    raise UserError(f"results folder {results} is not writable: {e.strerror or e} (choose another with --results DIR)") from None


def write_json_atomic(path: Path, data: dict) -> None:
  """Write to a temp file in the same folder, fsync, then rename: readers see the old file or the new one, never half."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(data, f, indent=1, allow_nan=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try: os.unlink(tmp)
    except OSError: pass
    raise


@dataclass
class Claim:
  path: Path
  stale_from: dict | None = None  # the dead claim this one replaced, if any


def _pid_alive(pid: int) -> bool:
  try: os.kill(pid, 0)
  except ProcessLookupError: return False
  except PermissionError: return True
  return True


def claim_is_stale(info: dict) -> bool:
  """A claim is stale when its process is gone. On another host we cannot tell: trust it for 24 hours."""
  if info.get("host") == host_name(): return not _pid_alive(int(info.get("pid", -1)))
  return time.time() - float(info.get("time", 0)) > 24 * 3600


def read_claim(path: Path) -> dict | None:
  try: return json.loads(path.read_text())
  except FileNotFoundError: return None
  except (OSError, ValueError): return {}  # unreadable or half-written claim: treat its owner as unknown


def try_claim(folder: Path, name: str, config_hash: str) -> Claim | None:
  """Atomically claim a run. None when a live explorer holds it. A stale claim is taken over (and reported)."""
  folder.mkdir(parents=True, exist_ok=True)
  path = safe_path(folder, name + ".claim")
  info = {"pid": os.getpid(), "host": host_name(), "time": time.time(), "started_at": now_iso(), "config_hash": config_hash}
  stale = None
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      held = read_claim(path)
      if held is None: continue  # it was just released: try again
      if held and not claim_is_stale(held): return None
      if not held and time.time() - path.stat().st_mtime < 60: return None  # being written right now
      stale = held or {}
      try: path.unlink()  # stale: its owner died; take it over
      except FileNotFoundError: pass
      continue
    with os.fdopen(fd, "w") as f: json.dump(info, f)
    return Claim(path, stale)
  return None


def release(claim: Claim) -> None:
  try: claim.path.unlink()
  except FileNotFoundError: pass


def record_path(results: Path, suite: str, dataset: str, model: str, name: str) -> Path:
  folder = run_dir(results, suite, dataset, model)
  return safe_path(folder, name + ".json")


def read_record(path: Path) -> dict | None:
  try: record = json.loads(path.read_text())
  except (OSError, ValueError): return None
  return record if isinstance(record, dict) and all(k in record for k in REQUIRED) else None


def is_complete(record: dict | None, config_hash: str, finished_since: str | None = None) -> bool:
  """Finished with the same resolved config (and, for --rerun, after `finished_since`): skip it. Interrupted or failed
  runs are trained again."""
  if not record or record.get("config_hash") != config_hash or record.get("status") not in ("done", "diverged"): return False
  return finished_since is None or str(record.get("finished_at", "")) >= finished_since


def load_records(results: Path) -> tuple[list[dict], list[str]]:
  """Every record under results/runs, plus one warning per file that is not a valid record (it is skipped)."""
  records, warnings = [], []
  for path in sorted(Path(results).glob("runs/*/*/*/*.json")):
    record = read_record(path)
    if record is None or record.get("schema") != SCHEMA: warnings.append(f"skipped {path}: not a valid run record")
    else: records.append(record)
  return records, warnings


def stale_claims(results: Path) -> list[tuple[Path, dict]]:
  """Claims left by explorers that died (SIGKILL, power loss): reported at start and cleared when their run is retried."""
  out = []
  for path in sorted(Path(results).glob("runs/*/*/*/*.claim")):
    info = read_claim(path)
    if info is not None and (not info and time.time() - path.stat().st_mtime >= 60 or info and claim_is_stale(info)): out.append((path, info))
  return out


def save_record(path: Path, record: dict) -> None:
  """Atomic write; a full disk is a clear one-line error naming the file (the previous record, if any, is intact)."""
  try:
    write_json_atomic(path, record)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT): raise UserError(f"disk full while writing {path}: free space and re-run to resume", 1) from None
    raise UserError(f"cannot write {path}: {e.strerror or e}", 1) from None
