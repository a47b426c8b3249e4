"""evaluate and predict: reload a finished run's saved weights (safetensors) into the compiled model, then measure its
test accuracy again or classify images.

  python mnist_explorer.py evaluate RUN                 test accuracy of RUN's weights, against the recorded one
  python mnist_explorer.py predict RUN digit.png test:123   top classes with probabilities
RUN: a run name (narrowed by --config, --dataset, --model when several suites have it) or the path of a record
(.json) or weights file (.safetensors)."""
from __future__ import annotations
import argparse, json, os
from pathlib import Path
import numpy as np
from explorer import store
from explorer.errors import UserError
from explorer.weights import check_shapes, load, read_metadata, weights_for_record, weights_path

CLASSES = {"mnist": [str(i) for i in range(10)],
           "fashion": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]}


class Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, exit 2 (not argparse's usage block)
    raise UserError(f"{self.prog}: {message} (see {self.prog} -h)")


def parse_args(argv: list[str]) -> argparse.Namespace:
  command = argv[0]
  p = Parser(prog=f"mnist_explorer.py {command}", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("run", metavar="RUN", help="run name, or the path of its record (.json) or weights (.safetensors)")
  if command == "predict":
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG; any size) or test-set indices as test:N")
    p.add_argument("--top", type=int, default=3, metavar="K", help="classes to print per input (default 3)")
  p.add_argument("--config", default=os.environ.get("EXPERIMENTS"), metavar="FILE", help="only runs of this experiments file's suite")
  p.add_argument("--results", default=os.environ.get("RESULTS_DIR", "results"), metavar="DIR", help="results folder (env RESULTS_DIR)")
  p.add_argument("--dataset", default=os.environ.get("DATASET"), choices=["mnist", "fashion"], help="only runs on this dataset")
  p.add_argument("--model", choices=["mlp", "cnn"], help="only runs of this model")
  p.add_argument("--data-dir", default=os.environ.get("DATA_DIR"), metavar="DIR", help="folder with the IDX files (env DATA_DIR)")
  return p.parse_args(argv[1:])


def find_run(args: argparse.Namespace) -> tuple[dict | None, Path]:
  """(record, weights path) of RUN; every way it can be missing is one clear error."""
  path = Path(args.run)
  if path.suffix in (".json", ".safetensors"):
    if not path.is_file(): raise UserError(f"{path} not found")
    if path.suffix == ".json":
      record = store.read_record(path)
      if record is None: raise UserError(f"{path} is not a run record")
      return record, weights_path(path)
    return store.read_record(path.with_suffix(".json")), path
  results = Path(args.results)
  records, _ = store.load_records(results)
  suite = Path(args.config).stem if args.config else None
  matches = [r for r in records if r["name"] == args.run and (suite is None or r["suite"] == suite)
             and (args.dataset is None or r.get("dataset") == args.dataset) and (args.model is None or r["model"] == args.model)]
  if not matches:
    import difflib
    close = difflib.get_close_matches(args.run, sorted({r["name"] for r in records}), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    narrowed = " matching " + ", ".join(f"{k} {v}" for k, v in (("suite", suite), ("dataset", args.dataset), ("model", args.model)) if v) \
      if suite or args.dataset or args.model else ""
    raise UserError(f"no run named '{args.run}'{narrowed} under {results}/runs{hint}")
  if len(matches) > 1:
    where = ", ".join(f"{r['suite']}/{r['dataset']}/{r['model']}" for r in matches[:6])
    raise UserError(f"'{args.run}' names {len(matches)} runs ({where}): narrow it with --config FILE, --dataset or --model, "
                    "or give the record's path")
  record = matches[0]
  return record, weights_for_record(results, record)


def run_metadata(record: dict | None, path: Path) -> dict[str, str]:
  """The metadata of the run's weights file; a run without one is one clear error."""
  if not path.is_file():
    raise UserError(f"run '{record['name'] if record else path.stem}' has no saved weights ({path} does not exist): by default "
                    "(--save-weights best) only the best configuration of each report keeps its weights; train it again with "
                    "--save-weights all (e.g. --rerun --category ...)")
  return read_metadata(path)


def load_run(record: dict | None, path: Path):
  """Check a run's weights file, build its compiled model and load the weights: (trainer, compiled, cfg, meta)."""
  name = record["name"] if record else path.stem
  meta = run_metadata(record, path)
  if record and record.get("config_hash") != meta.get("config_hash"):
    raise UserError(f"{path} holds the weights of another configuration of '{name}' (config hash {meta.get('config_hash')}, "
                    f"the record's is {record.get('config_hash')}): train the run again to save matching weights")
  from explorer.config import KEY_BY_NAME, make_config
  try: config = json.loads(meta["config"])
  except (KeyError, ValueError): raise UserError(f"{path}: its metadata holds no readable configuration") from None
  if not isinstance(config, dict): raise UserError(f"{path}: its metadata holds no readable configuration")
  model = config.get("model", "")
  cfg = make_config(model, {k: v for k, v in config.items() if k in KEY_BY_NAME and model in KEY_BY_NAME[k].models}, f"{path} (metadata)")
  if cfg.hash() != meta.get("config_hash"):  # a key this version does not know, or a hand edit
    raise UserError(f"{path}: the configuration in its metadata does not match its config hash {meta.get('config_hash')}")
  state, meta = load(path)
  from explorer.train import Trainer
  from models import model_state
  trainer = Trainer(beam=int((record or {}).get("beam") or 0))  # the kernels the run was measured with
  c = trainer.prepare(cfg)
  trainer.reset(c, cfg)
  check_shapes(state, {k: t.shape for k, t in model_state(c.model).items()}, path)
  trainer.load_state(c, state)
  return trainer, c, cfg, meta


def evaluate(argv: list[str]) -> int:
  args = parse_args(argv)
  record, path = find_run(args)
  trainer, c, cfg, meta = load_run(record, path)
  from explorer.data import load_dataset
  data = load_dataset(cfg.dataset, args.data_dir)
  loss, acc = trainer.evaluate(c, data.x_test, data.y_test)
  recorded = (record or {}).get("metrics", {}).get("test_acc")
  if recorded is None:
    try: recorded = float(meta.get("test_acc"))
    except (TypeError, ValueError): recorded = None
  device, recorded_on = trainer.device, (record or {}).get("device") or meta.get("device")
  print(f"{meta['name']} ({meta['suite']}/{meta['dataset']}/{meta['model']}, weights {path}): test accuracy {100 * acc:.2f}% "
        f"({round(acc * len(data.y_test))}/{len(data.y_test)}), test loss {loss:.4f} on {device}")
  if recorded is None:
    print("no recorded test accuracy to compare with")
    return 0
  if acc == recorded:
    print(f"identical to the recorded test accuracy ({100 * recorded:.2f}%, {recorded_on})")
    return 0
  print(f"recorded: {100 * recorded:.2f}% on {recorded_on}: differs by {100 * (acc - recorded):+.2f} points"
        + (" (another device: kernels may round differently)" if recorded_on != device else ""))
  return 0 if recorded_on != device else 1


def read_inputs(inputs: list[str], dataset: str, data_dir: str | None) -> tuple[np.ndarray, list[int | None]]:
  """The images to classify (N, 28, 28) and, for test-set indices, their labels."""
  from explorer.images import load_image
  images, labels, data = [], [], None
  for item in inputs:
    if item.startswith("test:"):
      if data is None:
        from explorer.data import load_dataset
        data = load_dataset(dataset, data_dir)
      try: i = int(item[5:])
      except ValueError: raise UserError(f"{item}: test:N needs a whole number N") from None
      if not 0 <= i < len(data.x_test): raise UserError(f"{item}: the {dataset} test set has images 0..{len(data.x_test) - 1}")
      images.append(data.x_test[i])
      labels.append(int(data.y_test[i]))
    else:
      images.append(load_image(item, dataset))
      labels.append(None)
  return np.stack(images), labels


def predict(argv: list[str]) -> int:
  args = parse_args(argv)
  if args.top < 1: raise UserError(f"--top must be >= 1, got {args.top}")
  record, path = find_run(args)
  dataset = run_metadata(record, path).get("dataset", "mnist")
  images, labels = read_inputs(args.inputs, dataset, args.data_dir)  # unreadable images fail before the model is built
  trainer, c, cfg, meta = load_run(record, path)
  probs = trainer.predict(c, images)
  names = CLASSES[cfg.dataset]
  for item, p, label in zip(args.inputs, probs, labels):
    top = np.argsort(-p, kind="stable")[:min(args.top, len(names))]
    text = ", ".join(f"{names[k]} {100 * p[k]:.2f}%" for k in top)
    truth = f"  (true: {names[label]}{', correct' if top[0] == label else ', WRONG'})" if label is not None else ""
    print(f"{item}: {text}{truth}")
  return 0


def main(argv: list[str]) -> int:
  return evaluate(argv) if argv[0] == "evaluate" else predict(argv)
