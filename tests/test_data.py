import gzip, hashlib, io, os, urllib.error, urllib.request
from pathlib import Path
import numpy as np
import pytest
from explorer import data
from explorer.data import FILES, TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS, load_dataset, normalization, write_idx
from explorer.errors import UserError

def make_files(folder: Path, n_train=30, n_test=10, gz=True) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  # image i is filled with value i so slices can be identified
  def images(n): return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28))
  def labels(n): return rng.integers(0, 10, n).astype(np.uint8)
  for f, arr, kind in ((TRAIN_IMAGES, images(n_train), "images"), (TRAIN_LABELS, labels(n_train), "labels"),
                       (TEST_IMAGES, images(n_test), "images"), (TEST_LABELS, labels(n_test), "labels")):
    write_idx(folder / (f if gz else f.removesuffix(".gz")), arr, kind)
  return folder

@pytest.fixture
def isolated(tmp_path, monkeypatch):
  """No data anywhere: cwd and caches point into tmp, and any network access fails loudly."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
  def offline(*a, **k): raise urllib.error.URLError("network is unreachable")
  monkeypatch.setattr(urllib.request, "urlopen", offline)
  return tmp_path

def expect_error(match_path, **kw):
  with pytest.raises(UserError) as e: load_dataset("mnist", **kw)
  msg = str(e.value)
  assert str(match_path) in msg and "\n" not in msg, msg
  return msg

# *** round trip ***

def test_round_trip(isolated):
  d = make_files(isolated / "d")
  ds = load_dataset("mnist", data_dir=d, val_size=10)
  assert ds.name == "mnist" and ds.source == str(d.resolve())
  assert ds.x_train.shape == (20, 28, 28) and ds.y_train.shape == (20,)
  assert ds.x_val.shape == (10, 28, 28) and ds.x_test.shape == (10, 28, 28) and ds.y_test.shape == (10,)
  for a in (ds.x_train, ds.y_train, ds.x_val, ds.y_val, ds.x_test, ds.y_test): assert a.dtype == np.uint8
  assert list(ds.x_val[:, 0, 0]) == list(range(20, 30))  # validation = last val_size of the train file
  assert list(ds.x_train[:, 0, 0]) == list(range(20))
  full = data._read_idx(d / TRAIN_LABELS, "labels")
  assert np.array_equal(ds.y_val, full[20:]) and np.array_equal(ds.y_train, full[:20])

def test_train_size_subset(isolated):
  d = make_files(isolated / "d")
  ds = load_dataset("mnist", data_dir=d, val_size=10, train_size=5)
  assert list(ds.x_train[:, 0, 0]) == list(range(5)) and len(ds.y_train) == 5
  assert list(ds.x_val[:, 0, 0]) == list(range(20, 30))  # val unchanged by train_size
  assert len(load_dataset("mnist", data_dir=d, val_size=10, train_size=20).x_train) == 20
  for bad in (0, 21, -1):
    with pytest.raises(UserError, match="train_size must be 1..20"): load_dataset("mnist", data_dir=d, val_size=10, train_size=bad)
  with pytest.raises(UserError, match="at least 31 are needed"): load_dataset("mnist", data_dir=d, val_size=30)
  with pytest.raises(UserError, match="val_size"): load_dataset("mnist", data_dir=d, val_size=1.5)

def test_ungzipped_files(isolated):
  d = make_files(isolated / "d", gz=False)
  assert not (d / TRAIN_IMAGES).exists()
  assert len(load_dataset("mnist", data_dir=d, val_size=10).x_train) == 20

def test_unknown_name_and_normalization():
  assert normalization("mnist") == (0.1307, 0.3081) and normalization("fashion") == (0.2860, 0.3530)
  with pytest.raises(UserError, match="unknown dataset"): normalization("cifar")
  with pytest.raises(UserError, match="unknown dataset"): load_dataset("cifar")

# *** search order ***

def test_finds_cwd_data_folder(isolated):
  make_files(isolated / "data" / "mnist")
  ds = load_dataset("mnist", val_size=10)
  assert ds.source == str((isolated / "data" / "mnist").resolve())

def test_finds_product_cache(isolated):
  make_files(isolated / "cache" / "mnist-explorer" / "mnist")
  assert load_dataset("mnist", val_size=10).source == str(isolated / "cache" / "mnist-explorer" / "mnist")

def test_finds_tinygrad_cache(isolated):
  # tinygrad stores fetch(url, gunzip=True) as the raw bytes under <md5 of url>.gunzip
  src, dl = make_files(isolated / "src"), isolated / "cache" / "tinygrad" / "downloads"
  dl.mkdir(parents=True)
  for f in FILES:
    url = "https://storage.googleapis.com/cvdf-datasets/mnist/" + f
    (dl / (hashlib.md5(url.encode()).hexdigest() + ".gunzip")).write_bytes(gzip.decompress((src / f).read_bytes()))
  ds = load_dataset("mnist", val_size=10)
  assert ds.source == str(dl) and len(ds.x_train) == 20

def test_cwd_folder_wins_and_partial_folder_is_skipped(isolated):
  make_files(isolated / "data" / "mnist", n_train=40)
  make_files(isolated / "cache" / "mnist-explorer" / "mnist", n_train=30)
  assert len(load_dataset("mnist", val_size=10).x_train) == 30
  (isolated / "data" / "mnist" / TEST_LABELS).unlink()
  assert len(load_dataset("mnist", val_size=10).x_train) == 20

def test_explicit_data_dir_missing_file_does_not_fall_through(isolated):
  make_files(isolated / "data" / "mnist")  # a complete copy elsewhere must not be used silently
  d = make_files(isolated / "d")
  (d / TEST_LABELS).unlink()
  msg = expect_error(d, data_dir=d)
  assert TEST_LABELS in msg and TRAIN_IMAGES not in msg
  msg = expect_error(isolated / "nope", data_dir=isolated / "nope")
  assert "does not exist" in msg

# *** corrupt files ***

def corrupt(d: Path, f: str, raw: bytes):
  (d / f).write_bytes(gzip.compress(raw))

def header(magic, *dims): return np.array([magic, *dims], ">i4").tobytes()

@pytest.mark.parametrize("case", ["truncated_gz", "not_gzip", "wrong_magic", "wrong_dims", "count_too_big", "too_short",
                                  "count_mismatch", "label_out_of_range", "labels_as_images"])
def test_corruption_names_the_file(isolated, case):
  d = make_files(isolated / "d")
  f, want = TRAIN_IMAGES, None
  if case == "truncated_gz": (d / f).write_bytes((d / f).read_bytes()[:-20]); want = "corrupt or truncated"
  elif case == "not_gzip": (d / f).write_bytes(b"hello, this is not gzip"); want = "corrupt or truncated"
  elif case == "wrong_magic": corrupt(d, f, header(1234, 30, 28, 28) + bytes(30 * 784)); want = "magic number 1234"
  elif case == "wrong_dims": corrupt(d, f, header(2051, 30, 32, 32) + bytes(30 * 1024)); want = "32x32"
  elif case == "count_too_big": corrupt(d, f, header(2051, 31, 28, 28) + bytes(30 * 784)); want = "truncated"
  elif case == "too_short": corrupt(d, f, header(2051, 30)); want = "too short"
  elif case == "count_mismatch": write_idx(d / TRAIN_LABELS, np.zeros(29, np.uint8), "labels"); want = "29 labels"
  elif case == "label_out_of_range":
    f = TEST_LABELS; write_idx(d / f, np.array([0] * 9 + [10], np.uint8), "labels"); want = "label 10"
  elif case == "labels_as_images":
    f = TEST_IMAGES; (d / f).write_bytes((d / TEST_LABELS).read_bytes()); want = "not an IDX images file"
  msg = expect_error(d / f, data_dir=d, val_size=10)
  assert want in msg, msg

# *** no data, download ***

def test_offline_without_data(isolated):
  msg = expect_error("data/mnist", val_size=10)
  for f in FILES: assert f in msg
  assert "--data-dir" in msg and "DATA_DIR" in msg and "network is unreachable" in msg
  assert str(isolated / "cache" / "mnist-explorer" / "mnist") in msg and "tinygrad" in msg
  assert "downloading is off" in expect_error("data/mnist", download=False)
  # where to get the files: the original site and the mirror the download uses
  assert "yann.lecun.com/exdb/mnist" in msg and data.BASE_URLS["mnist"] in msg
  # the failed attempt leaves no empty cache folders behind (the cache home held nothing before)
  assert not (isolated / "cache").exists(), sorted(str(p) for p in (isolated / "cache").rglob("*"))

def test_offline_fashion_names_its_sources(isolated):
  with pytest.raises(UserError) as e: load_dataset("fashion", val_size=10)
  msg = str(e.value)
  assert "github.com/zalandoresearch/fashion-mnist" in msg and "apt-get install dataset-fashion-mnist" in msg
  assert data.BASE_URLS["fashion"] in msg

def test_failed_download_keeps_folders_that_existed_and_checked_files(isolated, monkeypatch):
  cache = isolated / "cache"
  cache.mkdir()
  expect_error("data/mnist", val_size=10)
  assert cache.is_dir() and not (cache / "mnist-explorer").exists(), "only the folders the attempt made are removed"
  src = make_files(isolated / "src")
  files = {f: (src / f).read_bytes() for f in FILES}
  md5 = {f: hashlib.md5(b).hexdigest() for f, b in files.items()}
  md5[TEST_IMAGES] = "0" * 32  # the third file fails: the two checked ones stay for the next attempt
  monkeypatch.setitem(data.MD5, "mnist", md5)
  serve(monkeypatch, files, [])
  expect_error(data.BASE_URLS["mnist"] + TEST_IMAGES, val_size=10)
  assert sorted(p.name for p in (cache / "mnist-explorer" / "mnist").iterdir()) == sorted([TRAIN_IMAGES, TRAIN_LABELS])

def test_offline_names_partial_folder(isolated):
  make_files(isolated / "data" / "mnist")
  (isolated / "data" / "mnist" / TRAIN_LABELS).unlink()
  assert f"(missing {TRAIN_LABELS})" in expect_error("data/mnist", val_size=10)

class FakeResponse(io.BytesIO):
  def __enter__(self): return self
  def __exit__(self, *a): self.close()

def serve(monkeypatch, files: dict[str, bytes], calls: list[str]):
  def urlopen(url, timeout=None):
    assert timeout is not None  # never hang forever
    calls.append(url)
    return FakeResponse(files[url.rsplit("/", 1)[1]])
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)

def test_download_lands_in_cache(isolated, monkeypatch):
  src = make_files(isolated / "src")
  files = {f: (src / f).read_bytes() for f in FILES}
  monkeypatch.setitem(data.MD5, "mnist", {f: hashlib.md5(b).hexdigest() for f, b in files.items()})
  calls = []
  serve(monkeypatch, files, calls)
  ds = load_dataset("mnist", val_size=10)
  assert ds.source == "download" and len(ds.x_train) == 20 and len(ds.x_test) == 10
  assert calls == [data.BASE_URLS["mnist"] + f for f in FILES]
  cache = isolated / "cache" / "mnist-explorer" / "mnist"
  assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # no temp files left behind
  for f in FILES: assert (cache / f).read_bytes() == files[f]
  # second load comes from the cache, no network
  assert load_dataset("mnist", val_size=10).source == str(cache) and len(calls) == 4

def test_download_md5_mismatch(isolated, monkeypatch):
  src = make_files(isolated / "src")
  files = {f: (src / f).read_bytes() for f in FILES}
  md5 = {f: hashlib.md5(b).hexdigest() for f, b in files.items()}
  md5[TEST_IMAGES] = "0" * 32
  monkeypatch.setitem(data.MD5, "mnist", md5)
  serve(monkeypatch, files, [])
  msg = expect_error(data.BASE_URLS["mnist"] + TEST_IMAGES, val_size=10)
  assert "md5" in msg
  cache = isolated / "cache" / "mnist-explorer" / "mnist"
  assert sorted(p.name for p in cache.iterdir()) == sorted([TRAIN_IMAGES, TRAIN_LABELS])  # bad file never lands

def test_download_interrupted_leaves_nothing(isolated, monkeypatch):
  class Broken(FakeResponse):
    def read(self, *a): raise TimeoutError("timed out")
  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Broken(b""))
  msg = expect_error("data/mnist", val_size=10)
  assert "download failed (timed out)" in msg
  assert not (isolated / "cache" / "mnist-explorer").exists()  # no half file, no empty folder

# *** real data (provided in CI; skipped on a clone without it) ***

def real_dir(env: str, default: Path) -> Path:
  d = Path(os.environ.get(env) or default)
  if not all((d / f).is_file() for f in FILES): pytest.skip(f"real data not found in {d} (set {env} to a folder with the four files)")
  return d

def assert_normalization(ds):
  # pixel histogram instead of a float copy of all 47M pixels: same numbers, a fraction of the time
  counts = np.bincount(ds.x_train.ravel(), minlength=256) + np.bincount(ds.x_val.ravel(), minlength=256)
  v = np.arange(256) / 255.0
  mean = (counts * v).sum() / counts.sum()
  std = np.sqrt((counts * (v - mean) ** 2).sum() / counts.sum())
  want_mean, want_std = normalization(ds.name)
  assert abs(mean - want_mean) < 1e-3 and abs(std - want_std) < 1e-3, (mean, std)

def test_real_mnist():
  d = real_dir("MNIST_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist")
  ds = load_dataset("mnist", data_dir=d)
  assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (50000, 10000, 10000)
  assert ds.x_train.shape[1:] == (28, 28)
  assert list(np.bincount(ds.y_test, minlength=10)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  train_counts = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_val, minlength=10)
  assert list(train_counts) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert_normalization(ds)

def test_real_fashion(isolated, monkeypatch):
  d = real_dir("FASHION_DATA_DIR", Path("/usr/share/datasets/fashion-mnist"))
  monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", d)
  ds = load_dataset("fashion", download=False)  # found by searching (the Debian location), not by data_dir
  assert ds.source == str(d.resolve())
  assert len(ds.x_train) + len(ds.x_val) == 60000 and len(ds.x_val) == 10000 and len(ds.x_test) == 10000
  assert list(np.bincount(ds.y_test, minlength=10)) == [1000] * 10
  assert_normalization(ds)


def test_data_dir_with_the_other_datasets_files_is_refused(tmp_path, monkeypatch):
  from explorer import data
  folder = tmp_path / "d"
  folder.mkdir()
  x, y = np.zeros((12, 28, 28), np.uint8), (np.arange(12) % 10).astype(np.uint8)
  for f, arr, kind in ((data.TRAIN_IMAGES, x, "images"), (data.TRAIN_LABELS, y, "labels"), (data.TEST_IMAGES, x, "images"), (data.TEST_LABELS, y, "labels")):
    data.write_idx(folder / f, arr, kind)
  digest = __import__("hashlib").md5((folder / data.TRAIN_LABELS).read_bytes()).hexdigest()
  monkeypatch.setitem(data.MD5, "mnist", {**data.MD5["mnist"], data.TRAIN_LABELS: digest})  # pretend these are MNIST's
  with pytest.raises(UserError) as e: data.load_dataset("fashion", folder, val_size=2)
  assert "holds the mnist files, but the dataset is fashion" in str(e.value)
  assert data.load_dataset("mnist", folder, val_size=2).name == "mnist"
  (tmp_path / "both" / "fashion").mkdir(parents=True)
  for f in folder.iterdir(): (tmp_path / "both" / "fashion" / f.name).write_bytes(f.read_bytes())
  monkeypatch.setitem(data.MD5, "mnist", dict(data.MD5["mnist"]))
  monkeypatch.setitem(data.MD5["mnist"], data.TRAIN_LABELS, "0" * 32)
  assert data.load_dataset("fashion", tmp_path / "both", val_size=2).source.endswith("fashion"), "DATA_DIR/<dataset> is used"
