"""Training: one compiled (TinyJit) train step and eval step per model shape, reused by every run of that shape.
Scalars (LR schedule, weight decay, momentum, seed, steps) live in device tensors that each run writes in place."""
from __future__ import annotations
import math, time
from dataclasses import dataclass, field
from typing import Callable, Iterator
import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit, dtypes
from explorer.config import RunConfig
from explorer.data import Dataset, normalization
from explorer import fastpath, stop
from explorer.fastpath import fill, read_scalar, write_input
from explorer.errors import UserError
from explorer.optim import DEFAULTS as OPTIMIZER_DEFAULTS, Optimizer, make_optimizer
from explorer.tricks import WeightAverage, confusion_and_errors, smoothed_cross_entropy
from models import build_model, buffers, count_parameters, model_state, parameters, reset_model
from models.augment import cutout, random_affine, random_flip

EVAL_BATCH = 1000
TRAIN_EVAL_IMAGES = 10_000  # training images evaluated at the end, for the overfit gap
SCHEDULE_WEIGHTS = {"cosine": (1, 0, 0), "constant": (0, 1, 0), "plateau": (0, 1, 0), "step": (0, 0, 1)}
# the RunConfig keys each optimizer reads (its other hyperparameters, like RMSprop's alpha, keep their defaults)
OPT_HYPER = {name: tuple(k for k in hyper if k in RunConfig.__dataclass_fields__) for name, hyper in OPTIMIZER_DEFAULTS.items()}


