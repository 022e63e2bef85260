"""glibc's malloc told to keep the memory it is given back: what every launcher program does at
start (`--malloc=keep`, the default; `--malloc=system` leaves the allocator as it is). The library
never touches the allocator.

On CPU, XLA allocates a step's temporary buffers at every call and frees them at its end (torch
does the same with its own). glibc serves a large block with a fresh mmap (its threshold starts at
128 KiB and follows the largest block freed, up to 32 MiB) and gives the heap's free top back to
the kernel past a trim threshold, so each call touches new pages: one page fault per 4 KiB, every
step, and how many depends on the allocation history of the process. A thread's own arena
(glibc gives threads theirs, in heaps of at most 64 MiB) maps larger blocks whatever the
threshold, so all threads share the main one. Measured on the 2-core CPU
(BUILD_NOTES.md, "The allocator"): seqjax's lstm train step at B=100 T=100 F=2 H=64 38.6 -> 25.4
ms, flax's 40.5 -> 26.4 ms; torch's LSTM at B=100 T=1000 F=2 H=128 1,205 -> 575 ms.

Kept memory is not returned to the system while the process runs: its resident size stays at its
peak (a training process's peak is its size anyway).
"""

import contextlib
import ctypes
import os
import platform

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MODES = ("keep", "system")
_kept = False  # whether keep_freed_memory took effect (glibc has no getter)


def keep_freed_memory() -> str:
  """Every block from glibc's main heap (no mmap: M_MMAP_MAX 0; one arena: M_ARENA_MAX 1) and
  the heap never trimmed (M_TRIM_THRESHOLD -1: the largest size), for the rest of the process.
  Call it before other threads start: a thread's own arena (glibc gives threads their own, in
  mapped heaps of at most 64 MiB) still maps larger blocks afresh. Returns `describe()`. A no-op
  where the C library is not glibc (macOS, musl): their allocators have no such knobs."""
  global _kept
  libc = _glibc()
  _kept = _kept or libc is not None and all(
      libc.mallopt(param, value) == 1
      for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1)))
  return describe()


def matching_layout():
  """A context for the process's jitted steps: with the memory kept, the library's layout rule
  told so (`seqjax._fused.freed_memory_kept()`: the hand-written backward's weight gradients
  after the loop up to its memory cap); else the rule as it is (a null context).

  The rule keeps them in the loop at large CPU batches because there glibc's default maps the
  other layout's [T, B, K] buffers afresh at every step; with the memory kept after the loop is
  faster at every grid point (lstm B=100 T=1000 H=128: in the loop 1.23x slower, medians of 3
  runs; BUILD_NOTES.md, "The grid with the memory kept"). On GPU the rule says after anyway."""
  if not kept():
    return contextlib.nullcontext()
  from seqjax import _fused
  return _fused.freed_memory_kept()


def kept() -> bool:
  """Whether `keep_freed_memory` took effect in this process."""
  return _kept


def describe() -> str:
  """The allocator's state as benchmark reports record it."""
  if kept():
    return "glibc, freed memory kept (M_MMAP_MAX 0, M_TRIM_THRESHOLD -1, M_ARENA_MAX 1)"
  if os.environ.get("LD_PRELOAD"):
    return f"LD_PRELOAD={os.environ['LD_PRELOAD']}: left as it is"
  return "the C library's default" if _glibc() is not None else "not glibc: the system's default"


def _glibc():
  """The process's C library if it is glibc's malloc that serves it; None where another
  allocator may be preloaded (LD_PRELOAD: tcmalloc, jemalloc, ... would ignore mallopt)."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" \
      or os.environ.get("LD_PRELOAD"):
    return None
  try:
    return ctypes.CDLL(None)  # the symbols the process already has
  except OSError:
    return None
