"""Training: schedule values, model shapes, every hyperparameter takes effect, compile-once reuse gives the same
numbers as a fresh compile, divergence, plateau decay, augmentation, normalization layers, a real MNIST run."""
import itertools, math
import numpy as np
import pytest
from tinygrad import GlobalCounters, Tensor
from explorer import fastpath
from explorer.fastpath import cpu_threads
from explorer.config import KEYS, make_config, with_overrides
from explorer.errors import UserError
from explorer.train import Schedule, Trainer, batch_indices, lr_at
from models import build_model, count_parameters, reset_model
from models.augment import random_affine
from models.cnn import pool2x2
from models.layers import Conv2d, Linear, Norm, Rng

TINY_MLP = {"width": 32, "steps": 4, "batch": 16, "eval_every": 2}
TINY_CNN = {"channels": [4, 8], "width": 16, "steps": 3, "batch": 8, "eval_every": 3}


def fingerprint(result: dict) -> tuple:
  h = result["history"]
  return (result["steps_done"], tuple(np.round(h["train_loss"], 6)), tuple(np.round(h["lr"], 9)), tuple(h["eval_step"]),
          tuple(np.round(h["val_loss"], 6)), result.get("test_acc"), result.get("params"))


@pytest.mark.parametrize("schedule", ["cosine", "constant", "step"])
def test_in_graph_schedule_matches_reference(schedule):
  cfg = make_config("mlp", {"steps": 20, "warmup": 4, "lr_max": 0.1, "lr_min": 0.01, "schedule": schedule, "decay_every": 6}, "t")
  s = Schedule()
  s.set(cfg)
  graph = [s.lr().realize().item() for _ in range(cfg.steps)]
  reference = [lr_at(cfg, t) for t in range(cfg.steps)]
  np.testing.assert_allclose(graph, reference, rtol=1e-5, atol=1e-9)


def test_schedule_values():
  cos = make_config("mlp", {"steps": 100, "lr_max": 1e-3, "lr_min": 1e-5}, "t")
  assert lr_at(cos, 0) == pytest.approx(1e-3)
  assert lr_at(cos, 50) == pytest.approx((1e-3 + 1e-5) / 2)
  assert lr_at(cos, 100) == pytest.approx(1e-5)
  warm = with_overrides(cos, {"warmup": 10}, "t")
  assert [lr_at(warm, t) for t in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
  step = with_overrides(cos, {"schedule": "step", "decay_every": 30, "lr_decay": 0.5}, "t")
  assert [lr_at(step, t) for t in (0, 29, 30, 65)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])


def test_model_shapes_and_parameter_counts():
  mlp = build_model(make_config("mlp", {}, "t"))
  assert count_parameters(mlp) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
  assert mlp(Tensor.zeros(3, 28, 28)).shape == (3, 10)
  three = build_model(make_config("mlp", {"depth": 3, "width1": 64, "width2": 32, "width3": 16}, "t"))
  assert count_parameters(three) == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
  cnn = build_model(make_config("cnn", {"channels": [16, 32], "kernel": 3, "width": 128}, "t"))
  assert count_parameters(cnn) == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (32 * 7 * 7 * 128 + 128) + (128 * 10 + 10)
  deep = build_model(make_config("cnn", {"channels": [8] * 8, "width": 16, "norm": "group"}, "t"))
  assert sum(deep.pools) == 2, "pooling stops while the map is still at least 4x4"
  assert deep(Tensor.zeros(2, 28, 28), training=True).shape == (2, 10)


