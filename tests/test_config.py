"""Config parsing, suite expansion (runs, grids, random search, repeats) and every validation error."""
import dataclasses, hashlib, json
import pytest
from explorer.config import (KEYS, LATER_KEYS, RunConfig, check_name, env_overrides, load_toml, make_config, one_off_spec, sample_space,
                             suite_specs, with_overrides)
from explorer.errors import UserError
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def specs_of(tmp_path, text, model="mlp"):
  path = tmp_path / "exp.toml"
  path.write_text(text)
  return suite_specs(load_toml(path), model, path)


def error_of(fn, *args) -> str:
  with pytest.raises(UserError) as e: fn(*args)
  msg = str(e.value)
  assert "\n" not in msg, "errors are one line"
  return msg


def test_shipped_experiments_file_has_the_classic_study():
  doc = load_toml(ROOT / "experiments.toml")
  for model in ("mlp", "cnn"):
    specs = suite_specs(doc, model, "experiments.toml")
    cats = {s.category for s in specs}
    assert {"baseline", "learning_rate", "batch_size", "duration", "combo"} <= cats
    by_name = {s.name: s.config for s in specs}
    assert (by_name["baseline"].lr_max, by_name["baseline"].batch, by_name["baseline"].steps) == (1e-3, 128, 100)
    assert sorted(c.lr_max for n, c in by_name.items() if n.startswith("lr-") and "batch" not in n) == [5e-4, 2e-3, 3e-3]
    assert by_name["lr-2e-3-batch-256-500"] .batch == 256 and by_name["lr-2e-3-batch-256-500"].steps == 500
    assert all(s.description for s in specs)


def test_defaults_and_run_values_merge(tmp_path):
  specs = specs_of(tmp_path, """
[mlp.defaults]
width = 64
steps = 20
[[mlp.runs]]
name = "a"
category = "baseline"
lr = 0.01
[[mlp.runs]]
name = "b"
category = "width"
width = 32
""")
  a, b = specs
  assert (a.config.width, a.config.steps, a.config.lr_max) == (64, 20, 0.01)
  assert (b.config.width, b.config.lr_max, b.category) == (32, 1e-3, "width")


def test_grid_expansion_names_and_counts(tmp_path):
  specs = specs_of(tmp_path, """
[[mlp.grids]]
name = "units"
base = { steps = 10, depth = 2 }
axes = { width1 = [16, 32, 64], width2 = [16, 32] }
""")
  assert len(specs) == 6
  assert specs[0].name == "units-width1=16-width2=16" and specs[0].category == "units"
  assert {(s.config.width1, s.config.width2) for s in specs} == {(a, b) for a in (16, 32, 64) for b in (16, 32)}
  assert specs[3].axes == {"width1": 32, "width2": 32}
  assert specs[3].config.hidden_widths == (32, 32)


def test_repeats_give_seeds_and_shared_group(tmp_path):
  specs = specs_of(tmp_path, """
[mlp]
repeats = 3
[[mlp.runs]]
name = "a"
seed = 10
""")
  assert [s.name for s in specs] == ["a-r0", "a-r1", "a-r2"]
  assert [s.config.seed for s in specs] == [10, 11, 12]
  assert {s.group for s in specs} == {"a"}


def test_random_search_is_seeded(tmp_path):
  text = """
[[mlp.random]]
name = "rs"
n = 8
seed = 3
space = { lr_max = { log_uniform = [1e-4, 1e-2] }, opt = { choice = ["sgd", "adamw"] }, batch = { choice = [64, 128] } }
"""
  a, b = specs_of(tmp_path, text), specs_of(tmp_path, text)
  assert len(a) == 8 and [s.config for s in a] == [s.config for s in b]
  assert all(1e-4 <= s.config.lr_max <= 1e-2 for s in a)
  assert len({s.config.lr_max for s in a}) > 4  # really random
  other = sample_space({"lr_max": {"log_uniform": [1e-4, 1e-2]}}, 8, 4, "x", "mlp")
  assert [p["lr_max"] for p in other] != [s.config.lr_max for s in a]


