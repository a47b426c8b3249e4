"""Reports regenerated from the stored run records alone (no training, no tinygrad: fast and device-free).

Per (suite, dataset) a folder (the results folder itself for experiments/mnist) with, per model, <model>.md (tables per
category, mean ± std over repeats, a noise-aware verdict, per-axis swings, overfit and efficiency tables), <model>.csv
(one row per run) and plots/<model>/*.png; comparison.md when several models share the folder; index.md at the top."""
from __future__ import annotations
import base64, csv, functools, hashlib, json, math, os, shlex, statistics, sys, zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
import numpy as np
from tabulate import tabulate
from explorer import plots, record, store
from explorer.record import METRIC_KEYS
from explorer.store import load_records, write_atomic, write_json_atomic, write_text_atomic
from explorer.text import plural

STATUSES = record.STATUSES
TARGETS = {"mlp": 0.95, "cnn": 0.98}  # MNIST test accuracy the best configuration should reach (no such line for Fashion-MNIST)


def target_for(dataset: str, model: str) -> float | None: return TARGETS.get(model) if dataset == "mnist" else None
RUN_KEYS = ("params", "steps_done", "wall_s", "train_s", "compile_s", "setup_s", "eval_s", "ms_per_step", "device", "beam", "threads",
            "tinygrad_version", "host", "started_at", "finished_at", "capped_from", "position", "config_hash")
MAX_HEATMAP_VALUES = 12  # more distinct values than this per axis: not a grid worth a heatmap
MAX_LEVELS = 6  # a numeric axis with more distinct values (random search) is binned into quartiles for its swing
VAL_NOTE = ("val acc = final validation accuracy, of the weights a run ends on (held-out training images; used to pick the best; the "
            "terminal also prints the best one seen during a run), test acc = test set; train time = optimizer steps and "
            "validation passes, without compiling and kernel search (--beam); "
            "mean ± sample std over the seeds that finished (n shown when > 1); diverged/failed/interrupted runs are excluded from means")
QUICK = "quick"  # the report variant of quick passes (--max-steps): its own files, never mixed with full-length results


# ---------- records ----------

def check_records(raw: list) -> tuple[list[dict], list[str]]:
  """The records that can be reported (normalized), plus one warning per skipped one (records that did not come
  through store.load_records, e.g. in tests)."""
  records, warnings = [], []
  for r in raw:
    why = record.problem(r)
    if why:
      where = "/".join(str(r.get(k, "?")) for k in ("suite", "dataset", "model", "name")) if isinstance(r, dict) else "?"
      warnings.append(f"skipped record {where}: {why}")
    else: records.append(record.normalize(r))
  return records, warnings


@dataclass
class Selection:
  """Which stored records a report shows: per run name the current full-length record, the quick passes apart, and
  earlier configurations of the same names (kept on disk, listed, never mixed into the tables)."""
  current: list[dict] = field(default_factory=list)
  quick: list[dict] = field(default_factory=list)
  earlier: list[dict] = field(default_factory=list)


def _newest_first(r: dict) -> tuple: return (str(r.get("finished_at") or ""), str(r.get("started_at") or ""))


def select(records: list[dict], prefer: dict[tuple, str] | None = None) -> Selection:
  """prefer: (suite, dataset, model, name) -> config hash of the run the suite just planned; otherwise the newest wins."""
  prefer = prefer or {}
  by_name: dict[tuple, list[dict]] = defaultdict(list)
  for r in records: by_name[(r["suite"], r["dataset"], r["model"], r["name"], record.is_quick(r))].append(r)
  out = Selection()
  for (suite, dataset, model, name, quick), rs in by_name.items():
    # the same configuration twice (an older explorer's <name>.json next to the new file): the newest is the one
    unique: dict[str | None, dict] = {}
    for r in sorted(rs, key=_newest_first, reverse=True): unique.setdefault(r.get("config_hash") or id(r), r)
    ordered = sorted(unique.values(), key=_newest_first, reverse=True)
    ordered.sort(key=lambda r: r.get("config_hash") != prefer.get((suite, dataset, model, name)))  # stable: newest next
    (out.quick if quick else out.current).append(ordered[0])
    if not quick: out.earlier += ordered[1:]
  return out


def num(x: Any) -> float | None:
  """A finite number or None (JSON null, NaN, strings from hand edits)."""
  if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x): return None
  return float(x)


def value(record: dict, key: str) -> float | None:
  """A metric or timing of one run; val_acc is the final validation accuracy (best_val_acc if that is missing)."""
  metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
  if key == "val_acc":
    final = num(metrics.get("final_val_acc"))
    return final if final is not None else num(metrics.get("best_val_acc"))
  return num(metrics[key]) if key in metrics else num(record.get(key))


# ---------- aggregation over repeats ----------

@dataclass(frozen=True)
class Stat:
  mean: float | None
  std: float | None  # sample std; None below two values
  n: int


def stat(values: Iterable[float | None]) -> Stat:
  v = [x for x in values if x is not None]
  if not v: return Stat(None, None, 0)
  return Stat(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))


@dataclass
class Group:
  """One configuration: its repeats (seeds). Only finished ('done') runs enter the means."""
  name: str
  category: str
  runs: list[dict] = field(default_factory=list)

  @property
  def first(self) -> dict: return self.runs[0]
  @property
  def config(self) -> dict: return self.first["config"]
  @property
  def axes(self) -> dict: return self.first["axes"]
  @property
  def description(self) -> str: return self.first["description"]
  @property
  def done(self) -> list[dict]: return [r for r in self.runs if r["status"] == "done"]

  def stat(self, key: str) -> Stat: return stat(value(r, key) for r in self.done)

  def status(self) -> str:
    counts = Counter(r["status"] for r in self.runs)
    if len(counts) == 1: return next(iter(counts))
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])


