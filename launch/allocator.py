"""glibc's malloc told to keep the memory it is given back: what every launcher program does at
start (`--malloc=keep`, the default; `--malloc=system` leaves the allocator as it is). The library
never touches the allocator.

On CPU, XLA allocates a step's temporary buffers at every call and frees them at its end (torch
does the same with its own). glibc serves a large block with a fresh mmap (its threshold starts at
128 KiB and follows the largest block freed, up to 32 MiB) and gives the heap's free top back to
the kernel past a trim threshold, so each call touches new pages: one page fault per 4 KiB, every
step, and how many depends on the allocation history of the process. Measured on the 2-core CPU
(BUILD_NOTES.md, "The allocator"): seqjax's lstm train step at B=100 T=100 F=2 H=64 38.6 -> 25.4
ms, flax's 40.5 -> 26.4 ms; torch's LSTM at B=100 T=1000 F=2 H=128 1,205 -> 575 ms.

Kept memory is not returned to the system while the process runs: its resident size stays at its
peak (a training process's peak is its size anyway).
"""

import ctypes
import ctypes.util
import platform

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MODES = ("keep", "system")
_mode = "system"


def keep_freed_memory() -> str:
  """Every block from glibc's heap (no mmap: M_MMAP_MAX 0) and the heap never trimmed
  (M_TRIM_THRESHOLD -1: the largest size), for the rest of the process. Returns `describe()`.
  A no-op where the C library is not glibc (macOS, musl): their allocators have no such knobs."""
  global _mode
  libc = _glibc()
  if libc is not None and libc.mallopt(M_MMAP_MAX, 0) == 1 \
      and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1:
    _mode = "keep"
  return describe()


def kept() -> bool:
  """Whether `keep_freed_memory` took effect in this process."""
  return _mode == "keep"


def describe() -> str:
  """The allocator's state as benchmark reports record it."""
  if kept():
    return "glibc, freed memory kept (M_MMAP_MAX 0, M_TRIM_THRESHOLD -1)"
  return "the C library's default" if _glibc() is not None else "not glibc: the system's default"


def _glibc():
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
