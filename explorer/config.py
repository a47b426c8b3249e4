"""Hyperparameters as data: one table of every key, its type, range and meaning; TOML suites and env-var one-offs
are both resolved into RunConfig values that are checked before anything trains."""
from __future__ import annotations
import dataclasses, difflib, hashlib, itertools, json, math, os, random, re, tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from explorer.errors import UserError

MODELS = ("mlp", "cnn")
DATASETS = ("mnist", "fashion")
ACTIVATIONS = ("relu", "silu", "gelu", "tanh", "sigmoid", "leakyrelu")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lamb", "muon")
SCHEDULES = ("cosine", "constant", "step", "plateau")
NORMS = ("none", "batch", "layer", "instance", "group")
POOLS = ("max", "avg", "none")
TRAIN_IMAGES = 50_000  # MNIST-style training file (60,000) minus the 10,000 held out for validation


@dataclass(frozen=True)
class Key:
  """One hyperparameter: TOML key, env var (upper-case key), type, allowed values and meaning."""
  name: str
  type: type  # int, float, bool, str or list (a list of ints)
  help: str
  lo: float | None = None  # inclusive bounds for numbers (list items too)
  hi: float | None = None
  choices: tuple[str, ...] = ()
  models: tuple[str, ...] = MODELS  # which models the key applies to
  shape: bool = False  # True: changes the compiled graph; False: a scalar fed to the compiled step at run time
  lo_open: bool = False  # lo itself not allowed (e.g. lr_max > 0)
  switch: bool = False  # only on (non-zero) or off changes the compiled graph; the value is fed at run time


KEYS: tuple[Key, ...] = (
  Key("steps", int, "optimizer steps", 1, 10_000_000),
  Key("batch", int, "batch size (images per step)", 1, shape=True),
  Key("lr_max", float, "peak learning rate (after warmup)", 0, 10, lo_open=True),
  Key("lr_min", float, "final learning rate of the cosine schedule", 0, 10),
  Key("warmup", int, "linear warmup steps from 0 to lr_max", 0, 10_000_000),
  Key("schedule", str, "learning-rate schedule", choices=SCHEDULES),
  Key("lr_decay", float, "factor for the step and plateau schedules", 0, 1, lo_open=True),
  Key("decay_every", int, "step schedule: multiply the LR by lr_decay every N steps (0: steps/3)", 0, 10_000_000),
  Key("patience", int, "plateau schedule: evaluations without a better val loss before the LR drops", 1, 1000),
  Key("opt", str, "optimizer", choices=OPTIMIZERS, shape=True),
  Key("momentum", float, "momentum (sgd, rmsprop, muon)", 0, 1),
  Key("nesterov", bool, "Nesterov momentum (sgd, muon)"),
  Key("wd", float, "weight decay (decoupled for adamw/lamb/muon, L2 for sgd/adam/rmsprop)", 0, 10),
  Key("beta1", float, "Adam first-moment decay", 0, 1),
  Key("beta2", float, "Adam second-moment decay", 0, 1),
  Key("act", str, "activation", choices=ACTIVATIONS, shape=True),
  Key("width", int, "hidden units per layer (MLP) or fully connected units (CNN)", 1, 16384, shape=True),
  Key("depth", int, "hidden layers (MLP)", 1, 8, models=("mlp",), shape=True),
  Key("width1", int, "units of hidden layer 1, overriding width (0: width)", 0, 16384, models=("mlp",), shape=True),
  Key("width2", int, "units of hidden layer 2, overriding width (0: width)", 0, 16384, models=("mlp",), shape=True),
  Key("width3", int, "units of hidden layer 3, overriding width (0: width)", 0, 16384, models=("mlp",), shape=True),
  Key("dropout", float, "dropout rate after each hidden activation (Dropout2D on conv maps)", 0, 0.95, shape=True),
  Key("channels", list, "conv channels per conv layer, e.g. [32, 64] (env: 32,64)", 1, 1024, models=("cnn",), shape=True),
  Key("kernel", int, "conv kernel size", 1, 9, models=("cnn",), shape=True),
  Key("pool", str, "pooling after each conv block while the map is larger than 4x4", choices=POOLS, models=("cnn",), shape=True),
  Key("norm", str, "normalization after each conv", choices=NORMS, models=("cnn",), shape=True),
  Key("batchnorm", bool, "shorthand for norm = \"batch\" (true) or \"none\" (false)", models=("cnn",), shape=True),
  Key("augment", bool, "random affine augmentation (rotation, scale, shift) inside the compiled step", shape=True),
  Key("rotate", float, "augmentation: max rotation in degrees", 0, 180),
  Key("scale", float, "augmentation: max relative zoom", 0, 0.5),
  Key("shift", float, "augmentation: max shift in pixels", 0, 14),
  Key("flip", bool, "augmentation: random horizontal flip (for Fashion-MNIST; digits are not mirror-symmetric)", shape=True),
  Key("cutout", int, "augmentation: blank a random square of this many pixels per image (0: off)", 0, 28, switch=True),
  Key("label_smoothing", float, "spread this much of the target probability over all classes in the training loss (0: off)", 0, 0.5,
      switch=True),
  Key("ema", float, "keep an exponential moving average of the weights with this decay, evaluated and saved instead of "
      "the last weights (0: off)", 0, 0.9999, switch=True),
  Key("train_size", int, "train on the first N training images only (0: all 50,000)", 0, TRAIN_IMAGES),
  Key("eval_every", int, "steps between validation evaluations (0: steps/10, at least 50)", 0, 10_000_000),
  Key("seed", int, "random seed (weights, batches, dropout)", 0, 2**31 - 1),
  Key("dataset", str, "dataset", choices=DATASETS),
)
KEY_BY_NAME = {k.name: k for k in KEYS}
LATER_KEYS = ("flip", "cutout", "label_smoothing", "ema")  # not in a run's hash while at their default (see RunConfig.hash)
ALIASES = {"bs": "batch", "lr": "lr_max"}  # env-var and TOML shorthands
# tinygrad's and the CLI's own variables: never hyperparameters
NOT_HYPERPARAMETERS = {"JIT", "DEV", "BEAM", "DEBUG", "EXPERIMENTS", "RESULTS_DIR", "DATA_DIR"}


