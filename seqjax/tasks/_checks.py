"""Argument checks shared by the task factories."""


def check_int(task: str, name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum} for {task}, got {value!r}")
  return value
