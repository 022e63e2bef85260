"""--malloc=keep (launch/allocator.py): glibc then serves large blocks from its heap and keeps
what is freed, where its default maps each one afresh; --malloc=system leaves it alone."""

import json
import os
import platform
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import _cli, allocator, suite

if not flags.FLAGS.is_parsed():
  flags.FLAGS(["launch.main"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# In a fresh process (the test process's allocator stays as it is): malloc and free 64 MiB, more
# than glibc's largest mmap threshold (32 MiB), before and after keep_freed_memory, reading
# mallinfo2's hblkhd (bytes in mmapped blocks) and fordblks (free bytes kept in the heap).
PROBE = """
import ctypes, json
from launch import allocator
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                             "fsmblks uordblks fordblks keepcost").split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def cycle():
  p = libc.malloc(64 << 20)
  ctypes.memset(p, 1, 64 << 20)
  mapped = libc.mallinfo2().hblkhd
  libc.free(p)
  return {"mapped": mapped, "free_kept": libc.mallinfo2().fordblks}
before = cycle()
described = allocator.keep_freed_memory()
print(json.dumps({"before": before, "after": cycle(), "described": described,
                  "kept": allocator.kept()}))
"""
# The same knobs for a script of your own (README, Speed): glibc reads them at start.
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def _probe(env=None):
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=None if env is None else {**os.environ, **env})
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="the knobs are glibc's")
def test_keep_serves_large_blocks_from_the_heap_and_keeps_them():
  got = _probe()
  assert got["before"]["mapped"] >= 64 << 20  # glibc's default: its own mapping
  assert got["before"]["free_kept"] < 64 << 20  # ... unmapped at free
  assert got["after"]["mapped"] < 64 << 20  # kept: from the heap
  assert got["after"]["free_kept"] >= 64 << 20  # ... and still there after free
  assert got["kept"] and got["described"].startswith("glibc, freed memory kept")


@pytest.mark.skipif(not GLIBC, reason="the knobs are glibc's")
def test_the_environment_variables_do_the_same_from_the_start():
  got = _probe(ENV)["before"]  # before keep_freed_memory: the variables alone
  assert got["mapped"] < 64 << 20 and got["free_kept"] >= 64 << 20


@pytest.mark.parametrize("mode,calls", [("keep", 1), ("system", 0)])
def test_the_launchers_apply_the_malloc_flag_before_main(monkeypatch, mode, calls):
  seen = []
  monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append("kept"))
  with flagsaver.flagsaver(malloc=mode):
    assert _cli._with_allocator(["prog"]) == ["prog"]
  assert len(seen) == calls


@pytest.mark.parametrize("kept", [True, False])
def test_suite_sections_inherit_the_drivers_allocator(monkeypatch, kept):
  monkeypatch.setattr(allocator, "_mode", "keep" if kept else "system")
  argv = suite.section_command("grid", "out.json", tiny=True)
  assert ("--malloc=keep" in argv) == kept and argv[-2 if kept else -1] == "--tiny"
