"""Optimizers whose scalar hyperparameters and state live in device buffers of their own.

tinygrad's nn.optim bakes momentum, betas, weight decay into the graph as Python constants, so each new value means a
new TinyJit capture. Here every scalar is a shape-(1,) float32 buffer read by the graph, and the state (moments, step
count) is reset with in-place assigns: one captured train step per model shape serves every configuration that
differs only in scalars (set_hyper, reset, and a new lr value are plain writes into buffers the JIT already holds).

Usage: opt = make_optimizer("adamw", params, wd=0.05); in the (jitted) step: zero_grad, loss.backward(), then
Tensor.realize(*opt.step(lr)). Between runs: opt.set_hyper(...); opt.reset(); reinit params with assign.
"""
from __future__ import annotations
import numpy as np
from tinygrad import Tensor, dtypes
from explorer.config import OPTIMIZERS
from explorer.fastpath import fill

NS_STEPS, NS_COEFFICIENTS = 5, (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton-Schulz iteration


def _buffer(shape: tuple[int, ...], value: float, device) -> Tensor:
  # contiguous().realize(): a real buffer that later assigns write into, never a constant folded into the kernels
  return Tensor.full(shape, float(value), dtype=dtypes.float32, device=device).contiguous().realize()


class Optimizer:
  """Base: hyperparameters as (1,) device buffers (self.hyper), state as buffers (self.state), in-place reset."""
  defaults: dict[str, float] = {}

  def __init__(self, params: list[Tensor], **hyper: float):
    self.params: list[Tensor] = list(dict.fromkeys(params))  # each tensor once, in order
    if not self.params: raise ValueError(f"{type(self).__name__} needs at least one parameter")
    self.device = self.params[0].device
    self._check_names(hyper)
    self.hyper: dict[str, Tensor] = {k: _buffer((1,), hyper.get(k, v), self.device) for k, v in self.defaults.items()}
    self.t = _buffer((1,), 0, self.device)  # step count, incremented inside the graph
    self.state: list[Tensor] = [self.t]

  def _check_names(self, names) -> None:
    if unknown := [k for k in names if k not in self.defaults]:
      raise ValueError(f"{type(self).__name__}: unknown hyperparameter {', '.join(map(repr, unknown))} "
                       f"(known: {', '.join(self.defaults) or 'none'})")

  def _zeros(self, params: list[Tensor]) -> list[Tensor]:
    s = [_buffer(p.shape, 0, p.device) for p in params]
    self.state += s
    return s

  def set_hyper(self, **values: float) -> None:
    """Writes new values into the hyperparameter buffers; a captured step reads them on its next run."""
    self._check_names(values)
    for k, v in values.items(): fill(self.hyper[k], [float(v)])

  def reset(self) -> None:
    """Zeroes every moment buffer and the step count in place (the same buffers the JIT captured)."""
    for s in self.state: fill(s, np.zeros(s.shape))

  def zero_grad(self) -> None:
    for p in self.params: p.grad = None

  def step(self, lr: Tensor) -> list[Tensor]:
    """Assigns the update of every param with a .grad (and the state); returns the tensors to realize."""
    self.t.assign(self.t + 1)  # later reads of self.t in this graph see the new count
    for i, p in enumerate(self.params):
      if p.grad is not None: p.assign(self._update(i, p.detach(), p.grad.detach(), lr).cast(p.dtype))
    return self.params + self.state

  def _update(self, i: int, p: Tensor, g: Tensor, lr: Tensor) -> Tensor: raise NotImplementedError

  def _adam_direction(self, m: Tensor, v: Tensor, g: Tensor) -> Tensor:
    # shared by adam, adamw, lamb and muon's AdamW part: bias-corrected m_hat / (sqrt(v_hat) + eps)
    h = self.hyper
    m.assign(h["beta1"] * m + (1 - h["beta1"]) * g)
    v.assign(h["beta2"] * v + (1 - h["beta2"]) * g.square())
    m_hat, v_hat = m / (1 - h["beta1"].pow(self.t)), v / (1 - h["beta2"].pow(self.t))
    return m_hat / (v_hat.sqrt() + h["eps"])


class SGD(Optimizer):
  """PyTorch SGD (dampening 0): g += wd*p; buf = momentum*buf + g; p -= lr * (g + momentum*buf if nesterov else buf).
  A zero buf at the start equals PyTorch's buf = g on the first step; momentum 0 gives plain SGD."""
  defaults = {"momentum": 0.0, "nesterov": 0.0, "wd": 0.0}

  def __init__(self, params: list[Tensor], **hyper: float):
    super().__init__(params, **hyper)
    self.buf = self._zeros(self.params)

  def _update(self, i, p, g, lr):
    h, buf = self.hyper, self.buf[i]
    g = g + h["wd"] * p
    buf.assign(h["momentum"] * buf + g)
    # nesterov is a 0/1 buffer picked with where, so flipping it is a write, not a recompile
    return p - lr * (h["nesterov"] > 0.5).where(g + h["momentum"] * buf, buf)


class Adam(Optimizer):
  """PyTorch Adam: L2 weight decay added to the gradient (g += wd*p), then the bias-corrected Adam step."""
  defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "wd": 0.0}

  def __init__(self, params: list[Tensor], **hyper: float):
    super().__init__(params, **hyper)
    self.m, self.v = self._zeros(self.params), self._zeros(self.params)

  def _update(self, i, p, g, lr): return p - lr * self._adam_direction(self.m[i], self.v[i], g + self.hyper["wd"] * p)


