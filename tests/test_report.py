import csv, json, math, re
from pathlib import Path
import numpy as np
import pytest
from explorer import report, store
from explorer.errors import UserError
from explorer.report import Stat, axis_swings, make_groups, stat, summary_table, verdict, within_noise, write_reports

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = {"model": "mlp", "steps": 100, "batch": 128, "lr_max": 0.001, "lr_min": 0.0, "warmup": 0, "schedule": "cosine",
          "lr_decay": 0.1, "decay_every": 0, "patience": 3, "opt": "adamw", "momentum": 0.9, "nesterov": False, "wd": 0.0,
          "beta1": 0.9, "beta2": 0.999, "act": "relu", "width": 512, "depth": 2, "width1": 0, "width2": 0, "width3": 0,
          "dropout": 0.0, "channels": [32, 64], "kernel": 3, "pool": "max", "norm": "none", "batchnorm": False, "augment": False,
          "rotate": 10.0, "scale": 0.1, "shift": 2.0, "train_size": 0, "eval_every": 0, "seed": 0, "dataset": "mnist"}


def make_record(name, group, category, val, test=None, status="done", model="mlp", suite="experiments", dataset="mnist",
                axes=None, seed=0, steps=100, capped_from=None, error=None, train_s=4.0, description="", order=0, **config):
  """A realistic record: a decaying noisy loss curve that ends near the given accuracies."""
  rng = np.random.default_rng(seed + 17 * order)
  cfg = {**CONFIG, "model": model, "dataset": dataset, "seed": seed, "steps": steps, **config}
  done_steps = steps if status == "done" else steps // 2
  step = list(range(1, done_steps + 1))
  loss = [float(2.3 * math.exp(-s / 20) + 0.1 + 0.05 * rng.random()) for s in step]
  if status == "diverged": loss[-1] = float("nan")
  eval_step = [s for s in step if s % 10 == 0]
  val_acc = [float(val * (1 - math.exp(-s / 15))) for s in eval_step]
  done = status == "done"
  metrics = {"best_val_acc": val, "best_val_step": done_steps, "final_val_acc": val, "final_val_loss": 0.1 + (1 - val),
             "final_train_loss": loss[-1]}
  if done: metrics.update(test_acc=test if test is not None else val - 0.002, test_loss=0.12, train_acc=min(1.0, val + 0.01),
                          train_eval_loss=0.08)
  return {"schema": 1, "suite": suite, "model": model, "name": name, "group": group, "category": category,
          "description": description, "axes": axes or {}, "config_hash": f"{order:016x}", "capped_from": capped_from,
          "config": cfg, "status": status, "error": error, "metrics": metrics,
          "history": {"step": step, "train_loss": loss, "lr": [cfg["lr_max"] * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in step],
                      "eval_step": eval_step, "val_loss": [0.1 + 1 - a for a in val_acc], "val_acc": val_acc},
          "params": 669706 if model == "mlp" else 421642, "wall_s": train_s + 0.5, "train_s": train_s, "compile_s": 1.2,
          "setup_s": 0.1, "eval_s": 0.3, "ms_per_step": 1000 * train_s / steps, "steps_done": done_steps, "device": "CPU",
          "tinygrad_version": "0.14.0", "dataset": dataset, "started_at": f"2026-11-23T10:{order // 60:02d}:{order % 60:02d}+00:00",
          "finished_at": "2026-11-23T11:00:00+00:00"}


def repeats(group, category, vals, tests=None, **kw):
  return [make_record(f"{group}-r{i}", group, category, v, (tests or [None] * len(vals))[i], seed=i, **kw) for i, v in enumerate(vals)]


GRID_LRS, GRID_BATCHES = (1e-4, 1e-3, 1e-2), (64, 256)


def grid_acc(lr, batch):  # the LR matters a lot (about 8 points), the batch size a little (0.4 points)
  return {1e-4: 0.90, 1e-3: 0.97, 1e-2: 0.95}[lr] + (0.004 if batch == 64 else 0.0)


