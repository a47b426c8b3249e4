"""One idea at a time, each in a fresh process: ms/step of the default model's train step with one thing changed.
  python bench/experiments_step.py VARIANT [model] [batch] [steps]
Variants: base (the product's Trainer.train_batch: batches copied into preallocated input buffers), noitem (no per-step .item(): sync once at the end), gather (whole uint8 train set
on the device, batch gathered by an index tensor inside the JIT), shrink (per-epoch shuffled copy on the device, batch
= a Variable slice), constlr (plain LR buffer, no in-graph schedule), tg_adamw / tg_adamw_fused (tinygrad's nn.optim
AdamW instead of explorer.optim), nocontig (models without .contiguous() after activations), half (float16 params)."""
import os, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np
from tinygrad import Tensor, TinyJit, Variable, dtypes
from tinygrad import Context
from bench import default_config, batches, WARMUP
from explorer.data import load_dataset, normalization
from explorer import fastpath
fastpath.install()  # the product's CPU fast path, as the CLI installs it
from explorer.train import Trainer, Schedule, OPT_HYPER
from explorer.optim import make_optimizer
from models import build_model, buffers, parameters, reset_model

variant = sys.argv[1]
model_name = sys.argv[2] if len(sys.argv) > 2 else "mlp"
B = int(sys.argv[3]) if len(sys.argv) > 3 else 128
STEPS = int(sys.argv[4]) if len(sys.argv) > 4 else 25
cfg = default_config(model_name, B, WARMUP + STEPS)
data = load_dataset("mnist", os.environ.get("DATA_DIR"))
mean, std = normalization("mnist")

if variant == "nocontig":  # patch the model code path: activation output not made contiguous
  Tensor.contiguous_orig = Tensor.contiguous
  import models.mlp, models.cnn
  for mod in (models.mlp, models.cnn):
    src = Path(mod.__file__).read_text().replace(".contiguous()", "")
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
  import models as M; M.MLP, M.CNN = models.mlp.MLP, models.cnn.CNN

def run_product(sync_each=True):
  tr = Trainer(beam=int(os.environ.get("EXPLORER_BEAM", 0))); c = tr.prepare(cfg); tr.reset(c, cfg)
  times = []
  bs = list(batches(data, cfg, WARMUP + STEPS))
  for x, y in bs[:WARMUP]: tr.train_batch(c, x, y)
  if sync_each:
    for x, y in bs[WARMUP:]:
      t = time.perf_counter(); tr.train_batch(c, x, y); times.append(time.perf_counter() - t)
    return np.median(times)
  t = time.perf_counter()
  for x, y in bs[WARMUP:]: loss = c.train_step(Tensor(x), Tensor(y))
  loss.item()
  return (time.perf_counter() - t) / STEPS

def run_copyin():
  """The product's step fed through two input tensors allocated once; each batch is memcpy'd into their buffers."""
  tr = Trainer(); c = tr.prepare(cfg); tr.reset(c, cfg)
  xt = Tensor.zeros(B, 28, 28, dtype=dtypes.uint8).contiguous().realize()
  yt = Tensor.zeros(B, dtype=dtypes.uint8).contiguous().realize()
  times = []
  for x, y in batches(data, cfg, WARMUP + STEPS):
    t = time.perf_counter()
    np.frombuffer(xt.uop.buffer.as_memoryview(force_zero_copy=True), np.uint8)[:] = x.reshape(-1)  # syncs the device first
    np.frombuffer(yt.uop.buffer.as_memoryview(force_zero_copy=True), np.uint8)[:] = y
    c.train_step(xt, yt).item(); times.append(time.perf_counter() - t)
  return np.median(times[WARMUP:])

