"""The command line end to end, as a user runs it: bad inputs (one line, exit 2, nothing written), a suite, resume,
one-off env runs, report regeneration, Ctrl-C and SIGKILL, two explorers on one results folder."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_SUITE = """
[mlp.defaults]
width = 16
steps = 6
batch = 16
eval_every = 3
[[mlp.runs]]
name = "baseline"
category = "baseline"
description = "tiny baseline"
[[mlp.runs]]
name = "lr-high"
category = "learning_rate"
lr_max = 0.01
[[mlp.runs]]
name = "lr-low"
category = "learning_rate"
lr_max = 0.0001
[[mlp.runs]]
name = "batch-8"
category = "batch_size"
batch = 8
"""


def explorer(args, tmp_path, env=None, data_dir=None, wait=True, suite=TINY_SUITE):
  (tmp_path / "exp.toml").write_text(suite)
  base = {k: v for k, v in os.environ.items() if k.upper() not in {"STEPS", "BATCH", "BS", "LR", "LR_MAX", "ACT", "SEED", "DATASET"}}
  full_env = {**base, "JIT": "1", "EXPERIMENTS": str(tmp_path / "exp.toml"), "RESULTS_DIR": str(tmp_path / "results"),
              **({"DATA_DIR": str(data_dir)} if data_dir else {}), **(env or {})}
  cmd = [sys.executable, str(ROOT / "mnist_explorer.py"), *args]
  if not wait: return subprocess.Popen(cmd, env=full_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def records(tmp_path) -> dict[str, dict]:
  return {(r := json.loads(p.read_text()))["name"]: r for p in sorted((tmp_path / "results").glob("runs/*/*/*/*.json"))}


@pytest.mark.parametrize("args, env, expected", [
  (["mlp"], {"STEPS": "abc"}, "STEPS must be an integer, got 'abc'"),
  (["mlp"], {"BATCH": "0"}, "BATCH must be >= 1"),
  (["mlp"], {"BATCH": "70000"}, "larger than the training set"),
  (["mlp"], {"OPT": "adamx"}, "OPT must be one of"),
  (["mlp"], {"ACT": "swish"}, "ACT must be one of"),
  (["mlp"], {"DATASET": "cifar"}, "dataset must be one of mnist, fashion"),
  (["mlp", "--category", "dropout"], {}, "unknown category 'dropout'"),
  (["mlp", "--max-steps", "0"], {}, "--max-steps must be >= 1"),
  (["mlp", "--beam", "40"], {}, "--beam must be 0..16, got 40"),
  (["mlp", "--threads", "0"], {}, "--threads must be 1..256, got 0"),
  (["cnn"], {}, "no [cnn] section"),
  (["mlp", "--config", "/nonexistent.toml"], {}, "not found"),
  (["mlp", "--results", "/proc/version/results"], {}, "not writable"),
  (["mlp", "--data-dir", "/nonexistent-data"], {}, "/nonexistent-data"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, env, expected):
  r = explorer(args, tmp_path, env)
  assert r.returncode == 2, r.stderr
  assert expected in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
  assert not list((tmp_path / "results").glob("runs/*/*/*/*.json"))


def test_unknown_model_is_exit_2(tmp_path):
  r = explorer(["mpl"], tmp_path)
  assert r.returncode == 2 and "invalid choice: 'mpl'" in r.stderr


def test_malformed_toml_names_the_line(tmp_path):
  r = explorer(["mlp"], tmp_path, suite="[mlp]\nsteps = = 3\n")
  assert r.returncode == 2 and "exp.toml" in r.stderr and "line 2" in r.stderr


def test_missing_clang_is_explained(tmp_path):
  r = explorer(["mlp"], tmp_path, env={"PATH": str(tmp_path)})  # a PATH without clang
  assert r.returncode == 2 and "clang" in r.stderr and "apt-get install" in r.stderr


def test_offline_without_data_says_what_to_do(tmp_path, data_dir):
  empty = tmp_path / "empty"
  empty.mkdir()
  r = explorer(["mlp"], tmp_path, env={"DATA_DIR": str(empty)})
  assert r.returncode == 2 and "train-images-idx3-ubyte.gz" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_corrupt_data_file_is_named(tmp_path, data_dir):
  bad = tmp_path / "bad"
  bad.mkdir()
  for f in data_dir.iterdir(): (bad / f.name).write_bytes(f.read_bytes())
  truncated = bad / "train-images-idx3-ubyte.gz"
  truncated.write_bytes(truncated.read_bytes()[:5000])
  r = explorer(["mlp"], tmp_path, env={"DATA_DIR": str(bad)})
  assert r.returncode == 2 and "train-images-idx3-ubyte.gz" in r.stderr and "Traceback" not in r.stderr


def test_suite_resume_rerun_and_report(tmp_path, data_dir):
  r = explorer(["mlp"], tmp_path, data_dir=data_dir)
  assert r.returncode == 0, r.stdout + r.stderr
  recs = records(tmp_path)
  assert set(recs) == {"baseline", "lr-high", "lr-low", "batch-8"}
  assert all(rec["status"] == "done" and rec["metrics"]["test_acc"] is not None for rec in recs.values())
  assert "steps=6 batch=16 width=16 eval_every=3 · the other keys at their defaults (-v shows all)" in r.stdout, \
    "what differs from the defaults is printed before training"
  assert "done final val" in r.stdout and "(best " in r.stdout and "already finished" not in r.stdout
  md = (tmp_path / "results" / "exp-mnist" / "mlp.md").read_text()
  assert "learning_rate" in md and "lr-high" in md
  # resume: nothing is trained again
  again = explorer(["mlp"], tmp_path, data_dir=data_dir)
  assert again.returncode == 0 and "0 trained, 4 already finished" in again.stdout
  assert records(tmp_path)["baseline"]["finished_at"] == recs["baseline"]["finished_at"]
  # --rerun and --category: only that category, trained again
  sub = explorer(["mlp", "--category", "learning_rate", "--rerun", "--max-steps", "4"], tmp_path, data_dir=data_dir)
  assert sub.returncode == 0 and "2 trained" in sub.stdout
  quick = [r for r in (json.loads(p.read_text()) for p in (tmp_path / "results").glob("runs/*/*/*/lr-high.*.json")) if r["capped_from"]]
  assert len(quick) == 1 and quick[0]["capped_from"] == 6 and quick[0]["config"]["steps"] == 4
  # the report regenerates from stored runs without training; a garbage record is skipped with a warning
  (tmp_path / "results" / "exp-mnist" / "mlp.md").unlink()
  garbage = next((tmp_path / "results").glob("runs/*/*/mlp")) / "garbage.json"
  garbage.write_text("not json at all")
  rep = explorer(["report"], tmp_path)
  assert rep.returncode == 0 and "skipped" in rep.stdout and (tmp_path / "results" / "exp-mnist" / "mlp.md").exists()


def test_one_off_from_env(tmp_path, data_dir):
  r = explorer(["mlp"], tmp_path, env={"STEPS": "5", "BS": "8", "LR": "2e-3", "ACT": "silu", "WIDTH": "8"}, data_dir=data_dir)
  assert r.returncode == 0, r.stdout + r.stderr
  (rec,) = records(tmp_path).values()
  assert rec["category"] == "one-off"
  assert {k: rec["config"][k] for k in ("steps", "batch", "lr_max", "act", "width")} == \
         {"steps": 5, "batch": 8, "lr_max": 2e-3, "act": "silu", "width": 8}
  assert rec["history"]["step"][-1] == 5


def test_diverging_run_is_recorded_and_suite_goes_on(tmp_path, data_dir):
  suite = TINY_SUITE.replace('lr_max = 0.01', 'lr_max = 10.0\nopt = "sgd"\nschedule = "constant"\nsteps = 40\nwidth = 32')
  r = explorer(["mlp"], tmp_path, data_dir=data_dir, suite=suite)
  assert r.returncode == 0, r.stdout + r.stderr
  recs = records(tmp_path)
  assert recs["lr-high"]["status"] == "diverged" and recs["lr-high"]["error"]
  assert recs["batch-8"]["status"] == "done", "the suite went on after the diverged run"
  assert "diverged" in (tmp_path / "results" / "exp-mnist" / "mlp.md").read_text()


def wait_for(predicate, timeout=180):
  end = time.time() + timeout
  while time.time() < end:
    if predicate(): return True
    time.sleep(0.2)
  return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_keeps_finished_runs_and_marks_the_interrupted_one(tmp_path, data_dir, sig):
  suite = TINY_SUITE.replace('name = "lr-high"\ncategory = "learning_rate"', 'name = "lr-high"\ncategory = "learning_rate"\nsteps = 100000')
  p = explorer(["mlp"], tmp_path, data_dir=data_dir, wait=False, suite=suite)
  assert wait_for(lambda: len(list((tmp_path / "results").glob("runs/*/*/*/lr-high.*.claim"))) == 1)
  time.sleep(1.0)
  p.send_signal(sig)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 130, out + err
  assert "re-run the same command to resume" in err and "Traceback" not in err
  recs = records(tmp_path)
  assert recs["baseline"]["status"] == "done"
  assert recs["lr-high"]["status"] == "interrupted"
  assert not list((tmp_path / "results").glob("runs/**/*.claim")), "the claim is released"
  assert (tmp_path / "results" / "exp-mnist" / "mlp.md").exists(), "the report is regenerated"


def test_a_signal_swallowed_by_a_finalizer_still_stops_training():
  """Python drops exceptions raised inside __del__, where tinygrad frees buffers; the flag must still stop the loop."""
  code = """