def suite_records():
  recs = []
  recs += repeats("baseline", "baseline", [0.9700, 0.9720, 0.9740], [0.968, 0.970, 0.975], description="the | default")
  recs += repeats("close-a", "noise", [0.950, 0.960], lr_max=0.002)
  recs += repeats("close-b", "noise", [0.952, 0.954], lr_max=0.003)
  recs += repeats("fast", "clear", [0.980, 0.981], train_s=2.0)
  recs.append(make_record("fast-r2", "fast", "clear", 0.098, status="diverged", seed=2, error="loss became nan at step 50"))
  recs += repeats("slow", "clear", [0.900, 0.901], train_s=8.0)
  recs.append(make_record("lr-huge", "lr-huge", "clear", 0.1, status="failed", lr_max=5.0, error="RuntimeError: out of memory"))
  for lr in GRID_LRS:
    for b in GRID_BATCHES:
      name = f"grid-lr_max={lr:g}-batch={b}"
      recs.append(make_record(name, name, "grid", grid_acc(lr, b), axes={"lr_max": lr, "batch": b}, lr_max=lr, batch=b,
                              steps=50))
  recs += repeats("cnn-base", "baseline", [0.985, 0.987], model="cnn", train_s=10.0)
  recs.append(make_record("quick", "quick", "baseline", 0.85, suite="quick", dataset="fashion"))
  # a quick pass of two configurations (same names as full-length runs, capped steps): reported apart, never mixed in
  recs += [make_record("baseline-r0", "baseline", "baseline", 0.61, steps=3, capped_from=100, order=90),
           make_record("fast-r0", "fast", "clear", 0.62, steps=3, capped_from=100, order=91)]
  # an earlier configuration of slow-r0 (another config hash, finished before): listed, not in the tables
  old = make_record("slow-r0", "slow", "clear", 0.5, lr_max=0.5, order=92, train_s=8.0)
  old["finished_at"] = "2026-11-22T11:00:00+00:00"
  recs.append(old)
  for i, r in enumerate(recs): r["started_at"] = f"2026-11-23T10:{i // 60:02d}:{i % 60:02d}+00:00"
  return recs


def write_records(results: Path, recs):
  for r in recs:
    path = results / "runs" / r["suite"] / r["dataset"] / r["model"] / f"{r['name']}.{r['config_hash']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  results = tmp_path_factory.mktemp("results")
  recs = suite_records()
  write_records(results, recs)
  folder = results / "runs" / "experiments" / "mnist" / "mlp"
  (folder / "garbage.json").write_text("{not json at all")
  no_metrics = make_record("no-metrics", "no-metrics", "baseline", 0.9)
  del no_metrics["metrics"]
  (folder / "no-metrics.json").write_text(json.dumps(no_metrics))
  no_status = make_record("no-status", "no-status", "baseline", 0.9)
  del no_status["status"]
  (folder / "no-status.json").write_text(json.dumps(no_status))
  warnings = []
  paths = write_reports(results, warn=warnings.append)
  return results, recs, paths, warnings


def section(md: str, title: str) -> str:
  start = md.index(f"## {title}")
  end = md.find("\n## ", start + 1)
  return md[start:] if end < 0 else md[start:end]


def test_category_tables_and_mean_std(built):
  results, _, paths, _ = built
  md = (results / "mlp.md").read_text()
  assert md.startswith("# MLP on mnist — suite `experiments`")
  assert "device CPU" in md and "tinygrad 0.14.0" in md
  for category in ("baseline", "noise", "clear", "grid"): assert f"## Category: {category}" in md
  base = section(md, "Category: baseline")
  # val [97.0, 97.2, 97.4]: mean 97.20, sample std 0.20; test [96.8, 97.0, 97.5]: mean 97.10, std sqrt(0.13) = 0.36
  assert "97.20 ± 0.20 (n=3)" in base
  assert "97.10 ± 0.36 (n=3)" in base
  assert "the \\| default" in base  # a pipe in a description must not break the table
  header = next(line for line in base.splitlines() if line.startswith("| #"))
  for col in ("configuration", "description", "LR", "batch", "steps", "optimizer", "val acc", "test acc", "time (s)", "status"):
    assert col in header
  assert results / "mlp.md" in paths and results / "cnn.md" in paths


