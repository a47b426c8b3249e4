"""The store: atomic records, claims (live, stale after SIGKILL, taken over), resume rule, disk full, garbage records."""
import errno, json, os, socket, subprocess, sys, time
import numpy as np
import pytest
from explorer import store
from explorer.errors import UserError


def record(name="a", status="done", config_hash="h1", **extra):
  return {"schema": 1, "suite": "s", "model": "mlp", "name": name, "group": name, "category": "c", "config": {}, "metrics": {}, "dataset": "mnist",
          "status": status, "config_hash": config_hash, **extra}


def test_atomic_write_leaves_no_temp_files(tmp_path):
  path = tmp_path / "runs" / "a.json"
  store.write_json_atomic(path, {"x": 1})
  store.write_json_atomic(path, {"x": 2})
  assert json.loads(path.read_text()) == {"x": 2}
  assert os.listdir(path.parent) == ["a.json"]


def test_a_temp_file_of_a_killed_writer_is_removed_but_not_a_live_one(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
  orphan = tmp_path / f".a.json.{dead}.x1y2.tmp"
  live = tmp_path / f".b.json.{os.getpid()}.x1y2.tmp"
  orphan.write_text("{half")
  live.write_text("{half")
  assert store.remove_orphan_temps(tmp_path) == [orphan]
  assert live.exists() and not orphan.exists()


def test_clearing_stale_work_sweeps_orphan_temps_everywhere_in_the_results_folder(tmp_path):
  # a SIGKILL can land while a record, a weights file, a report or a plot is half written (seen in CI: a plot's temp)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
  orphans = [tmp_path / "runs" / "s" / "mnist" / "mlp" / f".a.json.{dead}.k1.tmp",
             tmp_path / "runs" / "s" / "mnist" / "mlp" / f".a.safetensors.{dead}.k2.tmp",
             tmp_path / "exp-mnist" / "plots" / "mlp" / f".category-c0.png.{dead}.k3.tmp",
             tmp_path / "exp-mnist" / f".mlp.md.{dead}.k4.tmp"]
  live = tmp_path / "exp-mnist" / "plots" / "mlp" / f".category-c1.png.{os.getpid()}.k5.tmp"
  for p in orphans + [live]:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"half")
  store.clear_stale(tmp_path)
  assert not any(p.exists() for p in orphans) and live.exists()


def test_a_weights_file_is_written_through_a_temp_the_sweep_recognises(tmp_path, monkeypatch):
  from explorer import weights
  seen = []
  real = store.write_atomic
  monkeypatch.setattr(store, "write_atomic", lambda path, write: real(path, lambda tmp: (seen.append(tmp.name), write(tmp))))
  weights.save(tmp_path / "a.safetensors", {"w": np.ones((2, 2), np.float32)}, {"format": weights.FORMAT})
  assert len(seen) == 1 and store.TEMP_RE.match(seen[0]) and int(store.TEMP_RE.match(seen[0]).group(1)) == os.getpid()
  assert os.listdir(tmp_path) == ["a.safetensors"]


def test_disk_full_is_one_line_and_keeps_the_old_record(tmp_path, monkeypatch):
  path = tmp_path / "a.json"
  store.save_record(path, record(status="done"))

  def full(fd): raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(UserError) as e: store.save_record(path, record(status="interrupted"))
  assert "disk full" in str(e.value) and str(path) in str(e.value)
  assert json.loads(path.read_text())["status"] == "done", "the previous record is intact"
  assert os.listdir(tmp_path) == ["a.json"], "no half-written temp file left behind"


def test_claims_exclude_each_other_and_release(tmp_path):
  first = store.try_claim(tmp_path, "a", "h")
  assert first is not None and first.stale_from is None
  assert store.try_claim(tmp_path, "a", "h") is None, "a live claim blocks a second explorer"
  store.release(first)
  assert store.try_claim(tmp_path, "a", "h") is not None


def test_claim_of_a_killed_process_is_stale_and_taken_over(tmp_path):
  # a child takes the claim and is SIGKILLed: nothing cleans up, so the claim stays on disk
  code = f"from explorer import store; import os, pathlib; store.try_claim(pathlib.Path({str(tmp_path)!r}), 'a', 'h'); os.kill(os.getpid(), 9)"
  subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
  assert (tmp_path / "a.claim").exists()
  claim = store.try_claim(tmp_path, "a", "h")
  assert claim is not None and claim.stale_from and claim.stale_from["pid"] != os.getpid()


def test_stale_claims_are_listed(tmp_path):
  folder = store.run_dir(tmp_path, "s", "mnist", "mlp")
  folder.mkdir(parents=True)
  (folder / "dead.claim").write_text(json.dumps({"pid": 2**22 + 12345, "host": __import__("socket").gethostname(), "time": 0}))
  live = store.try_claim(folder, "live", "h")
  assert [p.name for p, _, _ in store.stale_claims(tmp_path)] == ["dead.claim"]
  store.release(live)


def test_resume_rule():
  assert store.is_complete(record(status="done"), "h1")
  assert store.is_complete(record(status="diverged"), "h1")
  assert not store.is_complete(record(status="interrupted"), "h1")
  assert not store.is_complete(record(status="failed"), "h1")
  assert not store.is_complete(record(status="done"), "other-config")
  assert not store.is_complete(None, "h1")