@pytest.mark.parametrize("text, expected", [
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nstepz = 3\n", "unknown hyperparameter 'stepz' (did you mean 'steps'?)"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nsteps = 'abc'\n", "steps must be an integer, got 'abc'"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nsteps = 0\n", "steps must be >= 1, got 0"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nbatch = -4\n", "batch must be >= 1"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nlr_max = 0\n", "lr_max must be > 0"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nbatch = 60000\n", "larger than the training set"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nbatch = 512\ntrain_size = 100\n", "larger than the training set (100 images)"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nopt = 'adamx'\n", "opt must be one of adamw, adam, sgd, rmsprop, lamb, muon, got 'adamx' (did you mean"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nact = 'swish'\n", "act must be one of"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\ndataset = 'cifar'\n", "dataset must be one of mnist, fashion"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nchannels = [8]\n", "'channels' applies to cnn only, not mlp"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nlr_min = 1.0\n", "lr_min 1 is larger than lr_max"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nwarmup = 200\n", "warmup (200) must be shorter than steps (100)"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nmomentum = 1.5\n", "momentum must be <= 1"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\nnesterov = 'yes please'\n", "nesterov must be true or false"),
  ("[mlp]\n[[mlp.runs]]\nname = '../../etc/passwd'\n", "may only use letters"),
  ("[mlp]\n[[mlp.runs]]\ncategory = 'x'\n", "every entry needs a name"),
  ("[mlp]\n[[mlp.runs]]\nname = 'a'\n[[mlp.runs]]\nname = 'a'\n", "run name 'a' is used twice"),
  ("[mlp]\nrepeat = 2\n", "unknown key 'repeat' (did you mean 'repeats'?)"),
  ("[mlp]\nrepeats = 0\n", "repeats must be an integer 1..100"),
  ("[mpl]\n", "no [mlp] section"),
  ("[mlp]\n[mpl]\n", "unknown top-level section [mpl] (did you mean 'mlp'?)"),
  ("[mlp]\n[[mlp.grids]]\nname = 'g'\naxes = { width = 3 }\n", "axis 'width' must be a non-empty list"),
  ("[mlp]\n[[mlp.grids]]\nname = 'g'\naxes = { widht = [3] }\n", "unknown hyperparameter 'widht' (did you mean 'width'?)"),
  ("[mlp]\n[[mlp.random]]\nname = 'r'\nspace = { lr_max = { gaussian = [1, 2] } }\n", "unknown distribution 'gaussian'"),
  ("[mlp]\n[[mlp.random]]\nname = 'r'\nspace = { lr_max = { log_uniform = [0, 2] } }\n", "log_uniform needs low > 0"),
])
def test_every_config_mistake_is_one_clear_line(tmp_path, text, expected):
  msg = error_of(specs_of, tmp_path, text)
  assert expected in msg
  assert "exp.toml" in msg, "the message names the file"


def test_malformed_toml_names_line(tmp_path):
  path = tmp_path / "bad.toml"
  path.write_text("[mlp]\nsteps = = 3\n")
  msg = error_of(load_toml, path)
  assert "bad.toml" in msg and "line 2" in msg


def test_missing_experiments_file():
  assert "not found" in error_of(load_toml, "/nonexistent/exp.toml")


@pytest.mark.parametrize("env, expected", [
  ({"STEPS": "abc"}, "STEPS must be an integer, got 'abc'"),
  ({"STEPZ": "3"}, None),  # not a hyperparameter name: ignored (env has many unrelated variables)
  ({"BATCH": "0"}, "BATCH must be >= 1"),
  ({"LR": "-1"}, "LR_MAX must be > 0"),
  ({"ACT": "swish"}, "ACT must be one of"),
  ({"NESTEROV": "maybe"}, "NESTEROV must be true or false"),
  ({"CHANNELS": "8,16"}, "'channels' applies to cnn only"),
])
def test_env_one_off_errors(env, expected):
  overrides = env_overrides(env)
  if expected is None:
    assert overrides == {}
    return
  msg = error_of(one_off_spec, {}, "mlp", "exp.toml", overrides)
  assert expected in msg and msg.startswith("env")