def test_within_noise_rule(built):
  md = (built[0] / "mlp.md").read_text()
  noise = section(md, "Category: noise")  # 95.50 ± 0.71 vs 95.30 ± 0.14: difference 0.20 <= 0.71
  assert "indistinguishable" in noise and "**Best configuration:**" not in noise
  clear = section(md, "Category: clear")  # 98.05 ± 0.07 vs 90.05 ± 0.07
  assert "**Best configuration:** `fast`" in clear and "indistinguishable" not in clear

  def group(vals):
    return make_groups([make_record(f"g{i}-r{j}", f"g{i}", "c", v, seed=j, order=10 * i + j) for i, vs in enumerate(vals) for j, v in enumerate(vs)])
  best, text = verdict(group([[0.95, 0.96], [0.952, 0.954]]))
  assert best.name == "g0" and "No clear winner" in text
  best, text = verdict(group([[0.90, 0.901], [0.98, 0.981]]))
  assert best.name == "g1" and "**Best configuration:** `g1`" in text and "beyond noise" in text
  best, text = verdict(group([[0.97], [0.96]]))
  assert best.name == "g0" and "single seed: no noise estimate" in text
  assert within_noise(Stat(0.95, 0.01, 2), Stat(0.94, 0.005, 3)) is True  # equal to the larger std: within noise
  assert within_noise(Stat(0.95, 0.001, 2), Stat(0.94, 0.005, 3)) is False
  assert within_noise(Stat(0.95, None, 1), Stat(0.94, 0.005, 3)) is None


def test_overall_best_and_target(built):
  md = (built[0] / "mlp.md").read_text()
  summary = section(md, "Summary")
  assert "`fast`" in summary.splitlines()[2]  # best overall by mean val (98.05), clearly ahead of grid's 97.40 single seeds
  assert "**reached**" in summary  # fast: test 97.85 >= 95
  assert "Most val accuracy per training second:** `fast`" in summary
  cnn = (built[0] / "cnn.md").read_text()
  assert "**Target** (test ≥ 98%): **reached**" in cnn  # 98.5/98.7 val, test 0.2 below: 98.40 mean


def test_swing_ranking(built):
  md = (built[0] / "mlp.md").read_text()
  ranking = section(md, "Which hyperparameters mattered most")
  rows = [line for line in ranking.splitlines() if re.match(r"\|\s*\d", line)]
  assert [r.split("|")[2].strip() for r in rows] == ["lr_max", "batch"]
  grid = [g for g in make_groups(report.check_records(suite_records())[0]) if g.category == "grid"]
  swings = axis_swings("grid", grid)
  assert [s.axis for s in swings] == ["lr_max", "batch"]
  # lr marginals: 0.902, 0.972, 0.952 → 7.0 points; batch: 64 → 0.944, 256 → 0.940 → 0.4 points
  assert swings[0].swing == pytest.approx(0.07) and swings[0].best[0] == "0.001" and swings[0].worst[0] == "0.0001"
  assert swings[1].swing == pytest.approx(0.004) and swings[1].best[0] == "64"


def test_plots_are_pngs(built):
  results, recs, paths, _ = built
  plots_dir = results / "plots" / "mlp"
  expected = ["heatmap-grid.png", "lr-grid.png", "lr-noise.png", "category-grid.png", "category-baseline.png", "baseline-r0.png",
              "fast-r2.png", "grid-lr_max=0.001-batch=64.png"]
  for name in expected:
    path = plots_dir / name
    assert path.read_bytes()[:8] == PNG, name
    assert path in paths
  assert not (plots_dir / "heatmap-noise.png").exists()  # not a 2-axis grid
  md = (results / "mlp.md").read_text()
  assert "](plots/mlp/heatmap-grid.png)" in md and "](plots/mlp/baseline-r0.png)" in md
  for link in re.findall(r"\]\((plots/[^)]+)\)", md): assert (results / link).exists(), link
  assert (results / "quick-fashion" / "plots" / "mlp" / "quick.png").read_bytes()[:8] == PNG
  import matplotlib.image
  assert matplotlib.image.imread(plots_dir / "heatmap-grid.png").ndim == 3


