"""The benchmark runs end to end on tiny shapes and reports what it promises (no timing asserts)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_reports_rows_ratios_and_memory(tmp_path):
  out_json = tmp_path / "bench.json"
  out = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--cell=gru", "--batch_size=4", "--seq_len=6",
       "--hidden_size=8", "--repeats=1", "--anchors=flax", "--memory=64,1024",
       f"--json={out_json}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
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
