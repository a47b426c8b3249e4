"""Results you can trust under real use: record identity, your results apart from the shipped ones, claims that cannot
lie, checks before training, signals while waiting for helpers, and a chaos test of kills and resumes."""
import json, os, random, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest
from explorer import store
from explorer.data import write_idx
from tests.conftest import make_digits
from tests.test_cli import ROOT, TINY_SUITE, explorer, wait_for


def all_records(results: Path) -> list[dict]:
  return [json.loads(p.read_text()) for p in sorted(results.glob("runs/*/*/*/*.json"))]


def leftovers(results: Path) -> list[Path]:
  """Claims, temp files and anything half-written that a clean store never leaves."""
  return [p for p in results.rglob("*") if p.suffix in (".claim", ".tmp") or p.name.endswith(".part")]


def test_a_quick_pass_never_replaces_a_finished_study(tmp_path, data_dir):
  assert explorer(["mlp"], tmp_path, data_dir=data_dir).returncode == 0
  full = {r["name"]: r for r in all_records(tmp_path / "results")}
  quick = explorer(["mlp", "--max-steps", "3"], tmp_path, data_dir=data_dir)
  assert quick.returncode == 0 and "4 trained" in quick.stdout, quick.stdout + quick.stderr
  recs = all_records(tmp_path / "results")
  assert len(recs) == 8, "the quick pass is stored next to the full-length runs"
  for r in recs:
    if r["capped_from"] is None: assert r == full[r["name"]], "every full-length record is untouched"
    else: assert r["config"]["steps"] == 3
  md = (tmp_path / "results" / "exp-mnist" / "mlp.md").read_text()
  quick_md = (tmp_path / "results" / "exp-mnist" / "mlp-quick.md").read_text()
  assert "capped" not in md and "(mlp-quick.md)" in md and "Quick passes (--max-steps)" in quick_md
  test = f"{100 * full['baseline']['metrics']['test_acc']:.2f}"
  assert test in md, "the full report still shows the full-length result"
  again = explorer(["mlp"], tmp_path, data_dir=data_dir)
  assert "0 trained, 4 already finished" in again.stdout, "the full study is still complete after the quick pass"


def test_an_edited_configuration_is_a_new_record_and_the_old_one_is_listed(tmp_path, data_dir):
  assert explorer(["mlp", "--category", "baseline"], tmp_path, data_dir=data_dir).returncode == 0
  edited = TINY_SUITE.replace('description = "tiny baseline"', 'description = "tiny baseline"\nwidth = 24')
  r = explorer(["mlp", "--category", "baseline"], tmp_path, data_dir=data_dir, suite=edited)
  assert r.returncode == 0 and "1 trained" in r.stdout
  widths = sorted(rec["config"]["width"] for rec in all_records(tmp_path / "results"))
  assert widths == [16, 24], "both configurations are kept"
  md = (tmp_path / "results" / "exp-mnist" / "mlp.md").read_text()
  assert "Earlier configurations of these runs" in md and "width=16" in md


def test_two_study_files_with_the_same_name_never_collide(tmp_path, data_dir):
  for folder, lr in (("a", "0.01"), ("b", "0.002")):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "exp.toml").write_text(TINY_SUITE.replace("lr_max = 0.01", f"lr_max = {lr}"))
  for folder in ("a", "b", "a"):
    r = explorer(["mlp", "--config", str(tmp_path / folder / "exp.toml")], tmp_path, data_dir=data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
  suites = sorted({(r["suite"], r["study_file"]) for r in all_records(tmp_path / "results")})
  assert [s for s, _ in suites] == ["exp", "exp-2"] and suites[0][1].endswith("a/exp.toml") and suites[1][1].endswith("b/exp.toml")
  assert len(all_records(tmp_path / "results")) == 8
  assert (tmp_path / "results" / "exp-mnist" / "mlp.md").exists() and (tmp_path / "results" / "exp-2-mnist" / "mlp.md").exists()


def test_a_fresh_clone_trains_its_study_and_running_it_modifies_no_tracked_file(tmp_path, data_dir):
  """The README's main command in a clone of this tree (tracked files, as committed or edited now): it trains (nothing of
  the shipped reference results counts as the user's), and afterwards `git status` is clean."""
  clone = tmp_path / "clone"
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
  for f in filter(None, files):
    if (ROOT / f).is_file():
      (clone / f).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / f, clone / f)
  git = lambda *a: subprocess.run(["git", *a], cwd=clone, capture_output=True, text=True, check=True).stdout
  git("init", "-q")
  git("add", "-A")
  git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone")
  env = {k: v for k, v in os.environ.items() if k not in ("EXPERIMENTS", "RESULTS_DIR")}
  for args in (["mlp", "--category", "baseline", "--max-steps", "2"], ["report"]):
    r = subprocess.run([sys.executable, "mnist_explorer.py", *args], cwd=clone, capture_output=True, text=True, timeout=600,
                       env={**env, "JIT": "1", "DATA_DIR": str(data_dir)})
    assert r.returncode == 0, r.stdout + r.stderr
    if args[0] == "mlp": assert "1 trained ·" in r.stdout and "already finished" not in r.stdout, r.stdout
  assert (clone / "results" / "mlp-quick.md").exists()
  assert git("status", "--porcelain", "--untracked-files=all") == "", "running the tool changed or added tracked files"


