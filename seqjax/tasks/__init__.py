"""Tasks: `tasks.get(name, seq_len=..., ...)` -> Task. One module per task, one registry line each.
`tasks.get` also takes a name given to `tasks.register` or `MODULE:NAME` (a task factory of
yours, its defaults in the module's `DEFAULTS` dict)."""

import inspect

from seqjax import _plugins
from seqjax.tasks.base import Batch, Task
from seqjax.tasks import (adding, binary_addition, decay, digits, mnist, multi_copy, reber,
                          seq_length, text, trajectory, variable_copy)

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
    "text": text.make,
}
NAMES = tuple(REGISTRY)  # the built-in tasks
SERIES = ("trajectory", "decay")  # tasks with a feedback_channel: next-value prediction
DEFAULTS = {name: getattr(inspect.getmodule(make), "DEFAULTS") for name, make in REGISTRY.items()}
OPTIONS = ("seq_len", "bit_order", "permute", "data_dir", "eval_split", "num_segments",
           "data_rules", "corpus")  # what `get` passes on
_REGISTERED = {}  # name -> (factory, defaults), from `register`


def register(name: str, factory, defaults: dict) -> None:
  """Makes `name` a task of this process, like a built-in: `get(name, ...)`,
  `Settings(task=name)`. factory(**the OPTIONS it names) -> Task; defaults: the launcher's
  defaults for it (seq_len, hidden_size, batch_size, num_steps, learning_rate; a key left out
  must be given)."""
  _plugins.check_register(name, factory, NAMES)
  if not isinstance(defaults, dict):
    raise ValueError(f"register: the defaults of {name!r} must be a dict, got "
                     f"{type(defaults).__name__}")
  _REGISTERED[name] = (factory, dict(defaults))


def _lookup(name: str):
  """(factory, defaults) of a built-in, registered or MODULE:NAME task; ValueError otherwise."""
  if name in REGISTRY:
    return REGISTRY[name], DEFAULTS[name]
  if name in _REGISTERED:
    return _REGISTERED[name]
  if _plugins.is_spec(name):
    module, make = _plugins.load(name)
    defaults = getattr(module, "DEFAULTS", {})
    if not isinstance(defaults, dict):
      raise _plugins.PluginError(f"{module.__name__}.DEFAULTS is a {type(defaults).__name__}, "
                                 "not a dict")
    return make, defaults
  raise ValueError(f"unknown task {name!r}; allowed: {', '.join(NAMES + tuple(_REGISTERED))}, "
                   "or MODULE:NAME (a task factory of yours)")


def factory(name: str):
  return _lookup(name)[0]


def defaults(name: str) -> dict:
  """The task's defaults for the launcher (a user task's may lack some keys)."""
  return _lookup(name)[1]


def takes(name: str, option: str) -> bool:
  """Whether the task's factory takes `option` (one of OPTIONS)."""
  return option in _plugins.parameters(factory(name))


def takes_seq_len(name: str) -> bool:
  return takes(name, "seq_len")


def get(name: str, **options) -> Task:
  """The task called `name`, built with the options its factory takes (others are ignored).

  Options: seq_len, bit_order, permute, data_dir, eval_split, num_segments, data_rules (see
  each module's `make`).
  """
  make = factory(name)
  accepted = _plugins.parameters(make)
  chosen = {k: v for k, v in options.items() if k in accepted and v is not None}
  if name in REGISTRY:
    return make(**chosen)
  return _plugins.call(make, "Task", Task, **chosen)


__all__ = ["Batch", "Task", "defaults", "factory", "get", "register", "takes", "takes_seq_len",
           "NAMES", "SERIES", "DEFAULTS", "OPTIONS"]
