"""bench/vs_torch.py end to end on the small generated IDX files, and the PyTorch side it compares against: the same
layers (the tinygrad model's weights give the same outputs in torch) and the same LR schedule."""
import importlib.util, os, re, subprocess, sys
import numpy as np
import pytest
import torch  # installed by ./setup.sh --test: the bench's reference
from explorer.config import make_config
from explorer.train import lr_at
from tinygrad import Tensor
from models import build_model, reset_model
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from torch_models import torch_model  # noqa: E402


def load_torch_suite():
  spec = importlib.util.spec_from_file_location("torch_suite", ROOT / "bench" / "torch_suite.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_torch_suite_schedule_is_the_explorers():
  suite = load_torch_suite()
  for values in ({"steps": 100}, {"steps": 37, "warmup": 5, "lr_min": 1e-5, "lr_max": 3e-3}, {"steps": 2, "warmup": 1}):
    cfg = make_config("mlp", values, "test")
    assert [suite.lr_at(cfg, t) for t in range(cfg.steps)] == pytest.approx([lr_at(cfg, t) for t in range(cfg.steps)], rel=1e-12)


@pytest.mark.parametrize("model,values", [("mlp", {"width": 32, "act": "gelu"}),
                                          ("cnn", {"channels": [4, 8], "width": 16, "norm": "batch", "act": "silu"})])
def test_torch_model_matches_tinygrad(model, values):
  cfg = make_config(model, values, "test")
  tiny = build_model(cfg)
  reset_model(tiny, 3)
  theirs = torch_model(torch, cfg, copy_from=tiny).eval()
  x = np.random.default_rng(0).standard_normal((5, 28, 28)).astype(np.float32)
  with torch.no_grad(): want = theirs(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(tiny(Tensor(x), training=False).numpy(), want, rtol=1e-4, atol=1e-4)


def test_vs_torch_table(data_dir, tmp_path):
  config = tmp_path / "suite.toml"
  config.write_text('[mlp]\n[mlp.defaults]\nwidth = 32\nsteps = 4\n\n[[mlp.runs]]\nname = "a"\n\n[[mlp.runs]]\nname = "b"\nlr_max = 2e-3\n')
  r = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_torch.py"), "--model", "mlp", "--max-steps", "2", "--ways", "main",
                      "--config", str(config), "--data-dir", str(data_dir), "--logs", str(tmp_path / "logs"),
                      "--keep-results", str(tmp_path / "kept")],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "2 configurations, 4 steps, every configuration capped at 2 steps" in r.stdout
  assert "test" in (tmp_path / "logs" / "mlp-torch-1.log").read_text() and "2 trained" in (tmp_path / "logs" / "mlp-main-1.log").read_text()
  assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["mlp-main-1"]  # the explorer's results folder, not the script's
  assert len(list((tmp_path / "kept" / "mlp-main-1" / "runs").rglob("*.json"))) >= 2
  rows = {line.split(" | ")[0]: line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line}
  torch_row = next(v for k, v in rows.items() if "PyTorch script" in k)
  main_row = rows["| `JIT=1 python mnist_explorer.py mlp`"]
  t = re.search(r"\| (\d+\.\d) \| 1\.00× \| - \|$", torch_row)
  m = re.search(r"\| (\d+\.\d) \| (\d+\.\d\d)× \| (\d+\.\d\d) \(2/2 configurations\) \|$", main_row)
  assert t and m, (torch_row, main_row)
  assert float(t[1]) > 0 and float(m[2]) == pytest.approx(float(m[1]) / float(t[1]), rel=0.05) and 0 <= float(m[3]) <= 100
  assert re.search(r"\*\*PyTorch\*\* \S+, device cpu, \d+ threads", r.stdout), r.stdout


def test_vs_torch_fresh_cache_gives_every_explorer_command_a_new_machines_first_run(data_dir, tmp_path):
  """--fresh-cache: the explorer command starts from an empty tinygrad cache of its own, so it tunes its kernels, and
  the machine's cache (CACHEDB here) is neither read nor written."""
  config = tmp_path / "suite.toml"
  config.write_text('[mlp]\n[mlp.defaults]\nwidth = 32\nsteps = 1\n\n[[mlp.runs]]\nname = "a"\n')
  machine_cache = tmp_path / "machine-cache.db"
  r = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_torch.py"), "--model", "mlp", "--ways", "main", "--fresh-cache",
                      "--config", str(config), "--data-dir", str(data_dir), "--logs", str(tmp_path / "logs"),
                      "--keep-results", str(tmp_path / "kept")],
                     cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "CACHEDB": str(machine_cache)})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "the explorer's with an empty tinygrad cache (`--fresh-cache`" in r.stdout
  log = (tmp_path / "logs" / "mlp-main-1.log").read_text()
  # an empty cache holds no tile verdicts: the kernels were tuned, or (one step is too brief to pay for it) timed and kept
  assert "tuned the register tiles of" in log or "kept tinygrad's own tiles for" in log, f"no tile verdict was cached:\n{log[-2000:]}"
  assert not machine_cache.exists(), "the machine's own cache was not used"


def test_vs_torch_rejects_an_unknown_way():
  r = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_torch.py"), "--ways", "main,quick"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and "unknown way 'quick'" in r.stderr


def test_eval_vs_torch_prints_both_passes_and_their_ratio(mnist):
  """bench/eval_vs_torch.py on real MNIST, one round: both ways timed per 1,000 images, the ratio their quotient."""
  from tests.conftest import MNIST_DIR
  r = subprocess.run([sys.executable, str(ROOT / "bench" / "eval_vs_torch.py"), "mlp", "1"], cwd=ROOT, capture_output=True, text=True,
                     timeout=300, env={**os.environ, "DATA_DIR": str(MNIST_DIR)})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "a validation pass of 10,000 images in batches of 1000, 1 rounds" in r.stdout, r.stdout
  ms = {m[1]: float(m[2]) for m in re.finditer(r"^  (explorer|PyTorch)\s+([\d.]+) ms per 1,000 images", r.stdout, re.M)}
  ratio = re.search(r"explorer / PyTorch: ([\d.]+)", r.stdout)
  assert set(ms) == {"explorer", "PyTorch"} and all(v > 0 for v in ms.values()) and ratio, r.stdout
  assert float(ratio[1]) == pytest.approx(ms["explorer"] / ms["PyTorch"], rel=0.03)  # of the unrounded medians
