"""Report figures: per-run loss curves, per-category overlays, 2-axis heatmaps and LR sweeps. Small Agg PNGs drawn through
the Figure API (no pyplot: no display, no global figure registry to leak), so regenerating hundreds of them stays quick."""
from __future__ import annotations
import json, math, os, signal, sys
from pathlib import Path
from typing import Callable, Sequence
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator
import numpy as np
from explorer.store import write_atomic

DPI = 100
MAX_POINTS = 1500  # curves are thinned to this many points before drawing: long runs would otherwise dominate the time
LEGEND_MAX = 12
LEGEND_SIZE = 8  # points; tick labels are 7
MAX_TICKS = 12  # an LR sweep with up to this many values labels every one of them
ANNOTATE_MAX = 8  # an LR sweep names up to this many of its points (the configurations taken from other categories)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def is_complete_png(path: Path) -> bool:
  """A whole PNG file: its signature at the start and the IEND chunk at the end."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      f.seek(-12, 2)
      return head == b"\x89PNG\r\n\x1a\n" and f.read(12)[4:8] == b"IEND"
  except OSError: return False


def draw_all(tasks: Sequence[Callable[[], object]], workers: int | None = None) -> list[str | None]:
  """Runs every drawing task; returns, per task, None or its error ("ValueError: ..."). On Linux, with more than one
  core to use, the tasks are split over that many processes (forked: the tasks are closures over in-memory records),
  this one drawing its share too: a suite's figures are a few seconds of matplotlib, which one core would do alone."""
  workers = min(workers or _usable_cores(), len(tasks), MAX_DRAWERS)
  if workers < 2 or not sys.platform.startswith("linux"): return [_attempt(t) for t in tasks]
  shares = [range(i, len(tasks), workers) for i in range(workers)]
  results: dict[int, str | None] = {}
  children = []
  try:
    for share in shares[1:]:
      read, write = os.pipe()
      pid = os.fork()
      if pid == 0:  # the child: draw its share, say how each went, and leave without the parent's exit handlers
        code = 1
        try:
          os.close(read)
          for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, signal.SIG_DFL)  # a stop ends it quietly
          with os.fdopen(write, "w") as out: json.dump({i: _attempt(tasks[i]) for i in share}, out)
          code = 0
        finally: os._exit(code)
      os.close(write)
      children.append((pid, read, share))
    results.update({i: _attempt(tasks[i]) for i in shares[0]})
    for pid, read, share in children:
      with os.fdopen(read) as f: text = f.read()
      os.waitpid(pid, 0)
      try: results.update({int(i): error for i, error in json.loads(text).items()})
      except ValueError: results.update({i: "the drawing process ended early" for i in share})
    children.clear()
  finally:  # a stop while drawing: the other drawing processes end with this one
    for pid, _, _ in children:
      try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
      except OSError: pass
  return [results[i] for i in range(len(tasks))]


MAX_DRAWERS = 8


def _usable_cores() -> int:
  try: return len(os.sched_getaffinity(0))
  except (AttributeError, OSError): return os.cpu_count() or 1


def _attempt(task: Callable[[], object]) -> str | None:
  try: task()
  except Exception as e: return f"{type(e).__name__}: {e}"
  return None


def _save(fig: Figure, path: Path) -> Path:
  # atomic (temp file + rename): a stop while drawing never leaves a truncated PNG that a report links to
  write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
  fig.clear()  # a pyplot-free Figure is freed once unreferenced; clearing drops the artists right away
  return path


def _array(values) -> np.ndarray:
  """JSON lists may hold null (and NaN/inf from diverged runs): all of those become NaN."""
  if not isinstance(values, (list, tuple)): return np.zeros(0)
  return np.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in values], dtype=float)


def _xy(history: dict, xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray]:
  x, y = _array(history.get(xkey)), _array(history.get(ykey))
  n = min(len(x), len(y))
  x, y = x[:n], y[:n]
  ok = np.isfinite(x) & np.isfinite(y)
  return x[ok], y[ok]