def run_order(r: dict) -> tuple:
  """Experiments-file order (--workers trains the longest runs first), then runs without a place (one-offs, older
  records) in start order."""
  position = num(r.get("position"))
  return (position is None, position or 0, str(r.get("started_at") or ""), r["name"])


def make_groups(records: list[dict]) -> list[Group]:
  """Groups in run_order; repeats sorted by seed."""
  groups: dict[str, Group] = {}
  for r in sorted(records, key=run_order):
    groups.setdefault(r["group"], Group(r["group"], r["category"])).runs.append(r)
  for g in groups.values(): g.runs.sort(key=lambda r: (num(r["config"].get("seed")) or 0, r["name"]))
  return list(groups.values())


def by_category(groups: list[Group]) -> dict[str, list[Group]]:
  out: dict[str, list[Group]] = {}
  for g in groups: out.setdefault(g.category, []).append(g)
  return out


# ---------- formatting ----------

def fmt_stat(s: Stat, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
  """mean ± std (n=…), e.g. 97.31 ± 0.12 (n=3); a single value alone."""
  if s.mean is None: return "—"
  text = f"{s.mean * scale:.{digits}f}"
  if s.std is not None: text += f" ± {s.std * scale:.{digits}f}"
  text += unit
  if s.n > 1: text += f" (n={s.n})"
  return text


def pct(s: Stat, unit: str = "") -> str: return fmt_stat(s, 100, 2, unit)


def fmt_num(x: Any, digits: int = 2) -> str:
  x = num(x)
  return "—" if x is None else f"{x:.{digits}f}"


def fmt_value(v: Any) -> str:
  if isinstance(v, bool): return str(v).lower()
  if isinstance(v, float): return f"{v:g}"
  if isinstance(v, (list, tuple)): return "x".join(str(x) for x in v)
  return str(v)


def cell(text: Any) -> str:
  """Markdown table cell: a pipe or newline in a description would break the table."""
  return " ".join(str(text).split()).replace("|", "\\|")


def table(rows: list[list[Any]], headers: list[str]) -> str:
  return tabulate([[cell(c) for c in row] for row in rows], headers=headers, tablefmt="github", disable_numparse=True)


def code(name: str) -> str: return f"`{name}`"


# ---------- analysis ----------

def within_noise(a: Stat, b: Stat) -> bool | None:
  """True when two means differ by no more than the larger std; None without a noise estimate (a single seed)."""
  if a.n < 2 or b.n < 2 or a.std is None or b.std is None or a.mean is None or b.mean is None: return None
  return abs(a.mean - b.mean) <= max(a.std, b.std) + 1e-12  # <=, robust to float rounding of equal gaps


def ranked(groups: list[Group]) -> list[Group]:
  return sorted((g for g in groups if g.stat("val_acc").n), key=lambda g: -g.stat("val_acc").mean)


def verdict(groups: list[Group]) -> tuple[Group | None, str]:
  """The best configuration by mean val accuracy, or a statement that the top ones cannot be told apart."""
  order = ranked(groups)
  if not order: return None, "No configuration finished, so there is no best one."
  top = order[0]
  ts, test = top.stat("val_acc"), top.stat("test_acc")
  desc = f"{code(top.name)}: val {pct(ts, '%')}, test {pct(test, '%')}"
  if len(order) == 1:
    note = "" if ts.n > 1 else " (single seed: no noise estimate)"
    return top, f"**Best configuration:** {desc} — the only configuration that finished{note}."
  runner = order[1]
  rs = runner.stat("val_acc")
  gap = 100 * (ts.mean - rs.mean)
  noise = within_noise(ts, rs)
  if noise is None:
    return top, (f"**Best configuration:** {desc}; runner-up {code(runner.name)} is {gap:.2f} points behind "
                 f"(single seed: no noise estimate — use repeats to tell whether that is real).")
  if noise:
    ties = [g for g in order if g is top or within_noise(ts, g.stat("val_acc"))]
    names = ", ".join(f"{code(g.name)} ({pct(g.stat('val_acc'), '%')})" for g in ties)
    return top, (f"**No clear winner:** the top {len(ties)} configurations are indistinguishable within noise "
                 f"(their mean val accuracies differ by no more than the larger std): {names}. "
                 f"Highest mean: {code(top.name)} (test {pct(test, '%')}).")
  return top, (f"**Best configuration:** {desc}; runner-up {code(runner.name)} is {gap:.2f} points behind, "
               f"beyond noise (larger std {100 * max(ts.std, rs.std):.2f}).")


def per_second(g: Group) -> float | None:
  """Mean val accuracy (%) per second of training: how much accuracy a second of training buys."""
  acc, secs = g.stat("val_acc").mean, g.stat("train_s").mean
  return None if acc is None or not secs else 100 * acc / secs


def pareto(groups: list[Group]) -> set[str]:
  """Configurations no other one beats on both mean val accuracy and mean training time."""
  points = [(g.name, g.stat("val_acc").mean, g.stat("train_s").mean) for g in groups]
  points = [p for p in points if p[1] is not None and p[2] is not None]
  return {n for n, a, t in points if not any(a2 >= a and t2 <= t and (a2 > a or t2 < t) for _, a2, t2 in points)}


def _sort_key(v: Any) -> tuple:
  if isinstance(v, (int, float)) and not isinstance(v, bool): return (0, float(v), "")
  return (1, 0.0, fmt_value(v))


def _hashable(v: Any) -> Any: return tuple(v) if isinstance(v, list) else v


def axis_levels(values: list[Any]) -> dict[Any, str]:
  """value → level label. Numbers with many distinct values (random search) are binned into quartiles."""
  distinct = sorted({_hashable(v) for v in values}, key=_sort_key)
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
  if not numeric or len(distinct) <= MAX_LEVELS: return {v: fmt_value(v) for v in distinct}
  edges = np.quantile(np.array(distinct, float), [0, 0.25, 0.5, 0.75, 1])
  out = {}
  for v in distinct:
    i = min(int(np.searchsorted(edges, v, side="right")) - 1, 3)
    out[v] = f"{edges[i]:.3g}–{edges[i + 1]:.3g}"
  return out


@dataclass
class Swing:
  category: str
  axis: str
  swing: float  # best minus worst mean val accuracy across the axis's levels (fraction)
  best: tuple[str, float]
  worst: tuple[str, float]
  levels: int
  binned: bool


def axis_swings(category: str, groups: list[Group]) -> list[Swing]:
  """Per axis: mean val accuracy at each level averaged over the other axes (marginal means), best minus worst."""
  out = []
  for axis in sorted({a for g in groups for a in g.axes}):
    members = [g for g in groups if axis in g.axes]
    levels = axis_levels([g.axes[axis] for g in members])
    means: dict[str, list[float]] = defaultdict(list)
    for g in members:
      s = g.stat("val_acc")
      if s.n: means[levels[_hashable(g.axes[axis])]].append(s.mean)
    if len(means) < 2: continue
    marginal = {level: statistics.fmean(v) for level, v in means.items()}
    best, worst = max(marginal.items(), key=lambda kv: kv[1]), min(marginal.items(), key=lambda kv: kv[1])
    binned = len(set(levels.values())) < len(levels)
    out.append(Swing(category, axis, best[1] - worst[1], best, worst, len(marginal), binned))
  return sorted(out, key=lambda s: -s.swing)


def grid_axes(groups: list[Group]) -> tuple[str, str] | None:
  """The two axes of a 2-axis grid (every configuration varies the same two), else None."""
  keys = {tuple(sorted(g.axes)) for g in groups}
  if len(keys) != 1: return None
  (axes,) = keys
  if len(axes) != 2: return None
  for a in axes:
    if len({_hashable(g.axes[a]) for g in groups}) > MAX_HEATMAP_VALUES: return None
  return axes


# ---------- plots ----------

PLOT_CODE = hashlib.sha256(Path(plots.__file__).read_bytes()).hexdigest()[:16]  # new plotting code: every figure again
STAMPS = ".stamps.json"  # per plots folder: figure -> [hash of what it shows, size, mtime_ns of the file drawn]


def _file_id(path: Path) -> list[int]:
  st = path.stat()
  return [st.st_size, st.st_mtime_ns]


class Plotter:
  """Collects one report folder's figures; draw_figures() then draws them (in parallel processes where there are cores)
  and remembers the written paths; a failing plot is a warning, not a lost report.
  A figure is drawn again only when what it shows changed: each one's inputs (records, plotted values) are hashed and
  the hash kept in plots/<model>/.stamps.json, with the drawn file's size and mtime (a file replaced by hand is redrawn)."""
  def __init__(self, folder: Path, model: str, warn: Callable[[str], None], redraw: bool = True):
    self.folder, self.model, self.warn, self.written, self.kept, self.used = folder, model, warn, [], [], set()
    self.redraw = redraw  # False: keep figures that already exist (their runs did not change)
    self.pending: list[tuple[str, Path, Callable[[Path], Path], str]] = []  # (filename, path, draw, stamp) to draw
    self.failed: set[str] = set()  # figures whose drawing failed: the report is built again without their links
    self.stamps_path = store.safe_path(folder, "plots", model, STAMPS)
    try: self.stamps = json.loads(self.stamps_path.read_text())
    except (OSError, ValueError): self.stamps = {}
    if not isinstance(self.stamps, dict): self.stamps = {}

  def __call__(self, filename: str, draw: Callable[[Path], Path], inputs: Any = None) -> str | None:
    """Puts plots/<model>/<filename> among the figures to draw unless the stamp of `inputs` (everything the figure
    shows) says the file is up to date; returns the markdown-relative path, or None when it could not be drawn."""
    stem, n = filename.removesuffix(".png"), 2
    while filename in self.used:  # a run named like a summary plot (say "lr-grid"): keep both figures
      filename, n = f"{stem}-{n}.png", n + 1
    self.used.add(filename)
    rel = f"plots/{self.model}/{filename}"
    if filename in self.failed: return None
    try:
      path = store.safe_path(self.folder, "plots", self.model, filename)
      if not self.redraw and plots.is_complete_png(path): return rel  # (a truncated one from an older version: drawn again)
      stamp = hashlib.sha256(json.dumps([PLOT_CODE, filename, inputs], sort_keys=True, default=str).encode()).hexdigest()[:24]
      if path.exists() and self.stamps.get(filename) == [stamp, *_file_id(path)]:
        self.kept.append(path)
        return rel
      self.stamps.pop(filename, None)
      self.pending.append((filename, path, draw, stamp))
      return rel
    except Exception as e:  # one bad history must not cost the whole report
      self._failed(filename, f"{type(e).__name__}: {e}")
      return None

  def _failed(self, filename: str, error: str) -> None:
    self.failed.add(filename)
    self.warn(f"plot {self.folder / 'plots' / self.model / filename} failed: {error}")

  def save_stamps(self) -> None:
    """Keeps the stamps of figures this report still links (atomically: two explorers may rebuild at once)."""
    stamps = {k: v for k, v in self.stamps.items() if k in self.used}
    if not stamps and not self.stamps_path.exists(): return
    write_json_atomic(self.stamps_path, stamps)


def draw_figures(plotters: list[Plotter]) -> None:
  """Draws every plotter's pending figures, spread over the cores this process may use (plots.draw_all), and keeps
  the stamps of those drawn."""
  jobs = [(p, job) for p in plotters for job in p.pending]
  errors = plots.draw_all([functools.partial(draw, path) for _, (_, path, draw, _) in jobs])
  for (p, (filename, path, _, stamp)), error in zip(jobs, errors):
    if error is not None: p._failed(filename, error)
    else:
      p.written.append(path)
      p.stamps[filename] = [stamp, *_file_id(path)]
  for p in plotters:
    p.pending.clear()
    p.save_stamps()


def heatmap_for(plot: Plotter, category: str, groups: list[Group], axes: tuple[str, str], model: str = "") -> str | None:
  row_axis, col_axis = axes
  rows = sorted({_hashable(g.axes[row_axis]) for g in groups}, key=_sort_key)
  cols = sorted({_hashable(g.axes[col_axis]) for g in groups}, key=_sort_key)
  cells: dict[tuple, list[float]] = defaultdict(list)
  for g in groups:
    s = g.stat("val_acc")
    if s.n: cells[(_hashable(g.axes[row_axis]), _hashable(g.axes[col_axis]))].append(100 * s.mean)
  if not cells: return None
  grid = np.full((len(rows), len(cols)), np.nan)
  for (r, c), v in cells.items(): grid[rows.index(r), cols.index(c)] = statistics.fmean(v)
  labels = [fmt_value(v) for v in rows], [fmt_value(v) for v in cols]
  title = f"{label(model) + ' · ' if model else ''}{category}: mean final validation accuracy (%)"
  return plot(f"heatmap-{category}.png", lambda p: plots.heatmap(grid, *labels, row_axis, col_axis, p, title),
              inputs=[grid.tolist(), labels, axes, title])


SWEEP_FREE = ("lr_max", "seed")  # a sweep's runs differ in lr_max only (repeats of one configuration differ in seed)


def lr_sweep_for(plot: Plotter, category: str, groups: list[Group], all_groups: list[Group] | None = None, model: str = "") -> str | None:
  """Mean final val accuracy against the peak LR, for a category that varies lr_max. Only configurations that differ in
  lr_max alone are compared: one line per setting of everything else that has two or more LRs, taking in the report's
  configurations from other categories with that same setting (the baseline at 1e-3 in a learning-rate category).
  Configurations that change other keys too (a combo category, a random search) would confound the trend: left out."""
  lrs = {num(g.config.get("lr_max")) for g in groups} - {None}
  if len(lrs) < 2 or min(lrs) <= 0: return None
  def rest(g: Group) -> str: return json.dumps({k: v for k, v in g.config.items() if k not in SWEEP_FREE}, sort_keys=True, default=str)
  mine = {rest(g) for g in groups if num(g.config.get("lr_max"))}
  sweeps: dict[str, list[Group]] = {}
  # the category's own configurations first; another category's only where they add an LR (the same configuration
  # twice, say the suite's default in two categories, would be one point drawn twice)
  for g in [*groups, *(g for g in all_groups or [] if g not in groups)]:
    lr, same = num(g.config.get("lr_max")), sweeps.setdefault(rest(g), []) if rest(g) in mine else None
    if same is not None and (lr or 0) > 0 and (g in groups or lr not in {num(o.config["lr_max"]) for o in same}): same.append(g)
  sweeps = {k: gs for k, gs in sweeps.items() if len({num(g.config["lr_max"]) for g in gs}) >= 2}
  if not sweeps: return None
  # each line is named by the keys its fixed setting differs in from the other lines
  configs = {k: gs[0].config for k, gs in sweeps.items()}
  differ = sorted({key for c in configs.values() for key in c if key not in SWEEP_FREE and len({json.dumps(d.get(key)) for d in configs.values()}) > 1})
  data, diverged = [], []
  for k, gs in sweeps.items():
    points = []
    for g in gs:
      s = g.stat("val_acc")
      # a configuration from another category is named at its point: the sweep's own are the category's table
      if s.n: points.append((num(g.config["lr_max"]), 100 * s.mean, 100 * (s.std or 0.0), "" if g in groups else g.name + ("" if g.name == g.category else f" ({g.category})")))
      else: diverged.append(num(g.config["lr_max"]))
    if points:
      name = ", ".join(f"{key}={fmt_value(configs[k].get(key))}" for key in differ)
      data.append((name, *(list(v) for v in zip(*sorted(points)))))
  if not data: return None
  data.sort(key=lambda d: d[0])
  title = f"{label(model) + ' · ' if model else ''}{category}: final validation accuracy vs peak learning rate"
  return plot(f"lr-{category}.png", lambda p: plots.lr_plot(data, diverged, p, title), inputs=[data, diverged, title])


# ---------- the best configuration's errors and weights ----------

def best_model_section(plot: Plotter, best: Group, dataset: str, suite: str, results_dir: Path | None, folder: Path) -> list[str]:
  """The confusion matrix and most confidently wrong test images of the best configuration's best seed (from the test
  predictions its record holds), and links to the weights files it kept."""
  from explorer.inference import CLASSES
  lines = []
  with_predictions = [r for r in best.done if isinstance(r.get("test_predictions"), dict)]
  if with_predictions:
    r = max(with_predictions, key=lambda r: value(r, "val_acc") or 0)
    try:
      p = r["test_predictions"]
      matrix = np.asarray(p["confusion"], np.int64).reshape(10, 10)
      errors = [tuple(e) for e in p["wrong"]]
      images = np.frombuffer(zlib.decompress(base64.b64decode(p["wrong_images"])), np.uint8).reshape(len(errors), 28, 28) if errors else None
    except (KeyError, TypeError, ValueError, zlib.error) as e:
      plot.warn(f"test predictions of {r['name']} unreadable ({type(e).__name__}: {e}); no confusion matrix")
    else:
      classes = CLASSES.get(dataset, [str(i) for i in range(10)])
      wrong = int(matrix.sum() - np.trace(matrix))
      figures = [plot("best-confusion.png", lambda path: plots.confusion(matrix, classes, path, f"{r['name']}: test confusion matrix ({wrong} wrong of {int(matrix.sum())})"))]
      if errors: figures.append(plot("best-errors.png", lambda path: plots.error_grid(images, errors, classes, path,
                                                                                       f"{r['name']}: the {len(errors)} most confidently wrong test images")))
      lines += ["## Best configuration: test errors", "",
                f"{code(r['name'])} (test {100 * (value(r, 'test_acc') or 0):.2f}%): where its {wrong} test errors fall "
                f"(rows: true class) and the {len(errors)} it was most sure of.", ""]
      lines += [f"![{r['name']}: {alt}]({rel})" for alt, rel in zip(("confusion matrix", "most confidently wrong"), figures) if rel] + [""]
  if results_dir is not None:
    from explorer.weights import weights_for_record
    kept = []
    for r in best.done:
      path = weights_for_record(results_dir, r)
      if path.exists(): kept.append(f"[{r['name']}.safetensors]({os.path.relpath(path, folder.resolve())}) ({path.stat().st_size / 1e6:.1f} MB)")
    if kept:
      elsewhere = "" if Path(results_dir).resolve() == Path("results").resolve() else f" --results {shlex.quote(str(results_dir))}"
      lines += [f"Weights of {code(best.name)}: " + " · ".join(kept) + f". Check them with `python mnist_explorer.py evaluate "
                f"{best.done[0]['name']} --config {suite}.toml --dataset {dataset}{elsewhere}`, classify images with `predict`.", ""]
  return lines


# ---------- one model's report ----------

def model_order(model: str) -> tuple:
  return (("mlp", "cnn").index(model) if model in ("mlp", "cnn") else 2, model)


def label(model: str) -> str: return model.upper() if model in ("mlp", "cnn") else model


def target_line(target: float, best: Group | None) -> str:
  if best is None: return f"- **Target** (test ≥ {100 * target:.0f}%): not reached — no configuration finished."
  test = best.stat("test_acc")
  if test.mean is None: return f"- **Target** (test ≥ {100 * target:.0f}%): unknown — the best configuration has no test accuracy."
  reached = test.mean >= target
  return (f"- **Target** (test ≥ {100 * target:.0f}%): {'**reached**' if reached else '**not reached**'} by the best configuration "
          f"{code(best.name)} (test {pct(test, '%')}).")


def speed_note(records: list[dict]) -> str:
  """ms/step depends on tinygrad's kernel search and on the CPU threads per kernel: say which runs had what."""
  beams = Counter(int(r.get("beam") or 0) for r in records)
  threads = Counter(int(r.get("threads") or 1) for r in records)
  note = "" if set(beams) == {0} else \
    " · kernel search " + ", ".join(f"--beam {b}: {plural(n, 'run')}" if b else f"none: {plural(n, 'run')}" for b, n in sorted(beams.items()))
  if set(threads) != {1}: note += " · CPU threads per kernel " + ", ".join(f"{t}: {plural(n, 'run')}" for t, n in sorted(threads.items()))
  return note


def model_report(folder: Path, suite: str, dataset: str, model: str, records: list[dict], others: list[str],
                 warn: Callable[[str], None], redraw: bool = True, variant: str = "", earlier: list[dict] | None = None,
                 has_quick: bool = False, results_dir: Path | None = None, *, plot: Plotter) -> tuple[str, list[Path], dict]:
  """Markdown text, written plot paths and a summary (for index.md and comparison.md) of one model's runs.
  variant "quick": the report of the quick passes (own files and figures, clearly marked). Its figures are left
  pending in `plot` (draw_figures draws them; the written paths are the plotter's list)."""
  groups = make_groups(records)
  categories = by_category(groups)
  stem = report_stem(model, variant)
  devices = sorted({str(r.get("device")) for r in records if r.get("device")}) or ["unknown"]
  versions = sorted({str(r.get("tinygrad_version")) for r in records if r.get("tinygrad_version")}) or ["unknown"]
  best, verdict_text = verdict(groups)
  title = f"# {label(model)} on {dataset} — suite `{suite}`" + (" — quick passes" if variant == QUICK else "")
  lines = [title, ""]
  if variant == QUICK:
    lines += ["> **Quick passes (--max-steps):** every run here had its steps capped, so accuracies are lower than full runs "
              f"reach. Full-length results are in [{model}.md]({model}.md) (when any exist); the two are never mixed.", ""]
  elif has_quick:
    lines += [f"Quick passes of this suite (--max-steps) are reported apart: [{report_stem(model, QUICK)}.md]({report_stem(model, QUICK)}.md).", ""]
  lines += [
           f"{plural(len(records), 'run')} ({plural(len(groups), 'configuration')} in {plural(len(categories), 'category', 'categories')}) · device {', '.join(devices)} · "
           f"tinygrad {', '.join(versions)}" + speed_note(records), "", f"_{VAL_NOTE}._", ""]
  capped = Counter((int(r["capped_from"]), r["config"].get("steps")) for r in records if num(r.get("capped_from")) is not None)
  for (was, now), n in sorted(capped.items()):
    lines += [f"> **Note:** steps capped from {was} to {now} for a quick pass ({n} run{'s' * (n != 1)}, --max-steps): "
              "accuracies are lower than full runs would reach.", ""]

  lines += ["## Summary", "", f"- {verdict_text}"]
  efficient = max((g for g in groups if per_second(g) is not None), key=per_second, default=None)
  if efficient is not None:
    lines.append(f"- **Most val accuracy per training second:** {code(efficient.name)} — val {pct(efficient.stat('val_acc'), '%')} "
                 f"in {fmt_stat(efficient.stat('train_s'), unit=' s')} of training ({per_second(efficient):.2f} %/s).")
  target = target_for(dataset, model)
  if target is not None:
    lines.append(target_line(target, best))
    fast = [g for g in groups if (g.stat("test_acc").mean or 0) >= target and g.stat("train_s").mean is not None]
    if fast:
      f = min(fast, key=lambda g: g.stat("train_s").mean)
      lines.append(f"- **Fastest configuration reaching the target:** {code(f.name)} — test {pct(f.stat('test_acc'), '%')} "
                   f"in {fmt_stat(f.stat('train_s'), unit=' s')} of training.")
  if others:
    lines.append(f"- {label(model)} vs {', '.join(label(m) for m in others)}: see [comparison.md](comparison.md).")
  lines.append("")
  if best is not None: lines += best_model_section(plot, best, dataset, suite, results_dir, folder)

  swings = [s for cat, gs in categories.items() for s in axis_swings(cat, gs)]
  if swings:
    lines += ["## Which hyperparameters mattered most", "",
              "Swing = best minus worst mean val accuracy across an axis's values, each value averaged over the other axes "
              "of its category (numeric axes with many values are binned into quartiles).", ""]
    rows = [[i + 1, s.axis, s.category, f"{100 * s.swing:.2f}", f"{s.best[0]} ({100 * s.best[1]:.2f}%)",
             f"{s.worst[0]} ({100 * s.worst[1]:.2f}%)", f"{s.levels}{' bins' if s.binned else ''}"] for i, s in enumerate(
               sorted(swings, key=lambda s: -s.swing))]
    lines += [table(rows, ["rank", "axis", "category", "swing (pts)", "best value (mean val)", "worst value (mean val)", "values"]), ""]

  counter = 0
  for category, gs in categories.items():
    lines += [f"## Category: {category}", ""]
    rows = []
    for g in gs:
      counter += 1
      c = g.config
      rows.append([counter, code(g.name), g.description, fmt_value(c.get("lr_max", "—")), fmt_value(c.get("batch", "—")),
                   fmt_value(c.get("steps", "—")), fmt_value(c.get("opt", "—")), pct(g.stat("val_acc")), pct(g.stat("test_acc")),
                   fmt_stat(g.stat("train_s")), g.status()])
    lines += [table(rows, ["#", "configuration", "description", "LR", "batch", "steps", "optimizer", "final val acc (%)", "test acc (%)",
                           "train time (s)", "status"]), ""]
    if len(gs) > 1: lines += [verdict(gs)[1], ""]
    cat_swings = axis_swings(category, gs)
    if cat_swings:
      lines += ["Swing per axis (pts): " + ", ".join(f"{s.axis} {100 * s.swing:.2f}" for s in cat_swings) + "", ""]
    overlaid = [(g.name, r) for g in gs for r in g.runs]
    title = f"{label(model)} · {category}: runs overlaid"
    figures = [("runs overlaid", plot(f"category-{category}.png", lambda p, runs=overlaid, title=title: plots.category_plot(runs, p, title),
                                      inputs=[overlaid, title]))]
    axes = grid_axes(gs)
    if axes: figures.append((f"heatmap {axes[0]} × {axes[1]}", heatmap_for(plot, category, gs, axes, model)))
    figures.append(("final val accuracy vs learning rate", lr_sweep_for(plot, category, gs, groups, model)))
    lines += [f"![{category}: {alt}]({rel})" for alt, rel in figures if rel] + [""]
    links = []
    for g in gs:
      for r in g.runs:
        rel = plot(f"{r['name']}.png", lambda p, r=r: plots.run_plot(r, p), inputs=r)
        if rel: links.append(f"[{r['name']}]({rel})")
    if links: lines += ["Per-run curves: " + " · ".join(links), ""]

  finished = [g for g in groups if g.done]
  if finished:
    lines += ["## Overfitting", "", "Gap = training accuracy (10,000 training images, after training) minus val accuracy; "
              "means over finished repeats.", ""]
    rows = []
    for g in finished:
      train, val = g.stat("train_acc").mean, g.stat("val_acc").mean
      tl, vl = g.stat("train_eval_loss").mean, g.stat("final_val_loss").mean
      rows.append([code(g.name), fmt_num(train and 100 * train), fmt_num(val and 100 * val),
                   fmt_num(None if train is None or val is None else 100 * (train - val)),
                   fmt_num(tl, 4), fmt_num(vl, 4), fmt_num(None if tl is None or vl is None else vl - tl, 4)])
    lines += [table(rows, ["configuration", "train acc (%)", "val acc (%)", "gap (pts)", "train loss", "val loss",
                           "val − train loss"]), ""]
    front = pareto(finished)
    lines += ["## Efficiency", "", "Means over finished repeats; ✓ = Pareto-optimal (no other configuration has both higher val "
              "accuracy and shorter training time).", ""]
    rows = [[code(g.name), fmt_num(g.stat("params").mean, 0), fmt_num(g.stat("ms_per_step").mean), fmt_num(g.stat("train_s").mean),
             fmt_num(g.stat("val_acc").mean and 100 * g.stat("val_acc").mean), fmt_num(g.stat("test_acc").mean and 100 * g.stat("test_acc").mean),
             fmt_num(per_second(g)), "✓" if g.name in front else ""] for g in finished]
    lines += [table(rows, ["configuration", "params", "ms/step", "train time (s)", "val acc (%)", "test acc (%)",
                           "val acc %/s", "Pareto"]), ""]

  unfinished = [r for g in groups for r in g.runs if r["status"] != "done"]
  if unfinished:
    lines += ["## Runs that did not finish", "", "Listed for reference; they are excluded from every mean above.", ""]
    for r in unfinished:
      steps = f" at step {r.get('steps_done')}/{r['config'].get('steps', '?')}" if r.get("steps_done") is not None else ""
      error = r.get("error")
      lines.append(f"- {code(r['name'])} — {r['status']}{steps}" + (f": {cell(error)}" if error else ""))
    lines.append("")
  if earlier:
    lines += ["## Earlier configurations of these runs", "",
              "Stored records of the same run names trained with another configuration (kept on disk, not in any table above).", ""]
    current = {r["name"]: r for r in records}
    rows = []
    for r in sorted(earlier, key=lambda r: (r["name"], _newest_first(r))):
      now = current.get(r["name"], {}).get("config", {})
      changed = ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(r["config"].items()) if now and now.get(k) != v) or "—"
      rows.append([code(r["name"]), changed, r["status"], pct(stat([value(r, "val_acc")])), pct(stat([value(r, "test_acc")])),
                   str(r.get("finished_at") or "—")])
    lines += [table(rows, ["run", "its configuration differed in", "status", "val acc (%)", "test acc (%)", "finished"]), ""]
  lines += ["## Files", "", f"- [{stem}.csv]({stem}.csv): one row per run (every config key, metric and timing).", ""]

  summary = {"model": model, "runs": len(records), "configs": len(groups), "best": best,
             "params": best.stat("params").mean if best else None, "ms_per_step": best.stat("ms_per_step").mean if best else None,
             "kept": plot.kept}
  return "\n".join(lines), plot.written, summary


