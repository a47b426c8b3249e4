"""Ctrl-C and SIGTERM stop a suite cleanly: finished runs stay, the interrupted one is recorded as interrupted.

The handler raises KeyboardInterrupt, but Python drops an exception raised while a `__del__` finalizer runs (tinygrad
frees buffers there, so a signal often lands in one). The handler therefore also sets a flag that the training loop
checks after every step. Only the first signal raises: a second one must not break the saving of the records."""
import signal

_requested = False


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
