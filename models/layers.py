"""Small layers whose weights are re-initialized in place from a numpy seed, so one compiled step serves many runs
(tinygrad.nn's layers draw their weights once, lazily, from the global RNG: a new run would need a new capture)."""
from __future__ import annotations
import math
import numpy as np
from tinygrad import Tensor, dtypes, function
from explorer.fastpath import fill  # writes into a tensor's buffer in place


def _param(*shape: int) -> Tensor:
  # a realized buffer of its own: reset() assigns into it, so a TinyJit that captured it sees the new values
  return Tensor.zeros(*shape, dtype=dtypes.float32).contiguous().realize()


def _assign(t: Tensor, values: np.ndarray) -> None:
  fill(t, values)


class Linear:
  def __init__(self, n_in: int, n_out: int):
    self.weight, self.bias = _param(n_out, n_in), _param(n_out)

  def reset(self, rng: np.random.Generator) -> None:
    # PyTorch's default: uniform(±1/sqrt(fan_in)) for weight and bias
    bound = 1 / math.sqrt(self.weight.shape[1])
    _assign(self.weight, rng.uniform(-bound, bound, self.weight.shape))
    _assign(self.bias, rng.uniform(-bound, bound, self.bias.shape))

  def __call__(self, x: Tensor, input_gradient: bool = False) -> Tensor:
    # the product reads a copy with the output features contiguous (a 784x512-float copy per step for the MLP's first
    # layer): tinygrad then loads 8 outputs' weights at once instead of gathering them a float at a time. On this CPU
    # the MLP's first layer ran 2.8x faster on one thread; a validation pass on two threads took 12.1 ms per 1,000
    # images instead of 25.8. Where the step also needs the input's gradient (input_gradient: every layer but the
    # first, in training) that gradient's product would read the copy the slow way round, so it reads the weights as
    # they are (the MLP's batch-128 step: 9.9-10.3 ms of kernels on one thread, against 10.5-10.8 with every layer
    # copied). Only where the weights sit changes, not a sum's order: the same bits (tests/test_train.py)
    return x.linear(self.weight.T if input_gradient else features_last(self.weight), self.bias)


def features_last(weight: Tensor) -> Tensor: return weight.T.contiguous()


class Conv2d:
  def __init__(self, c_in: int, c_out: int, kernel: int):
    self.weight, self.bias, self.padding = _param(c_out, c_in, kernel, kernel), _param(c_out), kernel // 2
    self.convolve = convolution(kernel, self.padding)

  def reset(self, rng: np.random.Generator) -> None:
    bound = 1 / math.sqrt(math.prod(self.weight.shape[1:]))
    _assign(self.weight, rng.uniform(-bound, bound, self.weight.shape))
    _assign(self.bias, rng.uniform(-bound, bound, self.bias.shape))

  def __call__(self, x: Tensor) -> Tensor:
    # the kernel reads a copy with the output channels last (a 4,608-float copy per step for the default CNN): tinygrad
    # then loads several output channels' weights at once, and the convolution ran about 2x faster on the CPU. Only
    # where the weights sit in memory changes, not a sum's order: the same bits (tests/test_train.py)
    return self.convolve(x, self.weight) + self.bias.reshape(1, -1, 1, 1)


def channels_last(weight: Tensor) -> Tensor: return weight.permute(1, 2, 3, 0).contiguous()


