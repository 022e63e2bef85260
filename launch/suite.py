"""`python -m launch.benchmark --suite`: everything a lent accelerator session should measure, in
one command that stays within a time budget and keeps what it finished.

Sections, in this order: tests (the accelerator test tier), grid (launch.benchmark --grid), speed,
runs, min, dtype, memory. Each
runs in its own subprocess (`python -m launch.suite NAME OUT_JSON [--tiny]`, this module's entry)
with the budget left as its timeout; the child rewrites OUT_JSON after every measured group, so a
section cut off keeps its finished rows. After each section the driver rewrites DIR/report.json
and DIR/report.md atomically, so a suite killed part-way keeps every finished section. Every ratio
is within one section's process (seqjax and its anchors timed interleaved).
"""

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

from seqjax.checkpoint import write_atomic

SECTIONS = ("tests", "grid", "speed", "runs", "min", "dtype", "memory")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests may take at most this share of the whole budget, so the measurements always get time.
TESTS_SHARE = 1 / 3


class Sizes(NamedTuple):
  repeats: int
  grid: tuple  # (cells, ((B, T, F, H), ...)): launch.benchmark --grid's
  speed: tuple  # (B, T, F, H)
  persistent: tuple  # (B, T, F, H) of the CUDA fp16 rows: where cuDNN may take its persistent kernel
  runs: tuple  # (B, T, F, H, run counts)
  min: tuple  # (H, F, ((T, B), ...)): B shrinks as T grows, B * T fixed
  dtype: tuple  # (B, T, F, H, cells)
  memory: tuple  # (B, F, H, lengths, cells)
  tests: tuple  # pytest arguments


TEST_FILES = ("tests/test_cells.py", "tests/test_scan.py", "tests/test_min_cells.py",
              "tests/test_stack.py", "tests/test_groups.py", "tests/test_interop.py")
FULL = Sizes(repeats=5, grid=(("lstm", "gru", "rnn", "rwa", "rda"),
                               ((64, 100, 3, 64), (100, 100, 2, 64), (100, 100, 2, 250),
                                (16, 200, 32, 256), (32, 300, 8, 128), (100, 1000, 2, 128),
                                (1, 10000, 2, 128))),
             speed=(100, 1000, 2, 256), persistent=(104, 1000, 128, 256),
             runs=(100, 1000, 2, 256, (1, 2, 8)),
             min=(128, 2, ((1000, 100), (10_000, 10), (100_000, 1))),
             dtype=(100, 1000, 2, 256, ("lstm", "rwa")),
             memory=(100, 2, 128, (1000, 10_000, 100_000), ("lstm", "rwa")),
             tests=TEST_FILES + ("-m", "not slow"))
# Every section's code on the smallest shapes and fewest points, for a check of the suite itself.
TINY = Sizes(repeats=1, grid=(("lstm", "rwa"), ((4, 6, 2, 8),)), speed=(4, 6, 2, 8), persistent=(8, 6, 128, 128), runs=(2, 6, 2, 8, (1, 2)),
             min=(8, 2, ((8, 2),)), dtype=(4, 6, 2, 8, ("lstm",)),
             memory=(4, 2, 8, (16,), ("lstm",)),
             tests=("tests/test_cells.py", "-m", "not slow", "-k",
                    "get_is_the_factory or rwa_first_step_is_exact"))


# ---- the sections (run in the child process) ----

class Recorder:
  """A section's rows and notes, rewritten to its JSON file after every change."""

  def __init__(self, path):
    self.path, self.data = path, {"rows": [], "notes": [], "versions": {}}

  def add(self, rows=(), notes=(), versions=None):
    self.data["rows"].extend(rows)
    self.data["notes"].extend(notes)
    self.data["versions"].update(versions or {})
    write_atomic(self.path, json.dumps(self.data, indent=1))


def _shape(B, T, F, H):
  return f"B={B} T={T} F={F} H={H}"


def _speed_config(rec, name, B, T, F, H, repeats, label, **kw):
  from . import bench_lib
  got, notes, versions = bench_lib.contenders(name, B, T, F, H, **kw)
  rows = bench_lib.time_rows(got, repeats, B * T)
  rec.add([{"config": label, **r} for r in rows], [f"{label}: {n}" for n in notes], versions)


def section_tests(rec, sizes):
  """pytest on the accelerator tier; rows: the outcome counts and every failing test's id."""
  import pytest

  class Collect:
    def __init__(self):
      self.counts = {}

    def pytest_runtest_logreport(self, report):
      if report.when == "call" or report.outcome != "passed":
        self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1
        if report.outcome == "failed":
          rec.add([{"test": report.nodeid, "outcome": f"failed ({report.when})"}])

  collect = Collect()
  code = pytest.main(["-q", "-p", "no:cacheprovider", *sizes.tests], plugins=[collect])
  rec.add([{"test": f"total {outcome}", "outcome": n} for outcome, n in collect.counts.items()],
          [f"pytest {' '.join(sizes.tests)}: exit code {int(code)}"])
  return int(code)


