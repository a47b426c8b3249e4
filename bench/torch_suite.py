#!/usr/bin/env python3
"""The plain PyTorch script the explorer replaces: every configuration of a model's suite in experiments.toml, one after
another, in one process. The configurations are the explorer's own (explorer.config, --max-steps capped as the CLI caps
them); the model, optimizer, cosine LR with warmup, batch size, steps, split (the last 10,000 training images validate)
and eval cadence (cfg.eval_interval, full validation set) are the same; the test set is measured at the end.

  python bench/torch_suite.py --model mlp [--max-steps N] [--threads N] [--device cuda] [--data-dir DIR] [--json FILE]
"""
import argparse, json, math, sys, time
from pathlib import Path
t_start = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import torch  # noqa: E402
from explorer.config import load_toml, suite_specs  # noqa: E402  (plain Python: no tinygrad in this process)
from explorer.data import load_dataset, normalization  # noqa: E402
from explorer.machine import available_cores  # noqa: E402
from mnist_explorer import cap_steps  # noqa: E402
from torch_models import torch_model, torch_optimizer  # noqa: E402


def lr_at(cfg, t: int) -> float:
  """Linear warmup, then cosine from lr_max to lr_min (explorer.train.lr_at's cosine schedule; tests/test_bench.py compares)."""
  if cfg.schedule != "cosine": raise SystemExit(f"torch_suite: schedule '{cfg.schedule}' is not written here (cosine only)")
  warm = (t + 1) / cfg.warmup if t < cfg.warmup else 1.0
  progress = min(max((t - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 0.0), 1.0)
  return warm * (cfg.lr_min + (cfg.lr_max - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, x, y, batch: int = 1000) -> float:
  model.eval()
  with torch.no_grad(): correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
  model.train()
  return correct / len(x)


def train(cfg, data) -> float:
  if tricks := [k for k in ("augment", "flip", "cutout", "label_smoothing", "ema") if getattr(cfg, k)]:
    raise SystemExit(f"torch_suite: {', '.join(tricks)} not written here")
  torch.manual_seed(cfg.seed)
  (x, y) = (t[:cfg.train_size or len(t)] for t in data["train"])
  model = torch_model(torch, cfg).to(x.device)
  opt = torch_optimizer(torch, cfg, model.parameters())
  order, pos = torch.randperm(len(x), device=x.device), 0
  for step in range(cfg.steps):
    if pos + cfg.batch > len(x): order, pos = torch.randperm(len(x), device=x.device), 0  # a new epoch (the partial batch is dropped)
    idx, pos = order[pos:pos + cfg.batch], pos + cfg.batch
    for g in opt.param_groups: g["lr"] = lr_at(cfg, step)
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
      print(f"  step {step + 1:5d}  loss {loss.item():.4f}  val {100 * evaluate(model, *data['val']):.2f} %", flush=True)
  return evaluate(model, *data["test"])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
  p.add_argument("--config", default=str(ROOT / "experiments.toml"))
  p.add_argument("--max-steps", type=int, help="cap every configuration's steps at N, as the explorer's --max-steps")
  p.add_argument("--threads", type=int, default=available_cores(), help="torch.set_num_threads (default: the cores)")
  p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda; the data lives there from the start")
  p.add_argument("--data-dir", help="MNIST IDX folder (default: where the explorer looks)")
  p.add_argument("--json", help="also write {name: test accuracy}, wall time and threads to this file")
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  specs = suite_specs(load_toml(args.config), args.model, args.config)
  if args.max_steps: specs = [cap_steps(s, args.max_steps) for s in specs]
  mean, std = normalization(specs[0].config.dataset)
  ds = load_dataset(specs[0].config.dataset, args.data_dir)
  def tensors(x, y):  # normalized once, on the device
    return ((torch.tensor(x).float() / 255 - mean) / std).to(args.device), torch.tensor(y).long().to(args.device)
  data = {"train": tensors(ds.x_train, ds.y_train), "val": tensors(ds.x_val, ds.y_val), "test": tensors(ds.x_test, ds.y_test)}
  acc = {}
  for s in specs:
    t0 = time.perf_counter()
    print(f"{s.name}: {s.config.steps} steps, batch {s.config.batch}, lr {s.config.lr_max:g}", flush=True)
    acc[s.name] = train(s.config, data)
    print(f"{s.name}: test {100 * acc[s.name]:.2f} %  ({time.perf_counter() - t0:.1f} s)", flush=True)
  wall = time.perf_counter() - t_start
  print(f"total: {len(specs)} configurations, {sum(s.config.steps for s in specs)} steps, {wall:.1f} s wall, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}")
  if args.json: Path(args.json).write_text(json.dumps({"test_acc": acc, "wall_s": wall, "threads": torch.get_num_threads(), "torch": torch.__version__,
                                                       "device": args.device}))


if __name__ == "__main__":
  from explorer.errors import UserError
  try: main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