def test_garbage_and_lying_claims_never_skip_a_run_or_crash(tmp_path, data_dir):
  assert explorer(["mlp", "--list"], tmp_path).returncode == 0
  folder = tmp_path / "results" / "runs" / "exp" / "mnist" / "mlp"
  folder.mkdir(parents=True)
  from explorer.config import load_toml, suite_specs
  specs = {s.name: s for s in suite_specs(load_toml(tmp_path / "exp.toml"), "mlp", tmp_path / "exp.toml")}
  def claim(name: str, content: str) -> None: (folder / f"{name}.{specs[name].config.hash()}.claim").write_text(content)
  claim("baseline", json.dumps({"pid": "abc"}))
  claim("lr-high", "[1]")
  claim("lr-low", "null")
  # a live pid (this test process) with another start time: the claim of a dead explorer whose pid was reused
  ticks = store._start_ticks(os.getpid())
  claim("batch-8", json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "boot_id": store._boot_id(),
                               "start_ticks": (ticks or 0) + 7}))
  r = explorer(["mlp"], tmp_path, data_dir=data_dir)
  assert r.returncode == 0 and "4 trained" in r.stdout, r.stdout + r.stderr
  assert "Traceback" not in r.stdout + r.stderr and r.stdout.count("stale claim") == 4
  assert not leftovers(tmp_path / "results")


SPACE_SUITE = """
[mlp.defaults]
width = 16
steps = 4
batch = 16
eval_every = 2
[[mlp.runs]]
name = "baseline"
category = "baseline"
description = "markup stays literal: [/] [bold]not bold[/bold] [red]"
[[mlp.runs]]
name = "%s"
category = "long_names"
repeats = 2
"""


def test_odd_study_file_names_markup_and_long_names_train_and_appear_in_the_report(tmp_path, data_dir):
  long_name = "n" * 120
  study = tmp_path / "my study ü.toml"
  study.write_text(SPACE_SUITE % long_name)
  r = explorer(["mlp", "--config", str(study)], tmp_path, data_dir=data_dir)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "markup stays literal: [/] [bold]not bold[/bold] [red]" in r.stdout
  md = (tmp_path / "results" / "my-study-mnist" / "mlp.md").read_text()
  for text in ("`baseline`", f"`{long_name}`", f"[{long_name}-r0]", f"[{long_name}-r1]", "[bold]not bold[/bold]"): assert text in md


@pytest.mark.parametrize("env, suite_change, expected", [
  ({"DEV": "NOPE"}, None, "unknown device DEV=NOPE"),
  ({"BATCH": "32", "BS": "64"}, None, "BS=64 and BATCH=32 set the same hyperparameter differently"),
  ({"JIT": "abc"}, None, "tinygrad's variable JIT must be an integer, got 'abc'"),
  ({"BEAM": "-2"}, None, "tinygrad's variable BEAM must be >= 0"),
  ({}, ("batch = 8", "batch = 600"), "run 'batch-8': batch 600 is larger than its training set (500 mnist images)"),
  ({}, ("[mlp.defaults]", "[mlp.defaults]\ntrain_size = 501"), "train_size 501 is larger than the mnist training set"),
  ({}, "[mlp]\ndescription = \"nothing yet\"\n", "no runs to train"),
])
def test_checkable_mistakes_are_one_line_before_anything_trains(tmp_path, data_dir, env, suite_change, expected):
  suite = suite_change if isinstance(suite_change, str) else TINY_SUITE.replace(*suite_change) if suite_change else TINY_SUITE
  r = explorer(["mlp"], tmp_path, data_dir=data_dir, env=env, suite=suite)
  assert r.returncode == 2 and expected in r.stderr, r.stdout + r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
  assert not all_records(tmp_path / "results"), "nothing trained"


