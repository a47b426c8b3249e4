"""The training keys label_smoothing, ema, cutout and flip: each does what it says, inside the compiled step."""
import numpy as np
import pytest
from tinygrad import Tensor, TinyJit
from explorer.config import make_config, with_overrides
from explorer.errors import UserError
from explorer.train import Trainer
from explorer.tricks import WeightAverage, confusion_and_errors, smoothed_cross_entropy
from models.augment import cutout, random_flip
from models.layers import Rng

TINY_MLP = {"width": 32, "steps": 12, "batch": 16, "eval_every": 4}


def test_label_smoothing_matches_the_reference_formula_and_pytorchs_definition():
  rng = np.random.default_rng(0)
  logits, y = rng.normal(size=(6, 10)).astype(np.float32), rng.integers(0, 10, 6)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  for s in (0.0, 0.1, 0.3):
    target = np.full((6, 10), s / 10) + (1 - s) * np.eye(10)[y]
    expected = -(target * logp).sum(-1).mean()
    got = smoothed_cross_entropy(Tensor(logits), Tensor(y), Tensor([s])).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(Tensor(logits).sparse_categorical_crossentropy(Tensor(y), label_smoothing=s).item(), rel=1e-5)


def test_label_smoothing_is_a_run_time_value_of_one_compiled_step(tiny_data):
  trainer = Trainer()
  base = make_config("mlp", {**TINY_MLP, "label_smoothing": 0.05}, "t")
  a = trainer.run(base, tiny_data)
  b = trainer.run(with_overrides(base, {"label_smoothing": 0.2}, "t"), tiny_data)
  assert trainer.compile_count == 1, "another smoothing value reuses the compiled step"
  assert a["history"]["train_loss"] != b["history"]["train_loss"]
  plain = trainer.run(with_overrides(base, {"label_smoothing": 0.0}, "t"), tiny_data)
  assert trainer.compile_count == 2, "off (0) is the plain loss's graph"
  fresh = Trainer().run(with_overrides(base, {"label_smoothing": 0.0}, "t"), tiny_data)
  assert plain["history"]["train_loss"] == fresh["history"]["train_loss"]


def test_weight_average_follows_the_ema_formula_with_warmup():
  p = Tensor([1.0, -2.0]).contiguous().realize()
  avg = WeightAverage([p])
  avg.reset()
  decay = Tensor([0.9]).contiguous().realize()

  @TinyJit
  def step():
    p.assign(p + 1.0)
    Tensor.realize(p, *avg.update(decay))
  ref, live = np.array([1.0, -2.0]), np.array([1.0, -2.0])
  for t in range(1, 8):
    step()
    live = live + 1
    d = min(0.9, (1 + t) / (10 + t))
    ref = d * ref + (1 - d) * live
    np.testing.assert_allclose(avg.average[0].numpy(), ref, rtol=1e-6)
  avg.swap()
  np.testing.assert_allclose(p.numpy(), ref, rtol=1e-6)
  np.testing.assert_allclose(avg.average[0].numpy(), live, rtol=1e-6)


def test_ema_run_trains_the_same_weights_but_evaluates_and_keeps_the_average(tiny_data):
  trainer = Trainer()
  base = make_config("mlp", {**TINY_MLP, "lr_max": 0.01}, "t")
  plain = trainer.run(base, tiny_data)
  ema = trainer.run(with_overrides(base, {"ema": 0.9}, "t"), tiny_data)
  assert ema["history"]["train_loss"] == plain["history"]["train_loss"], "the average never feeds back into training"
  assert ema["history"]["val_loss"] != plain["history"]["val_loss"], "validation sees the averaged weights"
  differ = [np.abs(ema["weights"][k] - plain["weights"][k]).max() for k in plain["weights"]]
  assert min(differ) > 0, "the kept weights are the average, not the last step's"
  c = trainer.prepare(with_overrides(base, {"ema": 0.9}, "t"))
  assert trainer.evaluate(c, tiny_data.x_test, tiny_data.y_test)[1] == ema["test_acc"], "tested weights = kept weights"


def test_ema_and_plateau_are_refused_together():
  with pytest.raises(UserError, match="ema and the plateau schedule"):
    make_config("mlp", {"ema": 0.99, "schedule": "plateau"}, "t")


def test_cutout_blanks_one_square_of_at_most_length_pixels():
  rng = Rng()
  rng.reseed(3)
  x = Tensor.ones(64, 28, 28)
  out = cutout(x, rng, Tensor([8.0])).numpy()
  for img in out:
    rows, cols = np.flatnonzero((img == 0).any(1)), np.flatnonzero((img == 0).any(0))
    assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
    assert (img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] == 0).all(), "one filled square"
    assert (img == 0).sum() == len(rows) * len(cols)
  assert ((out == 0).sum(axis=(1, 2)) == 64).mean() > 0.4, "most squares lie wholly inside the image"


def test_flip_mirrors_about_half_of_the_images_and_nothing_else():
  rng = Rng()
  rng.reseed(1)
  x = np.random.default_rng(0).random((64, 28, 28)).astype(np.float32)
  out = random_flip(Tensor(x), rng).numpy()
  same = [np.array_equal(o, i) for o, i in zip(out, x)]
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
  assert all(s or m for s, m in zip(same, mirrored))
  assert 16 <= sum(mirrored) <= 48


def test_confusion_and_most_confident_errors():
  probs = np.array([[0.9, 0.1] + [0] * 8, [0.2, 0.8] + [0] * 8, [0.7, 0.3] + [0] * 8, [0.4, 0.6] + [0] * 8])
  labels = np.array([0, 0, 1, 1])
  images = np.arange(4 * 784, dtype=np.uint8).reshape(4, 28, 28)
  out = confusion_and_errors(probs, labels, images, keep=5)
  assert np.array(out["confusion"])[:2, :2].tolist() == [[1, 1], [1, 1]]
  assert [e[:3] for e in out["wrong"]] == [[1, 0, 1], [2, 1, 0]], "most confident first: 0.8 before 0.7"