def convolution(kernel: int, padding: int):
  """A stride-1 convolution without bias: tinygrad's conv2d (through the channels-last copy) forward and for the
  weights' gradient, with the input's gradient formed as a sum over the kernel's real taps (tinygrad's grad_fxn).

  tinygrad forms the windows by repeating the padded map ceil(k(s+1)/s) times along each side and reshaping, so its
  input gradient sums each pixel of the padded map over that many repeats squared, most of them masked zeros: for the
  default CNN's second layer (3x3 over 14x14) 4x4 repeats over 16x16 pixels, 2.3x the multiply-adds. Here each pixel
  sums the same products: per tap (kh, kw), the sum over output channels in order, then the taps' sums in order, as
  tinygrad's kernel does. That kernel took 23.8 ms of a batch-128 step's 55.0 on one thread of this CPU, this one
  6.8 of 36.4 (bench/experiments_kernels.py cnn 128, EXPLORER_THREADS=1): the same bits, for kernels of 3x3 to 9x9
  over 28x28 and 14x14 maps. Over smaller maps tinygrad's kernel adds each row of taps together before its running
  sum, and with 1x1 kernels it adds the first two products before the rest: there the sums would differ in their
  last bits, so those layers keep tinygrad's own gradient (tests/test_train.py)."""
  def forward(x: Tensor, weight: Tensor) -> Tensor: return x.conv2d(channels_last(weight).permute(3, 0, 1, 2), padding=padding)

  def convolve(x: Tensor, weight: Tensor) -> Tensor:
    if kernel == 1 or min(x.shape[2:]) < 14: return forward(x, weight)

    def gradients(grad, _call):  # tinygrad's grad_fxn: the output's gradient in, the gradients of (x, weight) out
      g = Tensor(grad)
      return input_gradient(g, weight, kernel, padding).uop, weight_gradient(x, weight, g, padding).uop
    return function(forward, grad_fxn=gradients)(x, weight)
  return convolve


def weight_gradient(x: Tensor, weight: Tensor, g: Tensor, padding: int) -> Tensor:
  """tinygrad's gradient of conv2d for the weights. For a layer of one input channel (the image) the input is padded
  once in memory first, so that the kernel reads its zeros instead of testing each tap's bounds: the same products
  in the same order, and the default CNN's first layer's weight gradient took 2.4-2.5 ms instead of 5.1-5.2 on one
  thread of this CPU. With more input channels tinygrad tiled the padded form worse (its second layer: 18.9-21.5 ms
  instead of 11.4-13.8, the same noisy hour), so those read the input as it is."""
  if x.shape[1] == 1: x, padding = x.pad(((0, 0), (0, 0), (padding, padding), (padding, padding))).contiguous(), 0
  return x.conv2d(channels_last(weight).permute(3, 0, 1, 2), padding=padding).gradient(weight, gradient=g)[0]


def input_gradient(g: Tensor, weight: Tensor, kernel: int, padding: int) -> Tensor:
  """dx[b, i, m, n] = sum over taps (kh, kw) of [sum over o of g[b, o, m + padding - kh, n + padding - kw] * w[o, i, kh, kw]]."""
  (b, c_out, _, _), c_in, edge = g.shape, weight.shape[1], kernel - 1 - padding
  gp = g.pad(((0, 0), (0, 0), (edge, edge), (edge, edge)))
  h, w = gp.shape[2] - kernel + 1, gp.shape[3] - kernel + 1
  # the k x k windows of the padded gradient, flipped so that tap (kh, kw) reads g at (m + padding - kh, n + padding - kw)
  taps = windows(gp, kernel).flip(4, 5).reshape(b, 1, c_out, h, w, kernel, kernel).permute(0, 1, 3, 4, 5, 6, 2)
  inputs_last = weight.permute(0, 2, 3, 1).contiguous()  # (o, kh, kw, i): 8 input channels' weights in one load
  per_tap = (taps * inputs_last.permute(3, 1, 2, 0).reshape(1, c_in, 1, 1, kernel, kernel, c_out)).sum(-1)
  # contiguous: else tinygrad stores the per-tap sums (3.6M floats here) and adds them in a second kernel (50 ms, not 6.8)
  return per_tap.sum((-2, -1)).contiguous()


def windows(x: Tensor, k: int) -> Tensor:
  """(n, c, H, W) -> (n, c, H-k+1, W-k+1, k, k), stride 1: each row and column copied k times, shifted by one each."""
  n, c, h, w = x.shape
  x = x.reshape(n, c, 1, h, 1, w).expand(n, c, k, h, k, w).reshape(n, c, k * h, k * w)
  x = x.pad(((0, 0), (0, 0), (0, k), (0, k))).reshape(n, c, k, h + 1, k, w + 1)[:, :, :, :h - k + 1, :, :w - k + 1]
  return x.permute(0, 1, 3, 5, 2, 4)