def variants(model: str):
  """For each key: a base config where the key matters, and the changed value."""
  base = TINY_MLP if model == "mlp" else TINY_CNN
  special = {  # keys that only act in some settings
    "lr_decay": ({"schedule": "step", "decay_every": 1}, 0.5), "decay_every": ({"schedule": "step"}, 2),
    "momentum": ({"opt": "sgd"}, 0.5), "nesterov": ({"opt": "sgd"}, True), "beta1": ({"opt": "adam"}, 0.5),
    "beta2": ({"opt": "adam"}, 0.9), "lr_min": ({"lr_max": 0.01}, 0.005), "warmup": ({}, 2),
    "width2": ({"depth": 2}, 8), "width3": ({"depth": 3}, 8), "depth": ({}, 3), "dropout": ({}, 0.5),
    "rotate": ({"augment": True}, 45.0), "scale": ({"augment": True}, 0.3), "shift": ({"augment": True}, 5.0),
    "train_size": ({}, 100), "eval_every": ({}, 1), "dataset": ({}, "fashion"), "wd": ({"lr_max": 0.05}, 0.5),
    "schedule": ({}, "constant"), "kernel": ({}, 5), "channels": ({}, [4]), "norm": ({}, "layer"), "batchnorm": ({}, True),
    "pool": ({}, "avg"), "act": ({}, "tanh"), "opt": ({}, "sgd"), "width": ({}, 8), "width1": ({}, 8), "batch": ({}, 12),
    "steps": ({}, 2), "lr_max": ({}, 0.01), "seed": ({}, 7), "augment": ({}, True),
    "flip": ({}, True), "cutout": ({}, 8), "label_smoothing": ({}, 0.1), "ema": ({}, 0.9),
  }
  for key in KEYS:
    if model not in key.models or key.name == "patience": continue  # patience: see test_plateau_*
    extra, value = special[key.name]
    yield key.name, {**base, **extra}, value


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_hyperparameter_changes_what_is_trained(model, tiny_data):
  """Each key, changed alone, changes the training (loss, LR curve, length or evaluation points): no key is
  silently ignored because the trainer reads another name."""
  trainer = Trainer()
  for name, base, value in variants(model):
    a_cfg = make_config(model, base, "t")
    b_cfg = with_overrides(a_cfg, {name: value}, "t")
    assert getattr(b_cfg, name) != getattr(a_cfg, name) or name == "batchnorm", name
    a, b = trainer.run(a_cfg, tiny_data), trainer.run(b_cfg, tiny_data)
    assert fingerprint(a) != fingerprint(b), f"{name}={value!r} did not change what was trained"


def test_batch_changes_the_batch_shape(tiny_data):
  trainer = Trainer()
  for batch in (8, 16):
    result = trainer.run(make_config("mlp", {**TINY_MLP, "batch": batch}, "t"), tiny_data)
    assert result["batch_shape"] == [batch, 28, 28]


def test_compile_once_per_shape_and_same_numbers_as_fresh(tiny_data):
  """Configs that differ only in scalars reuse one compiled step, and give exactly what a fresh process would."""
  base = make_config("mlp", {**TINY_MLP, "steps": 6, "dropout": 0.2}, "t")
  configs = [base, with_overrides(base, {"lr_max": 3e-3, "seed": 5}, "t"), with_overrides(base, {"wd": 0.1, "steps": 8}, "t"),
             with_overrides(base, {"schedule": "step", "lr_decay": 0.5, "warmup": 2}, "t"), base]
  shared = Trainer()
  reused = [fingerprint(shared.run(cfg, tiny_data)) for cfg in configs]
  assert shared.compile_count == 1
  assert reused[0] == reused[-1], "same seed, same device: identical metrics"
  for cfg, got in zip(configs[1:4], reused[1:4]):
    assert fingerprint(Trainer().run(cfg, tiny_data)) == got
  shared.run(with_overrides(base, {"width": 16}, "t"), tiny_data)
  assert shared.compile_count == 2, "a new width is a new shape"