class AdamW(Adam):
  """PyTorch AdamW, decoupled weight decay exactly as torch does it: p = p*(1 - lr*wd) - lr * m_hat/(sqrt(v_hat)+eps)."""
  defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "wd": 0.01}

  def _update(self, i, p, g, lr): return p * (1 - lr * self.hyper["wd"]) - lr * self._adam_direction(self.m[i], self.v[i], g)


class RMSprop(Optimizer):
  """PyTorch RMSprop (not centered): g += wd*p; v = alpha*v + (1-alpha)*g^2; buf = momentum*buf + g/(sqrt(v)+eps);
  p -= lr*buf. With momentum 0 the buf is just g/(sqrt(v)+eps), torch's momentum-free step, so buf is always kept."""
  defaults = {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "wd": 0.0}

  def __init__(self, params: list[Tensor], **hyper: float):
    super().__init__(params, **hyper)
    self.v, self.buf = self._zeros(self.params), self._zeros(self.params)

  def _update(self, i, p, g, lr):
    h, v, buf = self.hyper, self.v[i], self.buf[i]
    g = g + h["wd"] * p
    v.assign(h["alpha"] * v + (1 - h["alpha"]) * g.square())
    buf.assign(h["momentum"] * buf + g / (v.sqrt() + h["eps"]))
    return p - lr * buf


class LAMB(Adam):
  """LAMB as in tinygrad: u = m_hat/(sqrt(v_hat)+eps) + wd*p; p -= lr * r * u with the per-tensor trust ratio
  r = ||p|| / ||u|| (1 where either norm is 0). Weight decay is decoupled (inside u, before the trust ratio)."""
  defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "wd": 0.0}

  def _update(self, i, p, g, lr):
    u = self._adam_direction(self.m[i], self.v[i], g) + self.hyper["wd"] * p
    r1, r2 = p.square().sum().sqrt(), u.square().sum().sqrt()
    r = (r1 > 0).where((r2 > 0).where(r1 / r2, 1.0), 1.0)
    return p - lr * r * u


class Muon(Optimizer):
  """Keller Jordan's Muon on the hidden weight matrices, AdamW on every other param (biases, norms, input and output
  layers), one optimizer with one step count.

  Muon: buf = momentum*buf + g; u = g + momentum*buf if nesterov else buf; O = Newton-Schulz-5(u) (Frobenius-normalized
  first, so this sum form of momentum equals the reference's EMA/lerp form up to its 1e-7 eps);
  p = p*(1 - lr*wd) - lr * max(1, rows/cols)**0.5 * O.
  AdamW part: exactly AdamW with lr * adam_lr_ratio (the reference gives Adam its own lr; ratio 1 keeps one lr knob).
  wd is decoupled and the same for both parts, as in the reference's example."""
  defaults = {"momentum": 0.95, "nesterov": 1.0, "wd": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "adam_lr_ratio": 1.0}

  def __init__(self, params: list[Tensor], hidden_matrices: list[Tensor] | None = None, **hyper: float):
    super().__init__(params, **hyper)
    hidden = list(dict.fromkeys(hidden_matrices or []))
    if not hidden: raise ValueError("muon needs at least one hidden weight matrix")
    ids = {id(p) for p in self.params}
    for w in hidden:
      if id(w) not in ids: raise ValueError(f"muon: hidden matrix of shape {w.shape} is not one of the params")
      if w.ndim < 2: raise ValueError(f"muon: hidden matrix must have 2 or more dims, got shape {w.shape}")
    self.is_muon = [any(p is w for w in hidden) for p in self.params]
    # muon params get a momentum buffer, the others AdamW's m and v; keyed by param index
    hid, rest = [i for i, m in enumerate(self.is_muon) if m], [i for i, m in enumerate(self.is_muon) if not m]
    self.buf = dict(zip(hid, self._zeros([self.params[i] for i in hid])))
    self.m = dict(zip(rest, self._zeros([self.params[i] for i in rest])))
    self.v = dict(zip(rest, self._zeros([self.params[i] for i in rest])))

  def _update(self, i, p, g, lr):
    h = self.hyper
    if not self.is_muon[i]:
      lr = lr * h["adam_lr_ratio"]
      return p * (1 - lr * h["wd"]) - lr * self._adam_direction(self.m[i], self.v[i], g)
    buf = self.buf[i]
    buf.assign(h["momentum"] * buf + g)
    u = (h["nesterov"] > 0.5).where(g + h["momentum"] * buf, buf)
    rows, cols = p.shape[0], p.numel() // p.shape[0]  # conv kernels are flattened to (out, in*k*k)
    o = u.reshape(rows, cols).newton_schulz(NS_STEPS, NS_COEFFICIENTS).reshape(p.shape)
    return p * (1 - lr * h["wd"]) - lr * max(1, rows / cols) ** 0.5 * o


_CLASSES: dict[str, type[Optimizer]] = {"adamw": AdamW, "adam": Adam, "sgd": SGD, "rmsprop": RMSprop, "lamb": LAMB, "muon": Muon}
DEFAULTS: dict[str, dict[str, float]] = {name: dict(cls.defaults) for name, cls in _CLASSES.items()}  # hyper names per optimizer


def make_optimizer(name: str, params: list[Tensor], hidden_matrices: list[Tensor] | None = None, **hyper: float) -> Optimizer:
  """Builds optimizer `name`; hyper overrides its defaults (DEFAULTS[name]). hidden_matrices is used by muon only."""
  if name not in _CLASSES: raise ValueError(f"unknown optimizer '{name}' (one of: {', '.join(OPTIMIZERS)})")
  if name == "muon": return Muon(params, hidden_matrices, **hyper)
  return _CLASSES[name](params, **hyper)