def test_csv(built):
  results, recs, _, _ = built
  with open(results / "mlp.csv", newline="") as f: rows = list(csv.DictReader(f))
  mlp = [r for r in recs if r["suite"] == "experiments" and r["model"] == "mlp"]
  assert len(rows) == len(mlp) - 3, "the two quick passes have their own CSV, the earlier configuration none"
  with open(results / "mlp-quick.csv", newline="") as f: assert len(list(csv.DictReader(f))) == 2
  for key in CONFIG: assert key in rows[0]
  for key in ("test_acc", "final_val_acc", "status", "train_s", "ms_per_step", "group", "category"): assert key in rows[0]
  row = next(r for r in rows if r["name"] == "baseline-r1")
  assert float(row["final_val_acc"]) == pytest.approx(0.972) and row["channels"] == "[32, 64]" and row["status"] == "done"
  with open(results / "quick-fashion" / "mlp.csv", newline="") as f: assert len(list(csv.DictReader(f))) == 1


def test_bad_records_are_skipped_with_warnings(built):
  results, _, _, warnings = built
  assert any("no-metrics" in w and "metrics" in w for w in warnings)
  index = (results / "index.md").read_text()
  assert "garbage.json" in index and "no-status" in index and "no-metrics" in index
  md = (results / "mlp.md").read_text()
  assert "no-metrics" not in md and "no-status" not in md


def test_unfinished_runs_listed_and_excluded(built):
  md = (built[0] / "mlp.md").read_text()
  clear = section(md, "Category: clear")
  assert "98.05 ± 0.07 (n=2)" in clear  # the diverged fast-r2 (val 9.8%) is not in the mean
  assert "2 done, 1 diverged" in clear and "failed" in clear
  unfinished = section(md, "Runs that did not finish")
  assert "`fast-r2` — diverged at step 50/100: loss became nan at step 50" in unfinished
  assert "`lr-huge` — failed" in unfinished and "RuntimeError: out of memory" in unfinished


def test_quick_passes_are_reported_apart_and_never_replace_full_runs(built):
  results, _, paths, _ = built
  md = (results / "mlp.md").read_text()
  assert "capped" not in md and "0.61" not in md and "61.00" not in md, "no quick-pass number in the full report"
  assert "97.20 ± 0.20 (n=3)" in section(md, "Category: baseline"), "the full-length baseline is still the one shown"
  assert "[mlp-quick.md](mlp-quick.md)" in md
  quick = (results / "mlp-quick.md").read_text()
  assert quick.startswith("# MLP on mnist — suite `experiments` — quick passes") and "**Quick passes (--max-steps):**" in quick
  assert "steps capped from 100 to 3 for a quick pass (2 runs" in quick and "61.00" in quick
  assert "grid" not in quick and (results / "plots" / "mlp-quick" / "baseline-r0.png").read_bytes()[:8] == PNG
  assert "capped" not in (results / "cnn.md").read_text() and not (results / "cnn-quick.md").exists()
  index = (results / "index.md").read_text()
  assert "[MLP · quick passes (steps capped, not comparable)](mlp-quick.md)" in index


def test_an_earlier_configuration_of_a_run_is_listed_not_mixed_in(built):
  md = (built[0] / "mlp.md").read_text()
  assert "90.05 ± 0.07 (n=2)" in section(md, "Category: clear"), "slow's mean is over its current records only"
  earlier = section(md, "Earlier configurations of these runs")
  assert "`slow-r0`" in earlier and "lr_max=0.5" in earlier and "50.00" in earlier


def test_index_and_comparison(built):
  results, _, paths, _ = built
  index = (results / "index.md").read_text()
  for link in ("(mlp.md)", "(cnn.md)", "(comparison.md)", "(quick-fashion/mlp.md)"): assert link in index
  assert "98.40 ± 0.14 (n=2)" in index  # the CNN's best test accuracy
  comparison = (results / "comparison.md").read_text()
  assert "| MLP" in comparison and "| CNN" in comparison and "669706" in comparison
  assert "[comparison.md](comparison.md)" in (results / "mlp.md").read_text()
  assert not (results / "quick-fashion" / "comparison.md").exists()
  assert (results / "quick-fashion" / "mlp.md").read_text().startswith("# MLP on fashion — suite `quick`")
  assert "**Target**" not in (results / "quick-fashion" / "mlp.md").read_text(), "the 95 % target is MNIST's, not Fashion-MNIST's"


def test_regenerate_and_empty(tmp_path):
  assert write_reports(tmp_path) == []
  write_records(tmp_path, [make_record("solo", "solo", "baseline", 0.96)])
  first = write_reports(tmp_path, warn=lambda w: pytest.fail(w))
  # regenerating rewrites the markdown and CSV; the figures of runs that did not change are not drawn again
  assert write_reports(tmp_path) == [p for p in first if p.suffix != ".png"]
  assert "single seed: no noise estimate" in (tmp_path / "mlp.md").read_text()


