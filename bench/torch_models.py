"""The explorer's models and optimizers in PyTorch, for the benchmarks only (bench.py, torch_suite.py; torch is never a
dependency of the product). Same layers in the same order as models/, the same initialization scheme (PyTorch's own
default, which models/layers.py copies), optionally the very weights of a tinygrad model."""
from __future__ import annotations
import math


def torch_model(torch, cfg, copy_from=None):
  """nn.Sequential of cfg's MLP or CNN (input: N x 28 x 28 floats, normalized). copy_from: a tinygrad model of the same
  configuration (models.build_model) whose current weights are copied in."""
  nn = torch.nn
  act = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": lambda: nn.GELU(approximate="tanh"), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
         "leakyrelu": nn.LeakyReLU}[cfg.act]  # tinygrad's gelu is the tanh approximation
  if cfg.model == "mlp":
    sizes, layers = (784,) + cfg.hidden_widths, [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]): layers += [nn.Linear(a, b), act()] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
    layers.append(nn.Linear(sizes[-1], 10))
  else:
    layers, c_in, size = [nn.Unflatten(1, (1, 28))], 1, 28
    for c in cfg.channels:  # conv -> norm -> activation -> Dropout2D -> pool, as models/cnn.py
      layers += [nn.Conv2d(c_in, c, cfg.kernel, padding=cfg.kernel // 2)] + norm_layer(nn, cfg.norm, c) + [act()]
      if cfg.dropout: layers.append(nn.Dropout2d(cfg.dropout))
      if cfg.pool != "none" and size // 2 >= 4:  # pooling stops at 4x4, as models/cnn.py
        layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
        size //= 2
      c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * size * size, cfg.width), act()] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
    layers.append(nn.Linear(cfg.width, 10))
  model = nn.Sequential(*layers)
  if copy_from is not None: copy_weights(torch, model, copy_from)
  return model


def norm_layer(nn, kind: str, c: int) -> list:
  if kind == "none": return []
  if kind == "batch": return [nn.BatchNorm2d(c)]  # momentum 0.1, eps 1e-5, unbiased running var: as models/layers.Norm
  return [nn.GroupNorm({"layer": 1, "instance": c, "group": math.gcd(c, 8)}[kind], c)]


def copy_weights(torch, model, tiny_model) -> None:
  """The tinygrad model's weights into the torch model. models/ lists its layers as convs, norms, then linears."""
  from models import parameters
  nn = torch.nn
  kinds = (nn.Conv2d, (nn.BatchNorm2d, nn.GroupNorm), nn.Linear)
  theirs = [p for kind in kinds for m in model.modules() if isinstance(m, kind) for p in (m.weight, m.bias)]
  ours = parameters(tiny_model)
  assert [tuple(p.shape) for p in theirs] == [tuple(p.shape) for p in ours], "bench: torch and tinygrad layers differ"
  with torch.no_grad():
    for t, o in zip(theirs, ours): t.copy_(torch.from_numpy(o.numpy()))


def torch_optimizer(torch, cfg, params):
  """The explorer's optimizer with cfg's hyperparameters (explorer/optim.py follows PyTorch's definitions)."""
  o = torch.optim
  if cfg.opt == "adamw": return o.AdamW(params, lr=cfg.lr_max, betas=(cfg.beta1, cfg.beta2), eps=1e-8, weight_decay=cfg.wd)
  if cfg.opt == "adam": return o.Adam(params, lr=cfg.lr_max, betas=(cfg.beta1, cfg.beta2), eps=1e-8, weight_decay=cfg.wd)
  if cfg.opt == "sgd": return o.SGD(params, lr=cfg.lr_max, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.wd)
  if cfg.opt == "rmsprop": return o.RMSprop(params, lr=cfg.lr_max, momentum=cfg.momentum, weight_decay=cfg.wd, eps=1e-8)
  raise SystemExit(f"bench: optimizer '{cfg.opt}' has no PyTorch counterpart here (adamw, adam, sgd, rmsprop)")
