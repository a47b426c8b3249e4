"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
  """A mistake in the user's input (config, env var, data files, folders): shown as one line, never a traceback."""

  def __init__(self, message: str, exit_code: int = 2):
    super().__init__(message)
    self.exit_code = exit_code