def test_hostile_names_never_leave_the_folder(tmp_path):
  bad = make_record("../../escape", "../../escape", "baseline", 0.9)
  path = tmp_path / "runs" / "experiments" / "mnist" / "mlp" / "escape.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(bad))
  warnings = []
  write_reports(tmp_path, warn=warnings.append)
  assert any("invalid name" in w for w in warnings)
  assert not (tmp_path.parent / "escape.png").exists()
  with pytest.raises(UserError): store.safe_path(tmp_path, "plots", "..", "..", "x.png")


def test_summary_table(built):
  from rich.console import Console
  recs = suite_records()
  console = Console(record=True, width=200)
  console.print(summary_table(recs))
  text = console.export_text()
  assert "baseline-r0" in text and "97.00%" in text and "diverged" in text and "cnn" in text
  assert stat([0.97, 0.972, 0.974]).std == pytest.approx(0.002)


def test_redraw_only_the_named_suites(tmp_path):
  recs = [make_record("a", "a", "c", 0.9), make_record("b", "b", "c", 0.8, suite="other"), make_record("k", "k", "c", 0.9, model="cnn")]
  write_records(tmp_path, recs)
  write_reports(tmp_path, warn=lambda w: None)
  kept = tmp_path / "other-mnist" / "plots" / "mlp" / "b.png"
  kept_cnn = tmp_path / "plots" / "cnn" / "k.png"
  redrawn = tmp_path / "plots" / "mlp" / "a.png"
  old = PNG + b"old figure" + b"\0\0\0\0IEND\xaeB`\x82"  # a whole PNG file, as far as the check for truncation goes
  for figure in (kept, kept_cnn, redrawn): figure.write_bytes(old)
  write_reports(tmp_path, warn=lambda w: None, redraw={("experiments", "mnist", "mlp")})
  assert kept.read_bytes() == old, "another suite's existing figure is kept"
  assert kept_cnn.read_bytes() == old, "the other model's existing figure is kept"
  assert redrawn.read_bytes() != old and redrawn.read_bytes().startswith(PNG), "the named suite's figure is drawn again"
  assert "b" in (tmp_path / "other-mnist" / "mlp.md").read_text(), "its markdown is still regenerated"


def test_speed_note_says_which_runs_had_the_kernel_search_and_threads():
  from explorer.report import speed_note
  assert speed_note([{"beam": 0, "threads": 1}, {}]) == "", "plain one-thread runs need no note"
  note = speed_note([{"beam": 2, "threads": 2}, {"beam": 0, "threads": 1}, {"beam": 2, "threads": 2}])
  assert note == " · kernel search none: 1 run, --beam 2: 2 runs · CPU threads per kernel 1: 1 run, 2: 2 runs"


def test_groups_follow_the_experiments_file_not_the_training_order():
  """--workers trains the longest runs first; the report still lists them as the file does (older records without a
  place, and one-offs, come after, in start order)."""
  recs = [{**make_record("long", "long", "duration", 0.97, order=1), "position": 2},
          {**make_record("base", "base", "baseline", 0.92, order=5), "position": 0},
          {**make_record("one-off", "one-off", "one-off", 0.93, order=0)},
          {**make_record("lr", "lr", "learning_rate", 0.94, order=3), "position": 1}]
  assert [g.name for g in make_groups(recs)] == ["base", "lr", "long", "one-off"]
  assert list(report.by_category(make_groups(recs))) == ["baseline", "learning_rate", "duration", "one-off"]


def test_a_report_that_cannot_be_written_is_one_line_and_the_runs_stay(tmp_path, monkeypatch):
  """The end of a suite: a failing report (here: its module, matplotlib with it, cannot be imported) is one line that
  says the runs are safe and how to retry, not a traceback."""
  import sys
  from rich.console import Console
  from explorer.runner import rebuild_reports
  write_records(tmp_path, [make_record("a", "a", "c", 0.9)])
  monkeypatch.setitem(sys.modules, "explorer.report", None)  # import explorer.report now raises ImportError
  console = Console(record=True, width=200)
  rebuild_reports(tmp_path, console, "experiments", [])
  text = console.export_text()
  assert "report failed (ModuleNotFoundError" in text and "runs are safe" in text and "mnist_explorer.py report" in text
  assert list((tmp_path / "runs" / "experiments" / "mnist" / "mlp").glob("a.*.json"))