def report_stem(model: str, variant: str = "") -> str: return f"{model}-{variant}" if variant else model


def write_csv(path: Path, records: list[dict]) -> Path:
  """One row per run: identity, every config key, every metric, timings; lists as JSON so pandas reads one cell."""
  head = ["suite", "dataset", "model", "name", "group", "category", "description", "status", "error"]
  config_keys = list(dict.fromkeys(k for r in records for k in r["config"] if k not in head))
  metric_keys = list(dict.fromkeys([*METRIC_KEYS, *(k for r in records for k in r["metrics"])]))
  columns = head + config_keys + [k for k in metric_keys if k not in config_keys] + [k for k in RUN_KEYS if k not in config_keys] + ["axes"]
  def plain(v: Any) -> Any:
    if v is None: return ""
    if isinstance(v, (list, dict)): return json.dumps(v)
    return v
  rows = []
  for r in sorted(records, key=run_order):
    row = {k: plain(r.get(k)) for k in head + list(RUN_KEYS)}
    row.update({k: plain(v) for k, v in r["config"].items() if k not in head})
    row.update({k: plain(v) for k, v in r["metrics"].items() if k not in config_keys})
    row["axes"] = json.dumps(r["axes"]) if r["axes"] else ""
    rows.append(row)
  def write(tmp: Path) -> None:
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
  return write_atomic(path, write)


