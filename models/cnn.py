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
      if pools: x = x.max_pool2d(2) if self.pool == "max" else x.avg_pool2d(2)
    x = self.act(self.fc(x.flatten(1), input_gradient=training)).contiguous()
    return self.out(dropout(x, self.p_dropout, self.rng, training), input_gradient=training)

  def hidden_matrices(self) -> list[Tensor]:
    """Muon's share: the conv kernels after the first (as 2-D matrices) and the hidden fc weight."""
    return [conv.weight for conv in self.convs[1:]] + [self.fc.weight]
