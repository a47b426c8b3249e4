"""Random affine augmentation (rotation, zoom, shift) as plain tensor math, so it runs inside the compiled step."""
from __future__ import annotations
from tinygrad import Tensor


def random_affine(x: Tensor, rng, limits: Tensor, size: int = 28) -> Tensor:
  """x: (B, ..., size, size) images in [0, 1]. limits: device tensor [max rotation (rad), max zoom, max shift (px)].
  Each image gets its own uniform draw. Bilinear sampling is written as a sum over separable tent weights
  (no gather), which tinygrad fuses into two contractions; pixels sampled from outside the image are 0 (background)."""
  b = x.shape[0]
  img = x.reshape(b, size, size)
  u = rng.rand(b, 4) * 2 - 1
  angle, zoom = u[:, 0] * limits[0], 1 + u[:, 1] * limits[1]
  tx, ty = u[:, 2] * limits[2], u[:, 3] * limits[2]
  center = (size - 1) / 2
  grid = Tensor.arange(size).float() - center
  # inverse map: for each output pixel, where it comes from in the input
  cos, sin = (angle.cos() / zoom).reshape(b, 1, 1), (angle.sin() / zoom).reshape(b, 1, 1)
  oy, ox = grid.reshape(1, size, 1) - ty.reshape(b, 1, 1), grid.reshape(1, 1, size) - tx.reshape(b, 1, 1)
  sy, sx = cos * oy - sin * ox + center, sin * oy + cos * ox + center  # (B, size, size)
  pix = Tensor.arange(size).float()
  wy = (1 - (sy.unsqueeze(-1) - pix).abs()).relu()  # (B, i, j, y)
  wx = (1 - (sx.unsqueeze(-1) - pix).abs()).relu()  # (B, i, j, x)
  rows = (img.reshape(b, 1, 1, size, size) * wx.reshape(b, size, size, 1, size)).sum(-1)  # (B, i, j, y)
  return (rows * wy).sum(-1).reshape(x.shape)


def random_flip(x: Tensor, rng, size: int = 28) -> Tensor:
  """Mirror each image left-right with probability 1/2 (clothes look the same mirrored; digits do not)."""
  b = x.shape[0]
  img = x.reshape(b, size, size)
  return (rng.rand(b, 1, 1) < 0.5).where(img.flip(-1), img).reshape(x.shape)


def cutout(x: Tensor, rng, length: Tensor, size: int = 28) -> Tensor:
  """Cutout (DeVries & Taylor 2017): blank a length x length square (length: a device scalar, in pixels) at a uniform
  random centre per image; squares may reach past the border, as in the paper. Blank is 0, the background."""
  b = x.shape[0]
  centre = rng.rand(b, 2) * size
  pix = Tensor.arange(size).float() + 0.5
  rows = ((pix.reshape(1, size) - centre[:, 0:1]).abs() < length / 2).reshape(b, size, 1)
  cols = ((pix.reshape(1, size) - centre[:, 1:2]).abs() < length / 2).reshape(b, 1, size)
  return (rows & cols).where(0.0, x.reshape(b, size, size)).reshape(x.shape)
