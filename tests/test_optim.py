import numpy as np
import pytest
from tinygrad import Tensor, TinyJit
from explorer.optim import DEFAULTS, NS_COEFFICIENTS, OPTIMIZERS, make_optimizer

STEPS = 3
ATOL = 1e-6  # a few float32 ulps of params of size ~1
rng = np.random.default_rng(0)
# params kept away from 0 so rtol is a fair test (ATOL covers float32 cancellation where a step crosses 0);
# a zero bias exercises LAMB's trust ratio fallback
W_INIT = (rng.uniform(0.5, 1.5, (3, 4)) * rng.choice([-1, 1], (3, 4))).astype(np.float32)
B_INIT = (rng.uniform(0.5, 1.5, 4) * rng.choice([-1, 1], 4)).astype(np.float32)
W_GRADS = [rng.normal(0, 1, (3, 4)).astype(np.float32) for _ in range(STEPS)]
B_GRADS = [rng.normal(0, 1, 4).astype(np.float32) for _ in range(STEPS)]

def buffer(x) -> Tensor: return Tensor(np.asarray(x, dtype=np.float32)).contiguous().realize()

def run_ours(name, inits, grads, lr, hidden=(), **hyper):
  """Steps make_optimizer(name) with the fake gradient sequences; returns every param's value after each step."""
  ps = [buffer(x) for x in inits]
  opt = make_optimizer(name, ps, hidden_matrices=[ps[i] for i in hidden], **hyper)
  lr_t, hist = buffer([lr]), []
  for k in range(STEPS):
    for p, g in zip(ps, grads): p.grad = Tensor(g[k])
    Tensor.realize(*opt.step(lr_t))
    hist.append([p.numpy() for p in ps])
  return hist

# *** textbook / PyTorch formulas in float64 numpy, one param at a time ***

def ref_sgd(p, grads, lr, momentum=0.0, nesterov=0.0, wd=0.0):
  p, buf, out = p.astype(np.float64), 0.0, []
  for g in grads:
    g = g + wd * p
    buf = momentum * buf + g
    p = p - lr * ((g + momentum * buf) if nesterov else buf)
    out.append(p)
  return out

def ref_adam(p, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, decoupled=False, lamb=False):
  p, m, v, out = p.astype(np.float64), 0.0, 0.0, []
  for t, g in enumerate(grads, 1):
    if not decoupled: g = g + wd * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    u = (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    if lamb:
      u = u + wd * p
      r1, r2 = np.linalg.norm(p), np.linalg.norm(u)
      p = p - lr * (r1 / r2 if r1 > 0 and r2 > 0 else 1.0) * u
    elif decoupled: p = p * (1 - lr * wd) - lr * u  # torch AdamW: decay first, then the Adam step
    else: p = p - lr * u
    out.append(p)
  return out

def ref_rmsprop(p, grads, lr, alpha=0.99, eps=1e-8, momentum=0.0, wd=0.0):
  p, v, buf, out = p.astype(np.float64), 0.0, 0.0, []
  for g in grads:
    g = g + wd * p
    v = alpha * v + (1 - alpha) * g * g
    step = g / (np.sqrt(v) + eps)
    if momentum:
      buf = momentum * buf + step
      step = buf
    p = p - lr * step
    out.append(p)
  return out

REFS = {"sgd": ref_sgd, "adam": ref_adam, "rmsprop": ref_rmsprop,
        "adamw": lambda *a, **k: ref_adam(*a, **{"wd": 0.01, **k}, decoupled=True),
        "lamb": lambda *a, **k: ref_adam(*a, **{"eps": 1e-6, **k}, decoupled=True, lamb=True)}

CASES = [("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": 1.0, "wd": 0.1}),
         ("adam", {}), ("adam", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "wd": 0.1}),
         ("adamw", {}), ("adamw", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "wd": 0.1}),
         ("rmsprop", {}), ("rmsprop", {"alpha": 0.9, "eps": 1e-6, "momentum": 0.5, "wd": 0.1}),
         ("lamb", {}), ("lamb", {"beta1": 0.8, "beta2": 0.99, "wd": 0.1})]