@dataclass(frozen=True)
class RunConfig:
  """Every hyperparameter of one training run, fully resolved. Defaults are the MLP's; [<model>.defaults] overrides."""
  model: str = "mlp"
  steps: int = 100
  batch: int = 128
  lr_max: float = 1e-3
  lr_min: float = 0.0
  warmup: int = 0
  schedule: str = "cosine"
  lr_decay: float = 0.1
  decay_every: int = 0
  patience: int = 3
  opt: str = "adamw"
  momentum: float = 0.9
  nesterov: bool = False
  wd: float = 0.0
  beta1: float = 0.9
  beta2: float = 0.999
  act: str = "relu"
  width: int = 512
  depth: int = 2
  width1: int = 0
  width2: int = 0
  width3: int = 0
  dropout: float = 0.0
  channels: tuple[int, ...] = (32, 64)
  kernel: int = 3
  pool: str = "max"
  norm: str = "none"
  batchnorm: bool = False
  augment: bool = False
  rotate: float = 10.0
  scale: float = 0.1
  shift: float = 2.0
  flip: bool = False
  cutout: int = 0
  label_smoothing: float = 0.0
  ema: float = 0.0
  train_size: int = 0
  eval_every: int = 0
  seed: int = 0
  dataset: str = "mnist"

  @property
  def hidden_widths(self) -> tuple[int, ...]:
    overrides = (self.width1, self.width2, self.width3)
    return tuple((overrides[i] if i < 3 and overrides[i] else self.width) for i in range(self.depth))

  @property
  def eval_interval(self) -> int:
    # default: about 10 evaluations, but at most one per 50 steps (a full 10,000-image validation costs ~30 steps)
    return self.eval_every or min(self.steps, max(50, self.steps // 10))

  def shape_key(self) -> tuple:
    """What the compiled train step depends on; runs with equal keys reuse one compiled step."""
    return (self.model,) + tuple(bool(getattr(self, k.name)) if k.switch else getattr(self, k.name)
                                 for k in KEYS if (k.shape or k.switch) and self.model in k.models)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["channels"] = list(self.channels)
    return d

  def hash(self) -> str:
    """Stable id of what is trained: same hash, same run (used to skip finished runs). Keys added after the first
    results were stored are left out while at their default, so those runs keep their hash."""
    d = {k: v for k, v in self.to_dict().items() if not (k in LATER_KEYS and v == RunConfig.__dataclass_fields__[k].default)}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
  """One run to train: a named, categorized configuration (one seed of it)."""
  name: str  # unique in the suite, e.g. "lr-2e-3" or "lr-2e-3-r1" for a repeat
  group: str  # the configuration without the repeat suffix: repeats share it (mean ± std)
  category: str
  description: str
  config: RunConfig
  axes: dict[str, Any] = field(default_factory=dict)  # grid/random values that define this run
  capped_from: int | None = None  # steps before --max-steps capped them
  position: int | None = None  # its place in the experiments file: reports follow the file, not the training order


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,119}$")


def check_name(name: str, what: str, where: str) -> str:
  # names become file names: refuse anything that could leave the results folder
  if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
    raise UserError(f"{where}: {what} {name!r} may only use letters, digits and . _ = + - (max 120 chars, no '..')")
  return name


def _suggest(name: str, options) -> str:
  close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
  return f" (did you mean '{close[0]}'?)" if close else ""


def canonical_key(name: str, where: str, model: str | None = None) -> str:
  key = ALIASES.get(name.lower(), name.lower()) if where.startswith("env") else ALIASES.get(name, name)
  if key not in KEY_BY_NAME:
    shown = name.upper() if where.startswith("env") else name
    options = [k.upper() for k in KEY_BY_NAME] if where.startswith("env") else list(KEY_BY_NAME)
    raise UserError(f"{where}: unknown hyperparameter '{shown}'{_suggest(shown, options)}")
  if model is not None and model not in KEY_BY_NAME[key].models:
    raise UserError(f"{where}: '{name}' applies to {'/'.join(KEY_BY_NAME[key].models)} only, not {model}")
  return key


def coerce(key: str, value: Any, where: str) -> Any:
  """Check one value's type and range; strings (env vars) are parsed. Returns the typed value."""
  k = KEY_BY_NAME[key]
  label = f"{where}: {key.upper() if where.startswith('env') else key}"
  if isinstance(value, str) and k.type is not str:
    value = _parse_text(k, value.strip(), label)
  if k.type is bool:
    if not isinstance(value, bool): raise UserError(f"{label} must be true or false, got {value!r}")
    return value
  if k.type is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer(): value = int(value)
      else: raise UserError(f"{label} must be an integer, got {value!r}")
    _check_range(k, value, label)
    return value
  if k.type is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)): raise UserError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value): raise UserError(f"{label} must be finite, got {value!r}")
    _check_range(k, float(value), label)
    return float(value)
  if k.type is list:
    if isinstance(value, int) and not isinstance(value, bool): value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
      raise UserError(f"{label} must be a non-empty list of integers, got {value!r}")
    if len(value) > 8: raise UserError(f"{label} allows at most 8 conv layers, got {len(value)}")
    for v in value: _check_range(k, v, label)
    return tuple(value)
  if not isinstance(value, str): raise UserError(f"{label} must be a string, got {value!r}")
  if value not in k.choices:
    raise UserError(f"{label} must be one of {', '.join(k.choices)}, got {value!r}{_suggest(value, k.choices)}")
  return value