def section_grid(rec, sizes):
  """launch.benchmark --grid --layouts: every cell at every point, smallest points first, so a
  cut-off section keeps whole points; the two backward layouts forced beside the default, the
  data a GPU's own layout rule would need."""
  from launch import bench_lib
  names, points = sizes.grid
  for B, T, F, H in points:
    for name in names:
      rows, notes, versions = bench_lib.grid_point(name, B, T, F, H, sizes.repeats,
                                                   layouts=True)
      rec.add(rows, [f"{name} {_shape(B, T, F, H)}: {n}" for n in notes], versions)
  return 0


def section_speed(rec, sizes):
  """lstm, gru, rwa: seqjax against flax at unroll 1 and at seqjax's unroll, cuDNN (GPU), torch
  (when installed), float32; on CUDA the LSTM again at cuDNN's persistent-kernel shapes, with
  torch fp16 and seqjax bfloat16 beside float32."""
  import jax
  import seqjax
  from . import bench_lib
  B, T, F, H = sizes.speed
  u = seqjax.default_unroll()
  for name in ("lstm", "gru", "rwa"):
    _speed_config(rec, name, B, T, F, H, sizes.repeats,
                  f"{name} {_shape(B, T, F, H)} float32, seqjax unroll={u}", unrolls=(u,))
  B, T, F, H = sizes.persistent
  try:
    cuda = bench_lib.torch_cuda()
  except ImportError:
    cuda = False
  if not cuda:
    rec.add(notes=[f"fp16 persistent-kernel rows (lstm {_shape(B, T, F, H)}): CUDA only, with "
                   f"torch; here JAX runs on {jax.default_backend()}"
                   + ("" if jax.default_backend() != "gpu" else " and torch has no CUDA")])
    return 0
  _speed_config(rec, "lstm", B, T, F, H, sizes.repeats,
                f"lstm {_shape(B, T, F, H)}, persistent-kernel shapes, seqjax unroll={u}",
                unrolls=(u,), dtypes=("float32", "bfloat16"),
                anchors=("cudnn", "torch", "torch_fp16"))
  return 0


def section_runs(rec, sizes):
  """One train step of 1, 2, 8 runs as one program against that many single runs."""
  from . import bench_lib
  from seqjax import cells
  B, T, F, H, counts = sizes.runs
  rows = bench_lib.runs_table(cells.get("lstm", H), B, T, F, counts, sizes.repeats)
  way = "loop" if bench_lib.runs_looped() else "vmap"
  rec.add([{"config": f"lstm {_shape(B, T, F, H)}", **r} for r in rows],
          [f"ratio = time(N runs) / (N x time(1 run)); the runner's way on this backend: {way}"])
  return 0


def section_min(rec, sizes):
  """min cells against their recurrent counterparts at growing T; ratio = time / min cell's."""
  import seqjax
  H, F, lengths = sizes.min
  for T, B in lengths:  # every pair at the short T first, so a cut-off section still has each
    for fast, slow in (("min_rwa", "rwa"), ("min_gru", "gru"), ("min_lstm", "lstm")):
      _speed_config(rec, fast, B, T, F, H, sizes.repeats if T <= 1000 else max(1, sizes.repeats - 2),
                    f"{fast} vs {slow} {_shape(B, T, F, H)}",
                    unrolls=(seqjax.default_unroll(),), versus=(slow,),
                    anchors=())
  return 0


def section_dtype(rec, sizes):
  """bfloat16 matmuls (float32 state) against float32; ratio = time / float32's."""
  import seqjax
  B, T, F, H, names = sizes.dtype
  for name in names:
    _speed_config(rec, name, B, T, F, H, sizes.repeats, f"{name} {_shape(B, T, F, H)}",
                  unrolls=(seqjax.default_unroll(),), dtypes=("float32", "bfloat16"), anchors=())
  return 0


def section_memory(rec, sizes):
  """XLA temporaries (MiB) of the train step, plain and remat, outputs read last / every step."""
  from . import bench_lib
  from seqjax import cells
  B, F, H, lengths, names = sizes.memory
  for name in names:
    for T in lengths:  # one T at a time, so a cut-off section keeps the lengths it finished
      (row,) = bench_lib.memory_table(cells.get(name, H), B, F, [T])
      rec.add([{"config": f"{name} B={B} F={F} H={H}", "T": T,
                **{k: (v if k == "error" or v is None else v / 2**20)
                   for k, v in row.items() if k != "T"}}])
  rec.add(notes=["MiB of XLA temporaries (compiled, not run); plain/remat: outputs read at the "
                 "last step; *_per_step: at every step; None: did not compile"])
  return 0


