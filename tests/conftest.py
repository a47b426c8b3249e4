"""Shared fixtures: a small learnable dataset made in memory, and real MNIST when ../shared/data has it."""
import os
from pathlib import Path
import numpy as np
import pytest
from explorer.data import Dataset, load_dataset, write_idx

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("MNIST_DATA_DIR", ROOT.parent / "shared" / "data" / "mnist"))


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Ten classes, each a bright 6x6 square at its own place on a noisy 28x28 image: easy to learn, not noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 10, n).astype(np.uint8)
  x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
  for i, label in enumerate(y):
    r, c = 3 + 8 * (label // 4), 3 + 7 * (label % 4)
    x[i, r:r + 6, c:c + 6] = 230
  return x, y


@pytest.fixture(scope="session", autouse=True)
def fast_path():
  """Tests that build a Trainer themselves run on the CPU fast path, as the CLI installs it at start-up (EXPLORER_STOCK=1
  runs them on stock tinygrad; tests/test_fastpath.py compares the two)."""
  from explorer import fastpath
  notice = fastpath.install()
  assert notice is None, notice


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
  x, y = make_digits(3000, 0)
  xt, yt = make_digits(500, 1)
  return Dataset("mnist", "generated", x[:2500], y[:2500], x[2500:], y[2500:], xt, yt)


@pytest.fixture(scope="session")
def mnist() -> Dataset:
  if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"real MNIST not found in {MNIST_DIR} (set MNIST_DATA_DIR); CI provides it in ../shared/data/mnist")
  return load_dataset("mnist", MNIST_DIR)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
  """Four small IDX files (10,500 train images so the 10,000-image validation split leaves 500 to train on)."""
  folder = tmp_path_factory.mktemp("idx")
  x, y = make_digits(10_500, 0)
  xt, yt = make_digits(300, 1)
  for name, arr, kind in (("train-images-idx3-ubyte.gz", x, "images"), ("train-labels-idx1-ubyte.gz", y, "labels"),
                          ("t10k-images-idx3-ubyte.gz", xt, "images"), ("t10k-labels-idx1-ubyte.gz", yt, "labels")):
    write_idx(folder / name, arr, kind)
  return folder
