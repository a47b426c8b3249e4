"""Replay a captured TinyJit on the CPU without tinygrad's per-call bookkeeping.

On every call tinygrad's JIT re-derives its inputs (`_prepare_jit_inputs`), then sends each kernel through a pattern
matcher that resolves its buffers, launch sizes and runtime again: about 20 us per kernel, 0.8-0.9 ms of the MLP's
5-6 ms step (46 kernels). The explorer passes the same preallocated input buffers to every call of a compiled step,
so all of that can be worked out once. A plan holds, per kernel of the captured step, its program, buffers and launch
sizes, and the replay calls them in order: the same programs on the same buffers, so the results are bit-identical.
Where every kernel fits, the whole step is one call of cpu_threads' native pool, with no Python between kernels.

Only for CPU programs without symbolic sizes; anything else (another device, DEBUG>=2 timings, a JIT not captured
yet or never captured as with JIT=0, other input buffers) goes through tinygrad's own call."""
from __future__ import annotations
from dataclasses import dataclass
from tinygrad import Tensor, TinyJit
from tinygrad.engine.jit import CapturedJit, _prepare_jit_inputs
from tinygrad.engine.realize import get_runtime, resolve_params, unwrap_multi
from tinygrad.helpers import DEBUG, to_tuple
from tinygrad.uop.ops import Ops
from explorer.fastpath import cpu_threads

stats = {"replayed": 0, "native": 0}  # calls served by a plan, and of those by one call of the native pool (tests check)


def check() -> None:
  from explorer.fastpath import require
  require(TinyJit(lambda: None), "cnt", "captured")
  require(CapturedJit, "_written_uops", "linear", "__dataclass_fields__")
  if "ret" not in CapturedJit.__dataclass_fields__: raise AttributeError("CapturedJit has no ret")


@dataclass
class Plan:
  captured: object  # the capture it was made from
  inputs: tuple  # the input tensors' UOps it was made for
  kernels: list  # (program, buffers, global size, local size, vals) per kernel, in order
  steps: object = None  # the same kernels as one call of cpu_threads' pool, where they all fit it


def make_plan(jit, args: tuple[Tensor, ...]) -> Plan | None:
  """The captured step's kernels with everything resolved for these inputs, or None where only tinygrad's call will do."""
  captured = jit.captured
  input_uops, var_vals, *_ = _prepare_jit_inputs(args, {})
  if var_vals or any(u in captured._written_uops for u in input_uops): return None
  kernels = []
  for call in captured.linear.src:
    if call.op is not Ops.CALL or call.src[0].op is not Ops.PROGRAM: return None  # copies, graphs, HCQ2: not here
    ast = call.src[0]
    devices = to_tuple(call.src[1].device)
    if len(devices) != 1 or not devices[0].startswith("CPU"): return None
    per_device = list(unwrap_multi(call, [resolve_params(call, tuple(input_uops))[i] for i in ast.arg.globals]))
    if len(per_device) != 1 or per_device[0][1]: return None
    program = get_runtime(devices[0], ast)
    global_size, local_size = ast.arg.launch_dims({})
    kernels.append((program, [b.ensure_allocated().get_buf(devices[0]) for b in per_device[0][0]], global_size, local_size,
                    ast.arg.vals({})))
  native = [cpu_threads.kernel(program, bufs, global_size, vals) for program, bufs, global_size, _, vals in kernels]
  return Plan(captured, tuple(t.uop for t in args), kernels, None if None in native else cpu_threads.Steps(native))


def call(jit, *args: Tensor):
  """jit(*args), replayed from a plan where one applies."""
  if getattr(jit, "cnt", 0) < 2 or jit.captured is None or DEBUG >= 2: return jit(*args)  # captured: None with JIT=0
  plan = getattr(jit, "_replay_plan", None)
  if plan is None or plan.captured is not jit.captured or len(plan.inputs) != len(args) or \
     any(t.uop is not u for t, u in zip(args, plan.inputs)):
    plan = jit._replay_plan = make_plan(jit, args) or Plan(jit.captured, tuple(t.uop for t in args), [])
  if not plan.kernels: return jit(*args)  # no plan applies: tinygrad's own call
  if plan.steps is not None:
    plan.steps()
    stats["native"] += 1
  else:
    for program, bufs, global_size, local_size, vals in plan.kernels:
      program(*bufs, global_size=global_size, local_size=local_size, vals=vals)
  jit.cnt += 1
  stats["replayed"] += 1
  return jit.captured.ret
