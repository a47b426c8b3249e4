"""The two model families. build_model turns a RunConfig into a model; reset_model re-initializes it in place."""
from __future__ import annotations
import numpy as np
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict
from models.cnn import CNN
from models.mlp import MLP


def build_model(cfg) -> MLP | CNN:
  if cfg.model == "mlp": return MLP(cfg.hidden_widths, cfg.act, cfg.dropout)
  return CNN(tuple(cfg.channels), cfg.kernel, cfg.pool, cfg.norm, cfg.act, cfg.dropout, cfg.width)


def reset_model(model: MLP | CNN, seed: int) -> None:
  """Fresh weights for `seed`, written into the existing buffers (so a compiled step that uses them stays valid)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers(): layer.reset(rng)
  model.rng.reseed(seed)


def parameters(model: MLP | CNN) -> list[Tensor]:
  return [t for layer in model.layers() for t in (layer.weight, layer.bias)]


def buffers(model: MLP | CNN) -> list[Tensor]:
  """Non-trained state updated by the step (BatchNorm running stats, the RNG counter)."""
  return [b for layer in model.layers() if hasattr(layer, "buffers") for b in layer.buffers()] + [model.rng.counter]


def model_state(model: MLP | CNN) -> dict[str, Tensor]:
  """Named weights and BatchNorm running statistics (tinygrad's get_state_dict without the RNG state): a weights file's content."""
  return {k: v for k, v in get_state_dict(model).items() if not k.startswith("rng.")}


def count_parameters(model: MLP | CNN) -> int:
  return sum(t.numel() for t in parameters(model))
