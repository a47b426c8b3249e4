"""Weights files: a finished run's model as safetensors (the format of tinygrad's nn.state) next to its record, with the
run's identity in the file's metadata. Read back only as safetensors (a JSON header and raw float32 arrays): never pickle.

--save-weights best (the default) writes every finished run's weights, then, when the suite ends, deletes those of runs
outside the best configuration of their report (chosen on validation, as the report does). Files written with
--save-weights all are never deleted."""
from __future__ import annotations
import json
from pathlib import Path
import numpy as np
from explorer.errors import UserError
from explorer import store

FORMAT = "mnist-explorer-weights-1"
MODES = ("best", "all", "none")


def weights_path(record_path: Path) -> Path:
  """The weights file of the record at record_path: the only place that decides the name (it follows the record's)."""
  return Path(record_path).with_suffix(".safetensors")


def weights_for_record(results: Path, record: dict) -> Path:
  """A record's weights file: next to the record file it was read from, else where the store puts that record."""
  if record.get("_path"): return weights_path(Path(record["_path"]))
  dataset = record.get("dataset") or record["config"]["dataset"]
  return weights_path(store.record_path(results, record["suite"], dataset, record["model"], record["name"], record["config_hash"]))


def metadata(record: dict, mode: str) -> dict[str, str]:
  """The run's identity (safetensors metadata values are strings): enough to rebuild and check the model without the record."""
  m = record.get("metrics") or {}
  return {"format": FORMAT, "suite": record["suite"], "dataset": record["dataset"], "model": record["model"], "name": record["name"],
          "group": record["group"], "config_hash": record["config_hash"], "config": json.dumps(record["config"], sort_keys=True),
          "test_acc": repr(m.get("test_acc")), "test_loss": repr(m.get("test_loss")), "device": str(record.get("device")),
          "tinygrad_version": str(record.get("tinygrad_version")), "finished_at": str(record.get("finished_at")), "save_weights": mode}


def save(path: Path, state: dict[str, np.ndarray], meta: dict[str, str]) -> int:
  """Write atomically (a pid-named temp file + rename: a killed writer's temp is swept by the next explorer); returns the
  file size in bytes. Written from the host arrays in the bytes tinygrad's safe_save writes (tested), without tinygrad:
  safe_save realizes its header on tinygrad's CPU backend, which needs clang; a GPU machine without clang saved nothing."""
  arrays = {k: np.ascontiguousarray(v, "<f4") for k, v in state.items()}
  header, offset = ({"__metadata__": meta} if meta else {}), 0
  for k, a in arrays.items():
    header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
  text = json.dumps(header, separators=(",", ":"))
  text += " " * (-len(text) % 8)  # the data starts 8-byte aligned

  def write(tmp: Path) -> None:
    with open(tmp, "wb") as f:
      f.write(len(text).to_bytes(8, "little") + text.encode())
      for a in arrays.values(): f.write(a.tobytes())
  return store.write_atomic(Path(path), write).stat().st_size


def read_metadata(path: Path) -> dict[str, str]:
  """The metadata of a safetensors file, from its JSON header alone (no tensors are read)."""
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      if not 2 <= n <= 10_000_000: raise ValueError(f"header length {n}")
      header = json.loads(f.read(n))
  except FileNotFoundError: raise
  except (OSError, ValueError) as e: raise UserError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())})") from None
  meta = header.get("__metadata__") if isinstance(header, dict) else None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise UserError(f"{path} is not an mnist-explorer weights file (no run identity in its metadata)")
  return meta


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(float32 arrays, metadata) of a weights file, read with numpy; anything unreadable is one clear error."""
  meta = read_metadata(path)
  try:
    raw = Path(path).read_bytes()
    start = 8 + int.from_bytes(raw[:8], "little")
    data, state = memoryview(raw)[start:], {}
    for k, v in json.loads(raw[8:start]).items():
      if k == "__metadata__": continue
      (lo, hi), shape = v["data_offsets"], tuple(v["shape"])
      if v["dtype"] != "F32": raise ValueError(f"{k} is {v['dtype']}, not F32")
      if not 0 <= lo <= hi <= len(data) or hi - lo != 4 * int(np.prod(shape)): raise ValueError(f"{k}: offsets {lo}..{hi} do not hold {shape}")
      state[k] = np.frombuffer(data[lo:hi], "<f4").reshape(shape)
  except Exception as e: raise UserError(f"{path} is damaged: its tensors cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
  return state, meta


def check_shapes(state: dict[str, np.ndarray], expected: dict[str, tuple], path: Path) -> None:
  """Weights of another model (other names or shapes) are refused, naming the first difference."""
  if set(state) != set(expected):
    extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    raise UserError(f"{path} holds weights of another model (" + (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}") + ")")
  for name, shape in expected.items():
    if tuple(state[name].shape) != tuple(shape):
      raise UserError(f"{path} holds weights of another shape: {name} is {tuple(state[name].shape)}, the configuration needs {tuple(shape)}")


def prune_to_best(results: Path, reports: set[tuple[str, str, str]]) -> list[Path]:
  """--save-weights best, at a suite's end: delete the weights written in 'best' mode of runs outside the best
  configuration of their (suite, dataset, model) report (its full-length report, and its quick-pass report apart).
  Returns the deleted paths."""
  from explorer.report import make_groups, ranked, select
  records, _ = store.load_records(results)
  chosen = select(records)
  deleted = []
  for key in reports:
    keep: set[str] = set()
    for shown in (chosen.current, chosen.quick):
      order = ranked(make_groups([r for r in shown if (r["suite"], r["dataset"], r["model"]) == key]))
      if order: keep |= {r["_path"] for r in order[0].runs}
    for r in records:
      if (r["suite"], r["dataset"], r["model"]) != key or r["_path"] in keep: continue
      path = weights_for_record(results, r)
      if not path.exists(): continue
      try:
        if read_metadata(path).get("save_weights") != "best": continue
      except UserError: continue  # not ours to delete
      path.unlink(missing_ok=True)
      deleted.append(path)
  return deleted
