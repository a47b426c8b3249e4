"""Training tricks that live in the compiled step next to the optimizer: label smoothing and weight averaging (EMA).
Their values are device scalars, so runs that differ only in them share one compiled step."""
from __future__ import annotations
import numpy as np
from tinygrad import Tensor, dtypes
from explorer.fastpath import fill


def smoothed_cross_entropy(logits: Tensor, y: Tensor, smoothing: Tensor) -> Tensor:
  """Mean cross-entropy against (1 - s) * one_hot(y) + s / classes, as PyTorch's CrossEntropyLoss(label_smoothing=s)."""
  logp = logits.log_softmax(-1)
  nll = -(logp * y.one_hot(logits.shape[-1])).sum(-1)
  return ((1 - smoothing) * nll - smoothing * logp.mean(-1)).mean()


class WeightAverage:
  """Exponential moving average of the model's state (weights and BatchNorm running statistics) in buffers of its own,
  updated inside the compiled step. The decay ramps up as min(decay, (1 + t) / (10 + t)) (timm's ModelEmaV2 warmup),
  so the average does not hold on to the random initial weights in short runs."""
  def __init__(self, tensors: list[Tensor]):
    self.tensors = tensors
    self.average = [Tensor.zeros(*t.shape, dtype=t.dtype, device=t.device).contiguous().realize() for t in tensors]
    self.t = Tensor.zeros(1, dtype=dtypes.float32, device=tensors[0].device).contiguous().realize()

  def reset(self) -> None:
    """Start from the current (freshly initialized) weights."""
    for a, t in zip(self.average, self.tensors): a.assign(t.detach())
    self.t.assign(Tensor.zeros(1, dtype=dtypes.float32, device=self.t.device))
    Tensor.realize(*self.average, self.t)

  def update(self, decay: Tensor) -> list[Tensor]:
    """In the step, after the optimizer's assigns (so the tensors read here are the updated weights)."""
    self.t.assign(self.t + 1)
    d = decay.minimum((1 + self.t) / (10 + self.t))
    for a, t in zip(self.average, self.tensors): a.assign(d * a + (1 - d) * t.detach())
    return self.average + [self.t]

  def swap(self) -> None:
    """Exchange the model's tensors and the average, in place (the compiled steps keep their buffers): before an
    evaluation, and again after it."""
    live = [t.numpy().copy() for t in self.tensors]
    for t, a in zip(self.tensors, self.average): t.assign(a.contiguous()).realize()
    for a, v in zip(self.average, live): fill(a, v)


def confusion_and_errors(probs: np.ndarray, labels: np.ndarray, images: np.ndarray, keep: int = 24) -> dict:
  """What a report shows of a model's test predictions: the confusion matrix (rows: true class) and the `keep` most
  confidently wrong images (index, true, predicted, probability), the images zlib-compressed (a few KB in the record)."""
  import base64, zlib
  pred = probs.argmax(-1)
  confusion = np.zeros((10, 10), np.int64)
  np.add.at(confusion, (labels.astype(np.int64), pred), 1)
  wrong = np.flatnonzero(pred != labels)
  wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:keep]
  return {"confusion": confusion.tolist(),
          "wrong": [[int(i), int(labels[i]), int(pred[i]), round(float(probs[i, pred[i]]), 6)] for i in wrong],
          "wrong_images": base64.b64encode(zlib.compress(np.ascontiguousarray(images[wrong], np.uint8).tobytes(), 9)).decode()}