def comparison(suite: str, dataset: str, summaries: list[dict]) -> str:
  rows = []
  for s in summaries:
    best = s["best"]
    target = target_for(dataset, s["model"])
    test = best.stat("test_acc") if best else Stat(None, None, 0)
    reached = "—" if target is None or test.mean is None else ("yes" if test.mean >= target else "no")
    rows.append([label(s["model"]), code(best.name) if best else "—", pct(best.stat("val_acc")) if best else "—", pct(test),
                 fmt_num(s["params"], 0), fmt_num(s["ms_per_step"]), fmt_stat(best.stat("train_s")) if best else "—",
                 f"{100 * target:.0f}%" if target else "—", reached, f"[{s['model']}.md]({s['model']}.md)"])
  return "\n".join([f"# Model comparison on {dataset} — suite `{suite}`", "",
                    "Each model's best configuration by mean val accuracy (see its report for whether it is a clear winner).", "",
                    table(rows, ["model", "best configuration", "val acc (%)", "test acc (%)", "params", "ms/step", "train time (s)",
                                 "target", "reached", "report"]), ""])


def report_folder(results_dir: Path, suite: str, dataset: str) -> Path:
  return results_dir if (suite, dataset) == ("experiments", "mnist") else results_dir / f"{suite}-{dataset}"