@pytest.mark.parametrize("name,hyper", CASES, ids=[f"{n}-{'-'.join(h) or 'defaults'}" for n, h in CASES])
@pytest.mark.parametrize("zero_bias", [False, True])
def test_matches_formula(name, hyper, zero_bias):
  lr = 0.05
  b_init = np.zeros_like(B_INIT) if zero_bias else B_INIT
  ours = run_ours(name, [W_INIT, b_init], [W_GRADS, B_GRADS], lr, **hyper)
  for j, (init, grads) in enumerate(((W_INIT, W_GRADS), (b_init, B_GRADS))):
    ref = REFS[name](init, grads, lr, **hyper)
    for k in range(STEPS): np.testing.assert_allclose(ours[k][j], ref[k], rtol=1e-5, atol=ATOL, err_msg=f"param {j} step {k+1}")

def test_rmsprop_textbook_first_step():
  # v = (1-alpha) g^2 on step 1, so the update is lr * g / (sqrt(1-alpha)|g| + eps): about lr*10*sign(g) for alpha 0.99
  ours = run_ours("rmsprop", [W_INIT], [W_GRADS], 0.01)
  g = W_GRADS[0].astype(np.float64)
  np.testing.assert_allclose(ours[0][0], W_INIT - 0.01 * g / (np.sqrt(0.01) * np.abs(g) + 1e-8), rtol=1e-5)

# *** against torch.optim: a test dependency (./setup.sh --test installs it), never one of the product ***

def require_torch():
  try: import torch
  except ImportError: pytest.fail("torch is missing: these tests compare the optimizers with torch.optim; run ./setup.sh --test "
                                  "(or pip install -e '.[test]'), which installs it")
  return torch

TORCH_CASES = [("adamw", {"wd": 0.1, "beta1": 0.8, "beta2": 0.99}, "AdamW", dict(weight_decay=0.1, betas=(0.8, 0.99))),
               ("adam", {"wd": 0.1}, "Adam", dict(weight_decay=0.1)),
               ("sgd", {"momentum": 0.9, "nesterov": 1.0, "wd": 0.1}, "SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.1)),
               ("sgd", {"momentum": 0.9}, "SGD", dict(momentum=0.9)),
               ("rmsprop", {}, "RMSprop", {}),
               ("rmsprop", {"alpha": 0.9, "momentum": 0.5, "wd": 0.1}, "RMSprop", dict(alpha=0.9, momentum=0.5, weight_decay=0.1))]

@pytest.mark.parametrize("name,hyper,torch_name,torch_kw", TORCH_CASES, ids=[f"{c[2]}-{'-'.join(c[1]) or 'defaults'}" for c in TORCH_CASES])
def test_matches_torch(name, hyper, torch_name, torch_kw):
  torch = require_torch()
  lr = 0.05
  ours = run_ours(name, [W_INIT, B_INIT], [W_GRADS, B_GRADS], lr, **hyper)
  tp = [torch.tensor(W_INIT, requires_grad=True), torch.tensor(B_INIT, requires_grad=True)]
  topt = getattr(torch.optim, torch_name)(tp, lr=lr, **torch_kw)
  for k in range(STEPS):
    for p, g in zip(tp, (W_GRADS, B_GRADS)): p.grad = torch.tensor(g[k])
    topt.step()
    for j, p in enumerate(tp): np.testing.assert_allclose(ours[k][j], p.detach().numpy(), rtol=1e-5, atol=ATOL)

# *** muon ***

def ns5(g):
  """Keller Jordan's zeropower_via_newtonschulz5, in float64."""
  a, b, c = NS_COEFFICIENTS
  x = g / (np.linalg.norm(g) + 1e-7)
  if g.shape[0] > g.shape[1]: x = x.T
  for _ in range(5):
    A = x @ x.T
    x = a * x + (b * A + c * A @ A) @ x
  return x.T if g.shape[0] > g.shape[1] else x

@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4)])
def test_newton_schulz_matches_reference(shape):
  g = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
  np.testing.assert_allclose(Tensor(g).newton_schulz(5, NS_COEFFICIENTS).numpy(), ns5(g.astype(np.float64)), atol=2e-5)

