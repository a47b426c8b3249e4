"""What a newcomer reads: each run's line (final vs best val, training vs compile time), the closing line, plurals,
the configuration printed per run, --help, logs that are not a terminal, and torch never imported by the product."""
import subprocess, sys
from pathlib import Path
from rich.console import Console
from explorer.config import describe, make_config
from explorer.runner import closing_line, heading, result_line
from explorer.text import plural

ROOT = Path(__file__).resolve().parents[1]


def test_plural():
  assert [plural(n, "run") for n in (0, 1, 3)] == ["0 runs", "1 run", "3 runs"]
  assert plural(1, "helper process", "helper processes") == "1 helper process"
  assert plural(2, "category", "categories") == "2 categories"


def test_each_run_prints_only_what_differs_from_the_defaults():
  cfg = make_config("mlp", {"steps": 20, "lr_max": 5e-4, "width": 512}, "t")
  assert describe(cfg, changed_only=True) == "steps=20 lr_max=0.0005", "width=512 is the default"
  whole = describe(cfg)
  assert whole.startswith("steps=20 batch=128 lr_max=0.0005") and "nesterov=False" in whole and "dataset=mnist" in whole
  assert describe(make_config("mlp", {}, "t"), changed_only=True) == "all defaults"
  assert describe(make_config("cnn", {"norm": "batch"}, "t"), changed_only=True) == "norm=batch"


def record(**kw):
  base = {"status": "done", "metrics": {"final_val_acc": 0.9716, "best_val_acc": 0.9719, "best_val_step": 900, "test_acc": 0.9701},
          "ms_per_step": 22.1, "train_s": 24.3, "compile_s": 505.4, "wall_s": 529.7, "beam": 2}
  return {**base, **kw}


def test_the_run_line_says_final_and_best_val_and_keeps_search_out_of_training_time():
  line = Console(width=300, record=True)
  line.print(result_line(record()))
  text = line.export_text()
  assert "final val 97.16% (best 97.19% at step 900)" in text, text
  assert "training 24.3s" in text and "compile incl. BEAM search 505.4s" in text and "529.7s in all" in text
  plain = Console(width=300, record=True)
  plain.print(result_line(record(beam=0, compile_s=1.2)))
  assert "compile 1.2s" in plain.export_text() and "BEAM" not in plain.export_text()


def test_closing_line_tells_runs_of_other_processes_from_runs_finished_before():
  assert closing_line(3, 0, 0, 0) == "3 trained"
  line = closing_line(2, 2, 0, 0)
  assert "2 trained here" in line and "2 trained meanwhile by another explorer process" in line and "already finished" not in line
  assert "1 already finished before (skipped; --rerun to train again)" in closing_line(0, 0, 1, 0)
  assert "1 still held by another explorer" in closing_line(1, 0, 0, 1)


def test_a_log_gets_a_short_heading_not_a_rule_across_a_wide_console():
  log = Console(width=250, record=True, force_terminal=False)
  heading(log, "[1/3] mlp · learning_rate · lr-5e-4")
  assert log.export_text().strip() == "── [1/3] mlp · learning_rate · lr-5e-4 ──"


def test_help_lists_dataset_as_a_suite_choice_not_a_one_off_variable():
  r = subprocess.run([sys.executable, str(ROOT / "mnist_explorer.py"), "--help"], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0
  epilog = r.stdout.split("Hyperparameter env vars", 1)[1]
  one_off = epilog.split("aliases:", 1)[0]
  assert "  STEPS " in one_off and "  DATASET " not in one_off, one_off
  assert "DATASET=mnist|fashion runs the whole suite" in epilog
  assert "-v, --verbose" in r.stdout


def test_the_product_never_imports_torch():
  """torch is installed for the tests (the optimizer reference), but the explorer must run without it."""
  code = ("import sys, mnist_explorer, explorer.train, explorer.report, explorer.runner, explorer.optim\n"
          "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\nprint('ok')")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.stdout.strip() == "ok", r.stdout + r.stderr


def test_a_kernel_search_is_announced_while_it_runs():
  """With --beam, the first call of a compiled step searches for minutes: the terminal says so before and after (a
  fake trainer stands in for the search here)."""
  from types import SimpleNamespace
  from explorer.runner import train_with_progress
  console = Console(width=250, record=True, force_terminal=False)
  seen = []
  class FakeTrainer:
    beam, on_compile = 2, None
    def run(self, cfg, data, progress):
      self.on_compile("train step", None)
      seen.append(console.export_text(clear=False))
      self.on_compile("train step", 61.5)
      return {"status": "done"}
  trainer = FakeTrainer()
  spec = SimpleNamespace(name="lr-2e-3", config=make_config("mlp", {"steps": 5}, "t"))
  assert train_with_progress(trainer, spec, None, console) == {"status": "done"}
  assert "kernel search (BEAM=2) for the train step: minutes for a new shape" in seen[0], "said before the search ends"
  assert "train step: kernel search and compile took 61.5s (not counted as training time)" in console.export_text()
  assert trainer.on_compile is None, "the callback does not outlive the run"
