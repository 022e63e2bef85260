"""Tasks: `tasks.get(name, seq_len=..., ...)` -> Task. One module per task, one registry line each."""

import inspect

from seqjax.tasks.base import Batch, Task
from seqjax.tasks import (adding, binary_addition, decay, digits, mnist, multi_copy, reber,
                          seq_length, trajectory, variable_copy)

REGISTRY = {
    "binary_addition": binary_addition.make,
    "adding": adding.make,
    "seq_length": seq_length.make,
    "copy": variable_copy.make,  # module not named copy: that would shadow the stdlib
    "multi_copy": multi_copy.make,
    "reber": reber.make,
    "trajectory": trajectory.make,
    "decay": decay.make,
    "digits": digits.make,
    "mnist": mnist.make,
}
NAMES = tuple(REGISTRY)
SERIES = ("trajectory", "decay")  # tasks with a feedback_channel: next-value prediction
DEFAULTS = {name: getattr(inspect.getmodule(make), "DEFAULTS") for name, make in REGISTRY.items()}


def takes_seq_len(name: str) -> bool:
  return "seq_len" in inspect.signature(REGISTRY[name]).parameters


def get(name: str, **options) -> Task:
  """The task called `name`, built with the options its factory takes (others are ignored).

  Options: seq_len, bit_order, permute, data_dir, num_segments, data_rules (see each module's
  `make`).
  """
  if name not in REGISTRY:
    raise ValueError(f"unknown task {name!r}; allowed: {', '.join(NAMES)}")
  make = REGISTRY[name]
  accepted = inspect.signature(make).parameters
  return make(**{k: v for k, v in options.items() if k in accepted and v is not None})


__all__ = ["Batch", "Task", "get", "takes_seq_len", "NAMES", "SERIES", "DEFAULTS"]
