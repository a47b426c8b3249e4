"""Weights files, evaluate and predict, end to end as a user runs them on real MNIST: the best configuration keeps its
weights, evaluate reproduces the recorded test accuracy exactly, predict classifies a PNG made from a test image, the
report shows the best configuration's errors, and every bad input is one line with exit 2."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from explorer import weights
from explorer.errors import UserError
from explorer.images import to_mnist
from tests.conftest import MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
[mlp.defaults]
width = 64
steps = 150
batch = 64
[[mlp.runs]]
name = "slow"
category = "lr"
lr_max = 1e-4
[[mlp.runs]]
name = "good"
category = "lr"
lr_max = 3e-3
ema = 0.98
label_smoothing = 0.05
"""


def cli(args, cwd, **env):
  full = {**{k: v for k, v in os.environ.items() if k not in ("STEPS", "LR", "DATASET", "EXPERIMENTS")}, "JIT": "1",
          "RESULTS_DIR": str(cwd / "results"), "DATA_DIR": str(MNIST_DIR), **env}
  return subprocess.run([sys.executable, str(ROOT / "mnist_explorer.py"), *args], cwd=cwd, env=full, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist):
  """A two-run suite on real MNIST with the default --save-weights best."""
  folder = tmp_path_factory.mktemp("weights")
  (folder / "study.toml").write_text(SUITE)
  r = cli(["mlp", "--config", "study.toml"], folder)
  assert r.returncode == 0, r.stdout + r.stderr
  return folder


def run_dir(folder: Path) -> Path: return folder / "results" / "runs" / "study" / "mnist" / "mlp"


def file_of(folder: Path, name: str, ext: str) -> Path:
  """The run's one <name>.<config hash>.<ext> file (or where it would be)."""
  found = list(folder.glob(f"{name}.*.{ext}"))
  assert len(found) <= 1, found
  return found[0] if found else folder / f"{name}.missing.{ext}"


def test_best_keeps_only_the_best_configurations_weights_with_its_identity(trained):
  assert not (file_of(run_dir(trained), "slow", "safetensors")).exists(), "not the best: pruned at the suite's end"
  path = file_of(run_dir(trained), "good", "safetensors")
  record = json.loads((file_of(run_dir(trained), "good", "json")).read_text())
  state, meta = weights.load(path)
  assert {k: v.shape for k, v in state.items()} == {"hidden.0.weight": (64, 784), "hidden.0.bias": (64,), "hidden.1.weight": (64, 64),
                                                    "hidden.1.bias": (64,), "out.weight": (10, 64), "out.bias": (10,)}
  assert meta["name"] == "good" and meta["suite"] == "study" and meta["config_hash"] == record["config_hash"]
  assert json.loads(meta["config"]) == record["config"] and float(meta["test_acc"]) == record["metrics"]["test_acc"]
  assert meta["device"] == record["device"] and meta["tinygrad_version"] == record["tinygrad_version"]
  assert path.stat().st_size == pytest.approx(4 * sum(v.size for v in state.values()), abs=4096)


def test_evaluate_reproduces_the_recorded_test_accuracy_exactly(trained):
  r = cli(["evaluate", "good"], trained)
  assert r.returncode == 0, r.stdout + r.stderr
  record = json.loads((file_of(run_dir(trained), "good", "json")).read_text())
  assert f"test accuracy {100 * record['metrics']['test_acc']:.2f}%" in r.stdout
  assert "identical to the recorded test accuracy" in r.stdout
  by_path = cli(["evaluate", str(file_of(run_dir(trained), "good", "safetensors"))], trained)
  assert by_path.returncode == 0 and "identical" in by_path.stdout, by_path.stdout + by_path.stderr


def test_predict_classifies_a_png_made_from_a_test_image_and_a_photo_like_jpeg(trained, mnist):
  from PIL import Image
  Image.fromarray(mnist.x_test[0]).save(trained / "seven.png")
  # dark ink on white paper, 8x larger, as a phone picture would be
  Image.fromarray(255 - np.kron(mnist.x_test[1], np.ones((8, 8), np.uint8))).convert("RGB").save(trained / "two.jpg", quality=90)
  r = cli(["predict", "good", "seven.png", "two.jpg", "test:0", "--top", "2"], trained)
  assert r.returncode == 0, r.stdout + r.stderr
  lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
  assert int(mnist.y_test[0]) == 7 and lines["seven.png"].startswith("7 ") and lines["two.jpg"].startswith("2 ")
  assert lines["test:0"].startswith(lines["seven.png"]) and "(true: 7, correct)" in lines["test:0"], "the PNG is the test image"
  assert lines["seven.png"].count("%") == 2


def test_report_shows_the_best_configurations_errors_and_weights(trained):
  md = (trained / "results" / "study-mnist" / "mlp.md").read_text()
  assert "## Best configuration: test errors" in md
  for png in ("best-confusion.png", "best-errors.png"):
    assert f"(plots/mlp/{png})" in md and (trained / "results" / "study-mnist" / "plots" / "mlp" / png).stat().st_size > 1000
  assert f"[good.safetensors](../runs/study/mnist/mlp/{file_of(run_dir(trained), 'good', 'safetensors').name})" in md
  assert "`python mnist_explorer.py evaluate good --config study.toml --dataset mnist`" in md, "the default results folder needs no --results"