def smooth(y: np.ndarray) -> np.ndarray:
  """Light, debiased EMA over about 2% of the run: shows the trend without hiding spikes."""
  if len(y) < 3: return y
  beta = 1 - 2 / (max(1, len(y) // 50) + 1)
  out, acc = np.empty_like(y), 0.0
  for i, v in enumerate(y):
    acc = beta * acc + (1 - beta) * v
    out[i] = acc / (1 - beta ** (i + 1)) if beta > 0 else v
  return out


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  if len(x) <= MAX_POINTS: return x, y
  idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).astype(int))
  return x[idx], y[idx]


def _log_if_positive(ax, *ys: np.ndarray) -> None:
  values = np.concatenate([y for y in ys if len(y)]) if any(len(y) for y in ys) else np.zeros(0)
  if len(values) and (values > 0).all() and values.max() / values.min() > 5:
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)


def _plain_log_labels(axis) -> None:
  # the default 10^x labels go through mathtext, which costs more than drawing the rest of the figure;
  # 1-2-5 ticks also label losses that span less than a decade
  axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_formatter(NullFormatter())


def _style(ax, title: str = "") -> None:
  """Every figure's titles and labels are in sentence case ("Validation accuracy (%)"), model names in capitals."""
  ax.grid(True, alpha=0.3, linewidth=0.5)
  ax.tick_params(labelsize=7)
  if title: ax.set_title(title, fontsize=8, y=1.0, pad=3)  # a fixed y skips matplotlib's costly title auto-placement


def run_plot(record: dict, path: Path) -> Path:
  """Train loss (raw, faint, and smoothed) with val loss, val accuracy, and the LR schedule of one run."""
  history = record.get("history") if isinstance(record.get("history"), dict) else {}
  fig = Figure(figsize=(8, 3))
  grid = fig.add_gridspec(1, 3, width_ratios=(3, 2, 1.3), left=0.07, right=0.98, bottom=0.16, top=0.84, wspace=0.32)
  ax_loss, ax_acc, ax_lr = (fig.add_subplot(grid[0, i]) for i in range(3))
  steps, train = _xy(history, "step", "train_loss")
  eval_steps, val_loss = _xy(history, "eval_step", "val_loss")
  if len(train):
    ax_loss.plot(*_thin(steps, train), color=COLORS[0], alpha=0.2, linewidth=0.6)
    ax_loss.plot(*_thin(steps, smooth(train)), color=COLORS[0], linewidth=1.2, label="train (smoothed)")
  if len(val_loss): ax_loss.plot(eval_steps, val_loss, "o-", color=COLORS[1], markersize=3, linewidth=1, label="validation")
  _log_if_positive(ax_loss, train, val_loss)
  _style(ax_loss, "Loss")
  ax_loss.set_xlabel("Step", fontsize=7)
  if len(train) or len(val_loss): ax_loss.legend(fontsize=LEGEND_SIZE)
  acc_steps, val_acc = _xy(history, "eval_step", "val_acc")
  if len(val_acc): ax_acc.plot(acc_steps, 100 * val_acc, "o-", color=COLORS[2], markersize=3, linewidth=1)
  _style(ax_acc, f"Validation accuracy (%) · last {100 * val_acc[-1]:.2f}" if len(val_acc) else "Validation accuracy (%)")
  ax_acc.set_xlabel("Step", fontsize=7)
  lr_steps, lr = _xy(history, "step", "lr")
  if len(lr): ax_lr.plot(*_thin(lr_steps, lr), color=COLORS[4], linewidth=1)
  _style(ax_lr, "Learning rate")
  ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
  ax_lr.yaxis.get_offset_text().set_fontsize(6)
  ax_lr.set_xlabel("Step", fontsize=7)
  status = record.get("status", "?")
  if status != "done":
    last = _array(history.get("step"))
    if len(last): ax_loss.axvline(last[-1], color="red", linestyle="--", linewidth=0.8)
  model = str(record.get("model", "?"))
  fig.suptitle(f"{model.upper() if model in ('mlp', 'cnn') else model} · {record.get('name', '?')} · {status}", fontsize=9)
  return _save(fig, path)


