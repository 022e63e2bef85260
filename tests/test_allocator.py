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
from seqjax import _fused

if not flags.FLAGS.is_parsed():
  flags.FLAGS(["launch.main"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
# mallinfo2, which the probe reads, is glibc >= 2.33's
MALLINFO2 = GLIBC and tuple(map(int, platform.libc_ver()[1].split(".")[:2])) >= (2, 33)

# In a fresh process (the test process's allocator stays as it is): malloc and free 64 MiB, more
# than glibc's largest mmap threshold (32 MiB), before and after keep_freed_memory, reading
# mallinfo2's hblkhd (bytes in mmapped blocks) and fordblks (free bytes kept in the heap).
PROBE = """
import ctypes, json, threading
from launch import allocator
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                             "fsmblks uordblks fordblks keepcost").split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def cycle(mib):
  p = libc.malloc(mib << 20)
  ctypes.memset(p, 1, mib << 20)
  mapped = libc.mallinfo2().hblkhd
  libc.free(p)
  return {"mapped": mapped, "free_kept": libc.mallinfo2().fordblks}
def in_thread(mib):
  out = {}
  t = threading.Thread(target=lambda: out.update(cycle(mib)))
  t.start(); t.join()
  return out
before = cycle(64)
described = allocator.keep_freed_memory() if KEEP else None
# 100 MiB from a new thread: more than a thread arena's heap (64 MiB) holds
print(json.dumps({"before": before, "after": cycle(64), "thread": in_thread(100),
                  "described": described, "kept": allocator.kept()}))
"""
# The same knobs for a script of your own (docs/training.md): glibc reads them at start.
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967296", "MALLOC_ARENA_MAX": "1"}
MiB = 1 << 20


def _probe(env=None, keep=True):
  # glibc's defaults unless `env`: whatever malloc settings this process was started with removed
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
  out = subprocess.run([sys.executable, "-c", f"KEEP = {keep}\n" + PROBE], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout)


@pytest.mark.skipif(not MALLINFO2, reason="the knobs are glibc's (mallinfo2: >= 2.33)")
def test_keep_serves_large_blocks_from_the_heap_and_keeps_them():
  got = _probe()
  assert got["before"]["mapped"] >= 64 * MiB  # glibc's default: its own mapping
  assert got["before"]["free_kept"] < 64 * MiB  # ... unmapped at free
  assert got["after"]["mapped"] < 64 * MiB  # kept: from the heap
  assert got["after"]["free_kept"] >= 64 * MiB  # ... and still there after free
  assert got["thread"]["mapped"] < 100 * MiB  # a new thread's too (one arena)
  assert got["thread"]["free_kept"] >= 100 * MiB
  assert got["kept"] and got["described"].startswith("glibc, freed memory kept")


@pytest.mark.skipif(not MALLINFO2, reason="the knobs are glibc's (mallinfo2: >= 2.33)")
def test_without_keep_a_threads_large_block_is_mapped():
  assert _probe(keep=False)["thread"]["mapped"] >= 100 * MiB


@pytest.mark.skipif(not MALLINFO2, reason="the knobs are glibc's (mallinfo2: >= 2.33)")
def test_the_environment_variables_do_the_same_from_the_start():
  got = _probe(ENV, keep=False)  # the variables alone
  assert got["before"]["mapped"] < 64 * MiB and got["before"]["free_kept"] >= 64 * MiB
  assert got["thread"]["mapped"] < 100 * MiB and got["thread"]["free_kept"] >= 100 * MiB


@pytest.mark.parametrize("mode", ["keep", "system"])
def test_the_launchers_apply_the_malloc_flag_before_main(monkeypatch, mode):
  """--malloc=keep: the allocator set, then main with the layout rule told the freed memory is
  kept; --malloc=system: neither."""
  seen = []
  monkeypatch.setattr(allocator, "_kept", False)
  monkeypatch.setattr(allocator, "keep_freed_memory",
                      lambda: (seen.append("kept"), setattr(allocator, "_kept", True)))
  monkeypatch.setattr(_cli.app, "run", lambda main: main(["prog"]))  # flags already parsed
  with flagsaver.flagsaver(malloc=mode):
    _cli.start(lambda argv: seen.append(("main", argv, _fused.memory_kept(), _fused.forced())),
               sys.modules[__name__])
  assert seen == ([("kept"), ("main", ["prog"], True, None)] if mode == "keep"
                  else [("main", ["prog"], False, None)])
  assert not _fused.memory_kept()  # restored after main


@pytest.mark.parametrize("kept", [True, False])
def test_suite_sections_inherit_the_drivers_allocator(monkeypatch, kept):
  monkeypatch.setattr(allocator, "_kept", kept)
  argv = suite.section_command("grid", "out.json", tiny=True)
  assert ("--malloc=keep" in argv) == kept and argv[-2 if kept else -1] == "--tiny"


@pytest.mark.parametrize("section,kept,told", [("grid", True, True), ("grid", False, False),
                                               ("tests", True, False)])
def test_suite_sections_measure_under_the_launchers_layout(monkeypatch, tmp_path, section, kept,
                                                           told):
  """A measuring section runs under the layout the launcher runs with; the tests section under
  the library's own rule (it checks that rule)."""
  seen = []
  monkeypatch.setattr(allocator, "_kept", False)
  monkeypatch.setattr(allocator, "keep_freed_memory", lambda: setattr(allocator, "_kept", True))
  monkeypatch.setitem(suite.SECTION_FNS, section,
                      lambda rec, sizes: seen.append(_fused.memory_kept()) or 0)
  argv = [section, str(tmp_path / "out.json"), "--tiny"] + (["--malloc=keep"] if kept else [])
  assert suite.child_main(argv) == 0
  assert seen == [told] and not _fused.memory_kept()
