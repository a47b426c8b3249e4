"""Small wording helpers shared by the terminal output and the reports (no heavy imports)."""
from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
  """'1 run', '3 runs', '0 runs' (many: an irregular plural, e.g. plural(n, 'process', 'processes'))."""
  return f"{n} {word if n == 1 else many or word + 's'}"
