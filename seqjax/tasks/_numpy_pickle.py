"""Reading pickles that hold only numpy arrays (and tuples/lists/dicts of them), running nothing else.

A pickle is a program: every global it names is imported and may be called, and every BUILD
calls the built object's `__setstate__` with a state the file chooses. This unpickler resolves
only the names numpy's own `ndarray.__reduce__` writes, each to a stand-in of ours:

- `numpy.core.multiarray._reconstruct` (numpy 1) and `numpy._core.multiarray._reconstruct`
  (numpy 2), narrowed to what numpy writes, `_reconstruct(numpy.ndarray, (0,), b"b")`;
- `numpy.ndarray`, a private token that only that `_reconstruct` accepts and that builds nothing
  when called (the class itself would let the file call `ndarray(shape, dtype)` with any dtype);
- `numpy.dtype`, narrowed to `dtype(code, align, copy)` with a plain numeric code (bool, int,
  uint, float, complex: no fields, no subarray, nothing holding Python objects);
- `_codecs.encode`, narrowed to `encode(str, "latin1")`. Python 3 writes bytes in protocol 2 as
  that call (the array's raw data and the `b` type code), so numpy arrays pickled by Python 3 at
  protocol 2 need it. Turning a str into its latin-1 bytes runs no code and reads no file; the
  narrowing also keeps out the other codecs (compressors such as zlib) a hostile file could ask for;
- `bytes` (`__builtin__.bytes` at protocol 2), narrowed to `bytes()`: how Python 3 writes b"",
  the data of an empty array, at protocol 2.

numpy's own `dtype.__setstate__` and `ndarray.__setstate__` never see the file's states: a
copied dtype takes any flags and fields from its state (a float dtype can be made to claim it
holds objects), and an array state is then read through that dtype. The stand-ins check the
states numpy writes for plain arrays — dtype `(3, byteorder, None, None, None, -1, -1, 0)`,
array `(1, shape, dtype, fortran, raw bytes)` — and build the array from the raw bytes
(`numpy.frombuffer`, so the arrays are read-only).

Any other global, or any other state -> `Refused`, before anything in the file runs. Python 2
pickles (like the classic mnist.pkl.gz) store array data as 8-bit strings: they are read with
encoding="latin1", which gives back the bytes unchanged.
"""

import math
import pickle

import numpy as np

PLAIN_KINDS = "biufc"   # bool, int, uint, float, complex


class Refused(pickle.UnpicklingError):
  """The pickle asks for something other than numpy arrays (raised before it runs)."""


class _NdarrayName:
  """What `numpy.ndarray` resolves to: a token, not the class, so the file cannot build an array
  with it (calling it refuses, so that the message says so)."""

  __slots__ = ()

  def __call__(self, *args):
    raise Refused("numpy.ndarray is allowed only as the first argument of _reconstruct")


_NDARRAY = _NdarrayName()


def _is_flag(value):
  return isinstance(value, int) and value in (0, 1)   # bool is an int; Python 2 wrote 0 / 1


class _Dtype:
  """Stands in for `numpy.dtype(code, align, copy)` until BUILD gives its byte order."""

  __hash__ = None   # not a set member or dict key: only arrays come out of the file

  def __init__(self, code, align=False, copy=False):
    if not (isinstance(code, str) and _is_flag(align) and _is_flag(copy)):
      raise Refused("numpy.dtype is allowed as dtype(str, bool, bool) only")
    try:
      dtype = np.dtype(code)
    except (TypeError, ValueError):
      raise Refused(f"dtype {code!r} is not a numpy dtype") from None
    if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
      raise Refused(f"dtype {code!r} is not a plain numeric dtype: refused")
    self.dtype = dtype

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
            and state[1] in ("<", ">", "|", "=") and state[2:] == (None, None, None, -1, -1, 0)):
      raise Refused("a dtype state other than numpy's for a plain numeric dtype, "
                    "(3, byteorder, None, None, None, -1, -1, 0)")
    if state[1] in "<>":
      self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
  """Stands in for numpy's empty `_reconstruct` result until BUILD gives shape, dtype and data."""

  __hash__ = None

  def __init__(self, subtype, shape, typecode):
    if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
      raise Refused("only plain numpy arrays are allowed")
    self.array = None

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
      raise Refused("an array state other than numpy's (1, shape, dtype, fortran, data)")
    _, shape, dtype, fortran, raw = state
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(dtype, _Dtype) and _is_flag(fortran)
            and isinstance(raw, (bytes, str))):
      raise Refused("an array state other than numpy's (1, shape, dtype, fortran, data)")
    raw = raw.encode("latin1") if isinstance(raw, str) else raw   # Python 2 str, read as latin1
    size = math.prod(shape) * dtype.dtype.itemsize
    if len(raw) != size:
      raise pickle.UnpicklingError(f"an array of shape {shape} {dtype.dtype} needs {size} bytes, "
                                   f"the file holds {len(raw)}")
    self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C")


def _latin1_bytes(text, encoding):
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise Refused(f"_codecs.encode is allowed for (str, 'latin1') only, got "
                  f"({type(text).__name__}, {encoding!r})")
  return text.encode("latin1")


def _empty_bytes(*args):
  if args:
    raise Refused("bytes() is allowed without arguments only")
  return b""


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _ArraysOnly(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) not in ALLOWED:
      raise Refused(f"refusing {module}.{name}: only numpy arrays are allowed")
    return ALLOWED[(module, name)]

  def persistent_load(self, pid):
    raise Refused("persistent ids are not allowed")


def _arrays(obj, seen):
  """`obj` with each stand-in replaced by its array (lists and dicts in place: they may be cyclic)."""
  if isinstance(obj, _Array):
    if obj.array is None:
      raise Refused("an array without its state")
    if obj.array.dtype.hasobject:   # cannot happen through _Dtype; kept as the last word
      raise Refused(f"an array of dtype {obj.array.dtype} holds Python objects")
    return obj.array
  if isinstance(obj, (_Dtype, _NdarrayName)):
    raise Refused("a numpy dtype or class outside an array")
  if isinstance(obj, (list, dict)) and id(obj) not in seen:
    seen.add(id(obj))
    for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
      obj[key] = _arrays(value, seen)
  elif isinstance(obj, tuple):
    return tuple(_arrays(value, seen) for value in obj)
  return obj


def load(file):
  """Unpickle from a binary file object, admitting only numpy arrays (see the module docstring).

  Raises Refused for anything else in the file, pickle.UnpicklingError (one line) for any
  broken data or stream, whatever went wrong underneath (gzip, zip, pickle opcodes).
  """
  try:
    return _arrays(_ArraysOnly(file, encoding="latin1").load(), set())
  except Refused:
    raise
  except Exception as e:   # a crafted file can raise nearly anything; none of it is ours to show
    detail = str(e) if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}"
    detail = " ".join(detail.split())
    raise pickle.UnpicklingError(detail[:300]) from None