def test_env_one_off_applies_to_baseline():
  doc = load_toml(ROOT / "experiments.toml")
  env = {"STEPS": "5000", "BS": "256", "LR_MAX": "1e-3", "ACT": "silu", "JIT": "1", "DEV": "CPU", "HOME": "/root"}
  spec = one_off_spec(doc, "mlp", "experiments.toml", env_overrides(env))
  assert spec.category == "one-off"
  c = spec.config
  assert (c.steps, c.batch, c.lr_max, c.act, c.width) == (5000, 256, 1e-3, "silu", 512)
  cnn = one_off_spec(doc, "cnn", "experiments.toml", env_overrides({"CHANNELS": "8,16", "BATCHNORM": "1"})).config
  assert cnn.channels == (8, 16) and cnn.norm == "batch" and cnn.batchnorm


def test_alias_and_key_together_is_an_error():
  assert "given twice" in error_of(make_config, "mlp", {"lr": 0.1, "lr_max": 0.2}, "x")


def test_every_key_has_a_field_and_env_name():
  fields = {f.name for f in dataclasses.fields(RunConfig)}
  for k in KEYS: assert k.name in fields, k.name
  assert fields - {k.name for k in KEYS} == {"model"}


def test_hash_changes_with_every_key_and_shape_key_only_with_shape_keys():
  base = make_config("cnn", {}, "x")
  for k in KEYS:
    if "cnn" not in k.models: continue
    value = getattr(base, k.name)
    new = {bool: lambda: not value, int: lambda: value + 1, float: lambda: value / 2 + 0.01,
           str: lambda: next(c for c in k.choices if c != value), list: lambda: (8,) + tuple(value)}[k.type]()
    if k.name == "kernel": new = 5
    if k.name == "lr_min": new = 1e-4
    if k.name == "train_size": new = 1000
    if k.name == "batchnorm": continue  # an alias of norm
    changed = with_overrides(base, {k.name: new}, "x")
    assert changed.hash() != base.hash(), k.name
    assert (changed.shape_key() != base.shape_key()) == (k.shape or k.switch), k.name  # a switch key: off -> on
    if k.switch:  # its values are fed at run time: two non-zero values share the compiled step
      assert with_overrides(changed, {k.name: new * 2}, "x").shape_key() == changed.shape_key(), k.name


def test_keys_added_later_leave_the_hash_of_older_configurations_alone():
  cfg = make_config("mlp", {"width": 64}, "x")
  d = {k: v for k, v in cfg.to_dict().items() if k not in LATER_KEYS}
  assert cfg.hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
  assert with_overrides(cfg, {"ema": 0.99}, "x").hash() != cfg.hash()


def test_check_name_refuses_path_tricks():
  for bad in ("../x", "a/b", "", ".hidden", "a\\b", "x" * 200, "a..b"):
    with pytest.raises(UserError): check_name(bad, "run name", "here")
  assert check_name("lr-2e-3_b=256", "run name", "here")


def test_runs_know_their_place_in_the_experiments_file():
  doc = {"mlp": {"runs": [{"name": "b", "category": "x"}, {"name": "a", "category": "y"}],
                 "grids": [{"name": "g", "axes": {"lr_max": [1e-3, 1e-2]}}]}}
  specs = suite_specs(doc, "mlp", "t.toml")
  assert [(s.name, s.position) for s in specs] == [("b", 0), ("a", 1), ("g-lr_max=0.001", 2), ("g-lr_max=0.01", 3)]