def test_garbage_records_are_skipped_with_a_warning(tmp_path):
  folder = store.run_dir(tmp_path, "s", "mnist", "mlp")
  store.write_json_atomic(folder / "good.json", record("good"))
  (folder / "garbage.json").write_text("{ this is not json")
  (folder / "partial.json").write_text(json.dumps({"schema": 1, "name": "partial"}))
  records, warnings = store.load_records(tmp_path)
  assert [r["name"] for r in records] == ["good"]
  assert len(warnings) == 2 and all("skipped" in w for w in warnings)


def test_names_cannot_leave_the_results_folder(tmp_path):
  with pytest.raises(UserError): store.record_path(tmp_path, "s", "mnist", "mlp", "../../../evil", "h")
  with pytest.raises(UserError): store.try_claim(tmp_path, "../evil", "h")


def test_unwritable_results_folder(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UserError) as e: store.check_results_folder(blocker / "results")
  assert "not writable" in str(e.value)


def claim_file(folder, content):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "a.claim").write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("content", ["", "{half", "null", "[1]", "42", json.dumps({"pid": "abc", "host": "h", "time": 1}),
                                     json.dumps({"host": socket.gethostname(), "time": 1}), json.dumps({"pid": None}),
                                     json.dumps({"pid": 1.5, "host": socket.gethostname(), "time": 1})])
def test_a_garbage_claim_is_stale_with_a_warning_and_never_crashes(tmp_path, content):
  claim_file(tmp_path, content)
  warnings = []
  claim = store.try_claim(tmp_path, "a", "h", warn=warnings.append)
  assert claim is not None, "a garbage claim never blocks a run"
  assert warnings and "invalid" in warnings[0]
  store.release(claim)


def test_a_claim_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
  # a live process (this one's parent) but with another start time: the pid was reused since the claim was taken
  pid = os.getppid()
  ticks = store._start_ticks(pid)
  if ticks is None: pytest.skip("no /proc: process start times are Linux-only")
  info = {"pid": pid, "host": socket.gethostname(), "time": time.time(), "boot_id": store._boot_id(), "start_ticks": ticks + 1}
  claim_file(tmp_path, info)
  assert store.claim_is_stale(info)
  assert store.try_claim(tmp_path, "a", "h") is not None
  assert not store.claim_is_stale(info | {"start_ticks": ticks}), "the same process (same start time) is live"


def test_a_claim_with_our_own_pid_is_stale_and_another_boot_is_stale(tmp_path):
  # containers: a new explorer can get the pid (1) of the dead one that left the claim
  own = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
  assert store.claim_is_stale(own), "an older explorer's claim (no start time) with our pid"
  if store._start_ticks(os.getpid()) is not None:
    assert store.claim_is_stale(own | {"start_ticks": store._start_ticks(os.getpid()) - 1}), "another process that had our pid"
  other_boot = {"pid": os.getppid(), "host": socket.gethostname(), "time": time.time(), "boot_id": "another-boot"}
  assert store.claim_is_stale(other_boot) == (store._boot_id() is not None)


def test_a_claim_of_another_host_is_trusted_for_a_day():
  assert not store.claim_is_stale({"pid": 1, "host": "elsewhere", "time": time.time()})
  assert store.claim_is_stale({"pid": 1, "host": "elsewhere", "time": time.time() - 25 * 3600})


def test_two_study_files_with_the_same_name_get_two_folders(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  a, b = tmp_path / "a" / "study.toml", tmp_path / "b" / "study.toml"
  a.write_text("")
  b.write_text("")
  results = tmp_path / "results"
  assert store.study_id(results, a) == "study"
  assert store.study_id(results, b) == "study-2"
  assert store.study_id(results, a) == "study" and store.study_id(results, b) == "study-2", "stable on later runs"


def test_a_moved_study_keeps_its_folder_and_odd_file_names_are_slugged(tmp_path):
  results = tmp_path / "results"
  old = tmp_path / "old.toml"
  old.write_text("")
  assert store.study_id(results, old) == "old"
  new = tmp_path / "elsewhere" / "old.toml"
  new.parent.mkdir()
  old.rename(new)
  assert store.study_id(results, new) == "old", "the study file moved: its records are still its own"
  assert store.study_id(results, tmp_path / "my study ü.toml") == "my-study"


@pytest.mark.parametrize("change, why", [
  ({"metrics": {"test_acc": "97%"}}, "metric 'test_acc'"), ({"config": {"steps": "100"}}, "config 'steps'"),
  ({"history": {"val_acc": "x"}}, "history 'val_acc'"), ({"capped_from": "3"}, "'capped_from'"), ({"name": 5}, "'name'"),
  ({"status": "weird"}, "unknown status"), ({"schema": 2}, "schema 2"), ({"wall_s": True}, "'wall_s'"),
  ({"name": "../x"}, "invalid name"), ({"axes": [1]}, "'axes'"),
])
def test_a_record_with_wrong_types_is_skipped_naming_the_file(tmp_path, change, why):
  folder = store.run_dir(tmp_path, "s", "mnist", "mlp")
  store.write_json_atomic(folder / "good.h1.json", record("good"))
  store.write_json_atomic(folder / "bad.h2.json", record("bad") | change)
  records, warnings = store.load_records(tmp_path)
  assert [r["name"] for r in records] == ["good"]
  assert len(warnings) == 1 and "bad.h2.json" in warnings[0] and why in warnings[0], warnings