def test_a_plan_tells_each_compiled_step_how_often_the_command_calls_it(tiny_data):
  """The tiles tune a kernel only where the planned calls pay for it (tests/test_fastpath.py): each step is told its
  own shape's train steps and eval batches (validation passes, the test pass and the training-image pass)."""
  base = make_config("mlp", {**TINY_MLP, "steps": 100, "eval_every": 0}, "t")  # validated every 50 steps: 2 passes
  longer, wider = with_overrides(base, {"steps": 30, "eval_every": 7}, "t"), with_overrides(base, {"width": 16}, "t")
  trainer = Trainer()
  trainer.plan([(base, tiny_data), (longer, tiny_data), (wider, tiny_data)])
  # tiny_data: 500 validation and 500 test images (one eval batch of 1,000 each pass), 2,500 training images (three);
  # 30 steps validated every 7: after 7, 14, 21, 28 and 30
  assert trainer.planned[base.shape_key()] == (100 + 30, (2 + 1 + 3) + (5 + 1 + 3))
  assert trainer.planned[wider.shape_key()] == (100, 2 + 1 + 3)
  c = trainer.prepare(base)
  assert (trainer.expected[c.train_step], trainer.expected[c.eval_step]) == (130, 15)
  assert Trainer().expected == {}, "no plan: nothing is known, every big kernel is tuned"


def test_diverging_run_is_recorded_as_diverged(tiny_data):
  cfg = make_config("mlp", {**TINY_MLP, "opt": "sgd", "lr_max": 10.0, "momentum": 0.9, "schedule": "constant", "steps": 30}, "t")
  result = Trainer().run(cfg, tiny_data)
  assert result["status"] == "diverged"
  assert result["steps_done"] < 30 and not math.isfinite(result["history"]["train_loss"][-1])
  assert "test_acc" not in result


def test_plateau_lowers_lr_and_restores_best_weights(tiny_data):
  cfg = make_config("mlp", {**TINY_MLP, "schedule": "plateau", "patience": 2, "lr_decay": 0.5}, "t")
  trainer = Trainer()
  c = trainer.prepare(cfg)
  trainer.reset(c, cfg)
  state = {"best_loss": math.inf, "bad": 0, "scale": 1.0, "weights": None}
  trainer._plateau(c, cfg, state, 1.0)
  best = [p.numpy().copy() for p in c.params]
  for p in c.params: p.assign(p + 1).realize()  # training moves the weights on
  trainer._plateau(c, cfg, state, 1.5)
  assert state["scale"] == 1.0 and state["bad"] == 1
  trainer._plateau(c, cfg, state, 1.2)
  assert state["scale"] == 0.5, "patience 2 reached: LR halves"
  assert c.schedule.h["scale"].item() == 0.5
  for p, b in zip(c.params, best): np.testing.assert_array_equal(p.numpy(), b)
  trainer._plateau(c, cfg, state, 0.5)
  assert state["bad"] == 0 and state["best_loss"] == 0.5


def test_plateau_reports_the_validation_numbers_of_the_restored_weights_it_tests(tiny_data):
  """The plateau schedule ends on its best weights; the run's final val numbers are theirs, like its test numbers."""
  cfg = make_config("mlp", {**TINY_MLP, "schedule": "plateau", "patience": 2, "lr_decay": 0.5, "lr_max": 1e-2, "steps": 60,
                            "eval_every": 5}, "t")
  trainer = Trainer()
  result = trainer.run(cfg, tiny_data)
  assert result["final_val_loss"] != result["history"]["val_loss"][-1], "the last evaluation's weights were not the best"
  assert (result["final_val_loss"], result["final_val_acc"]) == trainer.evaluate(trainer.prepare(cfg), tiny_data.x_val, tiny_data.y_val)
  assert result["final_val_loss"] in result["history"]["val_loss"]  # the restored weights were evaluated during training