SECTION_FNS = {"tests": section_tests, "grid": section_grid, "speed": section_speed, "runs": section_runs,
               "min": section_min, "dtype": section_dtype, "memory": section_memory}
assert tuple(SECTION_FNS) == SECTIONS


def child_main(argv):
  """`python -m launch.suite NAME OUT_JSON [--tiny] [--malloc=keep]`: one section, its rows to
  OUT_JSON; --malloc=keep: the driver's allocator setting (launch/allocator.py), which the
  report's header records, and the measuring sections under its matching backward layout."""
  from . import allocator
  name, out = argv[0], argv[1]
  if "--malloc=keep" in argv[2:]:
    allocator.keep_freed_memory()
  rec = Recorder(out)
  rec.data["header"] = device_header()
  rec.add()
  # the measuring sections under the launcher's layout; the tests check the library's own rule
  with contextlib.nullcontext() if name == "tests" else allocator.matching_layout():
    return SECTION_FNS[name](rec, TINY if "--tiny" in argv[2:] else FULL)


# ---- the driver ----

def section_command(name, out_json, tiny):
  """A section's child process, with the driver's allocator setting."""
  from . import allocator
  # __package__: launch from a checkout, seqjax_launch installed from a wheel
  return [sys.executable, "-m", f"{__package__}.suite", name, out_json] + \
      (["--tiny"] if tiny else []) + (["--malloc=keep"] if allocator.kept() else [])


def device_header():
  """{device, backend, jax_version} of this process's JAX."""
  import jax
  d = jax.devices()[0]
  return {"device": f"{d.device_kind} ({d.platform}) x{jax.device_count()}",
          "backend": jax.default_backend(), "jax_version": jax.__version__}


PROBE = (f"import json; from {__package__}.suite import device_header; "
         "print(json.dumps(device_header()))")


def probe(timeout):
  """The device, backend and jax version, read in a subprocess: the driver itself never holds
  the accelerator (a TPU admits one process; a GPU's memory goes to the sections)."""
  try:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=max(timeout, 1), cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])
  except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
    return {"device": f"unknown ({type(e).__name__})", "backend": "unknown",
            "jax_version": "unknown"}


def default_report_dir(backend):
  return os.path.join("bench", f"{datetime.date.today().isoformat()}-{backend}")


def _fmt(v):
  if v is None:
    return "—"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v).replace("|", "\\|")


def render_md(report):
  lines = ["# seqjax benchmark suite", "",
           f"{report['device']}, jax {report['jax_version']}, {report['date']}; budget "
           f"{report['budget_s']:g} s{', tiny sizes' if report['tiny'] else ''}; "
           f"`{report['command']}`" + (f"; malloc: {report['malloc']}" if "malloc" in report
                                        else ""), "",
           "Ratios are within one section's process: a row's `ratio` is its time / the first row's "
           "time of its config.", "",
           "| section | status | seconds | rows |", "|---|---|---|---|"]
  lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {len(s['rows'])} |"
            for s in report["sections"]]
  for s in report["sections"]:
    lines += ["", f"## {s['name']}: {s['status']} ({s['seconds']:.1f} s)", ""]
    lines += [f"- {n}" for n in s["notes"]]
    if s["rows"]:
      cols = list(dict.fromkeys(k for r in s["rows"] for k in r))
      lines += ([""] if s["notes"] else []) + ["| " + " | ".join(cols) + " |",
                                               "|" + "---|" * len(cols)]
      lines += ["| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |" for r in s["rows"]]
  return "\n".join(lines) + "\n"


def write_report(report_dir, report):
  write_atomic(os.path.join(report_dir, "report.json"), json.dumps(report, indent=1))
  write_atomic(os.path.join(report_dir, "report.md"), render_md(report))


def check_args(budget_s, sections, report_dir):
  """The suite's arguments checked before anything runs: the sections as a tuple (a RunError
  naming the flag otherwise)."""
  from .flags import parse_list
  from seqjax.settings import check
  check(isinstance(budget_s, (int, float)) and budget_s > 0, "budget_s", budget_s,
        "must be a number of seconds > 0")
  sections = parse_list("sections", sections, choices=SECTIONS)
  if report_dir is not None:
    _check_writable(report_dir)
  return sections


def _check_writable(report_dir):
  """A RunError naming --report_dir unless it is (or can be made) a writable folder."""
  from seqjax.settings import check
  why = None
  try:
    os.makedirs(report_dir, exist_ok=True)
    write_atomic(os.path.join(report_dir, ".write-check"), "")
    os.remove(os.path.join(report_dir, ".write-check"))
  except OSError as e:
    why = e.strerror or str(e)
  check(why is None, "report_dir", report_dir, f"cannot write a report there ({why})")


