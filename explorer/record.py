"""The one run-record schema: what a record holds, how the runner makes one and how every reader checks one.

A record is one JSON file per trained run (see store.py for where it lives). Reading checks every field's type: a record
that fails is skipped with one warning naming its file, so a hand-edited or damaged record never crashes a report."""
from __future__ import annotations
import re
from importlib.metadata import version
from typing import Any
from explorer.machine import host_name

SCHEMA = 1
STATUSES = ("done", "diverged", "interrupted", "failed")
# the metrics a run record holds (the trainer measures them, the report reads them)
METRIC_KEYS = ("test_acc", "test_loss", "best_val_acc", "best_val_step", "final_val_acc", "final_val_loss", "final_train_loss",
               "train_acc", "train_eval_loss")
TIMING_KEYS = ("wall_s", "train_s", "compile_s", "setup_s", "eval_s", "ms_per_step")
# names become folder and file names: letters, digits and . _ = + - only, never '..' (room for a "-r12" repeat suffix)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}$")

Num = (int, float)
Opt = type(None)
# field -> (allowed types, required). bool is never accepted where a number is expected (checked below).
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
  "schema": ((int,), True), "suite": ((str,), True), "model": ((str,), True), "name": ((str,), True), "group": ((str,), True),
  "category": ((str,), True), "status": ((str,), True), "config": ((dict,), True), "metrics": ((dict,), True),
  "dataset": ((str, Opt), False), "description": ((str, Opt), False), "axes": ((dict, Opt), False), "history": ((dict, Opt), False),
  "config_hash": ((str, Opt), False), "capped_from": ((int, Opt), False), "position": ((int, Opt), False),
  "error": ((str, Opt), False), "params": ((int, Opt), False), "steps_done": ((int, Opt), False),
  **{k: ((*Num, Opt), False) for k in TIMING_KEYS}, "device": ((str, Opt), False), "beam": ((int, Opt), False),
  "threads": ((int, Opt), False), "tinygrad_version": ((str, Opt), False), "code_version": ((str, Opt), False),
  "host": ((str, Opt), False), "started_at": ((str, Opt), False), "finished_at": ((str, Opt), False),
  "study_file": ((str, Opt), False), "test_predictions": ((dict, Opt), False), "attempts": ((int, Opt), False),
}
NAMED_FIELDS = ("suite", "model", "name", "group", "category", "dataset")


def is_safe_name(value: Any) -> bool: return isinstance(value, str) and bool(NAME_RE.match(value)) and ".." not in value


def make(spec, suite: str, result: dict | None, status: str, error: str | None, started_at: str, finished_at: str,
         beam: int = 0, threads: int = 1, code_version: str | None = None, study_file: str | None = None) -> dict:
  """The record of one run (spec: a config.RunSpec; result: what Trainer.run returned, None when it never finished)."""
  result = result or {}
  cfg = spec.config
  return {
    "schema": SCHEMA, "suite": suite, "model": cfg.model, "name": spec.name, "group": spec.group, "category": spec.category,
    "description": spec.description, "axes": spec.axes, "config_hash": cfg.hash(), "capped_from": spec.capped_from,
    "position": spec.position, "config": cfg.to_dict(), "status": status, "error": error,
    "metrics": {k: result[k] for k in METRIC_KEYS if k in result}, "history": result.get("history", {}),
    **{k: result.get(k) for k in ("params", *TIMING_KEYS, "steps_done", "device", "test_predictions")}, "beam": beam, "threads": threads,
    "tinygrad_version": version("tinygrad"), "code_version": code_version, "dataset": cfg.dataset,
    "host": host_name(), "study_file": study_file, "started_at": started_at, "finished_at": finished_at,
  }


def _type_ok(value: Any, kinds: tuple[type, ...]) -> bool:
  if isinstance(value, bool): return bool in kinds
  if isinstance(value, float) and float in kinds: return True
  return isinstance(value, kinds)


def problem(record: Any) -> str | None:
  """Why a record cannot be used (None when it can)."""
  if not isinstance(record, dict): return "not a JSON object"
  for key, (kinds, required) in FIELDS.items():
    if key not in record:
      if required: return f"missing '{key}'"
      continue
    if not _type_ok(record[key], kinds):
      return f"'{key}' is {type(record[key]).__name__}, expected {' or '.join(k.__name__ for k in kinds if k is not Opt)}"
  if record["schema"] != SCHEMA: return f"schema {record['schema']} (this version reads {SCHEMA})"
  if record["status"] not in STATUSES: return f"unknown status {record['status']!r}"
  for key in NAMED_FIELDS:
    value = record.get(key) if key != "dataset" else (record.get("dataset") or record["config"].get("dataset"))
    if not is_safe_name(value): return f"invalid {key} {value!r}"
  for key, value in record["metrics"].items():
    if value is not None and not _type_ok(value, Num): return f"metric '{key}' is {type(value).__name__}, expected a number"
  for key, values in (record.get("history") or {}).items():
    if not isinstance(values, list) or not all(v is None or _type_ok(v, Num) for v in values):
      return f"history '{key}' is not a list of numbers"
  from explorer.config import RunConfig  # the config's field types come from its defaults, as everywhere else
  defaults = RunConfig().to_dict()
  for key, value in record["config"].items():
    if key not in defaults: continue  # a key of a newer version: shown, never used
    want = defaults[key]
    ok = (isinstance(value, list) and all(_type_ok(v, (int,)) for v in value)) if isinstance(want, list) else \
      _type_ok(value, (float, int) if isinstance(want, float) else (type(want),))
    if not ok: return f"config '{key}' is {type(value).__name__} {value!r}, expected {type(want).__name__}"
  return None


def normalize(record: dict) -> dict:
  """A checked record with the optional fields filled in, so readers need no guards."""
  r = dict(record)
  r["dataset"] = r.get("dataset") or r["config"].get("dataset")
  r["history"] = r.get("history") or {}
  r["axes"] = r.get("axes") or {}
  r["description"] = r.get("description") or ""
  return r


def is_quick(record: dict) -> bool:
  """A quick pass (--max-steps capped its steps): never mixed with full-length results."""
  return record.get("capped_from") is not None