class Norm:
  """Normalization over (N, C, H, W): batch (running stats for eval), layer, instance or group (8 groups or fewer)."""
  def __init__(self, kind: str, channels: int, momentum: float = 0.1, eps: float = 1e-5):
    self.kind, self.channels, self.momentum, self.eps = kind, channels, momentum, eps
    self.weight, self.bias = _param(channels), _param(channels)
    self.groups = math.gcd(channels, 8) if kind == "group" else 1
    if kind == "batch": self.running_mean, self.running_var = _param(channels), _param(channels)

  def reset(self, rng: np.random.Generator) -> None:
    _assign(self.weight, np.ones(self.channels)); _assign(self.bias, np.zeros(self.channels))
    if self.kind == "batch": _assign(self.running_mean, np.zeros(self.channels)); _assign(self.running_var, np.ones(self.channels))

  def buffers(self) -> list[Tensor]: return [self.running_mean, self.running_var] if self.kind == "batch" else []

  def __call__(self, x: Tensor, training: bool) -> Tensor:
    n, c, h, w = x.shape
    if self.kind == "batch":
      if training:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), correction=0)
        # running stats are updated as a side effect of the compiled step (like nn.BatchNorm)
        unbiased = var.detach() * (n * h * w / max(1, n * h * w - 1))
        self.running_mean.assign((1 - self.momentum) * self.running_mean + self.momentum * mean.detach())
        self.running_var.assign((1 - self.momentum) * self.running_var + self.momentum * unbiased)
      else: mean, var = self.running_mean, self.running_var
      y = (x - mean.reshape(1, c, 1, 1)) * (var.reshape(1, c, 1, 1) + self.eps).rsqrt()
    else:
      groups = {"layer": 1, "instance": c, "group": self.groups}[self.kind]
      g = x.reshape(n, groups, -1)
      y = ((g - g.mean(axis=-1, keepdim=True)) * (g.var(axis=-1, keepdim=True, correction=0) + self.eps).rsqrt()).reshape(n, c, h, w)
    return y * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)


class Rng:
  """Per-model random state on the device (threefry, as tinygrad's own rand). Reseeded in place, so dropout and
  augmentation inside a compiled step follow each run's seed, and a reused step gives the numbers a fresh one would."""
  def __init__(self):
    self.key = Tensor.zeros(2, dtype=dtypes.uint32).contiguous().realize()
    self.counter = Tensor.zeros(2, dtype=dtypes.uint32).contiguous().realize()

  def reseed(self, seed: int) -> None:
    fill(self.key, [seed & 0xFFFFFFFF, 0x9E3779B9])
    fill(self.counter, [0, 0])

  def rand(self, *shape: int) -> Tensor:
    """uniform [0, 1) floats; advances the counter in the graph so each step draws new numbers."""
    num = math.prod(shape)  # one 32-bit word per float32
    step = Tensor([num, 0], dtype=dtypes.uint32, device=self.key.device)
    self.counter.assign(self.counter + step)
    # as tinygrad's own Tensor.rand counts: read back after the assign (the low word wraps after 2**32 draws)
    bits = Tensor.random_bits(self.key, self.counter - step, num)
    # tinygrad's own Tensor.rand from these bits, written with public ops (the same graph: UOp for UOp):
    # 23 random mantissa bits under the exponent of 1.0 give a float in [1, 2); minus 1
    return bits.bitcast(dtypes.uint32).rshift(9).bitwise_or(0x3F800000).bitcast(dtypes.float32)[:num].sub(1).reshape(shape).contiguous()


def dropout(x: Tensor, p: float, rng: Rng, training: bool, per_channel: bool = False) -> Tensor:
  """Inverted dropout; per_channel drops whole feature maps (Dropout2D)."""
  if not training or p == 0: return x
  mask_shape = x.shape[:2] + (1,) * (x.ndim - 2) if per_channel else x.shape
  keep = rng.rand(*mask_shape) >= p
  return x * keep.cast(x.dtype) * (1 / (1 - p))


def activation(name: str):
  return {"relu": Tensor.relu, "silu": Tensor.silu, "gelu": Tensor.gelu, "tanh": Tensor.tanh, "sigmoid": Tensor.sigmoid,
          "leakyrelu": Tensor.leaky_relu}[name]