import os, signal, sys
from explorer import stop
stop.install()
class Frees:
  def __del__(self): os.kill(os.getpid(), signal.SIGTERM)  # the handler runs inside this finalizer
Frees()
print("survived the finalizer", flush=True)
try: stop.check()
except KeyboardInterrupt: sys.exit(130)
"""
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert "survived the finalizer" in r.stdout, "the raise inside __del__ was swallowed, as Python does"
  assert r.returncode == 130, r.stdout + r.stderr


def test_a_stop_while_kernel_pieces_run_on_the_pool_ends_after_the_call_and_leaves_the_pool_right():
  """A SIGTERM lands while matmuls run their pieces on the native pool (explorer/fastpath/pool.c), which no signal cuts
  short: the stop is raised once the call is back in Python, nothing hangs, and the next call gives the same numbers."""
  code = """
import os, signal, threading
import numpy as np
from tinygrad import Tensor
from explorer import stop
from explorer.fastpath import cpu_threads
stop.install()
cpu_threads.set_threads(2)
cpu_threads.MIN_PARALLEL_S = 0.0
a = Tensor.rand(512, 512).realize()
def matmul(): return (a @ a).numpy()
want = matmul(); matmul()  # the first call of a kernel times it; the second one splits it into pieces
before = cpu_threads.stats["pieces_on_pool"]
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
  while True: matmul()