def category_plot(runs: Sequence[tuple[str, dict]], path: Path, title: str) -> Path:
  """Every run of a category overlaid: val accuracy (a marker at each measured point: with few evaluations the lines
  between them are no trend) and smoothed train loss. runs: (group, record); repeats share a colour."""
  fig = Figure(figsize=(8, 3))
  grid = fig.add_gridspec(1, 2, left=0.07, right=0.98, bottom=0.16, top=0.86, wspace=0.22)
  ax_acc, ax_loss = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
  colours: dict[str, str] = {}
  losses = []
  for group, record in runs:
    first = group not in colours
    colour = colours.setdefault(group, COLORS[len(colours) % len(COLORS)])
    history = record.get("history") if isinstance(record.get("history"), dict) else {}
    label = group if first and len(colours) <= LEGEND_MAX else None
    x, y = _xy(history, "eval_step", "val_acc")
    if len(y): ax_acc.plot(x, 100 * y, "o-", color=colour, markersize=3, linewidth=1, alpha=0.85, label=label)
    x, y = _xy(history, "step", "train_loss")
    if len(y):
      ax_loss.plot(*_thin(x, smooth(y)), color=colour, linewidth=0.9, alpha=0.85)
      losses.append(y)
  _style(ax_acc, "Validation accuracy (%)")
  _style(ax_loss, "Train loss (smoothed)")
  _log_if_positive(ax_loss, *losses)
  for ax in (ax_acc, ax_loss): ax.set_xlabel("Step", fontsize=7)
  if ax_acc.get_legend_handles_labels()[0]:
    extra = len(colours) - LEGEND_MAX
    ax_acc.legend(fontsize=LEGEND_SIZE, loc="lower right", ncol=2 if len(colours) > 6 else 1, title=f"+{extra} more" if extra > 0 else None,
                  title_fontsize=LEGEND_SIZE)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], row_axis: str, col_axis: str, path: Path,
            title: str) -> Path:
  """Mean val accuracy (%) of a 2-axis grid; NaN cells (nothing finished there) are left blank."""
  fig = Figure(figsize=(min(8, 2.2 + 0.75 * len(cols)), min(6, 1.4 + 0.4 * len(rows))))
  ax = fig.add_subplot(1, 1, 1)
  masked = np.ma.masked_invalid(values)
  image = ax.imshow(masked, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(cols)), labels=list(cols), fontsize=7)
  ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=7)
  ax.set_xlabel(col_axis, fontsize=8)
  ax.set_ylabel(row_axis, fontsize=8)
  finite = values[np.isfinite(values)]
  middle = (finite.min() + finite.max()) / 2 if len(finite) else 0
  for (i, j), v in np.ndenumerate(values):
    if math.isfinite(v): ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > middle else "white")
  colorbar = fig.colorbar(image, ax=ax)
  colorbar.ax.tick_params(labelsize=7)
  ax.set_title(title, fontsize=9)
  fig.set_layout_engine("tight")
  return _save(fig, path)