def lr_at(cfg: RunConfig, t: int, scale: float = 1.0) -> float:
  """The schedule in plain Python: the reference the in-graph version is tested against, and what reports plot."""
  warm = (t + 1) / cfg.warmup if t < cfg.warmup else 1.0
  progress = min(max((t - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 0.0), 1.0)
  if cfg.schedule == "cosine": base = cfg.lr_min + (cfg.lr_max - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))
  elif cfg.schedule == "step": base = cfg.lr_max * cfg.lr_decay ** (t // decay_every(cfg))
  else: base = cfg.lr_max
  return warm * base * scale


def decay_every(cfg: RunConfig) -> int: return cfg.decay_every or max(1, cfg.steps // 3)


class Schedule:
  """The LR as a function of a device step counter, so it changes every step without a recompile."""
  def __init__(self):
    names = ("lr_max", "lr_min", "warmup", "steps", "lr_decay", "decay_every", "w_cos", "w_const", "w_step", "scale", "t")
    self.h = {n: Tensor.zeros(1, dtype=dtypes.float32).contiguous().realize() for n in names}

  def set(self, cfg: RunConfig) -> None:
    w_cos, w_const, w_step = SCHEDULE_WEIGHTS[cfg.schedule]
    values = dict(lr_max=cfg.lr_max, lr_min=cfg.lr_min, warmup=cfg.warmup, steps=cfg.steps, lr_decay=cfg.lr_decay,
                  decay_every=decay_every(cfg), w_cos=w_cos, w_const=w_const, w_step=w_step, scale=1.0, t=0.0)
    for name, value in values.items(): self.set_value(name, value)

  def set_value(self, name: str, value: float) -> None:
    fill(self.h[name], [value])

  def lr(self) -> Tensor:
    """LR for the current step, then advances the counter (both inside the compiled step)."""
    h, t = self.h, self.h["t"]
    warm = (t < h["warmup"]).where((t + 1) / h["warmup"].maximum(1), 1.0)
    progress = ((t - h["warmup"]) / (h["steps"] - h["warmup"]).maximum(1)).clip(0, 1)
    cos = h["lr_min"] + (h["lr_max"] - h["lr_min"]) * 0.5 * (1 + (progress * math.pi).cos())
    step = h["lr_max"] * h["lr_decay"].pow((t / h["decay_every"]).floor())
    lr = warm * (h["w_cos"] * cos + h["w_const"] * h["lr_max"] + h["w_step"] * step) * h["scale"]
    t.assign(t + 1)
    return lr


@dataclass
class Compiled:
  """Everything built once per shape: the model, its optimizer, the schedule and the two jitted functions."""
  model: object
  opt: Optimizer
  schedule: Schedule
  mean_std: Tensor
  augment: Tensor  # [max rotation (rad), max zoom, max shift (px)]
  train_step: Callable
  eval_step: Callable
  params: list[Tensor] = field(default_factory=list)
  inputs: dict[str, Tensor] = field(default_factory=dict)  # preallocated batch buffers: x/y for training, ex/ey for eval
  tricks: Tensor | None = None  # [label smoothing, EMA decay, cutout length]: device scalars of the switch keys
  average: WeightAverage | None = None  # the EMA of the weights (ema > 0)


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities, in float64 on the host."""
  e = np.exp((z := logits.astype(np.float64)) - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def batch_indices(n_images: int, batch: int, seed: int) -> Iterator[np.ndarray]:
  """Endless batches of image indices: a seeded shuffle, cut in order, reshuffled each epoch (a partial last batch is
  dropped, so every step has the compiled shape)."""
  if batch > n_images: raise UserError(f"batch {batch} is larger than the training set ({n_images} images)")
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(n_images)
    for start in range(0, n_images - batch + 1, batch):
      yield np.sort(order[start:start + batch])  # sorted: friendlier memory access, same batch


def eval_calls(cfg: RunConfig, data: Dataset) -> int:
  """Eval-step calls of one finished run: its validation passes, the test pass and the pass over training images."""
  def batches(n: int) -> int: return -(-n // EVAL_BATCH)
  passes = -(-cfg.steps // cfg.eval_interval)  # every eval_interval steps, and after the last
  return passes * batches(len(data.x_val)) + batches(len(data.x_test)) + batches(min(TRAIN_EVAL_IMAGES, cfg.train_size or len(data.x_train)))


class Trainer:
  def __init__(self, beam: int = 0, threads: int = 1, fast_replay: bool = True):
    self.compiled: dict[tuple, Compiled] = {}
    self.compile_count = 0  # how many train steps were built: the test of "compile once per shape"
    self.device = Device.DEFAULT
    # BEAM kernel search for the two compiled steps only (not every one-off kernel, as the BEAM env var would);
    # tinygrad caches the result on disk, so only the first run of a shape on a machine pays for the search
    self.beam = beam
    # the CPU fast path (explorer.fastpath, installed by the CLI): kernel pieces on several threads, captured steps
    # replayed from a plan; on stock tinygrad one thread and tinygrad's own JIT call
    self.threads = fastpath.set_threads(threads) if self.device.split(":")[0] == "CPU" else 1
    self.fast_replay = fast_replay
    self.calls: dict[Callable, int] = {}  # calls per compiled step
    # calls each shape's (train step, eval step) will get from the runs this command plans (plan()); None: not known
    self.planned: dict[tuple, tuple[int, int]] | None = None
    self.expected: dict[Callable, int] = {}  # calls planned per compiled step (the tiles tune what pays back)
    # seconds spent in the calls that compile (and, with --beam, search) and capture the steps: kept out of training time
    self.compile_s = 0.0
    # on_compile(step name, None) before such a call and (name, seconds) after it: a kernel search can take minutes
    self.on_compile: Callable[[str, float | None], None] | None = None

  def _call(self, jit: Callable, *args: Tensor):
    # a TinyJit compiles on its first call and captures on its second: search then; later calls replay (and without
    # --beam, tinygrad's own BEAM env var keeps its global meaning)
    n = self.calls[jit] = self.calls.get(jit, 0) + 1
    if n > 2: return fastpath.call(jit, *args) if self.fast_replay else jit(*args)
    # the first call compiles (and searches), the second captures: announce the first, time both
    announce, name = self.on_compile and n == 1, getattr(getattr(jit, "fxn", None), "__name__", "step").replace("_", " ")
    if announce: self.on_compile(name, None)
    t0 = time.perf_counter()
    try: return self._compile_call(jit, *args)
    finally:
      self.compile_s += (seconds := time.perf_counter() - t0)
      if announce: self.on_compile(name, seconds)

  def plan(self, runs: list[tuple[RunConfig, Dataset]]) -> None:
    """The runs this command will train, each with its dataset: a step's kernels are then tuned to this CPU only where
    these runs call them often enough to pay the tuning back (fastpath/tiles.py). Without a plan every big kernel is."""
    self.planned = {}
    for cfg, data in runs:
      train, evals = self.planned.get(key := cfg.shape_key(), (0, 0))
      self.planned[key] = (train + cfg.steps, evals + eval_calls(cfg, data))

  def _compile_call(self, jit: Callable, *args: Tensor):
    # --beam N: BEAM's search; else, on the CPU fast path, register tiles fitted to this CPU (fastpath/tiles.py)
    if not self.beam:
      with fastpath.fitting_tiles(self.expected.get(jit)): return jit(*args)
    with Context(BEAM=self.beam), fastpath.one_thread(): return jit(*args)

  def prepare(self, cfg: RunConfig) -> Compiled:
    key = cfg.shape_key()
    if key not in self.compiled:
      self.compiled[key] = self._build(cfg)
      self.compile_count += 1
    return self.compiled[key]

  def _build(self, cfg: RunConfig) -> Compiled:
    model = build_model(cfg)
    params = parameters(model)
    opt = make_optimizer(cfg.opt, params, hidden_matrices=model.hidden_matrices())
    schedule = Schedule()
    mean_std = Tensor.zeros(2, dtype=dtypes.float32).contiguous().realize()
    augment = Tensor.zeros(3, dtype=dtypes.float32).contiguous().realize()
    tricks = Tensor.zeros(3, dtype=dtypes.float32).contiguous().realize()
    state = buffers(model)
    average = WeightAverage(list(model_state(model).values())) if cfg.ema else None

    # contiguous: decode uint8 -> normalized float once, not again inside the first layer's forward and gradient matmuls
    def normalize(x: Tensor) -> Tensor: return ((x - mean_std[0]) / mean_std[1]).contiguous()

    # a fresh TinyJit per shape: a TinyJit on a method would be shared by every model and replay the first one's kernels
    @TinyJit
    def train_step(x: Tensor, y: Tensor) -> Tensor:
      with Context(TRAINING=1):
        x = x.float() / 255.0
        if cfg.augment: x = random_affine(x, model.rng, augment)
        if cfg.flip: x = random_flip(x, model.rng)
        if cfg.cutout: x = cutout(x, model.rng, tricks[2])
        logits = model(normalize(x), training=True)
        if cfg.label_smoothing: loss = smoothed_cross_entropy(logits, y.cast(dtypes.int32), tricks[0])
        else: loss = logits.sparse_categorical_crossentropy(y.cast(dtypes.int32))
        opt.zero_grad()
        for p, g in zip(params, loss.gradient(*params)): p.grad = g
        updates = opt.step(schedule.lr())
        if average is not None: updates += average.update(tricks[1])
        Tensor.realize(loss, *updates, *state, schedule.h["t"])
      return loss

    @TinyJit
    def eval_step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
      # the logits are kept: the loss and the argmax read them (else each recomputes the last layer), and the test
      # pass takes its predictions from them
      logits = model(normalize(x.float() / 255.0), training=False).contiguous()
      y = y.cast(dtypes.int32)
      loss_sum = logits.sparse_categorical_crossentropy(y, reduction="sum")  # padding rows carry label -1: ignored
      correct = (logits.argmax(axis=-1) == y).sum()
      Tensor.realize(loss_sum, correct, logits)
      return loss_sum, correct, logits

    def buffer(shape: tuple, dtype) -> Tensor: return Tensor.zeros(*shape, dtype=dtype, device=self.device).contiguous().realize()
    image = (28, 28)
    inputs = {"x": buffer((cfg.batch, *image), dtypes.uint8), "y": buffer((cfg.batch,), dtypes.uint8),
              "ex": buffer((EVAL_BATCH, *image), dtypes.uint8), "ey": buffer((EVAL_BATCH,), dtypes.int32)}
    if self.planned and (planned := self.planned.get(cfg.shape_key())): self.expected[train_step], self.expected[eval_step] = planned
    return Compiled(model, opt, schedule, mean_std, augment, train_step, eval_step, params, inputs, tricks, average)

  def reset(self, c: Compiled, cfg: RunConfig) -> None:
    """A fresh run on reused buffers: new weights for the seed, zeroed optimizer state, this run's scalars."""
    reset_model(c.model, cfg.seed)
    c.opt.reset()
    c.opt.set_hyper(**{k: float(getattr(cfg, k)) for k in OPT_HYPER[cfg.opt]})
    c.schedule.set(cfg)
    mean, std = normalization(cfg.dataset)
    fill(c.mean_std, [mean, std])
    fill(c.augment, [math.radians(cfg.rotate), cfg.scale, cfg.shift])
    fill(c.tricks, [cfg.label_smoothing, cfg.ema, cfg.cutout])
    if c.average is not None: c.average.reset()

  def train_batch(self, c: Compiled, x: np.ndarray, y: np.ndarray) -> float:
    """One optimizer step on this batch; returns its loss (reading it also waits for the step to finish)."""
    return read_scalar(self._call(c.train_step, write_input(c.inputs["x"], x), write_input(c.inputs["y"], y)))

  def evaluate(self, c: Compiled, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean loss and accuracy over all of x in fixed-size batches (the last one padded, so one compiled shape)."""
    loss, acc, _ = self.evaluate_logits(c, x, y, keep=False)
    return loss, acc

  def evaluate_logits(self, c: Compiled, x: np.ndarray, y: np.ndarray, keep: bool = True) -> tuple[float, float, np.ndarray | None]:
    """evaluate(), and the logits (N, 10) of every image when keep: one pass gives the test numbers and predictions."""
    loss_sum, correct, logits = 0.0, 0, []
    for i in range(0, len(x), EVAL_BATCH):
      stop.check()  # a stop during evaluation, even one swallowed by a finalizer
      xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH].astype(np.int32)
      if len(xb) < EVAL_BATCH:
        pad = EVAL_BATCH - len(xb)
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
        yb = np.concatenate([yb, np.full(pad, -1, np.int32)])
      batch_loss, batch_correct, batch_logits = self._call(c.eval_step, write_input(c.inputs["ex"], xb), write_input(c.inputs["ey"], yb))
      loss_sum += read_scalar(batch_loss)
      correct += int(read_scalar(batch_correct))
      if keep: logits.append(batch_logits.numpy()[:min(EVAL_BATCH, len(x) - i)])
    kept = (np.concatenate(logits) if logits else np.zeros((0, 10), np.float32)) if keep else None
    return loss_sum / len(x), correct / len(x), kept

  def predict(self, c: Compiled, x: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 images x (N, 28, 28), in eval-batch pieces (softmax in float64 on the host)."""
    return softmax(self.evaluate_logits(c, x, np.full(len(x), -1, np.int32))[2])

  def state(self, c: Compiled) -> dict[str, np.ndarray]:
    """The model's weights and BatchNorm statistics as host arrays (what a weights file holds)."""
    return {name: t.numpy().copy() for name, t in model_state(c.model).items()}

  def load_state(self, c: Compiled, state: dict[str, np.ndarray]) -> None:
    """Writes saved weights into the compiled model's buffers (names and shapes checked by the caller)."""
    for name, t in model_state(c.model).items(): fill(t, state[name])

  def run(self, cfg: RunConfig, data: Dataset, progress: Callable[[dict], None] | None = None) -> dict:
    """Train one configuration; returns its metrics and histories. A NaN/inf loss stops it as 'diverged'."""
    t0, compile_before = time.perf_counter(), self.compile_s
    c = self.prepare(cfg)
    self.reset(c, cfg)
    setup_s = time.perf_counter() - t0
    n_train = cfg.train_size or len(data.x_train)
    x_train, y_train = data.x_train[:n_train], data.y_train[:n_train]
    batches = batch_indices(len(x_train), cfg.batch, cfg.seed)
    history = {"step": [], "train_loss": [], "lr": [], "eval_step": [], "val_loss": [], "val_acc": []}
    step_times, status = [], "done"
    best = {"val_acc": -1.0, "val_loss": math.inf, "step": 0}
    plateau = {"best_loss": math.inf, "bad": 0, "scale": 1.0, "weights": None, "val": (None, None)}
    eval_s = 0.0
    for step in range(cfg.steps):
      stop.check()
      idx = next(batches)
      xb = x_train[idx]
      ts = time.perf_counter()
      loss = self.train_batch(c, xb, y_train[idx])
      elapsed = time.perf_counter() - ts
      if step >= 2: step_times.append(elapsed)  # step 1 compiles kernels, step 2 captures the JIT
      history["step"].append(step + 1)
      history["train_loss"].append(loss)
      history["lr"].append(lr_at(cfg, step, plateau["scale"]))
      if not math.isfinite(loss):
        status = "diverged"
        break
      if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
        te, compile_at = time.perf_counter(), self.compile_s
        if c.average is not None: c.average.swap()  # EMA: validate the averaged weights, then train on
        val_loss, val_acc = self.evaluate(c, data.x_val, data.y_val)
        if c.average is not None: c.average.swap()
        eval_s += time.perf_counter() - te - (self.compile_s - compile_at)  # the first evaluation compiles the eval step
        history["eval_step"].append(step + 1)
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        if val_acc > best["val_acc"]: best = {"val_acc": val_acc, "val_loss": val_loss, "step": step + 1}
        if cfg.schedule == "plateau":
          self._plateau(c, cfg, plateau, val_loss)
          if plateau["best_loss"] == val_loss: plateau["val"] = (val_loss, val_acc)  # the numbers of the weights it keeps
        if not math.isfinite(val_loss):
          status = "diverged"
          break
      if progress: progress({"step": step + 1, "steps": cfg.steps, "loss": loss, "lr": history["lr"][-1],
                             "val_acc": history["val_acc"][-1] if history["val_acc"] else None})
    final_val = (history["val_loss"][-1], history["val_acc"][-1]) if history["val_acc"] else (None, None)
    if cfg.schedule == "plateau" and plateau["weights"] is not None:
      self._load_weights(c, plateau["weights"])
      # the restored weights are the ones tested, so their validation numbers (measured when they were kept) are final
      if status == "done": final_val = plateau["val"]
    if c.average is not None: c.average.swap()  # EMA: the averaged weights are the ones tested and saved
    compile_s = self.compile_s - compile_before
    # training time: the optimizer steps and validation passes only, without building the model (setup) and without
    # compiling, kernel search (--beam) and capturing, which a shape pays once per process (compile_s)
    train_s = time.perf_counter() - t0 - setup_s - compile_s
    result = {"status": status, "history": history, "batch_shape": list(xb.shape), "params": count_parameters(c.model), "device": self.device,
              "setup_s": setup_s, "compile_s": compile_s, "eval_s": eval_s,
              "ms_per_step": 1000 * float(np.median(step_times)) if step_times else None,
              "steps_done": len(history["step"]), "best_val_acc": best["val_acc"] if best["val_acc"] >= 0 else None,
              "best_val_step": best["step"], "final_val_loss": final_val[0], "final_val_acc": final_val[1],
              "final_train_loss": history["train_loss"][-1] if history["train_loss"] else None}
    if status == "done":
      result["test_loss"], result["test_acc"], test_logits = self.evaluate_logits(c, data.x_test, data.y_test)
      n = min(TRAIN_EVAL_IMAGES, len(x_train))
      result["train_eval_loss"], result["train_acc"] = self.evaluate(c, x_train[:n], y_train[:n])
      result["test_predictions"] = confusion_and_errors(softmax(test_logits), data.y_test, data.x_test)
      result["weights"] = self.state(c)
    result["train_s"] = train_s
    result["wall_s"] = time.perf_counter() - t0
    return result

  def _plateau(self, c: Compiled, cfg: RunConfig, state: dict, val_loss: float) -> None:
    """Plateau decay: keep the best weights; after `patience` evaluations without improvement, restore them and lower the LR."""
    if val_loss < state["best_loss"] - 1e-4:
      state.update(best_loss=val_loss, bad=0, weights=[p.numpy().copy() for p in c.params])
      return
    state["bad"] += 1
    if state["bad"] >= cfg.patience:
      state["bad"], state["scale"] = 0, state["scale"] * cfg.lr_decay
      c.schedule.set_value("scale", state["scale"])
      if state["weights"] is not None: self._load_weights(c, state["weights"])

  def _load_weights(self, c: Compiled, weights: list[np.ndarray]) -> None:
    for p, w in zip(c.params, weights): fill(p, w)
