"""Find, download and validate the MNIST / Fashion-MNIST IDX files; pure numpy + gzip (no tinygrad import)."""
from __future__ import annotations
import gzip, hashlib, http.client, os, sys, tempfile, urllib.request, zlib
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from explorer.errors import UserError
from explorer.fastpath import tinygrad_download, tinygrad_downloads_dir  # where tinygrad's fetch() keeps files

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
# same mirrors as tinygrad's nn/datasets.py, so tinygrad's download cache can be reused
BASE_URLS = {"mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "fashion": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"}
# where to get the four files by hand (named in the error when they are missing and cannot be downloaded)
SOURCES = {"mnist": "the original files at http://yann.lecun.com/exdb/mnist/ (often unreachable) or the mirror this tool downloads "
                    "from, https://storage.googleapis.com/cvdf-datasets/mnist/",
           "fashion": "https://github.com/zalandoresearch/fashion-mnist (its data/fashion/ folder), the mirror this tool downloads "
                      "from, http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/, or on Debian/Ubuntu the package "
                      "dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist: found without any flag)"}
# md5 of the published .gz files; only downloads are checked (users may bring their own IDX files)
MD5 = {"mnist": {TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873", TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
                 TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3", TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c"},
       "fashion": {TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d", TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
                   TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79", TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310"}}
# mean/std of the training pixels on a 0..1 scale
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion": (0.2860, 0.3530)}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt package dataset-fashion-mnist
DOWNLOAD_TIMEOUT = 20  # seconds per socket operation; offline machines should fail fast, not hang
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803 = uint8, 3 dims; 0x0801 = uint8, 1 dim

@dataclass
class Dataset:
  name: str
  source: str  # folder the files were read from, or "download"
  x_train: np.ndarray  # uint8 (N, 28, 28); arrays are read-only views of the decoded file
  y_train: np.ndarray  # uint8 (N,)
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

def _check_name(name: str) -> str:
  if name not in BASE_URLS: raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(BASE_URLS)}")
  return name

def normalization(name: str) -> tuple[float, float]: return NORMALIZATION[_check_name(name)]

def _cache_home() -> Path:
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ("Library/Caches" if sys.platform == "darwin" else ".cache"))

def cache_dir(name: str) -> Path: return _cache_home() / "mnist-explorer" / name

def _folder_candidates(folder: Path) -> dict[str, list[Path]]:
  return {f: [folder / f, folder / f.removesuffix(".gz")] for f in FILES}  # gzipped or already un-gzipped

def _tinygrad_candidates(name: str) -> dict[str, list[Path]]:
  return {f: [tinygrad_download(BASE_URLS[name] + f, _cache_home())] for f in FILES}

def _pick(candidates: dict[str, list[Path]]) -> dict[str, Path | None]:
  return {f: next((p for p in paths if p.is_file()), None) for f, paths in candidates.items()}

def _search_locations(name: str) -> list[tuple[Path, dict[str, list[Path]]]]:
  locs = [(Path("data") / name, _folder_candidates(Path("data") / name)),
          (cache_dir(name), _folder_candidates(cache_dir(name))),
          (tinygrad_downloads_dir(_cache_home()), _tinygrad_candidates(name))]
  if name == "fashion": locs.append((DEBIAN_FASHION_DIR, _folder_candidates(DEBIAN_FASHION_DIR)))
  return locs

def _one_line(e: BaseException) -> str: return " ".join(str(e).split()) or type(e).__name__

def _fetch(url: str, dest: Path, md5: str) -> None:
  with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r: data = r.read()
  if (got := hashlib.md5(data).hexdigest()) != md5:
    raise UserError(f"downloaded {url} is damaged (md5 {got}, expected {md5}); run again, or download the file yourself "
                    f"into {dest.parent}/")
  # write to a temp file in the same folder, then rename: a half-written file never looks complete
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as f: f.write(data)
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp): os.unlink(tmp)

def _download(name: str) -> dict[str, Path]:
  folder = cache_dir(name)
  created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
  folder.mkdir(parents=True, exist_ok=True)
  try:
    for f in FILES:  # files left by an earlier, interrupted run were md5-checked before landing, so keep them
      if not (folder / f).is_file(): _fetch(BASE_URLS[name] + f, folder / f, MD5[name][f])
  except BaseException:
    for p in created:  # a failed attempt (offline) leaves no empty cache folders behind
      try: p.rmdir()
      except OSError: break  # not empty: it holds files that were downloaded and checked
    raise
  return {f: folder / f for f in FILES}

def _read_idx(path: Path, kind: str) -> np.ndarray:
  raw = path.read_bytes()
  if path.suffix == ".gz":
    try: raw = gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
      raise UserError(f"{path} is corrupt or truncated ({_one_line(e)}); delete it and download or copy it again") from None
  ndim = 3 if kind == "images" else 1
  header = 4 + 4 * ndim
  if len(raw) < header: raise UserError(f"{path} is too short ({len(raw)} bytes) to be an IDX {kind} file")
  magic = int.from_bytes(raw[:4], "big")
  if magic != IDX_MAGIC[kind]:
    raise UserError(f"{path} is not an IDX {kind} file (magic number {magic}, expected {IDX_MAGIC[kind]}); check the file name")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
  if kind == "images" and dims[1:] != (28, 28):
    raise UserError(f"{path} holds {dims[1]}x{dims[2]} images; expected 28x28")
  if len(raw) - header != int(np.prod(dims)):
    raise UserError(f"{path} header says {dims[0]} {kind} ({int(np.prod(dims))} bytes) but the file has {len(raw) - header} "
                    "bytes of data; the file is truncated or corrupt")
  arr = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
  if kind == "labels" and len(arr) and (top := int(arr.max())) > 9:
    raise UserError(f"{path} has label {top}; labels must be 0..9")
  return arr