def _parse_text(k: Key, text: str, label: str) -> Any:
  try:
    if k.type is bool:
      if text.lower() in ("1", "true", "yes", "on"): return True
      if text.lower() in ("0", "false", "no", "off"): return False
      raise ValueError
    if k.type is int:
      number = float(text)  # accepts 1e3 as well as 1000
      if not number.is_integer(): raise ValueError
      return int(number)
    if k.type is float: return float(text)
    return [int(p) for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
  except ValueError:
    kind = {bool: "true or false", int: "an integer", float: "a number", list: "a comma-separated list of integers"}[k.type]
    raise UserError(f"{label} must be {kind}, got {text!r}") from None


def _check_range(k: Key, value: float, label: str) -> None:
  if k.lo is not None and (value < k.lo or (k.lo_open and value == k.lo)):
    raise UserError(f"{label} must be {'>' if k.lo_open else '>='} {k.lo:g}, got {value!r}")
  if k.hi is not None and value > k.hi: raise UserError(f"{label} must be <= {k.hi:g}, got {value!r}")


def make_config(model: str, values: dict[str, Any], where: str) -> RunConfig:
  """Raw values (defaults already merged by the caller) into a checked RunConfig."""
  if model not in MODELS: raise UserError(f"unknown model '{model}'{_suggest(model, MODELS)} (models: {', '.join(MODELS)})")
  return with_overrides(RunConfig(model=model), values, where)


def with_overrides(cfg: RunConfig, values: dict[str, Any], where: str) -> RunConfig:
  """cfg with some keys changed, each type- and range-checked, then the cross-key rules."""
  typed = {}
  for name, value in values.items():
    key = canonical_key(name, where, cfg.model)
    if key in typed: raise UserError(f"{where}: '{name}' is given twice (directly and as an alias)")
    typed[key] = coerce(key, value, where)
  if "batchnorm" in typed and "norm" not in typed: typed["norm"] = "batch" if typed["batchnorm"] else "none"
  cfg = dataclasses.replace(cfg, **typed)
  cfg = dataclasses.replace(cfg, batchnorm=cfg.norm == "batch")
  check_config(cfg, where)
  return cfg


def check_config(cfg: RunConfig, where: str) -> None:
  train_images = cfg.train_size or TRAIN_IMAGES
  if cfg.batch > train_images:
    raise UserError(f"{where}: batch {cfg.batch} is larger than the training set ({train_images} images)")
  if cfg.lr_min > cfg.lr_max: raise UserError(f"{where}: lr_min {cfg.lr_min:g} is larger than lr_max {cfg.lr_max:g}")
  if cfg.warmup >= cfg.steps and cfg.warmup > 0:
    raise UserError(f"{where}: warmup ({cfg.warmup}) must be shorter than steps ({cfg.steps})")
  if cfg.momentum >= 1: raise UserError(f"{where}: momentum must be < 1, got {cfg.momentum}")
  if cfg.beta1 >= 1 or cfg.beta2 >= 1: raise UserError(f"{where}: beta1 and beta2 must be < 1")
  if cfg.model == "mlp" and cfg.depth < 3 and any((cfg.width1, cfg.width2, cfg.width3)[cfg.depth:]):
    raise UserError(f"{where}: width{cfg.depth + 1}.. set, but depth is {cfg.depth}")
  if cfg.ema and cfg.schedule == "plateau":
    raise UserError(f"{where}: ema and the plateau schedule both choose the weights a run ends on: use one of them")
  if cfg.model == "cnn" and cfg.kernel % 2 == 0: raise UserError(f"{where}: kernel must be odd (same padding), got {cfg.kernel}")


# ---------- suites from TOML ----------

RUN_META = {"name", "category", "description", "repeats"}


def load_toml(path: str | Path) -> dict:
  path = Path(path)
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise UserError(f"experiments file {path} not found (pass --config FILE or EXPERIMENTS=FILE)") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read experiments file {path}: {e}") from None
  try:
    return tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise UserError(f"{path}: malformed TOML: {e}") from None  # tomllib's message carries line and column


def suite_specs(doc: dict, model: str, path: str | Path, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
  """Every run of one model's section: explicit [[model.runs]], [[model.grids]] and [[model.random]], each repeated."""
  where = str(path)
  if model not in doc: raise UserError(f"{where}: no [{model}] section (models here: {', '.join(k for k in doc if k in MODELS) or 'none'})")
  unknown = [k for k in doc if k not in MODELS]
  if unknown: raise UserError(f"{where}: unknown top-level section [{unknown[0]}]{_suggest(unknown[0], MODELS)} (use [mlp] and [cnn])")
  section = doc[model]
  allowed = {"description", "defaults", "repeats", "runs", "grids", "random"}
  for k in section:
    if k not in allowed: raise UserError(f"{where}: [{model}] has unknown key '{k}'{_suggest(k, allowed)} (allowed: {', '.join(sorted(allowed))})")
  defaults = _table(section.get("defaults", {}), f"{where} [{model}.defaults]")
  default_repeats = _repeats(section.get("repeats", 1), f"{where} [{model}]")
  specs: list[RunSpec] = []
  for i, run in enumerate(_list_of_tables(section.get("runs", []), f"{where} [[{model}.runs]]")):
    loc = f"{where} [[{model}.runs]] #{i + 1}"
    meta, values = _split(run, loc)
    name = check_name(meta.get("name", ""), "run name", loc)
    specs += _expand(model, name, meta, {**defaults, **values}, {}, default_repeats, f"{where} [[{model}.runs]] '{name}'")
  for i, grid in enumerate(_list_of_tables(section.get("grids", []), f"{where} [[{model}.grids]]")):
    loc = f"{where} [[{model}.grids]] #{i + 1}"
    meta, rest = _split(grid, loc, only={"base", "axes"})
    name = check_name(meta.get("name", ""), "grid name", loc)
    base = _table(rest.get("base", {}), f"{loc} base")
    axes = _table(rest.get("axes", {}), f"{loc} axes")
    if not axes: raise UserError(f"{loc}: a grid needs at least one axis in 'axes'")
    for axis, options in axes.items():
      if not isinstance(options, list) or not options: raise UserError(f"{loc}: axis '{axis}' must be a non-empty list of values")
    for combo in itertools.product(*axes.values()):
      point = dict(zip(axes, combo))
      run_name = check_name(f"{name}-" + "-".join(f"{canonical_key(a, loc, model)}={_fmt(v)}" for a, v in point.items()), "run name", loc)
      specs += _expand(model, run_name, {**meta, "category": meta.get("category", name)}, {**defaults, **base, **point}, point,
                       default_repeats, f"{loc} '{run_name}'")
  for i, search in enumerate(_list_of_tables(section.get("random", []), f"{where} [[{model}.random]]")):
    loc = f"{where} [[{model}.random]] #{i + 1}"
    meta, rest = _split(search, loc, only={"base", "space", "n", "seed"})
    name = check_name(meta.get("name", ""), "random search name", loc)
    n, seed = rest.get("n", 10), rest.get("seed", 0)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10_000: raise UserError(f"{loc}: n must be an integer 1..10000, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool): raise UserError(f"{loc}: seed must be an integer, got {seed!r}")
    base = _table(rest.get("base", {}), f"{loc} base")
    space = _table(rest.get("space", {}), f"{loc} space")
    if not space: raise UserError(f"{loc}: a random search needs a 'space'")
    for j, point in enumerate(sample_space(space, n, seed, loc, model)):
      run_name = f"{name}-{j + 1:03d}"
      specs += _expand(model, run_name, {**meta, "category": meta.get("category", name)}, {**defaults, **base, **point}, point,
                       default_repeats, f"{loc} '{run_name}'")
  names = [s.name for s in specs]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes: raise UserError(f"{where}: run name '{dupes[0]}' is used twice in [{model}]")
  if overrides: specs = [dataclasses.replace(s, config=with_overrides(s.config, overrides, "command line")) for s in specs]
  return [dataclasses.replace(s, position=i) for i, s in enumerate(specs)]


def _fmt(v: Any) -> str:
  if isinstance(v, float): return f"{v:g}"
  if isinstance(v, bool): return str(v).lower()
  if isinstance(v, list): return "x".join(str(x) for x in v)
  return str(v)


def _expand(model: str, name: str, meta: dict, values: dict, axes: dict, default_repeats: int, where: str) -> list[RunSpec]:
  """One configuration → `repeats` runs with seeds seed, seed+1, …; each config is checked here, before training."""
  category = check_name(meta.get("category", "") or "uncategorized", "category", where)
  description = meta.get("description", "")
  if not isinstance(description, str): raise UserError(f"{where}: description must be a string")
  repeats = _repeats(meta.get("repeats", default_repeats), where)
  cfg = make_config(model, {k: v for k, v in values.items() if k != "model"}, where)
  out = []
  for r in range(repeats):
    run_cfg = dataclasses.replace(cfg, seed=cfg.seed + r)
    out.append(RunSpec(name if repeats == 1 else f"{name}-r{r}", name, category, description, run_cfg, dict(axes)))
  return out


def _repeats(value: Any, where: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
    raise UserError(f"{where}: repeats must be an integer 1..100, got {value!r}")
  return value


def _table(value: Any, where: str) -> dict:
  if not isinstance(value, dict): raise UserError(f"{where} must be a table, got {value!r}")
  return value


def _list_of_tables(value: Any, where: str) -> list[dict]:
  if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
    raise UserError(f"{where} must be an array of tables ([[...]])")
  return value


def _split(table: dict, where: str, only: set[str] | None = None) -> tuple[dict, dict]:
  """(name/category/description/repeats, the rest); `only`: the rest may hold just these keys (grids, searches)."""
  meta = {k: v for k, v in table.items() if k in RUN_META}
  rest = {k: v for k, v in table.items() if k not in RUN_META}
  if only is not None:
    for k in rest:
      if k not in only: raise UserError(f"{where}: unknown key '{k}'{_suggest(k, only | RUN_META)} (allowed: {', '.join(sorted(only | RUN_META))})")
  if "name" not in meta: raise UserError(f"{where}: every entry needs a name")
  return meta, rest


def sample_space(space: dict, n: int, seed: int, where: str, model: str) -> list[dict]:
  """Seeded random search: the same (space, n, seed) always gives the same configurations."""
  rng = random.Random(seed)
  dists = {}
  for name, spec in space.items():
    key = canonical_key(name, where, model)
    if not isinstance(spec, dict) or len(spec) != 1:
      raise UserError(f"{where}: space.{name} must be one of {{log_uniform = [lo, hi]}}, {{uniform = [lo, hi]}}, {{int_uniform = [lo, hi]}}, {{choice = [...]}}")
    (kind, arg), = spec.items()
    if kind not in ("log_uniform", "uniform", "int_uniform", "choice"):
      raise UserError(f"{where}: space.{name}: unknown distribution '{kind}'{_suggest(kind, ['log_uniform', 'uniform', 'int_uniform', 'choice'])}")
    if not isinstance(arg, list) or not arg: raise UserError(f"{where}: space.{name}.{kind} needs a non-empty list")
    if kind != "choice":
      if len(arg) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arg) or arg[0] > arg[1]:
        raise UserError(f"{where}: space.{name}.{kind} needs [low, high] numbers with low <= high")
      if kind == "log_uniform" and arg[0] <= 0: raise UserError(f"{where}: space.{name}.log_uniform needs low > 0")
    dists[key] = (kind, arg)
  points = []
  for _ in range(n):
    point = {}
    for key, (kind, arg) in dists.items():
      if kind == "choice": point[key] = arg[rng.randrange(len(arg))]
      elif kind == "uniform": point[key] = rng.uniform(arg[0], arg[1])
      elif kind == "int_uniform": point[key] = rng.randint(int(arg[0]), int(arg[1]))
      else: point[key] = float(f"{math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))):.3g}")
    points.append(point)
  return points


def describe(cfg: RunConfig, changed_only: bool = False) -> str:
  """The fully resolved configuration on one line (only the keys that apply to this model); changed_only: only the keys
  that differ from the built-in defaults (the README's table), which is what tells one run from another."""
  d, default = cfg.to_dict(), RunConfig(model=cfg.model).to_dict()
  keys = [k.name for k in KEYS if cfg.model in k.models and k.name != "batchnorm" and not (changed_only and d[k.name] == default[k.name])]
  return " ".join(f"{k}={d[k]}" for k in keys) or "all defaults"


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
  """Hyperparameters set as env vars (upper-case keys and aliases), as raw strings; DATASET is handled by the CLI."""
  environ = os.environ if environ is None else environ
  names = {k.upper() for k in KEY_BY_NAME} | {a.upper() for a in ALIASES}
  found = {name.lower(): value for name, value in environ.items() if name in names}
  for alias, key in ALIASES.items():
    if alias in found and key in found and found[alias].strip() != found[key].strip():
      raise UserError(f"env: {alias.upper()}={found[alias]} and {key.upper()}={found[key]} set the same hyperparameter differently; set one")
    if alias in found and key in found: del found[alias]
  return found


def one_off_spec(doc: dict, model: str, path: str | Path, overrides: dict[str, Any]) -> RunSpec:
  """STEPS=... BATCH=... python mnist_explorer.py mlp: the model's baseline with the env overrides, one run."""
  where = f"env ({', '.join(k.upper() for k in overrides)})"
  section = _table(doc.get(model, {}), f"{path} [{model}]")
  defaults = _table(section.get("defaults", {}), f"{path} [{model}.defaults]")
  runs = _list_of_tables(section.get("runs", []), f"{path} [[{model}.runs]]")
  base = next((r for r in runs if r.get("category") == "baseline"), {})
  values = {**defaults, **{k: v for k, v in base.items() if k not in RUN_META}}
  for k, v in overrides.items():
    key = canonical_key(k, where, model)
    values = {n: x for n, x in values.items() if ALIASES.get(n, n) != key}
    values[key] = v
  cfg = make_config(model, values, where)
  changed = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(overrides.items()))
  name = check_name("one-off-" + cfg.hash()[:8], "run name", where)
  return RunSpec(name, name, "one-off", f"baseline with {changed}", cfg, {})
