"""Ctrl-C and SIGTERM stop a suite cleanly: finished runs stay, the interrupted one is recorded as interrupted.

The handler raises KeyboardInterrupt, but Python drops an exception raised while a `__del__` finalizer runs (tinygrad
frees buffers there, so a signal often lands in one). The handler therefore also sets a flag that the training loop
checks after every step. Only the first signal raises: a second one must not break the saving of the records.

Once everything is written and printed, `leave(code)` ends the process: a stop from then on is ignored."""
import os, signal, sys

_requested = False  # a stop was asked for


def _handler(signum, frame) -> None:
  global _requested
  if _requested: return
  _requested = True
  raise KeyboardInterrupt


def install() -> None:
  for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, _handler)


def check() -> None:
  """Raise KeyboardInterrupt if a stop was asked for, even when the handler's own exception was swallowed."""
  if _requested: raise KeyboardInterrupt


def leave(code: int):
  """End the process with code, its results on disk and printed: a stop from here on has nothing left to stop, so it is
  ignored. (Python's own shutdown puts the default handlers back, so a SIGTERM landing in it ended a cleanly finished
  explorer as killed, exit -15: seen in the chaos test. Ignored signals stay ignored.) After a stop, tinygrad's idle
  compile workers are killed and the process leaves without its finalizers: a SIGTERM sent to the whole process group
  (kill -- -PGID, a job scheduler, a container stop) may have killed the worker that held the pool's queue lock, and the
  pool's exit finalizer would wait for that lock forever."""
  for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, signal.SIG_IGN)
  import multiprocessing
  if _requested and (children := multiprocessing.active_children()):
    for child in children: child.kill()
    for stream in (sys.stdout, sys.stderr):
      try: stream.flush()
      except (OSError, ValueError): pass  # a closed pipe (output piped into head) has nothing left to receive
    os._exit(code)
  sys.exit(code)
