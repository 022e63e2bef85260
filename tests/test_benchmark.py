"""The benchmark runs end to end on tiny shapes and reports what it promises (no timing asserts)."""

import pytest
import json
import os
import subprocess
import sys

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
      assert r["anchor_over_seqjax"] == 1.0
  assert report["versions"]["backend"] == "cpu" and "launch.benchmark" in report["command"]
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
