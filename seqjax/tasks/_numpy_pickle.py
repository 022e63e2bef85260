"""Reading pickles that hold only numpy arrays (and tuples/lists of them), running nothing else.

A pickle is a program: every global it names is imported and may be called. This unpickler
resolves only the names numpy's own `ndarray.__reduce__` writes:

- `numpy.core.multiarray._reconstruct` (numpy 1) and `numpy._core.multiarray._reconstruct`
  (numpy 2), both narrowed to what numpy writes: `_reconstruct(numpy.ndarray, (0,), dtype)`,
  an empty array that the pickle's BUILD then fills through `ndarray.__setstate__`;
- `numpy.ndarray` itself;
- `numpy.dtype`, refusing dtypes that hold Python objects (an object array's state is a list of
  arbitrary objects);
- `_codecs.encode`, narrowed to `encode(str, "latin1")`. Python 3 writes bytes in protocol 2 as
  that call (the array's raw data and the `b` type code), so numpy arrays pickled by Python 3 at
  protocol 2 need it. Turning a str into its latin-1 bytes runs no code and reads no file; the
  narrowing also keeps out the other codecs (compressors such as zlib) a hostile file could ask for.

Any other global -> `Refused` before anything in the file runs. Python 2 pickles (like the
classic mnist.pkl.gz) store array data as 8-bit strings: they are read with encoding="latin1",
which gives back the bytes unchanged and which `ndarray.__setstate__` accepts.
"""

import pickle

import numpy as np

try:  # numpy >= 2
  from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
  from numpy.core.multiarray import _reconstruct


class Refused(pickle.UnpicklingError):
  """The pickle asks for something other than numpy arrays (raised before it runs)."""


def _array_shell(subtype, shape, typecode):
  if subtype is not np.ndarray or tuple(shape) != (0,):
    raise Refused("only plain numpy arrays are allowed")
  return _reconstruct(np.ndarray, (0,), typecode)


def _plain_dtype(*args):
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise Refused(f"dtype {dtype} holds Python objects: refused")
  return dtype


def _latin1_bytes(text, encoding):
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise Refused(f"_codecs.encode is allowed for (str, 'latin1') only, got "
                                 f"({type(text).__name__}, {encoding!r})")
  return text.encode("latin1")


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _array_shell,
    ("numpy._core.multiarray", "_reconstruct"): _array_shell,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _ArraysOnly(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) not in ALLOWED:
      raise Refused(f"refusing {module}.{name}: only numpy arrays are allowed")
    return ALLOWED[(module, name)]

  def persistent_load(self, pid):
    raise Refused("persistent ids are not allowed")


def load(file):
  """Unpickle from a binary file object, admitting only numpy arrays (see the module docstring).

  Raises Refused for a forbidden object; pickle.UnpicklingError, EOFError, ValueError, ... for
  broken data.
  """
  return _ArraysOnly(file, encoding="latin1").load()