except KeyboardInterrupt: print("stopped", flush=True)
assert cpu_threads.stats["pieces_on_pool"] > before, "the calls ran on the pool"
assert np.array_equal(matmul(), want), "the next call is still right"
print("ok", flush=True)
"""
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env={**os.environ, "DEV": "CPU"})
  assert r.stdout.split() == ["stopped", "ok"], r.stdout + r.stderr


def test_sigterm_to_the_main_process_stops_its_workers_too(tmp_path, data_dir):
  slow = TINY_SUITE.replace("steps = 6", "steps = 100000")
  p = explorer(["mlp", "--workers", "2"], tmp_path, data_dir=data_dir, wait=False, suite=slow)
  assert wait_for(lambda: len(list((tmp_path / "results").glob("runs/*/*/*/*.claim"))) == 2)
  time.sleep(1.0)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 130, out + err
  recs = records(tmp_path)
  assert sorted(r["status"] for r in recs.values()) == ["interrupted", "interrupted"], recs.keys()
  assert not list((tmp_path / "results").glob("runs/**/*.claim")), "both claims are released"


def test_sigkill_leaves_a_stale_claim_that_the_next_start_recognises(tmp_path, data_dir):
  suite = TINY_SUITE.replace('name = "baseline"\ncategory = "baseline"', 'name = "baseline"\ncategory = "baseline"\nsteps = 100000')
  p = explorer(["mlp"], tmp_path, data_dir=data_dir, wait=False, suite=suite)
  assert wait_for(lambda: len(list((tmp_path / "results").glob("runs/*/*/*/baseline.*.claim"))) == 1)
  p.kill()
  p.communicate()
  assert not records(tmp_path), "no half-written record"
  short = suite.replace("steps = 100000", "steps = 4")
  r = explorer(["mlp"], tmp_path, data_dir=data_dir, suite=short)
  assert r.returncode == 0 and "stale claim" in r.stdout
  assert records(tmp_path)["baseline"]["status"] == "done"


def test_two_explorers_on_one_folder_train_each_run_once(tmp_path, data_dir):
  procs = [explorer(["mlp"], tmp_path, data_dir=data_dir, wait=False) for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  recs = records(tmp_path)
  assert set(recs) == {"baseline", "lr-high", "lr-low", "batch-8"}
  trained = sum(o.count("\ndone final val") + o.startswith("done final val") for o, _ in outs)
  assert trained == 4, f"each run trained exactly once, got {trained}: {outs}"


def test_workers_share_one_suite_and_rerun_trains_each_once(tmp_path, data_dir):
  for args in (["mlp", "--workers", "2"], ["mlp", "--workers", "2", "--rerun"]):
    r = explorer(args, tmp_path, data_dir=data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "results" / "workers" / "worker-1.log").read_text()
    trained = (r.stdout + log).count("done final val")
    assert trained == 4, f"{args}: each run trained exactly once, got {trained}"
    assert "already finished" not in r.stdout, "runs a helper trained in this command are not 'already finished (skipped)'"
    assert set(records(tmp_path)) == {"baseline", "lr-high", "lr-low", "batch-8"}
    from explorer.fastpath.cpu_threads import default_threads
    assert {r["threads"] for r in records(tmp_path).values()} == {default_threads(2)}, "the cores are shared between the processes"


def test_max_steps_scales_the_schedule_lengths():
  """--max-steps shrinks warmup and step-decay period with the run, so runs stay distinct and keep their LR shape."""
  from mnist_explorer import cap_steps
  from explorer.config import RunSpec, make_config
  def capped(**values):
    cfg = make_config("mlp", {"steps": 500, **values}, "t")
    return cap_steps(RunSpec(name="r", group="r", category="c", description="", axes={}, config=cfg), 300)
  assert [capped(warmup=w).config.warmup for w in (0, 50, 150)] == [0, 30, 90]
  c = capped(warmup=150, decay_every=100, eval_every=50, schedule="step")
  assert (c.config.steps, c.config.decay_every, c.config.eval_every, c.capped_from) == (300, 60, 50, 500)
  assert capped(decay_every=0).config.decay_every == 0, "0 (derived from steps) stays derived"
  assert capped(warmup=499).config.warmup == 299, "warmup stays shorter than the run"
  once = capped(warmup=150)
  assert cap_steps(once, 300) == once, "a run already within the cap is left alone"


LONG_NAMES = """
[mlp.defaults]
width = 16
steps = 4
batch = 16
eval_every = 2
[[mlp.runs]]
name = "a-rather-long-configuration-name-for-the-logs"
category = "a_long_category_name_as_well"
lr_max = 0.002
"""


def test_a_log_keeps_whole_names_and_the_report_command_is_short(tmp_path, data_dir):
  """Output into a pipe or CI log: tables are not cut at 80 columns; one run is "1 run"; -v prints the whole
  configuration; `report` prints a short summary, redraws only what changed and lists the files with -v."""
  r = explorer(["mlp", "-v"], tmp_path, data_dir=data_dir, suite=LONG_NAMES)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "…" not in r.stdout, r.stdout
  row = next(line for line in r.stdout.splitlines() if "a-rather-long-configuration-name-for-the-logs" in line and "│" in line)
  assert "a_long_category_name_as_well" in row and "done" in row, row
  assert "· 1 run ·" in r.stdout and "1 runs" not in r.stdout
  assert "nesterov=False" in r.stdout and "the other keys at their defaults" not in r.stdout, "-v: the whole configuration"
  first = explorer(["report"], tmp_path)
  assert first.returncode == 0, first.stderr
  assert "1 run in 1 report:" in first.stdout and "wrote" not in first.stdout and len(first.stdout.splitlines()) <= 3
  assert "0 figures redrawn" in first.stdout and "4 figures unchanged" in first.stdout, "the suite's end drew them already (runs, category, best configuration's confusion matrix and errors)"
  listed = explorer(["report", "-v"], tmp_path)
  assert listed.returncode == 0 and "wrote " in listed.stdout and "mlp.md" in listed.stdout


def test_the_wheel_holds_every_module_of_the_product(tmp_path):
  """`pip install .` (not -e) installs a wheel: it must hold every package, the fast path and its C source included (it
  held no explorer/fastpath before, and the explorer could not start from it)."""
  import shutil, zipfile
  source = tmp_path / "source"  # a copy: setuptools writes its build folder next to the sources
  for d in ("explorer", "models"): shutil.copytree(ROOT / d, source / d, ignore=shutil.ignore_patterns("__pycache__"))
  for f in ("pyproject.toml", "mnist_explorer.py", "README.md"): shutil.copy(ROOT / f, source / f)
  import importlib.util
  isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]  # offline where it can
  r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path), str(source)],
                     capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  (wheel,) = tmp_path.glob("*.whl")
  held = set(zipfile.ZipFile(wheel).namelist())
  wanted = {str(p.relative_to(ROOT)) for d in ("explorer", "models") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".c")}
  assert wanted and wanted <= held, sorted(wanted - held)
  assert "mnist_explorer.py" in held
