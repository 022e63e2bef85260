"""Argument checks shared by the task factories."""

from seqjax.tasks.base import DATA_RULES


def check_int(task: str, name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum} for {task}, got {value!r}")
  return value


def check_data_rules(value) -> str:
  if value not in DATA_RULES:
    raise ValueError(f"data_rules must be one of {', '.join(DATA_RULES)}, got {value!r}")
  return value