def _read_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
  x, y = _read_idx(images, "images"), _read_idx(labels, "labels")
  if len(x) != len(y): raise UserError(f"{images} has {len(x)} images but {labels} has {len(y)} labels; use matching files")
  return x, y

def _not_found(name: str, searched: list[tuple[Path, dict]], why: str) -> str:
  where = []
  for folder, found in searched:
    missing = [f for f, p in found.items() if p is None]
    where.append(f"{folder}" + (f" (missing {', '.join(missing)})" if len(missing) < len(FILES) else ""))
  return (f"{name} data not found: need {', '.join(FILES)} (or the same names without .gz); searched {'; '.join(where)}; "
          f"{why}; get them from {SOURCES[name]}; put the four files in ./data/{name}/ or pass --data-dir DIR / DATA_DIR=DIR")

def _check_int(label: str, v) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)): raise UserError(f"{label} must be a whole number, got {v!r}")
  return int(v)

# the first 32 training labels of the published files: recognises either dataset by content, whatever the files are
# called, gzipped or not, wherever they were found
LABEL_PREFIX = {"mnist": "50419213143536172869409112432738", "fashion": "90030272550955791064314843024453"}
TITLES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}


def check_content(name: str, y_train: np.ndarray, source: str) -> None:
  head = "".join(str(int(v)) for v in y_train[:32])
  for other, prefix in LABEL_PREFIX.items():
    if other != name and head == prefix:
      raise UserError(f"the files in {source} are {TITLES[other]} (recognised by their labels), but the dataset is {name}: "
                      f"use --dataset {other}, or point --data-dir/DATA_DIR at the {TITLES[name]} files")


def _check_not_other_dataset(name: str, labels: Path) -> None:
  """A folder named for one dataset but used for the other would train silently on the wrong images: compare the
  (small) training-labels file with the published files of the other dataset."""
  if labels.suffix != ".gz": return
  digest = hashlib.md5(labels.read_bytes()).hexdigest()
  for other, sums in MD5.items():
    if other != name and digest == sums[TRAIN_LABELS]:
      raise UserError(f"data folder {labels.parent} holds the {other} files, but the dataset is {name}: "
                      f"point --data-dir/DATA_DIR at the {name} files (or at a folder with {name}/ and {other}/ inside)")


def load_dataset(name: str, data_dir: str | Path | None = None, val_size: int = 10000, train_size: int | None = None,
                 download: bool = True) -> Dataset:
  name = _check_name(name)
  val_size = _check_int("val_size", val_size)
  if train_size is not None: train_size = _check_int("train_size", train_size)
  if data_dir is not None:
    # an explicit folder must work: falling back to another copy would hide the user's mistake
    folder = Path(data_dir).expanduser()
    if not folder.is_dir(): raise UserError(f"data folder {folder} does not exist; create it with the four {name} files or fix --data-dir")
    if (folder / name).is_dir(): folder = folder / name  # one DATA_DIR for both datasets: DATA_DIR/mnist, DATA_DIR/fashion
    paths = _pick(_folder_candidates(folder))
    if missing := [f for f, p in paths.items() if p is None]:
      raise UserError(f"data folder {folder} is missing {', '.join(missing)} (gzipped or not); copy the {name} files there")
    source = str(folder.resolve())
    _check_not_other_dataset(name, paths[TRAIN_LABELS])
  else:
    searched, paths = [], None
    for folder, candidates in _search_locations(name):
      found = _pick(candidates)
      searched.append((folder, found))
      if all(found.values()): paths, source = found, str(folder.resolve()); break
    if paths is None:
      if not download: raise UserError(_not_found(name, searched, "downloading is off"))
      try: paths, source = _download(name), "download"
      except (OSError, http.client.HTTPException) as e:  # URLError, timeouts and disk errors are all OSError
        raise UserError(_not_found(name, searched, f"download failed ({_one_line(e)})")) from None
  x_train, y_train = _read_pair(paths[TRAIN_IMAGES], paths[TRAIN_LABELS])
  check_content(name, y_train, source)
  x_test, y_test = _read_pair(paths[TEST_IMAGES], paths[TEST_LABELS])
  n = len(x_train)
  if val_size < 0: raise UserError(f"val_size must be >= 0, got {val_size}")
  if n <= val_size:
    raise UserError(f"{paths[TRAIN_IMAGES]} has {n} training images: at least {val_size + 1} are needed (the last {val_size} "
                    "are held out for validation)")
  if len(x_test) == 0: raise UserError(f"{paths[TEST_IMAGES]} holds no test images: the test set cannot be empty")
  limit = n - val_size  # validation = the last val_size training images, never trained on
  if train_size is not None and not 1 <= train_size <= limit:
    raise UserError(f"train_size must be 1..{limit} ({n} training images minus val_size {val_size}), got {train_size}")
  keep = limit if train_size is None else train_size
  return Dataset(name, source, x_train[:keep], y_train[:keep], x_train[limit:], y_train[limit:], x_test, y_test)

def write_idx(path: str | Path, array: np.ndarray, kind: str) -> Path:
  """Write a uint8 array as an IDX file (gzipped if path ends in .gz); kind is "images" (N,28,28) or "labels" (N,)."""
  path, array = Path(path), np.ascontiguousarray(array, dtype=np.uint8)
  assert array.ndim == (3 if kind == "images" else 1), f"{kind} need {'3' if kind == 'images' else '1'} dims, got {array.shape}"
  data = np.array([IDX_MAGIC[kind], *array.shape], ">i4").tobytes() + array.tobytes()
  path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
  return path
