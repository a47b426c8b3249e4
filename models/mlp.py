"""Multi-layer perceptron: 784 -> hidden widths (activation, dropout) -> 10."""
from __future__ import annotations
from tinygrad import Tensor
from models.layers import Linear, Rng, activation, dropout


class MLP:
  def __init__(self, widths: tuple[int, ...], act: str = "relu", p_dropout: float = 0.0, n_in: int = 784, n_out: int = 10):
    sizes = (n_in,) + tuple(widths)
    self.hidden = [Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    self.out = Linear(sizes[-1], n_out)
    self.act, self.p_dropout, self.rng = activation(act), p_dropout, Rng()

  def layers(self) -> list: return self.hidden + [self.out]

  def __call__(self, x: Tensor, training: bool = False) -> Tensor:
    x = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(self.hidden):
      # contiguous: without it the activation is fused into the next matmul and recomputed for every output column
      x = dropout(self.act(layer(x, input_gradient=training and i > 0)).contiguous(), self.p_dropout, self.rng, training)
    return self.out(x, input_gradient=training)

  def hidden_matrices(self) -> list[Tensor]:
    """2-D weights between hidden layers: the ones Muon optimizes (not the input or output layer)."""
    return [layer.weight for layer in self.hidden[1:]]
