"""The store: atomic records, claims (live, stale after SIGKILL, taken over), resume rule, disk full, garbage records."""
import errno, json, os, subprocess, sys
import pytest
from explorer import store
from explorer.errors import UserError


def record(name="a", status="done", config_hash="h1", **extra):
  return {"schema": 1, "suite": "s", "model": "mlp", "name": name, "group": name, "category": "c", "config": {},
          "status": status, "config_hash": config_hash, **extra}


def test_atomic_write_leaves_no_temp_files(tmp_path):
  path = tmp_path / "runs" / "a.json"
  store.write_json_atomic(path, {"x": 1})
  store.write_json_atomic(path, {"x": 2})
  assert json.loads(path.read_text()) == {"x": 2}
  assert os.listdir(path.parent) == ["a.json"]


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
  assert [p.name for p, _ in store.stale_claims(tmp_path)] == ["dead.claim"]
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
  with pytest.raises(UserError): store.record_path(tmp_path, "s", "mnist", "mlp", "../../../evil")
  with pytest.raises(UserError): store.try_claim(tmp_path, "../evil", "h")


def test_unwritable_results_folder(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UserError) as e: store.check_writable(blocker / "results")
  assert "not writable" in str(e.value)
