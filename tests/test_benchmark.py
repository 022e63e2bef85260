"""The benchmark runs end to end on tiny shapes and reports what it promises (no timing asserts);
the suite keeps within its budget, records crashes and keeps every finished section."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from launch import suite
from seqjax.settings import RunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_reports_rows_ratios_and_memory(tmp_path):
  out_json = tmp_path / "bench.json"
  out = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--cell=gru", "--batch_size=4", "--seq_len=6",
       "--hidden_size=8", "--repeats=1", "--anchors=flax", "--memory=64,1024",
       "--runs=1,3", f"--json={out_json}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out_json.read_text())
  rows = {(r["implementation"], r["kind"]): r for r in report["rows"]}
  assert set(rows) == {(impl, kind) for impl in ("seqjax gru", "flax nn.RNN(GRUCell)")
                       for kind in ("train", "infer")}
  for (impl, kind), r in rows.items():
    assert r["ms"] > 0 and abs(r["tokens_per_s"] - 4 * 6 / (r["ms"] / 1000)) < 1e-6 * r["tokens_per_s"]
    if impl.startswith("seqjax"):
      assert r["ratio"] == 1.0
  assert report["versions"]["backend"] == "cpu" and "launch.benchmark" in report["command"]
  # --malloc=keep, the launchers' default, reached the process that timed the rows
  from launch import allocator
  assert report["versions"]["malloc"] == (
      "glibc, freed memory kept (M_MMAP_MAX 0, M_TRIM_THRESHOLD -1, M_ARENA_MAX 1)"
      if allocator._glibc() is not None else allocator.describe())
  assert report["versions"]["backward_layout"] == (
      "backward_layout's rule, freed memory kept" if allocator._glibc() is not None
      else "backward_layout's rule")
  memory = {m["T"]: m for m in report["memory"]}
  assert memory[1024]["remat"] < memory[1024]["plain"]
  assert "seqjax gru" in out.stdout and "anchor/seqjax" in out.stdout
  one, three = report["runs"]  # time(N) / (N * time(1 run)), the one-run step timed alongside
  assert (one["runs"], three["runs"]) == (1, 3) and one["ratio_vmap"] == one["ratio_loop"] == 1.0
  for way in ("vmap", "loop"):
    assert abs(three[f"ratio_{way}"] - three[f"ms_{way}"] / (3 * one["ms_vmap"])) < 1e-9
  bad = subprocess.run([sys.executable, "-m", "launch.benchmark", "--runs=2,0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "--runs=2,0: must be an integer >= 1" in bad.stderr
  # the suite's other refusals are the same check_args, tested in-process below
  bad = subprocess.run([sys.executable, "-m", "launch.benchmark", "--suite",
                        "--sections=speed,nope"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode != 0, bad.stderr
  assert bad.stderr.strip().startswith("error: --sections=speed,nope: 'nope' is not")
  assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def _has_torch():
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def _quiet(line):
  del line


def _report(report_dir):
  report = json.loads((report_dir / "report.json").read_text())
  assert (report_dir / "report.md").read_text() == suite.render_md(report)
  return report, {s["name"]: s for s in report["sections"]}


def test_tiny_suite_runs_every_section_and_reports_their_rows(tmp_path):
  # in-process driver, a subprocess per section as on an accelerator; a generous budget so a
  # loaded machine does not cut it (the budget itself is the next test's point)
  report = suite.run_suite(str(tmp_path), 900, tiny=True, log=_quiet)
  on_disk, by_name = _report(tmp_path)
  assert on_disk == report and report["tiny"] and report["backend"] == "cpu"
  assert [s["name"] for s in report["sections"]] == list(suite.SECTIONS)
  assert {s["name"]: s["status"] for s in report["sections"]} == dict.fromkeys(suite.SECTIONS, "ok")
  assert by_name["tests"]["rows"] == [{"test": "total passed", "outcome": 2}]
  _check_grid_rows(by_name["grid"]["rows"], by_name["grid"]["notes"])
  B, T = suite.TINY.speed[:2]
  speed = by_name["speed"]["rows"]
  impls = {(r["config"].split()[0], r["implementation"], r["kind"]) for r in speed}
  torch_rows = (("lstm", "torch.nn.LSTM"), ("gru", "torch.nn.GRU")) if _has_torch() else ()
  assert impls == {(c, i, k) for c, i in (("lstm", "seqjax lstm"),
                                          ("lstm", "flax nn.RNN(OptimizedLSTMCell)"),
                                          ("gru", "seqjax gru"), ("gru", "flax nn.RNN(GRUCell)"),
                                          ("rwa", "seqjax rwa"), *torch_rows)
                   for k in ("train", "infer")}
  for r in speed:
    assert abs(r["tokens_per_s"] - B * T / (r["ms"] / 1000)) < 1e-6 * r["tokens_per_s"]
    assert (r["ratio"] == 1.0) == r["implementation"].startswith("seqjax")
    first = next(f for f in speed if f["config"] == r["config"] and f["kind"] == r["kind"])
    assert abs(r["ratio"] - r["ms"] / first["ms"]) < 1e-9
  notes = " ".join(by_name["speed"]["notes"])
  assert "cudnn: GPU only (backend cpu)" in notes and "fp16 persistent-kernel rows" in notes
  runs = by_name["runs"]["rows"]
  assert [r["runs"] for r in runs] == list(suite.TINY.runs[-1]) and runs[0]["ratio_vmap"] == 1.0
  assert abs(runs[1]["ratio_loop"] - runs[1]["ms_loop"] / (2 * runs[0]["ms_vmap"])) < 1e-9
  assert {r["implementation"] for r in by_name["min"]["rows"]} == {
      "seqjax min_rwa", "seqjax rwa", "seqjax min_gru", "seqjax gru", "seqjax min_lstm",
      "seqjax lstm"}
  assert {r["implementation"] for r in by_name["dtype"]["rows"]} == {"seqjax lstm",
                                                                     "seqjax lstm bfloat16"}
  (memory,) = by_name["memory"]["rows"]
  assert memory["T"] == 16 and 0 < memory["remat"] <= memory["plain"]
  md = (tmp_path / "report.md").read_text()
  for name in suite.SECTIONS:
    assert f"## {name}: ok" in md
  for cell in ("| seqjax rwa | train |", "| total passed | 2 |", "| min_gru vs gru B=2 T=8",
               "| seqjax lstm bfloat16 | infer |", "| lstm B=4 F=2 H=8 | 16 |"):
    assert cell in md
  assert (tmp_path / "logs" / "speed.log").exists()


def test_the_budget_cuts_the_suite_short_and_keeps_a_report(tmp_path):
  t = time.monotonic()
  report = suite.run_suite(str(tmp_path), 2, tiny=True, sections=("speed", "runs", "memory"),
                           log=_quiet)
  assert time.monotonic() - t < 15
  assert [s["status"] for s in report["sections"]] == ["timeout", "skipped", "skipped"]
  assert _report(tmp_path)[0] == report
  speed, runs, _ = report["sections"]
  assert 1.9 < speed["seconds"] < 10 and "killed after 2 s" in speed["notes"][-1]
  assert runs["seconds"] == 0 and runs["notes"] == ["no budget left"] and runs["rows"] == []


def test_a_crashing_section_is_failed_and_the_next_still_runs(tmp_path):
  def command(name, out_json, tiny):
    if name == "crash":  # a section whose process dies, as a broken backend would make it
      return [sys.executable, "-c", "import sys; print('injected crash'); sys.exit(3)"]
    return suite.section_command(name, out_json, tiny)

  report = suite.run_suite(str(tmp_path), 900, tiny=True, sections=("crash", "dtype"),
                           command=command, log=_quiet)
  crash, dtype = report["sections"]
  assert crash["status"] == "failed" and crash["notes"] == ["exit code 3: injected crash"]
  assert dtype["status"] == "ok" and len(dtype["rows"]) == 4
  assert report["device"] == "cpu (cpu) x1"  # no probe given: the first section that reported
  assert _report(tmp_path)[0] == report


@pytest.mark.parametrize("budget_s, sections, message", [
    (0, ["speed"], "--budget_s=0: must be a number of seconds > 0"),
    (-5.0, ["speed"], "--budget_s=-5.0: must be a number of seconds > 0"),
    (10, ["speed", "fast"], "--sections=speed,fast: 'fast' is not one of tests, grid, speed, runs"),
    (10, [], "--sections=: give at least one value"),
])
def test_bad_suite_arguments_are_named(budget_s, sections, message):
  with pytest.raises(RunError, match=message.replace("(", r"\(")):
    suite.check_args(budget_s, sections, None)


def test_an_unwritable_report_dir_is_refused_before_anything_runs(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(RunError, match=r"--report_dir=.*file/x: cannot write a report there"):
    suite.check_args(10, ["speed"], str(tmp_path / "file" / "x"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_stopped_suite_keeps_the_finished_sections_and_the_running_ones_rows(tmp_path):
  write_rows = ("import json, sys; json.dump({'rows': [{'x': 1.5}], 'notes': ['wrote'], "
                "'versions': {}}, open(sys.argv[1], 'w'))")

  def command(name, out_json, tiny):
    if name == "first":
      return [sys.executable, "-c", write_rows, out_json]
    return [sys.executable, "-c", write_rows + "; import time; time.sleep(60)", out_json]

  def stop_when_the_second_runs(line):
    if line.startswith("[suite] first"):
      threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()

  t = time.monotonic()
  with pytest.raises(KeyboardInterrupt):
    suite.run_suite(str(tmp_path), 900, sections=("first", "second", "third"), command=command,
                    log=stop_when_the_second_runs)
  assert time.monotonic() - t < 30
  report, by_name = _report(tmp_path)
  assert list(by_name) == ["first", "second"]
  assert by_name["first"]["status"] == "ok" and by_name["first"]["rows"] == [{"x": 1.5}]
  second = by_name["second"]
  assert second["status"] == "timeout" and second["rows"] == [{"x": 1.5}]
  assert second["notes"] == ["wrote", "suite stopped (SIGTERM); rows: those it finished"]
  assert "| 1.5 |" in (tmp_path / "report.md").read_text()


def _check_grid_rows(rows, notes):
  """The tiny suite's grid section (`launch.benchmark --grid --layouts` at suite.TINY's point):
  every row present, ratios, GFLOP/s and shares of peak as defined."""
  from launch import bench_lib
  assert suite.TINY.grid == (("lstm", "rwa"), ((4, 6, 2, 8),))
  B, T, F, H = suite.TINY.grid[1][0]
  layouts = ("(weight gradients after the loop)", "(weight gradients in the loop)")
  for cell, anchors in (("lstm", ["flax nn.RNN(OptimizedLSTMCell)"]
                         + (["torch.nn.LSTM"] if _has_torch() else [])), ("rwa", [])):
    impls = [f"seqjax {cell}", f"seqjax {cell} (jax.grad backward)",
             *(f"seqjax {cell} {layout}" for layout in layouts), *anchors]
    assert {(r["implementation"], r["kind"]) for r in rows if r["cell"] == cell} == {
        (i, k) for i in impls for k in ("train", "infer")}
  assert _has_torch() or any("torch: torch not importable" in n for n in notes)
  assert any("flax at seqjax's unroll: that is unroll 1, flax's default row" in n for n in notes)
  for r in rows:
    assert math.isfinite(r["ratio"]) and r["ratio"] > 0 and r["peak_gflops"] > 0
    assert math.isfinite(r["cpu_ratio"]) and r["cpu_ms"] >= 0
    first = next(f for f in rows if f["cell"] == r["cell"] and f["kind"] == r["kind"])
    assert abs(r["ratio"] - r["ms"] / first["ms"]) < 1e-9
    assert abs(r["share_of_peak"] - r["gflops"] / r["peak_gflops"]) < 1e-12
    flops = bench_lib.matmul_flops(r["cell"], B, T, F, H, r["kind"])
    assert abs(r["gflops"] - flops / r["ms"] * 1e-6) < 1e-9 * r["gflops"]


def test_the_grid_counts_the_products_by_hand():
  from launch import bench_lib
  B, T, F, H = 3, 5, 2, 4
  # lstm x [F, 4H], h [H, 4H]; rwa x 3 [F, H], h 2 [H, H]; the readout [H, 1]
  assert bench_lib.matmul_flops("lstm", B, T, F, H, "train") == 3 * 2 * B * T * (
      F * 4 * H + H * 4 * H + H)
  assert bench_lib.matmul_flops("rwa", B, T, F, H, "infer") == 2 * B * T * (3 * F * H + 2 * H * H + H)
  assert suite.FULL.grid == (bench_lib.GRID_CELLS, bench_lib.GRID_POINTS)


def test_a_forced_layout_reaches_the_traced_step_and_the_rule_comes_back(monkeypatch):
  import jax
  from launch import bench_lib
  from seqjax import _fused
  rule, backend = _fused.backward_layout, jax.default_backend()
  before = (rule(backend, 1, 8, 10), rule(backend, 128, 512, 10))
  for layout in ("after", "in_loop"):
    with _fused.forced_layout(layout), _fused.freed_memory_kept():
      assert rule(backend, 1, 8, 10) == rule(backend, 128, 512, 10**6) == layout
  assert (rule(backend, 1, 8, 10), rule(backend, 128, 512, 10)) == before
  with pytest.raises(ValueError, match="layout must be one of after, in_loop, got 'fast'"):
    with _fused.forced_layout("fast"):
      pass
  # the --layouts rows' steps are traced under their layout (jit traces at the first call)
  seen, make = [], _fused.make_fused_scan
  monkeypatch.setattr(_fused, "make_fused_scan",
                      lambda *a, **kw: seen.append(kw["weights_in_loop"]) or make(*a, **kw))
  got, _, _ = bench_lib.contenders("rnn", 2, 3, 2, 4, unrolls=(1,), anchors=(), layouts=True)
  for contender, in_loop in zip(got[1:], (False, True)):
    seen.clear()
    contender.train()
    assert seen and set(seen) == {in_loop}, contender.label