def ref_muon(p, grads, lr, momentum=0.95, nesterov=1.0, wd=0.01):
  """The reference's own (EMA/lerp) momentum form; Newton-Schulz normalizes, so it equals the sum form used in optim.py."""
  p, buf, out = p.astype(np.float64), 0.0, []
  for g in grads:
    buf = buf + (1 - momentum) * (g - buf)
    u = g + momentum * (buf - g) if nesterov else buf
    p = p * (1 - lr * wd) - lr * max(1, p.shape[0] / p.shape[1]) ** 0.5 * ns5(u)
    out.append(p)
  return out

# an input layer (3x4), a tall hidden matrix (5x3: rows > cols exercises the transpose and the sqrt(5/3) scale), a bias
H_INIT = np.random.default_rng(2).uniform(-1, 1, (5, 3)).astype(np.float32)
H_GRADS = [np.random.default_rng(3 + k).normal(0, 1, (5, 3)).astype(np.float32) for k in range(STEPS)]

@pytest.mark.parametrize("hyper", [{}, {"momentum": 0.9, "nesterov": 0.0, "wd": 0.1, "beta1": 0.8, "adam_lr_ratio": 0.5}])
def test_muon(hyper):
  lr = 0.05
  ours = run_ours("muon", [W_INIT, H_INIT, B_INIT], [W_GRADS, H_GRADS, B_GRADS], lr, hidden=(1,), **hyper)
  muon_kw = {k: v for k, v in hyper.items() if k in ("momentum", "nesterov", "wd")}
  ref = ref_muon(H_INIT, H_GRADS, lr, **muon_kw)
  # the others are plain AdamW, with lr * adam_lr_ratio and the same wd
  adam_kw = {k: v for k, v in hyper.items() if k in DEFAULTS["adamw"]}
  adam_lr = lr * hyper.get("adam_lr_ratio", 1.0)
  adamw = run_ours("adamw", [W_INIT, B_INIT], [W_GRADS, B_GRADS], adam_lr, **adam_kw)
  for k in range(STEPS):
    np.testing.assert_allclose(ours[k][1], ref[k], rtol=1e-5, atol=ATOL, err_msg=f"hidden step {k+1}")
    for j, a in ((0, 0), (2, 1)):
      np.testing.assert_allclose(ours[k][j], adamw[k][a], rtol=1e-6, err_msg=f"param {j} step {k+1}")
      np.testing.assert_allclose(ours[k][j], REFS["adamw"]([W_INIT, B_INIT][a], [W_GRADS, B_GRADS][a], adam_lr, **adam_kw)[k],
                                 rtol=1e-5, atol=ATOL)

def test_muon_needs_hidden_matrices():
  ps = [buffer(W_INIT), buffer(B_INIT)]
  for hidden in (None, []):
    with pytest.raises(ValueError, match="muon needs at least one hidden weight matrix"): make_optimizer("muon", ps, hidden)
  with pytest.raises(ValueError, match="not one of the params"): make_optimizer("muon", ps, [buffer(W_INIT)])

# *** names ***

def test_names_and_errors():
  assert set(DEFAULTS) == set(OPTIMIZERS)
  ps = [buffer(W_INIT)]
  with pytest.raises(ValueError, match="unknown optimizer"): make_optimizer("adagrad", ps)
  with pytest.raises(ValueError, match="'momentum'"): make_optimizer("adam", ps, momentum=0.9)
  opt = make_optimizer("sgd", ps)
  with pytest.raises(ValueError, match="'beta1'"): opt.set_hyper(beta1=0.5)
  assert sorted(opt.hyper) == ["momentum", "nesterov", "wd"]