def test_figures_are_redrawn_only_when_what_they_show_changed(tmp_path, monkeypatch):
  """`report` takes seconds for what changed: a figure whose runs (or the plotting code) did not change is kept; a run
  that changed redraws its own figure and its category's; a figure replaced by hand is drawn again."""
  write_records(tmp_path, [make_record("a", "a", "c", 0.90), make_record("b", "b", "c", 0.80, order=1)])
  figures = tmp_path / "plots" / "mlp"
  first = [p.name for p in write_reports(tmp_path, warn=pytest.fail) if p.suffix == ".png"]
  assert sorted(first) == ["a.png", "b.png", "category-c.png"]
  kept = []
  assert [p for p in write_reports(tmp_path, kept=kept) if p.suffix == ".png"] == []
  assert sorted(p.name for p in kept) == sorted(first)
  write_records(tmp_path, [make_record("b", "b", "c", 0.85, order=1)])  # b trained again
  assert sorted(p.name for p in write_reports(tmp_path) if p.suffix == ".png") == ["b.png", "category-c.png"]
  (figures / "a.png").write_bytes(b"not the figure")
  assert [p.name for p in write_reports(tmp_path) if p.suffix == ".png"] == ["a.png"]
  assert (figures / "a.png").read_bytes()[:8] == PNG
  monkeypatch.setattr(report, "PLOT_CODE", "changed plotting code")
  assert len([p for p in write_reports(tmp_path) if p.suffix == ".png"]) == 3


def test_figures_are_drawn_in_several_processes_and_one_that_fails_costs_only_its_link(tmp_path, monkeypatch):
  """With two cores the figures are split over two processes; a figure whose drawing fails there is one warning, its
  link is left out of the report (no link to a missing file), the others are drawn, linked and stamped, and the failed
  one is tried again by the next report."""
  import os
  run_plot = report.plots.run_plot
  def drawing(record, path):
    (tmp_path / f"pid-{os.getpid()}-{path.stem}").touch()  # which process drew it (a file: the parent sees it)
    if record["name"] == "b": raise ValueError("a history it cannot draw")
    return run_plot(record, path)
  monkeypatch.setattr(report.plots, "run_plot", drawing)
  monkeypatch.setattr(report.plots, "_usable_cores", lambda: 2)
  write_records(tmp_path, [make_record(n, n, "c", 0.9 - i / 100, order=i) for i, n in enumerate("abcd")])
  warnings = []
  written = write_reports(tmp_path, warn=warnings.append)
  pids = {p.name.split("-")[1] for p in tmp_path.glob("pid-*")}
  assert len(pids) == 2 and str(os.getpid()) in pids, "this process and one other drew"
  assert warnings == [f"plot {tmp_path / 'plots' / 'mlp' / 'b.png'} failed: ValueError: a history it cannot draw"]
  text = (tmp_path / "mlp.md").read_text()
  assert "plots/mlp/b.png" not in text and all(f"plots/mlp/{n}.png" in text for n in "acd")
  assert "a history it cannot draw" in (tmp_path / "index.md").read_text()
  figures = tmp_path / "plots" / "mlp"
  assert sorted(p.name for p in written if p.suffix == ".png") == ["a.png", "c.png", "category-c.png", "d.png"]
  assert all((figures / n).read_bytes()[:8] == PNG for n in ("a.png", "c.png", "d.png", "category-c.png"))
  assert not (figures / "b.png").exists() and "b.png" not in json.loads((figures / ".stamps.json").read_text())
  monkeypatch.setattr(report.plots, "run_plot", run_plot)
  kept = []
  assert [p.name for p in write_reports(tmp_path, warn=pytest.fail, kept=kept) if p.suffix == ".png"] == ["b.png"]
  assert len(kept) == 4 and "plots/mlp/b.png" in (tmp_path / "mlp.md").read_text()