@pytest.mark.parametrize("make", ["runs-is-a-file", "index-is-a-folder"])
def test_an_unusable_results_folder_is_one_line(tmp_path, data_dir, make):
  results = tmp_path / "results"
  results.mkdir()
  if make == "runs-is-a-file": (results / "runs").write_text("x")
  else: (results / "index.md").mkdir()
  for args in (["mlp"], ["report"]):
    r = explorer(args, tmp_path, data_dir=data_dir)
    assert r.returncode == 2 and "unusable" in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr


def write_data(folder: Path, n_train: int, n_test: int, first_labels: str | None = None) -> Path:
  folder.mkdir()
  x, y = make_digits(n_train, 0)
  if first_labels: y[:len(first_labels)] = [int(c) for c in first_labels]
  xt, yt = make_digits(n_test, 1)
  for name, arr, kind in (("train-images-idx3-ubyte.gz", x, "images"), ("train-labels-idx1-ubyte.gz", y, "labels"),
                          ("t10k-images-idx3-ubyte.gz", xt, "images"), ("t10k-labels-idx1-ubyte.gz", yt, "labels")):
    write_idx(folder / name, arr, kind)
  return folder


def test_an_empty_test_set_and_the_other_datasets_files_are_refused_before_training(tmp_path):
  empty_test = write_data(tmp_path / "empty-test", 10_100, 0)
  r = explorer(["mlp"], tmp_path, data_dir=empty_test)
  assert r.returncode == 2 and "no test images" in r.stderr, r.stderr
  from explorer.data import LABEL_PREFIX
  fashion_like = write_data(tmp_path / "fashion-like", 10_100, 50, LABEL_PREFIX["fashion"])
  r = explorer(["mlp"], tmp_path, data_dir=fashion_like)
  assert r.returncode == 2 and "are Fashion-MNIST (recognised by their labels)" in r.stderr, r.stderr
  assert not all_records(tmp_path / "results")


def test_real_fashion_mnist_files_given_as_mnist_are_recognised(tmp_path):
  fashion = Path("/usr/share/datasets/fashion-mnist")
  if not (fashion / "train-labels-idx1-ubyte.gz").exists(): pytest.skip("Debian's dataset-fashion-mnist is not installed")
  r = explorer(["mlp"], tmp_path, data_dir=fashion)
  assert r.returncode == 2 and "Fashion-MNIST (recognised by their labels)" in r.stderr, r.stderr


def test_a_record_with_wrong_types_is_skipped_and_later_suites_report_fine(tmp_path, data_dir):
  assert explorer(["mlp", "--category", "baseline"], tmp_path, data_dir=data_dir).returncode == 0
  (path,) = (tmp_path / "results").glob("runs/*/*/*/baseline.*.json")
  bad = json.loads(path.read_text())
  bad["metrics"]["test_acc"] = "97 %"
  (path.parent / "hand-edited.0000.json").write_text(json.dumps(bad | {"name": "hand-edited"}))
  rep = explorer(["report"], tmp_path)
  assert rep.returncode == 0 and "hand-edited.0000.json: metric 'test_acc' is str" in rep.stdout, rep.stdout + rep.stderr
  r = explorer(["mlp", "--category", "learning_rate"], tmp_path, data_dir=data_dir)
  assert r.returncode == 0 and "report failed" not in r.stdout and "2 trained" in r.stdout


def test_out_of_memory_in_a_run_is_a_recorded_failure_and_the_suite_goes_on(tmp_path, data_dir):
  from rich.console import Console
  from explorer import runner
  from explorer.config import load_toml, suite_specs
  from explorer.data import load_dataset
  from explorer.train import Trainer
  (tmp_path / "exp.toml").write_text(TINY_SUITE)
  specs = suite_specs(load_toml(tmp_path / "exp.toml"), "mlp", tmp_path / "exp.toml")
  real_run = Trainer.run
  def run(self, cfg, data, progress=None):
    if cfg.batch == 8: raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (131072, 131072)")
    return real_run(self, cfg, data, progress)
  Trainer.run = run
  try:
    code = runner.run_suite(specs, "exp", tmp_path / "results", {"mnist": load_dataset("mnist", data_dir)}, None, "CPU",
                            Console(record=True, width=200))
  finally:
    Trainer.run = real_run
  assert code == 1
  recs = {r["name"]: r for r in all_records(tmp_path / "results")}
  assert recs["batch-8"]["status"] == "failed" and recs["batch-8"]["error"].startswith("out of memory: Unable to allocate 64.0 GiB")
  assert sum(r["status"] == "done" for r in recs.values()) == 3, "the other runs trained"