def test_the_test_predictions_are_those_of_the_tested_weights(tiny_data):
  """One pass over the test set gives its loss, its accuracy and the report's predictions: they agree with each other,
  and with predict() on the same weights."""
  cfg = make_config("mlp", {**TINY_MLP, "steps": 20}, "t")
  trainer = Trainer()
  result = trainer.run(cfg, tiny_data)
  confusion = np.array(result["test_predictions"]["confusion"])
  assert confusion.sum() == len(tiny_data.y_test) and np.trace(confusion) / confusion.sum() == result["test_acc"]
  c = trainer.prepare(cfg)
  probs = trainer.predict(c, tiny_data.x_test)
  assert probs.shape == (len(tiny_data.x_test), 10) and np.allclose(probs.sum(-1), 1)
  assert (probs.argmax(-1) == tiny_data.y_test).mean() == result["test_acc"]
  assert trainer.evaluate(c, tiny_data.x_test, tiny_data.y_test) == (result["test_loss"], result["test_acc"])


def test_augmentation_identity_shapes_and_alignment():
  rng = Rng()
  rng.reseed(0)
  x = np.zeros((6, 28, 28), np.float32)
  x[:, 10:18, 12:16] = 1.0
  xt = Tensor(x)
  same = random_affine(xt, rng, Tensor([0.0, 0.0, 0.0])).numpy()
  np.testing.assert_allclose(same, x, atol=1e-5)
  moved = random_affine(Tensor(x.reshape(6, 1, 28, 28)), rng, Tensor([0.0, 0.0, 3.0])).numpy()
  assert moved.shape == (6, 1, 28, 28)
  ys, xs = np.mgrid[0:28, 0:28]
  for img in moved[:, 0]:  # image i stays image i: the blob moves by at most the 3-pixel shift
    cy, cx = (img * ys).sum() / img.sum(), (img * xs).sum() / img.sum()
    assert abs(cy - 13.5) <= 3.01 and abs(cx - 13.5) <= 3.01
  assert not np.allclose(moved[:, 0], x, atol=1e-3)
  rotated = random_affine(xt, rng, Tensor([math.radians(30), 0.1, 0.0])).numpy()
  assert rotated.sum(axis=(1, 2)) == pytest.approx(x.sum(axis=(1, 2)), rel=0.2), "mass is kept (within zoom)"


@pytest.mark.parametrize("kind, axes", [("batch", (0, 2, 3)), ("layer", (1, 2, 3)), ("instance", (2, 3)), ("group", None)])
def test_normalization_layer_statistics(kind, axes):
  x = Tensor(np.random.default_rng(0).normal(3.0, 5.0, (8, 16, 6, 6)).astype(np.float32))
  norm = Norm(kind, 16)
  norm.reset(np.random.default_rng(0))
  y = norm(x, training=True).numpy()
  if kind == "group": y, axes = y.reshape(8, 8, 2 * 6 * 6), (2,)  # 8 groups of 2 channels
  np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-4)
  np.testing.assert_allclose(y.std(axis=axes), 1, atol=1e-2)
  if kind == "batch": assert abs(norm.running_mean.numpy().mean() - 0.3) < 0.1, "running mean moved 10% towards 3"


