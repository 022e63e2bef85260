"""Tasks: `tasks.get(name, seq_len=..., ...)` -> Task. One module per task, one registry line each;
a module declares the options its factory takes besides seq_len in `OPTIONS` (`tasks.Option`s).
`tasks.get` also takes a name given to `tasks.register` or `MODULE:NAME` (a task factory of
yours, its defaults in the module's `DEFAULTS` dict, its own options in its `OPTIONS`)."""

import inspect

from seqjax import _plugins
from seqjax.tasks.base import Batch, Option, OptionError, Task
from seqjax.tasks import (adding, binary_addition, decay, digits, mnist, multi_copy, reber,
                          seq_length, text, trajectory, uea, variable_copy)

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
    "uea": uea.make,
    "text": text.make,
}
NAMES = tuple(REGISTRY)  # the built-in tasks
SERIES = ("trajectory", "decay")  # tasks with a feedback_channel: next-value prediction
_MODULES = {name: inspect.getmodule(make) for name, make in REGISTRY.items()}
DEFAULTS = {name: module.DEFAULTS for name, module in _MODULES.items()}


def _builtin_options() -> dict:
  """option name -> {built-in task: its declaration}, in NAMES order."""
  out = {}
  for name, module in _MODULES.items():
    for option in module.OPTIONS:
      out.setdefault(option.name, {})[name] = option
  return out


BUILTIN_OPTIONS = _builtin_options()
_REGISTERED = {}  # name -> (factory, defaults), from `register`


def register(name: str, factory, defaults: dict) -> None:
  """Makes `name` a task of this process, like a built-in: `get(name, ...)`,
  `Settings(task=name)`. factory(**the options it names) -> Task; defaults: the launcher's
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


def options(name: str) -> tuple:
  """The options (`Option`s) task `name` takes besides seq_len. A built-in's: its module's
  OPTIONS. A task of yours: those its factory's signature names that its module's OPTIONS
  declares (MODULE's, for MODULE:NAME; one OPTIONS may serve several factories) or a built-in
  task declares (as the first built-in declaring it does)."""
  make = factory(name)
  if name in REGISTRY:
    return _MODULES[name].OPTIONS
  module = _plugins.load(name)[0] if _plugins.is_spec(name) else inspect.getmodule(make)
  own = getattr(module, "OPTIONS", ())
  where = f"{getattr(module, '__name__', name)}.OPTIONS"
  if not isinstance(own, (tuple, list)) or not all(isinstance(o, Option) for o in own):
    raise _plugins.PluginError(f"{where} must be a tuple of seqjax.tasks.Option")
  own = {o.name: o for o in own}
  builtin = {k: next(iter(v.values())) for k, v in BUILTIN_OPTIONS.items()}
  return tuple(own.get(p) or builtin[p] for p in sorted(_plugins.parameters(make))
               if p != "seq_len" and (p in own or p in builtin))


def takes(name: str, option: str) -> bool:
  """Whether the task's factory takes `option`."""
  return option in _plugins.parameters(factory(name))


def takes_seq_len(name: str) -> bool:
  return takes(name, "seq_len")


def get(name: str, **options) -> Task:
  """The task called `name`, built with the options its factory takes (others are ignored):
  seq_len and those of `options(name)` (see each module's `make` and OPTIONS). A bad option:
  `OptionError`."""
  make = factory(name)
  accepted = _plugins.parameters(make)
  chosen = {k: v for k, v in options.items() if k in accepted and v is not None}
  if name in REGISTRY:
    return make(**chosen)
  try:
    return _plugins.call(make, "Task", Task, **chosen)
  except _plugins.PluginError as e:
    # a factory of yours may say which option is bad as the built-ins do (the launcher names
    # the flag); anything else it raises is reported as its failure
    if isinstance(e.__context__, OptionError):
      raise e.__context__ from None
    raise


__all__ = ["Batch", "Option", "OptionError", "Task", "defaults", "factory", "get", "options",
           "register", "takes", "takes_seq_len", "NAMES", "SERIES", "DEFAULTS", "BUILTIN_OPTIONS"]