def build(feed="np", lr_mode="schedule", opt_mode="ours", dtype=dtypes.float32, xcontig=False):
  model = build_model(cfg); params = parameters(model); reset_model(model, cfg.seed)
  if opt_mode == "ours":
    opt = make_optimizer(cfg.opt, params, hidden_matrices=model.hidden_matrices())
    opt.set_hyper(**{k: float(getattr(cfg, k)) for k in OPT_HYPER[cfg.opt]})
  else:
    from tinygrad.nn.optim import AdamW
    for p in params: p.requires_grad = True
    opt = AdamW(params, lr=cfg.lr_max, weight_decay=cfg.wd, fused=opt_mode.endswith("fused"))
  sched = Schedule(); sched.set(cfg)
  lr_buf = Tensor([cfg.lr_max]).contiguous().realize()
  state = buffers(model)
  if feed == "gather": x_all, y_all = Tensor(data.x_train).realize(), Tensor(data.y_train).realize()
  if feed == "shrink":
    x_all, y_all = Tensor(data.x_train).contiguous().realize(), Tensor(data.y_train).contiguous().realize()
  @TinyJit
  def step(a, b):
    with Context(TRAINING=1):
      if feed == "gather": x, y = x_all[a], y_all[a]
      elif feed == "shrink": x, y = x_all.shrink(((a, a + B), None, None)), y_all.shrink(((a, a + B),))
      else: x, y = a, b
      x = x.float() / 255.0
      x = ((x - mean) / std).cast(dtype)
      if xcontig: x = x.contiguous()
      loss = model(x, training=True).float().sparse_categorical_crossentropy(y.cast(dtypes.int32))
      opt.zero_grad()
      for p, g in zip(params, loss.gradient(*params)): p.grad = g
      lr = sched.lr() if lr_mode == "schedule" else lr_buf
      upd = opt.step(lr) if opt_mode == "ours" else opt.schedule_step()
      Tensor.realize(loss, *upd, *state, sched.h["t"])
    return loss
  return step, params

def run_custom(**kw):
  step, _ = build(**kw)
  times = []
  rng = np.random.default_rng(0)
  for i, (x, y) in enumerate(batches(data, cfg, WARMUP + STEPS)):
    t = time.perf_counter()
    if kw.get("feed") == "gather": step(Tensor(np.sort(rng.choice(len(data.x_train), B, replace=False)).astype(np.int32)), None).item()
    elif kw.get("feed") == "shrink": step(Variable("start", 0, len(data.x_train) - B).bind(int(rng.integers(0, len(data.x_train) - B))), None).item()
    elif kw.get("feed") == "copyin":
      if i == 0: xt, yt = Tensor.zeros(B, 28, 28, dtype=dtypes.uint8).contiguous().realize(), Tensor.zeros(B, dtype=dtypes.uint8).contiguous().realize()
      np.frombuffer(xt.uop.buffer.as_memoryview(force_zero_copy=True), np.uint8)[:] = x.reshape(-1)
      np.frombuffer(yt.uop.buffer.as_memoryview(force_zero_copy=True), np.uint8)[:] = y
      step(xt, yt).item()
    else: step(Tensor(x), Tensor(y)).item()
    times.append(time.perf_counter() - t)
  return np.median(times[WARMUP:])

t0 = time.perf_counter()
ms = 1000 * {"base": lambda: run_product(), "noitem": lambda: run_product(False), "nocontig": lambda: run_product(),
             "custom": lambda: run_custom(), "gather": lambda: run_custom(feed="gather"), "shrink": lambda: run_custom(feed="shrink"),
             "constlr": lambda: run_custom(lr_mode="const"), "tg_adamw": lambda: run_custom(lr_mode="const", opt_mode="tg"),
             "ours_constlr": lambda: run_custom(lr_mode="const"),
             "tg_adamw_fused": lambda: run_custom(lr_mode="const", opt_mode="tg_fused"),
             "copyin": run_copyin, "copyin_xcontig": lambda: run_custom(feed="copyin", xcontig=True), "xcontig": lambda: run_custom(xcontig=True),
             "gather_xcontig": lambda: run_custom(feed="gather", xcontig=True)}[variant]()
print(f"{variant:16s} {model_name} b{B}: {ms:7.2f} ms/step   (process {time.perf_counter() - t0:.1f} s)")
