"""Cells and tasks of the user's own: a name registered in this process, or `MODULE:NAME`, a
factory in an importable module (the working directory and PYTHONPATH are searched). Modules are
imported only when such a name is looked up, never when seqjax is imported."""

import importlib
import inspect
import os
import re
import sys

# MODULE:NAME, MODULE dotted; registered names must be usable as a folder name
SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
REGISTERED_NAME = re.compile(r"[A-Za-z_][\w.-]*")


class PluginError(ValueError):
  """A user factory that cannot be used; the message says why, without the flag (the caller
  names it)."""


def is_spec(name) -> bool:
  return isinstance(name, str) and SPEC.fullmatch(name) is not None


def check_register(name, factory, builtins) -> None:
  if not (isinstance(name, str) and REGISTERED_NAME.fullmatch(name)):
    raise ValueError(f"register: the name must be letters, digits, _ . - (it names run folders), "
                     f"got {name!r}")
  if name in builtins:
    raise ValueError(f"register: {name!r} is a built-in name")
  if not callable(factory):
    raise ValueError(f"register: the factory for {name!r} is not callable")


def load(spec: str):
  """(module, factory) named by MODULE:NAME; PluginError saying what is missing."""
  module_name, attr = spec.split(":")
  cwd = os.getcwd()
  added = cwd not in sys.path and "" not in sys.path
  if added:  # `python -m` puts the working directory first; a script or notebook may not
    sys.path.append(cwd)
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # whatever the module's own import raises means the same here
    raise PluginError(f"cannot import {module_name} ({first_line(e)})") from None
  finally:
    if added:
      sys.path.remove(cwd)
  if not hasattr(module, attr):
    raise PluginError(f"{module_name} has no {attr}")
  factory = getattr(module, attr)
  if not callable(factory):
    raise PluginError(f"{spec} is a {type(factory).__name__}, not a factory (a callable)")
  return module, factory


def first_line(e: Exception) -> str:
  """An exception as one line: its type and the first line of its message."""
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def call(factory, kind: str, expected_type, *args, **kwargs):
  """factory(*args, **kwargs), which must return an `expected_type` (a seqjax `kind`)."""
  try:
    made = factory(*args, **kwargs)
  except Exception as e:  # the user's code: any exception is reported in one line
    raise PluginError(f"the factory raised {first_line(e)}") from None
  if not isinstance(made, expected_type):
    raise PluginError(f"the factory returned {type(made).__name__}, not a seqjax {kind}")
  return made


def parameters(factory) -> set:
  """The names of the factory's parameters."""
  try:
    return set(inspect.signature(factory).parameters)
  except (TypeError, ValueError):  # some builtins have no signature
    return set()
