"""Convolutional net: [conv -> norm -> activation -> Dropout2D -> pool] per entry of `channels`, then fc -> 10.
Pooling halves the map only while it stays at least 4x4, so deep stacks (6-8 convs) never shrink it to nothing."""
from __future__ import annotations
from tinygrad import Tensor
from models.layers import Conv2d, Linear, Norm, Rng, activation, dropout


class CNN:
  def __init__(self, channels: tuple[int, ...], kernel: int = 3, pool: str = "max", norm: str = "none", act: str = "relu",
               p_dropout: float = 0.0, fc_width: int = 128, n_out: int = 10):
    self.convs, self.norms, self.pools = [], [], []
    c_in, size = 1, 28
    for c in channels:
      self.convs.append(Conv2d(c_in, c, kernel))
      self.norms.append(Norm(norm, c) if norm != "none" else None)
      pools = pool != "none" and size // 2 >= 4
      self.pools.append(pools)
      size = size // 2 if pools else size
      c_in = c
    self.pool, self.act, self.p_dropout, self.rng = pool, activation(act), p_dropout, Rng()
    self.fc = Linear(c_in * size * size, fc_width)
    self.out = Linear(fc_width, n_out)

  def layers(self) -> list: return self.convs + [n for n in self.norms if n is not None] + [self.fc, self.out]

  def __call__(self, x: Tensor, training: bool = False) -> Tensor:
    x = x.reshape(x.shape[0], 1, 28, 28)
    for conv, norm, pools in zip(self.convs, self.norms, self.pools):
      x = conv(x)
      if norm is not None: x = norm(x, training)
      x = dropout(self.act(x), self.p_dropout, self.rng, training, per_channel=True)
      if pools: x = pool2x2(x, self.pool)
    x = self.act(self.fc(x.flatten(1), input_gradient=training)).contiguous()
    return self.out(dropout(x, self.p_dropout, self.rng, training), input_gradient=training)

  def hidden_matrices(self) -> list[Tensor]:
    """Muon's share: the conv kernels after the first (as 2-D matrices) and the hidden fc weight."""
    return [conv.weight for conv in self.convs[1:]] + [self.fc.weight]


def pool2x2(x: Tensor, kind: str) -> Tensor:
  """max_pool2d(2) or avg_pool2d(2) as a reshape into 2x2 windows. tinygrad's pools take any kernel, stride and
  padding through repeated and shrunk views, so their gradient sums each pixel over every window it might be in, with
  index arithmetic and masks (the default CNN's two: 7.8-8.4 and 6.0 ms of a batch-128 step's 70-79 ms of kernels on
  one thread of this CPU). A pixel here is in exactly one window: the same values out and back (only a zero
  gradient's sign can differ, -0.0 here where tinygrad's sum gives +0.0; the sums it goes into drop it), and that
  step's kernels took 58.7-59.6 ms (bench/experiments_kernels.py cnn 128, EXPLORER_THREADS=1)."""
  n, c, h, w = x.shape
  if h % 2 or w % 2: x = x[:, :, :h - h % 2, :w - w % 2]  # as tinygrad's pools: an odd last row or column is left out
  # contiguous: else tinygrad computes the convolution before it inside the max, where clang contracts its
  # multiply-adds into FMAs differently (evaluation's logits changed in the last bits)
  windows = x.contiguous().reshape(n, c, h // 2, 2, w // 2, 2)
  return windows.max(axis=(3, 5)) if kind == "max" else windows.mean(axis=(3, 5))