def test_draw_all_reports_each_task_and_a_drawing_process_that_died():
  import os
  from explorer.plots import draw_all
  def fails(): raise RuntimeError("no")
  def dies(): os._exit(3)  # in the second process: its whole share is reported, not lost or hung
  assert draw_all([lambda: None, fails, lambda: None], workers=1) == [None, "RuntimeError: no", None]
  assert draw_all([lambda: None, dies, lambda: None, lambda: None], workers=2) == \
      [None, "the drawing process ended early", None, "the drawing process ended early"]


def lr_study():
  """A learning-rate category without the baseline's LR, a combo category that changes the LR with other keys, and a
  duration run that is the same configuration as one combo run except for the LR."""
  return [make_record("baseline", "baseline", "baseline", 0.925, order=0),
          make_record("lr-5e-4", "lr-5e-4", "learning_rate", 0.914, lr_max=5e-4, order=1),
          make_record("lr-2e-3", "lr-2e-3", "learning_rate", 0.939, lr_max=2e-3, order=2),
          make_record("lr-3e-3", "lr-3e-3", "learning_rate", 0.945, lr_max=3e-3, order=3),
          make_record("steps-1000", "steps-1000", "duration", 0.979, steps=1000, order=4),
          make_record("combo-a", "combo-a", "combo", 0.979, lr_max=2e-3, batch=256, steps=500, order=5),
          make_record("combo-b", "combo-b", "combo", 0.977, lr_max=8e-4, steps=1000, order=6)]


def fake_figure(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"a figure that was not drawn")
  return path


@pytest.fixture
def drawn_here(monkeypatch):
  """Figures drawn in the test's own process, where a stand-in for a plotting function can record its arguments."""
  monkeypatch.setattr(report.plots, "MAX_DRAWERS", 1)


def test_an_lr_sweep_takes_only_runs_that_differ_in_the_learning_rate(tmp_path, monkeypatch, drawn_here):
  drawn = {}
  def lr_plot(series, diverged, path, title):
    drawn[path.name] = (series, title)
    return fake_figure(path)
  monkeypatch.setattr(report.plots, "lr_plot", lr_plot)
  write_records(tmp_path, lr_study())
  write_reports(tmp_path, warn=pytest.fail)
  (label, lrs, means, stds, names), = drawn["lr-learning_rate.png"][0]
  assert lrs == [5e-4, 1e-3, 2e-3, 3e-3], "the baseline at 1e-3 (another category, same configuration) fills the hole"
  assert names == ["", "baseline", "", ""] and label == ""
  assert means == pytest.approx([91.4, 92.5, 93.9, 94.5])
  (_, lrs, _, _, names), = drawn["lr-combo.png"][0]
  assert lrs == [8e-4, 1e-3] and names == ["", "steps-1000 (duration)"], "combo-a changes batch and steps too: left out"
  assert "lr-duration.png" not in drawn and "lr-baseline.png" not in drawn, "categories with one LR get no sweep"
  assert drawn["lr-learning_rate.png"][1] == "MLP · learning_rate: final validation accuracy vs peak learning rate"


def test_figures_mark_measured_points_label_every_swept_value_and_share_one_title_style(tmp_path, monkeypatch, drawn_here):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  figures = {}
  monkeypatch.setattr(report.plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and fake_figure(path))
  write_records(tmp_path, lr_study())
  write_reports(tmp_path, warn=pytest.fail)
  overlay = figures["category-learning_rate.png"]
  acc = overlay.axes[0]
  assert len(acc.lines) == 3 and all(line.get_marker() == "o" for line in acc.lines), "each validation point is marked"
  assert all(t.get_fontsize() >= 8 for t in acc.get_legend().get_texts()), "a legend one can read"
  sweep = figures["lr-learning_rate.png"]
  FigureCanvasAgg(sweep).draw()
  ax = sweep.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0005", "0.001", "0.002", "0.003"], "3e-3 has its label too"
  assert [t.get_text() for t in ax.texts] == ["baseline"], "the configuration from another category is named"
  titles = [f.get_suptitle() for f in figures.values() if f.get_suptitle()] + \
           [t for f in figures.values() for a in f.axes for t in (a.get_title(), a.get_xlabel(), a.get_ylabel()) if t]
  assert titles and all(t[0].isupper() for t in titles), [t for t in titles if not t[0].isupper()]
  assert overlay.get_suptitle() == "MLP · learning_rate: runs overlaid"