def main(budget_s, sections, report_dir=None, tiny=False):
  """The whole `--suite` command; bad arguments raise RunError before anything runs."""
  start = time.monotonic()
  sections = check_args(budget_s, sections, report_dir)
  from . import allocator
  header = {**probe(min(budget_s, 120)), "malloc": allocator.describe()}
  if report_dir is None:
    report_dir = default_report_dir(header["backend"])
    _check_writable(report_dir)
  print(f"[suite] {header['device']}, jax {header['jax_version']}: sections "
        f"{', '.join(sections)} within {budget_s:g} s; reports in {report_dir}", flush=True)
  run_suite(report_dir, budget_s, tiny=tiny, sections=sections, header=header, start=start)
  print(f"[suite] wrote {os.path.join(report_dir, 'report.md')} and report.json", flush=True)


class _Stopped(Exception):
  """SIGTERM or SIGINT reached the driver: record the running section and write the report."""


def _raise_stopped(signum, frame):
  raise _Stopped(signal.Signals(signum).name)


def _read_rows(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {"rows": [], "notes": [], "versions": {}}


def _last_line(path):
  try:
    with open(path, errors="replace") as f:
      lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:300] if lines else ""
  except OSError:
    return ""


def run_suite(report_dir, budget_s, *, tiny=False, sections=SECTIONS, header=None, start=None,
              command=section_command, log=print):
  """Runs `sections` one subprocess each (argv from `command(name, out_json, tiny)`) within
  budget_s seconds counted from `start` (time.monotonic(); default now), rewriting
  report_dir/report.{json,md} after each. Returns the report. SIGTERM stops the running
  section (recorded as timeout, with its rows so far), writes the report and re-raises as
  KeyboardInterrupt."""
  start = time.monotonic() if start is None else start
  report = {"command": "python -m launch.benchmark " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "budget_s": budget_s, "tiny": tiny, "device": "unknown", "jax_version": "unknown",
            "backend": "unknown", **(header or {}), "sections": []}
  logs = os.path.join(report_dir, "logs")
  os.makedirs(logs, exist_ok=True)
  write_report(report_dir, report)
  main_thread = threading.current_thread() is threading.main_thread()  # signals: main only
  previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
  try:
    with tempfile.TemporaryDirectory() as tmp:
      for name in sections:
        left = budget_s - (time.monotonic() - start)
        entry = {"name": name, "status": "skipped", "seconds": 0.0, "rows": [], "notes": []}
        report["sections"].append(entry)
        if left <= 0:
          entry["notes"].append("no budget left")
        else:
          timeout = min(left, TESTS_SHARE * budget_s) if name == "tests" else left
          try:
            _run_section(entry, command(name, os.path.join(tmp, f"{name}.json"), tiny),
                         os.path.join(tmp, f"{name}.json"), os.path.join(logs, f"{name}.log"),
                         timeout)
          except KeyboardInterrupt:
            write_report(report_dir, report)
            raise
        if report["device"] == "unknown" and "header" in entry:  # no probe: the first section's
          report.update(entry.pop("header"))
        entry.pop("header", None)
        write_report(report_dir, report)
        log(f"[suite] {name}: {entry['status']} in {entry['seconds']:.1f} s, "
            f"{len(entry['rows'])} rows; {max(0.0, budget_s - (time.monotonic() - start)):.0f} s "
            "of budget left")
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
  return report


def _run_section(entry, argv, out_json, log_path, timeout):
  t = time.monotonic()
  with open(log_path, "w") as log_file:
    child = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
      code = child.wait(timeout=timeout)
      entry["status"] = "ok" if code == 0 else "failed"
      if code != 0:
        entry["notes"].append(f"exit code {code}: {_last_line(log_path)}")
    except subprocess.TimeoutExpired:
      entry["status"] = "timeout"
      entry["notes"].append(f"killed after {timeout:.0f} s (its budget); rows: those it finished")
    except (_Stopped, KeyboardInterrupt) as e:
      entry["status"] = "timeout"
      entry["notes"].append(f"suite stopped ({e or 'interrupt'}); rows: those it finished")
      raise KeyboardInterrupt from e
    finally:
      if child.poll() is None:
        child.kill()
        child.wait()
      entry["seconds"] = time.monotonic() - t
      got = _read_rows(out_json)
      entry["rows"], entry["notes"] = got["rows"], got["notes"] + entry["notes"]
      if got["versions"]:
        entry["versions"] = got["versions"]
      if "header" in got:
        entry["header"] = got["header"]


if __name__ == "__main__":
  sys.exit(child_main(sys.argv[1:]))