WAITING_MAIN = """
import sys
from explorer import runner, stop
runner.run_suite = lambda *a, **k: 0  # this process has finished its own runs: it only waits for its helper
sys.argv = ["mnist_explorer.py", "mlp", "--workers", "2"]
import mnist_explorer
mnist_explorer.cli()
"""


SLOW_TEARDOWN_MAIN = """
import sys, time
sys.argv = ["mnist_explorer.py", "report"]
import mnist_explorer

class SlowToFree:  # a module global freed in Python's shutdown, after it has put the default signal handlers back
  def __del__(self): time.sleep(3)
keep = SlowToFree()
mnist_explorer.main = lambda argv=None: print("finished", flush=True) or 0
mnist_explorer.cli()
"""


def test_a_sigterm_after_a_clean_finish_still_exits_0(tmp_path):
  # seen in the chaos test: a SIGTERM in the last moments of a finished suite ended it as killed (-15)
  p = subprocess.Popen([sys.executable, "-c", SLOW_TEARDOWN_MAIN], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert p.stdout.readline() == "finished\n"
  time.sleep(1.0)
  if p.poll() is None: p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=60)
  assert p.returncode == 0 and "Traceback" not in err, (p.returncode, err)


def test_sigterm_while_waiting_for_a_helper_stops_the_helper_and_rebuilds_the_report(tmp_path, data_dir):
  slow = TINY_SUITE.replace("steps = 6", "steps = 100000")
  (tmp_path / "exp.toml").write_text(slow)
  env = {**os.environ, "JIT": "1", "EXPERIMENTS": str(tmp_path / "exp.toml"), "RESULTS_DIR": str(tmp_path / "results"),
         "DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
  p = subprocess.Popen([sys.executable, "-c", WAITING_MAIN], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  assert wait_for(lambda: list((tmp_path / "results").glob("runs/*/*/*/*.claim")), timeout=120)
  (claim,) = (tmp_path / "results").glob("runs/*/*/*/*.claim")
  helper = json.loads(claim.read_text())["pid"]
  time.sleep(1.0)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 130 and "re-run the same command to resume" in err, out + err
  assert not store._pid_alive(helper), "the helper was stopped too"
  (rec,) = all_records(tmp_path / "results")
  assert rec["status"] == "interrupted"
  assert (tmp_path / "results" / "exp-mnist" / "mlp.md").exists() and not leftovers(tmp_path / "results")


def group_members(pgid: int, running: str = "", state: str = "") -> list[int]:
  """The live processes of a process group (zombies count as gone) whose command line contains `running`, in `state`."""
  pids = []
  for stat in Path("/proc").glob("[0-9]*/stat"):
    try: fields, cmdline = stat.read_text().rsplit(")", 1)[1].split(), (stat.parent / "cmdline").read_bytes()
    except OSError: continue
    if int(fields[2]) == pgid and fields[0] != "Z" and running.encode() in cmdline and fields[0].startswith(state):
      pids.append(int(stat.parent.name))
  return pids


def pools_idle(pgid: int) -> bool:
  """Both explorers' compile pools are up and done compiling: every worker asleep on the task queue."""
  workers = group_members(pgid, "spawn_main")
  return len(workers) >= 2 and not group_members(pgid, "clang") and len(group_members(pgid, "spawn_main", "S")) == len(workers)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigterm_to_the_whole_process_group_ends_every_process(tmp_path, data_dir):
  """kill -- -PGID (a job scheduler, a container stop) also reaches tinygrad's compile pool, whose idle worker dies
  holding the pool's queue lock: the explorer must still exit 130, and leave no process behind."""
  slow = TINY_SUITE.replace("steps = 6", "steps = 100000")
  (tmp_path / "exp.toml").write_text(slow)
  env = {**os.environ, "JIT": "1", "EXPERIMENTS": str(tmp_path / "exp.toml"), "RESULTS_DIR": str(tmp_path / "results"),
         "DATA_DIR": str(data_dir), "CACHEDB": str(tmp_path / "tinygrad-cache.db")}  # a fresh cache: kernels are lowered in the pool
  p = subprocess.Popen([sys.executable, str(ROOT / "mnist_explorer.py"), "mlp", "--workers", "2"], cwd=tmp_path, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  assert wait_for(lambda: len(list((tmp_path / "results").glob("runs/*/*/*/*.claim"))) == 2)
  # the bad moment: the pools' workers idle, one of them holding the queue lock while it waits for a task
  assert wait_for(lambda: pools_idle(p.pid) and time.sleep(3.0) is None and pools_idle(p.pid), timeout=120), "the pools went idle"
  os.killpg(p.pid, signal.SIGTERM)
  try: out, err = p.communicate(timeout=150)
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    pytest.fail("the explorer hung after a SIGTERM to its process group")
  assert p.returncode == 130 and "Traceback" not in err, out + err
  assert wait_for(lambda: not group_members(p.pid), timeout=30), f"left behind: {group_members(p.pid)}"
  assert sorted(r["status"] for r in all_records(tmp_path / "results")) == ["interrupted", "interrupted"]
  assert not leftovers(tmp_path / "results")


def test_a_helper_stops_when_its_explorer_is_killed(tmp_path, data_dir):
  slow = TINY_SUITE.replace("steps = 6", "steps = 100000")
  p = explorer(["mlp", "--workers", "2"], tmp_path, data_dir=data_dir, wait=False, suite=slow)
  assert wait_for(lambda: len(list((tmp_path / "results").glob("runs/*/*/*/*.claim"))) == 2)
  pids = {json.loads(c.read_text())["pid"] for c in (tmp_path / "results").glob("runs/*/*/*/*.claim")}
  p.kill()
  p.communicate()
  helpers = pids - {p.pid}
  assert len(helpers) == 1
  assert wait_for(lambda: not any(store._pid_alive(h) for h in helpers), timeout=60), "the helper died with its explorer"
  assert [r["status"] for r in all_records(tmp_path / "results")] == ["interrupted"], "it recorded its run as interrupted"


CHAOS_SUITE = """
[mlp.defaults]
width = 16
steps = 60
batch = 16
eval_every = 20
""" + "".join(f'[[mlp.runs]]\nname = "run-{i}"\ncategory = "c{i % 2}"\nlr_max = {0.001 * (i + 1)}\n' for i in range(6))


def test_chaos_kills_at_random_moments_then_resume_leaves_one_clean_record_each(tmp_path, data_dir):
  rng = random.Random(1234)
  results = tmp_path / "results"
  kills = []
  for _ in range(8):
    p = explorer(["mlp", "--workers", "2"], tmp_path, data_dir=data_dir, wait=False, suite=CHAOS_SUITE)
    time.sleep(rng.uniform(0.5, 6.0))
    sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
    kills.append(sig)
    if p.poll() is None: p.send_signal(sig)
    out, err = p.communicate(timeout=180)
    assert "Traceback" not in out + err, out + err
    if sig == signal.SIGTERM and p.returncode not in (0, 130): pytest.fail(f"SIGTERM gave exit {p.returncode}: {out}{err}")
    # a SIGKILLed explorer's helper stops by itself (it gets SIGTERM when its parent dies): wait for it like a user would
    assert wait_for(lambda: not any(store._pid_alive(json.loads(c.read_text()).get("pid", 0)) for c in results.glob("runs/*/*/*/*.claim")
                                    if c.read_text()), timeout=120)
  final = explorer(["mlp", "--workers", "2"], tmp_path, data_dir=data_dir, suite=CHAOS_SUITE)
  assert final.returncode == 0, final.stdout + final.stderr
  recs = all_records(results)
  assert sorted(r["name"] for r in recs) == [f"run-{i}" for i in range(6)], "exactly one record per configuration"
  assert all(r["status"] == "done" and r["steps_done"] == 60 for r in recs)
  assert not leftovers(results), leftovers(results)
  md = (results / "exp-mnist" / "mlp.md").read_text()
  for r in recs: assert f"`{r['name']}`" in md and f"{100 * r['metrics']['test_acc']:.2f}" in md
  for png in results.rglob("*.png"): assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.read_bytes()[-8:-4] == b"IEND"
  assert signal.SIGKILL in kills and signal.SIGTERM in kills


def test_a_one_off_from_an_oddly_shaped_study_file_is_one_line(tmp_path, data_dir):
  for suite in ("[mlp]\nruns = 5\n", "mlp = 3\n", "[mlp]\ndefaults = [1]\n", '[[mlp.runs]]\nname = "b"\ncategory = "baseline"\nwidth = "x"\n'):
    r = explorer(["mlp"], tmp_path, data_dir=data_dir, env={"STEPS": "3"}, suite=suite)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, suite + r.stderr


def test_a_truncated_figure_left_by_an_older_version_is_drawn_again(tmp_path, data_dir):
  assert explorer(["mlp", "--category", "baseline"], tmp_path, data_dir=data_dir).returncode == 0
  png = tmp_path / "results" / "exp-mnist" / "plots" / "mlp" / "baseline.png"
  png.write_bytes(png.read_bytes()[:200])
  from explorer.plots import is_complete_png
  from explorer.report import write_reports
  assert not is_complete_png(png)
  write_reports(tmp_path / "results", redraw=set())  # keep the figures that exist...
  assert is_complete_png(png), "...but not a truncated one"