def test_save_weights_all_and_none(tmp_path, mnist):
  (tmp_path / "study.toml").write_text(SUITE.replace("steps = 150", "steps = 5"))
  assert cli(["mlp", "--config", "study.toml", "--save-weights", "none"], tmp_path).returncode == 0
  assert not list(run_dir(tmp_path).glob("*.safetensors"))
  r = cli(["mlp", "--config", "study.toml", "--save-weights", "all", "--rerun"], tmp_path)
  assert r.returncode == 0, r.stdout + r.stderr
  assert sorted(p.name.split(".")[0] for p in run_dir(tmp_path).glob("*.safetensors")) == ["good", "slow"]
  again = cli(["mlp", "--config", "study.toml"], tmp_path)  # nothing to train; the default 'best' prunes at the end
  assert again.returncode == 0 and "0 trained" in again.stdout, again.stdout + again.stderr
  assert (file_of(run_dir(tmp_path), "slow", "safetensors")).exists(), "files written with 'all' are never pruned"


def test_a_one_off_keeps_its_weights(tmp_path, mnist):
  (tmp_path / "study.toml").write_text(SUITE)
  r = cli(["mlp", "--config", "study.toml"], tmp_path, STEPS="5", WIDTH="16")
  assert r.returncode == 0, r.stdout + r.stderr
  (path,) = run_dir(tmp_path).glob("one-off-*.safetensors")
  assert weights.read_metadata(path)["save_weights"] == "all"


def test_bad_inputs_are_one_line_and_exit_2(trained, tmp_path):
  (trained / "broken.png").write_bytes(b"not an image")
  good = file_of(run_dir(trained), "good", "safetensors")
  # weights of another shape, with a consistent identity: the width-64 run's metadata over width-32 tensors
  state, meta = weights.load(good)
  odd = tmp_path / "odd.safetensors"
  weights.save(odd, {k: v[:32] if k.startswith("hidden.0") else v for k, v in state.items()}, meta)
  cases = [(["evaluate", "nosuch"], "no run named 'nosuch'"),
           (["evaluate", "slow"], "has no saved weights"),
           (["predict", "good", "broken.png"], "cannot read image broken.png"),
           (["predict", "good", "missing.png"], "image missing.png not found"),
           (["predict", "good", "test:10000"], "test set has images 0..9999"),
           (["evaluate", str(odd)], "weights of another shape: hidden.0.weight is (32, 784)"),
           (["evaluate", str(tmp_path / "none.safetensors")], "not found"),
           (["predict", "good"], "the following arguments are required: IMAGE")]
  for args, expected in cases:
    r = cli(args, trained)
    assert r.returncode == 2 and expected in r.stderr, (args, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_weights_of_another_model_are_refused(tmp_path):
  with pytest.raises(UserError, match="another model"):
    weights.check_shapes({"convs.0.weight": np.zeros((4, 1, 3, 3))}, {"hidden.0.weight": (64, 784)}, tmp_path / "w.safetensors")
  (tmp_path / "fake.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
  with pytest.raises(UserError, match="not an mnist-explorer weights file"):
    weights.read_metadata(tmp_path / "fake.safetensors")


def test_images_become_mnist_style_inputs():
  digit = np.zeros((28, 28))
  digit[6:22, 12:16] = 1.0
  assert np.array_equal(to_mnist(digit), np.round(digit * 255).astype(np.uint8)), "a 28x28 MNIST-style image is used as it is"
  paper = np.ones((300, 200))
  paper[40:200, 150:170] = 0.1  # a dark stroke on white, off centre
  out = to_mnist(paper).astype(float)
  assert out[0].max() == 0 and out.max() == 255, "inverted: dark background, bright ink"
  ys, xs = np.indices(out.shape)
  assert abs((ys * out).sum() / out.sum() - 13.5) < 1 and abs((xs * out).sum() / out.sum() - 13.5) < 1, "centred by mass"
  rows = np.flatnonzero(out.max(1) > 25)
  assert 18 <= len(rows) <= 21, "fits MNIST's 20x20 box"
  with pytest.raises(UserError, match="blank"): to_mnist(np.ones((50, 50)))


def test_a_weights_file_has_the_bytes_of_tinygrads_safe_save_and_reads_back_exactly(tmp_path):
  """Written and read with numpy (safe_save needs tinygrad's CPU backend, and so clang: an H100 machine without clang
  saved no weights), in the bytes tinygrad's safe_save writes, so its safe_load and other safetensors readers read it."""
  from tinygrad import Tensor
  from tinygrad.nn.state import safe_load, safe_save
  try: (Tensor([1], device="CPU") + 1).realize()
  except Exception as e: pytest.skip(f"the reference, tinygrad's safe_save, needs tinygrad's CPU backend, which fails here: {type(e).__name__}")
  rng = np.random.default_rng(0)
  state = {"hidden.0.weight": rng.standard_normal((7, 784)).astype(np.float32), "hidden.0.bias": rng.standard_normal(7).astype(np.float32),
           "out.weight": rng.standard_normal((10, 7)), "bn.mean": np.arange(3, dtype=np.float32)}  # a float64 array is written as float32
  meta = {"format": weights.FORMAT, "name": "ümlaut run"}
  size = weights.save(tmp_path / "ours.safetensors", state, meta)
  safe_save({k: Tensor(np.asarray(v, np.float32), device="CPU") for k, v in state.items()}, str(tmp_path / "tinygrads.safetensors"), meta)
  assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "tinygrads.safetensors").read_bytes()
  assert size == (tmp_path / "ours.safetensors").stat().st_size
  back, back_meta = weights.load(tmp_path / "ours.safetensors")
  assert back_meta == meta and list(back) == list(state)
  for k, v in state.items():
    assert back[k].dtype == np.float32 and np.array_equal(back[k], np.asarray(v, np.float32)), k
    assert np.array_equal(safe_load(str(tmp_path / "ours.safetensors"))[k].to("CPU").numpy(), back[k]), k
  # a cut-off file is one clear error
  raw = (tmp_path / "ours.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(raw[:-100])
  with pytest.raises(UserError, match="is damaged: its tensors cannot be read"): weights.load(tmp_path / "cut.safetensors")
