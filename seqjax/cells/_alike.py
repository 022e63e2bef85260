"""When two cells are built alike: the equality and hash behind `Cell.__eq__` / `__hash__`.

A cell is a record of closures, and two calls of one factory (`cells.lstm(4)`, twice) make new
function objects each time. They are the same cell when each function comes from the same
source (the same code object and module) and closes over alike values, compared recursively:
plain values (numbers, strings, dtypes, None) by ==, tuples (NamedTuples included), lists and
dicts item by item, functions and `functools.partial`s by what they hold, and anything else
(an array, an arbitrary object) only as the very same object. A replaced or wrapped `step`
has other code, so the cells differ.
"""

import functools
import types

import numpy as np

_PLAIN = (type(None), bool, int, float, complex, str, bytes, type, np.dtype, np.generic,
          types.CodeType)
_EMPTY = object()  # a closure cell not yet assigned
_HASH_DEPTH = 5  # how deep the hash looks; deeper structure only refines equality
_HASHES = {}  # id(value) -> (value, hash): held, so that the id stays that value's
_HASHES_KEPT = 256


def _closure(fn):
  values = []
  for cell in fn.__closure__ or ():
    try:
      values.append(cell.cell_contents)
    except ValueError:
      values.append(_EMPTY)
  return tuple(values)


def alike(a, b, seen=None) -> bool:
  """Whether a and b were built alike (see the module docstring)."""
  if a is b:
    return True
  if type(a) is not type(b):
    return False
  if isinstance(a, _PLAIN):
    return bool(a == b)
  seen = {} if seen is None else seen
  key = (id(a), id(b))
  if key in seen:  # a cycle (a function closing over itself): alike unless shown otherwise
    return True
  seen[key] = (a, b)  # held, so that no later temporary object reuses these ids
  if isinstance(a, types.FunctionType):
    return (a.__code__ == b.__code__ and a.__globals__ is b.__globals__
            and alike((a.__defaults__, a.__kwdefaults__, _closure(a)),
                      (b.__defaults__, b.__kwdefaults__, _closure(b)), seen))
  if isinstance(a, types.MethodType):
    return a.__self__ is b.__self__ and alike(a.__func__, b.__func__, seen)
  if isinstance(a, functools.partial):
    return alike((a.func, a.args, a.keywords), (b.func, b.args, b.keywords), seen)
  if isinstance(a, (tuple, list)):
    return len(a) == len(b) and all(alike(x, y, seen) for x, y in zip(a, b))
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(alike(a[k], b[k], seen) for k in a)
  return False  # anything else: only the very same object


def fingerprint(a, depth=0) -> int:
  """A hash that agrees with `alike` (alike values hash alike)."""
  if depth > _HASH_DEPTH:
    return 0
  if isinstance(a, _PLAIN):
    return hash((type(a).__name__, a))
  deeper = lambda v: fingerprint(v, depth + 1)  # noqa: E731
  if isinstance(a, types.FunctionType):
    return hash(("function", a.__code__, deeper((a.__defaults__, a.__kwdefaults__,
                                                 _closure(a)))))
  if isinstance(a, types.MethodType):
    return hash(("method", id(a.__self__), deeper(a.__func__)))
  if isinstance(a, functools.partial):
    return hash(("partial", deeper((a.func, a.args, a.keywords))))
  if isinstance(a, (tuple, list)):
    return hash((type(a).__name__, tuple(map(deeper, a))))
  if isinstance(a, dict):
    return hash(("dict", frozenset((k, deeper(v)) for k, v in a.items())))
  return id(a)


def cached_fingerprint(value) -> int:
  """fingerprint(tuple(value)), remembered for the last few hundred values hashed: a jitted
  function with a cell as a static argument hashes it at every call."""
  hit = _HASHES.get(id(value))
  if hit is not None and hit[0] is value:
    return hit[1]
  if len(_HASHES) >= _HASHES_KEPT:
    _HASHES.clear()
  h = _HASHES[id(value)] = (value, fingerprint(tuple(value)))
  return h[1]
