"""Image files as MNIST-style inputs: 28x28 uint8, light ink on a dark background, the way the datasets were made.

Any size or colour: converted to grayscale (transparent pixels shown on white, as a viewer would), inverted when the
background is light (a dark digit on paper), the background brought to 0 and the brightest ink to 255. A 28x28 image is
then used as it is; a larger or smaller one is cropped to its ink and scaled as the datasets were: MNIST digits fit a
20x20 box placed by their centre of mass, Fashion-MNIST items fill the 28x28 frame, centred."""
from __future__ import annotations
from pathlib import Path
import numpy as np
from explorer.errors import UserError

SIZE = 28
BOX = {"mnist": 20, "fashion": 28}


def load_image(path: str | Path, dataset: str = "mnist") -> np.ndarray:
  try:
    from PIL import Image, UnidentifiedImageError  # Pillow: a dependency of matplotlib, so always installed with it
  except ImportError:
    raise UserError("reading image files needs Pillow: pip install pillow (matplotlib normally brings it)") from None
  path = Path(path)
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
      gray = np.asarray(im.convert("L"), np.float64) / 255.0
  except FileNotFoundError:
    raise UserError(f"image {path} not found") from None
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f"cannot read image {path}: {' '.join(str(e).split()) or type(e).__name__} (PNG or JPEG expected)") from None
  if gray.ndim != 2 or min(gray.shape) < 1: raise UserError(f"cannot read image {path}: no pixels")
  return to_mnist(gray, dataset)


def to_mnist(gray: np.ndarray, dataset: str = "mnist") -> np.ndarray:
  """A grayscale image in [0, 1] (any size) as a 28x28 uint8 MNIST-style image."""
  border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
  if np.median(border) > 0.5: gray, border = 1 - gray, 1 - border  # dark ink on a light background
  background, top = float(np.median(border)), float(gray.max())
  if top - background < 1e-6: raise UserError("the image is blank (one colour): nothing to classify")
  gray = np.clip((gray - background) / (top - background), 0, 1)
  if gray.shape == (SIZE, SIZE): return np.round(gray * 255).astype(np.uint8)
  rows, cols = np.flatnonzero((gray > 0.1).any(1)), np.flatnonzero((gray > 0.1).any(0))
  ink = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  box = BOX.get(dataset, 20)
  h, w = ink.shape
  scale = box / max(h, w)
  new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
  from PIL import Image
  small = np.asarray(Image.fromarray(ink.astype(np.float32)).resize((new_w, new_h), Image.Resampling.LANCZOS), np.float64)
  small = np.clip(small, 0, 1)
  if dataset == "mnist" and small.sum() > 0:  # centre of mass at the centre of the 28x28 field
    ys, xs = np.indices(small.shape)
    cy, cx = (ys * small).sum() / small.sum(), (xs * small).sum() / small.sum()
    top_left = (round(SIZE / 2 - 0.5 - cy), round(SIZE / 2 - 0.5 - cx))
  else: top_left = ((SIZE - new_h) // 2, (SIZE - new_w) // 2)
  out = np.zeros((SIZE, SIZE))
  y0, x0 = (min(max(v, 0), SIZE - n) for v, n in zip(top_left, (new_h, new_w)))
  out[y0:y0 + new_h, x0:x0 + new_w] = small
  return np.round(out * 255).astype(np.uint8)