def _stderr(message: str) -> None: print(f"warning: {message}", file=sys.stderr)


def write_reports(results_dir: Path, warn: Callable[[str], None] | None = None, redraw: set[tuple[str, str, str]] | None = None,
                  prefer: dict[tuple, str] | None = None, kept: list[Path] | None = None) -> list[Path]:
  """Regenerate every report from the stored records; returns the written paths (markdown, CSV, PNG). Every file is
  written atomically (a stop at any moment leaves the old file or the new one).
  redraw: the (suite, dataset, model) reports whose figures are drawn again (None: all); the others keep figures that
  exist, which keeps a suite's end quick when the results folder holds many other studies (or the other model's runs).
  Within the reports it draws, a figure is drawn only when what it shows changed (see Plotter); kept collects the others.
  prefer: (suite, dataset, model, name) -> the config hash a suite just ran, shown in preference to other stored versions.
  warn gets one line per skipped record file and per failed plot; all of them are also listed in index.md."""
  results_dir = Path(results_dir)
  warn = warn or _stderr
  records, warnings = load_records(results_dir)
  for w in warnings: warn(w)
  def note(message: str) -> None:
    warnings.append(message)
    warn(message)
  chosen = select(records, prefer)
  pairs: dict[tuple[str, str], dict[str, dict[str, list[dict]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
  for kind, rs in (("", chosen.current), (QUICK, chosen.quick), ("earlier", chosen.earlier)):
    for r in rs: pairs[(r["suite"], r["dataset"])][r["model"]][kind].append(r)
  written: list[Path] = []
  index_rows = []
  for (suite, dataset), models in sorted(pairs.items()):
    folder = report_folder(results_dir, suite, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    summaries = []
    full_models = [m for m in sorted(models, key=model_order) if models[m][""]]
    reports = []  # the text of every report first; then all their figures at once; then the files
    for model in sorted(models, key=model_order):
      for variant in ("", QUICK):
        runs = models[model][variant]
        if not runs: continue
        others = [m for m in full_models if m != model] if not variant else []
        draws = redraw is None or (suite, dataset, model) in redraw
        build = functools.partial(model_report, folder, suite, dataset, model, runs, others, note, draws, variant,
                                  models[model]["earlier"] if not variant else None, bool(models[model][QUICK]), results_dir)
        plot = Plotter(folder, report_stem(model, variant), note, draws)
        reports.append((model, variant, runs, build, plot, build(plot=plot)))
    draw_figures([plot for *_, plot, _ in reports])
    for model, variant, runs, build, plot, (text, pngs, summary) in reports:
      if plot.failed:  # built again without links to the figures that failed (nothing is drawn twice)
        first_kept, plot.used = list(plot.kept), set()
        text, pngs, summary = build(plot=plot)
        plot.kept[:] = first_kept  # (the figures just drawn look up to date now: not kept ones)
      stem = report_stem(model, variant)
      md = write_text_atomic(store.safe_path(folder, f"{stem}.md"), text)
      written += [md, write_csv(store.safe_path(folder, f"{stem}.csv"), runs), *pngs]
      if not variant: summaries.append(summary)
      if kept is not None: kept += summary["kept"]
      rel = md.relative_to(results_dir.resolve()).as_posix()
      best = summary["best"]
      kind = label(model) + (" · quick passes (steps capped, not comparable)" if variant else "")
      index_rows.append([f"{suite} / {dataset}", f"[{kind}]({rel})", summary["runs"], summary["configs"],
                         code(best.name) if best else "—", pct(best.stat("test_acc")) if best else "—"])
    if len(summaries) > 1:
      path = write_text_atomic(store.safe_path(folder, "comparison.md"), comparison(suite, dataset, summaries))
      written.append(path)
      index_rows.append([f"{suite} / {dataset}", f"[comparison]({path.relative_to(results_dir.resolve()).as_posix()})", "", "", "", ""])
  lines = ["# mnist-explorer results", "", "One report per suite, dataset and model (regenerate with `python mnist_explorer.py report`).", ""]
  if index_rows:
    lines += [table(index_rows, ["suite / dataset", "report", "runs", "configurations", "best configuration (val)", "test acc (%)"]), ""]
  else:
    lines += ["No run records yet.", ""]
  if warnings:
    lines += ["## Skipped records and warnings", ""] + [f"- {cell(w)}" for w in warnings] + [""]
  if records or warnings:
    results_dir.mkdir(parents=True, exist_ok=True)
    written.append(write_text_atomic(store.safe_path(results_dir, "index.md"), "\n".join(lines)))
  return written


# ---------- terminal summary ----------

def summary_table(records: list[dict]):
  """A rich table of runs (name, category, val acc, test acc, ms/step, time, status) for the terminal."""
  from rich.table import Table
  records = [r for r in records if isinstance(r, dict)]
  several = len({(r.get("suite"), r.get("dataset"), r.get("model")) for r in records}) > 1
  t = Table(title=plural(len(records), "run"), title_style="bold")
  if several: t.add_column("model")
  for name in ("name", "category"): t.add_column(name)
  for name in ("final val", "test acc", "ms/step", "train (s)"): t.add_column(name, justify="right")
  t.add_column("status")
  styles = {"done": "green", "diverged": "yellow", "interrupted": "yellow", "failed": "red"}
  for r in records:
    val, test = value(r, "val_acc"), value(r, "test_acc")
    status = str(r.get("status", "?"))
    row = [str(r.get("name", "?")), str(r.get("category", "")), "—" if val is None else f"{100 * val:.2f}%",
           "—" if test is None else f"{100 * test:.2f}%", fmt_num(r.get("ms_per_step"), 1), fmt_num(r.get("train_s"), 1),
           f"[{styles.get(status, 'red')}]{status}[/]"]
    t.add_row(*([str(r.get("model", "?"))] if several else []), *row)
  return t