def lr_plot(series: Sequence[tuple], diverged: Sequence[float], path: Path, title: str) -> Path:
  """Mean val accuracy (%) against peak LR on a log axis, a tick label at every swept LR; series: (label, lrs, means,
  stds[, a name per point or ""]), names written next to their points when there are few; diverged LRs marked x."""
  fig = Figure(figsize=(6, 3))
  ax = fig.add_subplot(1, 1, 1)
  fig.subplots_adjust(left=0.1, right=0.97, bottom=0.17, top=0.88)
  lows, swept = [], set(float(v) for v in diverged)
  annotate = sum(sum(1 for n in (s[4] if len(s) > 4 else ()) if n) for s in series) <= ANNOTATE_MAX
  for k, (label, lrs, means, stds, *names) in enumerate(series):
    order = np.argsort(lrs)
    x, y = np.asarray(lrs, float)[order], np.asarray(means, float)[order]
    e = np.nan_to_num(np.asarray(stds, float)[order])
    line = "-" if len(set(x.tolist())) == len(x) else ""  # several configurations at one LR: points, not a zigzag
    colour = COLORS[k % len(COLORS)]
    ax.errorbar(x, y, yerr=e, fmt="o" + line, color=colour, markersize=4, linewidth=1, capsize=2, label=label or None)
    if annotate and names:
      for xi, yi, n in zip(x, y, np.asarray(names[0], object)[order]):
        if n: ax.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(4, -9), fontsize=7, color=colour)
    lows.extend(y)
    swept.update(x.tolist())
  if len(diverged):
    bottom = min(lows) if lows else 0
    ax.plot(diverged, [bottom] * len(diverged), "x", color="red", markersize=7, label="diverged / no result")
  ax.set_xscale("log")
  _plain_log_labels(ax.xaxis)
  if 0 < len(swept) <= MAX_TICKS:  # 1-2-5 ticks would leave swept values such as 3e-3 unlabelled
    ax.xaxis.set_major_locator(FixedLocator(sorted(swept)))
    ax.xaxis.set_minor_locator(NullLocator())
  if annotate and any(n for s in series if len(s) > 4 for n in s[4]) and len(swept) > 1:  # room for the names below and right
    ax.set_xlim(min(swept) / 1.3, max(swept) * 1.6)
    ax.margins(y=0.15)
  _style(ax, title)
  ax.set_xlabel("Peak learning rate (lr_max)", fontsize=8)
  ax.set_ylabel("Final validation accuracy (%)", fontsize=8)
  if ax.get_legend_handles_labels()[0]: ax.legend(fontsize=LEGEND_SIZE)
  return _save(fig, path)


def confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
  """Test-set confusion matrix: counts, rows = true class, columns = predicted; the colour is the row's share (log
  scale), so a handful of errors stands out next to a thousand correct answers."""
  counts = np.asarray(matrix, float)
  share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  fig = Figure(figsize=(5.6, 4.8))
  ax = fig.add_subplot(1, 1, 1)
  from matplotlib.colors import LogNorm
  image = ax.imshow(np.maximum(share, 1e-4), cmap="Blues", norm=LogNorm(vmin=1e-4, vmax=1))
  ticks = range(len(classes))
  ax.set_xticks(ticks, labels=list(classes), fontsize=7, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right" if max(map(len, classes)) > 2 else "center")
  ax.set_yticks(ticks, labels=list(classes), fontsize=7)
  ax.set_xlabel("predicted", fontsize=8)
  ax.set_ylabel("true", fontsize=8)
  for (i, j), v in np.ndenumerate(counts):
    if v: ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=6, color="white" if share[i, j] > 0.3 else "black")
  colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  colorbar.ax.tick_params(labelsize=6)
  colorbar.set_label("share of the true class", fontsize=7)
  ax.set_title(title, fontsize=8)
  fig.set_layout_engine("tight")
  return _save(fig, path)


def error_grid(images: np.ndarray, errors: Sequence[Sequence], classes: Sequence[str], path: Path, title: str, columns: int = 8) -> Path:
  """The test images a model got most confidently wrong; errors: (index, true, predicted, probability) per image."""
  n = len(errors)
  rows = max(1, math.ceil(n / columns))
  fig = Figure(figsize=(1.1 * columns, 1.35 * rows + 0.4))
  for k, (index, true, pred, prob) in enumerate(errors):
    ax = fig.add_subplot(rows, columns, k + 1)
    ax.imshow(images[k], cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title(f"#{index} true {classes[true]}\npred {classes[pred]} {100 * prob:.0f}%", fontsize=6, y=1.0, pad=2)
  fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (1.35 * rows + 0.4), hspace=0.55, wspace=0.1)
  return _save(fig, path)