def conv_and_stock(c_in: int, c_out: int, kernel: int, size: int, batch: int = 8) -> tuple[list, list]:
  """Conv2d's output, input gradient and weight gradient, and tinygrad's conv2d's on the same weights and data."""
  conv = Conv2d(c_in, c_out, kernel)
  conv.reset(np.random.default_rng(0))
  x = Tensor(np.random.default_rng(1).standard_normal((batch, c_in, size, size)).astype(np.float32)).realize()
  g = Tensor(np.random.default_rng(2).standard_normal((batch, c_out, size, size)).astype(np.float32)).realize()
  results = []
  for forward in (conv, lambda x: x.conv2d(conv.weight, conv.bias, padding=kernel // 2)):
    y = forward(x).relu()
    results.append([t.numpy() for t in (y, *(y * g).sum().gradient(x, conv.weight))])
  return results[0], results[1]


@pytest.mark.parametrize("kernel,size,c_in,c_out", [(3, 14, 16, 32), (3, 28, 1, 16), (3, 28, 4, 16), (5, 14, 8, 16), (9, 28, 4, 8),
                                                   (3, 7, 8, 16), (1, 14, 8, 16)])
def test_a_convolution_is_tinygrads_own_bit_for_bit(kernel, size, c_in, c_out):
  """Conv2d reads its weights through a copy with the output channels last and forms its input's gradient over the
  kernel's real taps only (both faster on the CPU): its output and both gradients are exactly those of tinygrad's
  conv2d on the weights as they are. The default CNN's two layers, other kernels, and the shapes that keep tinygrad's
  own input gradient (a 7x7 map, a 1x1 kernel), whose sums would round differently the other way."""
  ours, stock = conv_and_stock(c_in, c_out, kernel, size, batch=8 if size == 14 else 4)
  for a, b in zip(ours, stock): np.testing.assert_array_equal(a, b)
  if kernel > 1 and size >= 14:  # and the sum over real taps is the one that ran: far fewer operations than tinygrad's
    conv = Conv2d(c_in, c_out, kernel)
    x, g = Tensor.ones(4, c_in, size, size).contiguous().realize(), Tensor.ones(4, c_out, size, size).contiguous().realize()
    ops = []
    for forward in (conv, lambda x: x.conv2d(conv.weight, conv.bias, padding=kernel // 2)):
      GlobalCounters.reset()
      (forward(x) * g).sum().gradient(x)[0].realize()
      ops.append(GlobalCounters.global_ops)
    assert ops[0] < 0.75 * ops[1], ops


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size", [14, 7])
def test_pooling_by_2x2_windows_gives_tinygrads_pool_forward_and_back(kind, size):
  """pool2x2 (a reshape into windows, a faster gradient on the CPU) against tinygrad's max_pool2d(2)/avg_pool2d(2) on
  ReLU outputs (ties of zeros): the same bytes forward, the same gradient values (a max's zero gradient may be -0.0
  where tinygrad's is +0.0; the sums it goes into start from +0.0 and drop the sign: whole runs keep their bits, below)."""
  rng = np.random.default_rng(size)
  x = Tensor(np.maximum(np.round(rng.standard_normal((4, 8, size, size)) * 2) / 2, 0).astype(np.float32)).realize()
  g = Tensor(rng.standard_normal((4, 8, size // 2, size // 2)).astype(np.float32)).realize()
  stock = (lambda t: t.max_pool2d(2)) if kind == "max" else (lambda t: t.avg_pool2d(2))
  def forward_and_back(y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    grad = (y * g).sum().gradient(x)[0]  # before y is realized: a realized contiguous() no longer leads back to x
    return y.numpy(), grad.numpy()
  (ours, ours_grad), (theirs, their_grad) = forward_and_back(pool2x2(x, kind)), forward_and_back(stock(x))
  assert ours.tobytes() == theirs.tobytes()
  np.testing.assert_array_equal(ours_grad, their_grad)
  if kind == "avg": assert ours_grad.tobytes() == their_grad.tobytes()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_a_cnn_trained_through_pool2x2_is_bit_for_bit_one_trained_through_tinygrads_pools(tiny_data, monkeypatch, pool):
  import models.cnn
  cfg = make_config("cnn", {**TINY_CNN, "steps": 12, "pool": pool}, "t")
  ours = Trainer().run(cfg, tiny_data)
  monkeypatch.setattr(models.cnn, "pool2x2", lambda t, kind: t.max_pool2d(2) if kind == "max" else t.avg_pool2d(2))
  theirs = Trainer().run(cfg, tiny_data)
  assert ours["history"] == theirs["history"] and ours["test_acc"] == theirs["test_acc"]
  assert all(ours["weights"][name].tobytes() == w.tobytes() for name, w in theirs["weights"].items())


def test_the_cnns_evaluation_through_pool2x2_is_bit_for_bit_tinygrads_pool(monkeypatch):
  """Without the contiguous before pool2x2, tinygrad computes the convolution inside the max and the logits change in
  their last bits: evaluation (batch 1000, the default CNN) must give exactly what tinygrad's max_pool2d gives."""
  import models.cnn
  model = build_model(make_config("cnn", {}, "t"))
  reset_model(model, 0)
  x = Tensor(np.random.default_rng(0).standard_normal((1000, 1, 28, 28)).astype(np.float32)).realize()
  ours = model(x).numpy()
  monkeypatch.setattr(models.cnn, "pool2x2", lambda t, kind: t.max_pool2d(2))
  assert model(x).numpy().tobytes() == ours.tobytes()


@pytest.mark.parametrize("rows", [128, 1000])
def test_a_linear_layer_through_its_features_last_copy_is_tinygrads_own_bit_for_bit(rows):
  """Linear reads its weights through a copy with the output features contiguous (a faster kernel on the CPU): its
  output and both gradients are exactly those of tinygrad's linear on the weights as they are (the default MLP's first
  layer, at a train batch and at the eval batch)."""
  layer = Linear(784, 512)
  layer.reset(np.random.default_rng(0))
  x = Tensor(np.random.default_rng(1).standard_normal((rows, 784)).astype(np.float32)).realize()
  g = Tensor(np.random.default_rng(2).standard_normal((rows, 512)).astype(np.float32)).realize()
  results = []
  for forward in (layer, lambda x: x.linear(layer.weight.T, layer.bias)):
    y = forward(x).relu()
    results.append([t.numpy() for t in (y, *(y * g).sum().gradient(x, layer.weight))])
  for ours, stock in zip(*results): np.testing.assert_array_equal(ours, stock)


def test_reset_model_is_deterministic():
  cfg = make_config("cnn", TINY_CNN, "t")
  a, b = build_model(cfg), build_model(cfg)
  reset_model(a, 3)
  reset_model(b, 3)
  np.testing.assert_array_equal(a.fc.weight.numpy(), b.fc.weight.numpy())
  reset_model(b, 4)
  assert not np.array_equal(a.fc.weight.numpy(), b.fc.weight.numpy())


def test_real_mnist_mlp_reaches_a_meaningful_accuracy(mnist):
  cfg = make_config("mlp", {"width": 128, "steps": 150, "batch": 128, "lr_max": 2e-3}, "t")
  result = Trainer().run(cfg, mnist)
  assert result["status"] == "done"
  assert result["test_acc"] > 0.90 and result["best_val_acc"] > 0.90
  assert result["history"]["train_loss"][-1] < result["history"]["train_loss"][0] / 3


def test_preallocated_inputs_train_exactly_like_fresh_tensors(tiny_data):
  """The fast input path (batches copied into buffers allocated once) gives the losses of plain Tensor(np) inputs."""
  cfg = make_config("mlp", {**TINY_MLP, "steps": 6, "dropout": 0.2}, "t")
  fast = Trainer().run(cfg, tiny_data)["history"]["train_loss"]
  trainer = Trainer()
  c = trainer.prepare(cfg)
  trainer.reset(c, cfg)
  plain = [c.train_step(Tensor(tiny_data.x_train[idx]), Tensor(tiny_data.y_train[idx])).item()
           for _, idx in zip(range(cfg.steps), batch_indices(len(tiny_data.x_train), cfg.batch, cfg.seed))]
  assert fast == plain


def test_batch_indices_cover_each_epoch_once_and_repeat_for_a_seed():
  a = list(itertools.islice(batch_indices(100, 30, seed=3), 6))  # 3 full batches per epoch, the last 10 images dropped
  assert all(len(b) == 30 and list(b) == sorted(b) for b in a)
  first_epoch = np.concatenate(a[:3])
  assert len(set(first_epoch)) == 90
  assert not np.array_equal(a[0], a[3]), "each epoch is reshuffled"
  assert all(np.array_equal(x, y) for x, y in zip(a, itertools.islice(batch_indices(100, 30, seed=3), 6)))
  with pytest.raises(UserError, match="larger than the training set"): next(batch_indices(10, 30, seed=0))


def test_beam_searches_the_compiled_steps_and_trains_the_same(tiny_data, monkeypatch):
  """--beam N: tinygrad's kernel search runs for the train and eval steps (not for a plain run), and the searched
  kernels compute the same training up to float summation order. The first run searches (~1 min here); tinygrad's
  disk cache makes later ones fast."""
  from explorer.fastpath.cpu_threads import search
  monkeypatch.setenv("EXPLORER_PROGRAM_CACHE", "0")  # lower the kernels here, not read them from an earlier process
  searched = []
  real = search.beam_search
  monkeypatch.setattr(search, "beam_search", lambda *a, **k: searched.append((a[3], cpu_threads.threads())) or real(*a, **k))
  cfg = make_config("mlp", {**TINY_MLP, "steps": 5, "eval_every": 5}, "t")
  plain = Trainer().run(cfg, tiny_data)
  assert searched == []
  beamed = Trainer(beam=1, threads=2).run(cfg, tiny_data)
  Trainer(threads=1)  # back to one thread for the other tests
  assert len(searched) > 10 and set(searched) == {(1, 1)}, "train and eval kernels were searched with width 1, on one thread"
  np.testing.assert_allclose(beamed["history"]["train_loss"], plain["history"]["train_loss"], rtol=1e-5)
  assert beamed["test_acc"] == pytest.approx(plain["test_acc"], abs=0.002)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_cpu_threads_run_kernel_pieces_at_once_and_train_bit_identically(model, tiny_data, monkeypatch):
  """--threads 2: the pieces tinygrad splits a CPU kernel into run on a pool thread too; the numbers do not change."""
  if not fastpath.active() or fastpath.kernel_pieces() < 2: pytest.skip("needs the CPU fast path with NUM_CPU_THREADS >= 2")
  monkeypatch.setattr(cpu_threads, "MIN_PARALLEL_S", 0.0)  # split even the small kernels of these tiny models
  cfg = make_config(model, {**(TINY_MLP if model == "mlp" else TINY_CNN), "steps": 5, "eval_every": 5, "dropout": 0.1}, "t")
  one = Trainer(threads=1).run(cfg, tiny_data)
  on_pool = cpu_threads.stats["pieces_on_pool"]
  two = Trainer(threads=2).run(cfg, tiny_data)
  Trainer(threads=1)
  assert cpu_threads.stats["pieces_on_pool"] > on_pool, "kernel pieces ran on the pool thread"
  assert two["history"]["train_loss"] == one["history"]["train_loss"]
  assert (two["test_acc"], two["history"]["val_loss"]) == (one["test_acc"], one["history"]["val_loss"])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fast_replay_trains_bit_identically_to_tinygrads_jit_call(model, tiny_data):
  """explorer.fastpath.replay calls the captured kernels from a plan instead of through tinygrad's JIT: same numbers, and it
  really served the calls, including a second run of the same shape (weights re-initialized in place)."""
  from explorer.fastpath import replay
  if not fastpath.active(): pytest.skip("the CPU fast path is not installed (EXPLORER_STOCK=1 or not the CPU device)")
  cfg = make_config(model, {**(TINY_MLP if model == "mlp" else TINY_CNN), "steps": 6, "eval_every": 3, "dropout": 0.1}, "t")
  plain = Trainer(fast_replay=False).run(cfg, tiny_data)
  before, native = replay.stats["replayed"], replay.stats["native"]
  trainer = Trainer()
  first, second = trainer.run(cfg, tiny_data), trainer.run(with_overrides(cfg, {"lr_max": 2e-3}, "t"), tiny_data)
  assert replay.stats["replayed"] - before >= 2 * 4, "train and eval calls after the capture were replayed"
  assert replay.stats["native"] - native == replay.stats["replayed"] - before, "each as one call of the native pool"
  assert first["history"]["train_loss"] == plain["history"]["train_loss"]
  assert (first["test_acc"], first["history"]["val_loss"]) == (plain["test_acc"], plain["history"]["val_loss"])
  again = Trainer(fast_replay=False).run(with_overrides(cfg, {"lr_max": 2e-3}, "t"), tiny_data)
  assert second["history"]["train_loss"] == again["history"]["train_loss"] and second["test_acc"] == again["test_acc"]


def test_fast_replay_falls_back_to_tinygrad_for_other_input_buffers():
  if not fastpath.active(): pytest.skip("the CPU fast path is not installed (EXPLORER_STOCK=1 or not the CPU device)")
  from tinygrad import TinyJit
  from explorer.fastpath import buffers, replay
  w = Tensor.ones(4, 4).contiguous().realize()
  step = TinyJit(lambda x: (x @ w).relu().sum().realize())
  def buffer(values: np.ndarray) -> Tensor: return buffers.write_input(Tensor.zeros(4, 4).contiguous().realize(), values)
  x = buffer(np.arange(16, dtype=np.float32).reshape(4, 4))
  for _ in range(3): want = replay.call(step, x).item()
  before = replay.stats["replayed"]
  assert replay.call(step, x).item() == want and replay.stats["replayed"] == before + 1
  other = buffer(2 * np.arange(16, dtype=np.float32).reshape(4, 4))
  assert replay.call(step, other).item() == 2 * want, "a new input buffer gets a new plan, not the old buffer's result"
  assert replay.call(step, x).item() == want


def test_cpu_threads_defaults_and_one_thread_block(monkeypatch):
  if not fastpath.active(): pytest.skip("the CPU fast path is not installed (EXPLORER_STOCK=1 or not the CPU device)")
  NUM_CPU_THREADS = cpu_threads.NUM_CPU_THREADS
  monkeypatch.setattr(cpu_threads, "available_cores", lambda: 8)
  monkeypatch.setattr(NUM_CPU_THREADS, "value", 8)
  assert [cpu_threads.default_threads(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
  monkeypatch.setattr(NUM_CPU_THREADS, "value", 2)
  assert cpu_threads.default_threads(1) == 2, "never more threads than the pieces a kernel is split into"
  assert cpu_threads.set_threads(2) == 2
  with cpu_threads.one_thread(): assert cpu_threads.threads() == 1
  assert cpu_threads.threads() == 2
  assert cpu_threads.set_threads(1) == 1


def test_compile_and_kernel_search_time_is_kept_out_of_training_time(tiny_data, monkeypatch):
  """A BEAM search happens inside the calls that compile a step. Here a fake one (a second of sleep in each call that
  compiles or captures the train or eval step, no real search) must land in compile_s, not in train_s or eval_s, and
  be announced before it starts; a second run of the same shape compiles nothing."""
  import time
  from explorer.train import Trainer as T
  real = T._compile_call
  def slow_search(self, jit, *args):
    time.sleep(1.0)
    return real(self, jit, *args)
  monkeypatch.setattr(T, "_compile_call", slow_search)
  trainer, events = Trainer(), []
  trainer.on_compile = lambda step, seconds: events.append((step, seconds))
  cfg = make_config("mlp", {**TINY_MLP, "width": 24, "steps": 6, "eval_every": 3}, "t")
  r = trainer.run(cfg, tiny_data)
  assert r["compile_s"] >= 4.0, "train step compile + capture, eval step compile + capture"
  assert r["train_s"] < 2.0 and r["eval_s"] < 1.0, (r["train_s"], r["eval_s"])
  assert r["setup_s"] + r["compile_s"] + r["train_s"] <= r["wall_s"]
  assert [e[0] for e in events] == ["train step", "train step", "eval step", "eval step"], "the test predictions come from the eval step"
  assert events[0][1] is None and events[1][1] >= 1.0, "announced before, with its time after"
  again = trainer.run(with_overrides(cfg, {"lr_max": 2e-3}, "t"), tiny_data)
  assert again["compile_s"] == 0 and len(events) == 4, "the same shape replays: nothing compiled or announced"