# *** in-place hyperparameters and state: one TinyJit capture serves every configuration ***

def test_set_hyper_and_reset_are_in_place():
  ps = [buffer(W_INIT), buffer(B_INIT)]
  opt = make_optimizer("adamw", ps)
  bufs = {id(t): t.uop.base.buffer for t in list(opt.hyper.values()) + opt.state}
  for p, g in zip(ps, (W_GRADS, B_GRADS)): p.grad = Tensor(g[0])
  Tensor.realize(*opt.step(buffer([0.1])))
  assert opt.t.item() == 1 and all(np.abs(s.numpy()).sum() > 0 for s in opt.state)
  opt.set_hyper(beta1=0.5, wd=0.25)
  opt.reset()
  assert opt.hyper["beta1"].item() == 0.5 and opt.hyper["wd"].item() == 0.25
  assert all((s.numpy() == 0).all() for s in opt.state), "reset must zero every moment and the step count"
  assert all(t.uop.base.buffer is bufs[id(t)] for t in list(opt.hyper.values()) + opt.state), "must write into the same buffers"

X = np.random.default_rng(4).normal(0, 1, (8, 5)).astype(np.float32)
Y = np.random.default_rng(5).normal(0, 1, (8, 3)).astype(np.float32)
INITS = [np.random.default_rng(6 + i).normal(0, 0.5, s).astype(np.float32) for i, s in enumerate([(5, 6), (6, 6), (6, 3), (3,)])]
# every hyperparameter moved off its default, so a value baked into the kernels would show
OTHER = {"momentum": 0.5, "wd": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-5, "alpha": 0.9, "adam_lr_ratio": 0.5}

def make_train(name, hyper, lr):
  """A tiny 3-layer MLP regression; returns (params, optimizer, lr buffer, un-jitted step function)."""
  ps = [buffer(x) for x in INITS]
  opt = make_optimizer(name, ps, hidden_matrices=[ps[1]], **hyper)
  lr_t, x, y = buffer([lr]), buffer(X), buffer(Y)
  def step():
    opt.zero_grad()
    loss = (((x @ ps[0]).relu() @ ps[1]).relu() @ ps[2] + ps[3] - y).square().mean()
    loss.backward()
    Tensor.realize(*opt.step(lr_t * 0.5))  # a lazy lr expression, as a schedule would make
    return loss.realize()
  return ps, opt, lr_t, step

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_jit_step_reused_across_configs(name):
  first = {k: v for k, v in {"momentum": 0.9, "nesterov": 1.0}.items() if k in DEFAULTS[name]}
  second = {k: (1.0 - v if k == "nesterov" else OTHER[k]) for k, v in DEFAULTS[name].items()}
  second.update({"nesterov": 0.0} if "nesterov" in first else {})
  ps, opt, lr_t, body = make_train(name, first, 0.1)
  calls = 0
  @TinyJit
  def step():
    nonlocal calls
    calls += 1
    return body()
  for _ in range(STEPS): step()  # call 1 runs plainly, call 2 captures, call 3 replays
  captured = step.captured
  assert calls == 2 and captured is not None
  fresh_ps, _, _, fresh = make_train(name, first, 0.1)
  for _ in range(STEPS): fresh()
  for p, q in zip(ps, fresh_ps): np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-6, atol=1e-7)

  # a new configuration: write the scalars, reset the state, reinit the params, all in place
  opt.set_hyper(**second)
  lr_t.assign(Tensor([0.03])).realize()
  opt.reset()
  for p, x in zip(ps, INITS): p.assign(Tensor(x)).realize()
  for _ in range(STEPS): step()
  assert calls == 2 and step.captured is captured, "the new configuration must replay the captured kernels"
  fresh_ps, _, _, fresh = make_train(name, second, 0.03)
  for _ in range(STEPS): fresh()
  for p, q in zip(ps, fresh_ps): np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-6, atol=1e-7)
  assert opt.t.item() == STEPS
