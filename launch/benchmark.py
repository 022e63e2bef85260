"""Speed and memory of seqjax's cells against the anchors users would otherwise pick.

  python -m launch.benchmark --cell=lstm --batch_size=100 --seq_len=1000 --input_size=2 --hidden_size=128
  python -m launch.benchmark --cell=min_rwa --versus=rwa --anchors= --seq_len=10000 --batch_size=10
  python -m launch.benchmark --grid --cells=lstm,gru --grid_points=64x100x3x64,100x1000x2x128
  python -m launch.benchmark --suite --budget_s=540 --report_dir=bench/h200

One configuration (the default mode): times, in one process, interleaved, the median of --repeats
runs after warm-up (block_until_ready): the train step (forward over T, a linear readout and
squared loss at every step, backward, Adam update; donated state) and inference (forward only),
for seqjax and for the anchors on the same shapes: flax nn.RNN(OptimizedLSTMCell | GRUCell |
SimpleCell) at its default unroll 1 and at seqjax's unroll, when importable torch.nn.LSTM / GRU /
RNN (on CUDA when JAX runs on a GPU and torch sees one; --anchors=torch_fp16: the same in fp16,
CUDA only), and on a GPU cuDNN's LSTM through jax.experimental.rnn (--anchors=cudnn). Ratios are
anchor time / seqjax time (> 1: seqjax is faster). --memory adds XLA's compiled temp-memory figure
of the seqjax train step (models.apply, squared loss, backward, Adam; outputs read at the last step
and at every step) for several T, with and without remat. --runs=1,2,8 adds a table: one train
step of N runs trained as one program (the one-run step mapped over a leading runs axis of params,
Adam state and data, as launch.main --seeds does: jax.vmap, and jax.lax.map one run at a time, the
runner's choice on CPU) against N times one run, interleaved in the same process.

--grid: the research-size grid: cells lstm, gru, rnn, rwa, rda (--cells) at seven (B, T, F, H)
points (--grid_points, BxTxFxH each; --tiny: one tiny point), train and inference, each point's
rows interleaved: seqjax's default, seqjax under cells.autodiff_backward, flax at unroll 1 and at
seqjax's unroll, torch; each row's ratio to the default, and its matmul GFLOP/s as a share of the
machine's sgemm rate measured just before the point (bench_lib.matmul_flops, sgemm_gflops).
--layouts adds the default with each backward layout forced (the data behind
seqjax._fused.backward_layout's rule). Each timed call follows an untimed call of the same
step. Points of >= 50,000 tokens get at most 3 repeats. Every row has wall-clock and CPU-time
medians and ratios: on a machine shared with other jobs the CPU time tracks the work.
torch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set): spinning, they
steal the cores of the next row timed.

--suite: everything a lent accelerator session should measure, within --budget_s, one subprocess
per section (tests, speed, runs, min, dtype, memory; --sections picks some), writing
report.json and report.md into --report_dir after each section (see launch/suite.py).
"""

import json
import sys

from absl import flags

import jax
import jax.numpy as jnp

from . import _cli, bench_lib, suite
import seqjax
from seqjax import cells

CELL = flags.DEFINE_enum("cell", "lstm", list(cells.NAMES), "Cell to time.")
BATCH = flags.DEFINE_integer("batch_size", 100, "B")
SEQ_LEN = flags.DEFINE_integer("seq_len", 1000, "T")
INPUT = flags.DEFINE_integer("input_size", 2, "F")
HIDDEN = flags.DEFINE_integer("hidden_size", 128, "H")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                          "seqjax's matmul operand precision (params and state stay float32; "
                          "the anchors run float32).")
NUM_LAYERS = flags.DEFINE_list("num_layers", ["1"],
                               "Layer counts of the seqjax cell to time, e.g. 1,2 (anchors: 1). "
                               "Ratios are against the first.")
AUTODIFF_ROW = flags.DEFINE_boolean(
    "autodiff_row", False, "Also time seqjax's first cell with its hand-written backward pass "
    "switched off (jax.grad of the scan), to show what that pass buys.")
VERSUS = flags.DEFINE_list(
    "versus", [], "Other seqjax cells timed in the same process on the same shapes, e.g. "
    "--cell=min_rwa --versus=rwa (their ratio column: their time / --cell's).")
flags.register_validator("versus", lambda names: all(n in cells.NAMES for n in names),
                         f"--versus: a list of cell names from {', '.join(cells.NAMES)}")
SCAN_VARIANTS = flags.DEFINE_list(
    "scan_variants", [], "Also time seqjax's first cell with these seqjax.scan options, in the "
    f"same process (from {', '.join(bench_lib.SCAN_VARIANTS)}; lengths uniform in [T/2, T], "
    "resets at 1% of the steps), e.g. reverse,resets against the plain forward scan.")
flags.register_validator("scan_variants",
                         lambda names: all(n in bench_lib.SCAN_VARIANTS for n in names),
                         f"--scan_variants: a list from {', '.join(bench_lib.SCAN_VARIANTS)}")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per row (median reported).")
UNROLL = flags.DEFINE_list("unroll", [], "seqjax scan unroll values to time, e.g. 1,4,8 "
                           "(default: seqjax.scan's measured best for the backend).")
ANCHORS = flags.DEFINE_list(
    "anchors", ["flax", "torch", "cudnn"], "Anchors to time: flax (at unroll 1 and at seqjax's), "
    "torch, torch_fp16 (CUDA only; params and data in fp16, where cuDNN may take its persistent "
    "kernel: B % 8 == 0, B <= 128, F and H % 128 == 0), cudnn (GPU, lstm only); empty: none.")
flags.register_validator("anchors", lambda names: all(n in bench_lib.ANCHORS for n in names),
                         f"--anchors: a list from {', '.join(bench_lib.ANCHORS)}")
MEMORY = flags.DEFINE_list("memory", [], "Sequence lengths for the memory table, e.g. 1000,10000,100000.")
JSON = flags.DEFINE_string("json", None, "Also write the results as JSON to this file.")
RUNS = flags.DEFINE_list("runs", [], "Run counts N for the many-runs table, e.g. 1,2,8.")
SUITE = flags.DEFINE_boolean("suite", False, "Run the measurement suite instead of one "
                             "configuration (the other flags above are then unused).")
BUDGET = flags.DEFINE_float("budget_s", 540, "--suite: seconds for the whole suite; a section "
                            "gets what is left (tests at most a third of it).")
REPORT_DIR = flags.DEFINE_string("report_dir", None, "--suite: folder for report.json, report.md "
                                 "and logs/ (default bench/<date>-<backend>).")
TINY = flags.DEFINE_boolean("tiny", False, "--suite, --grid: tiny sizes (a check of the code "
                            "itself).")
GRID = flags.DEFINE_boolean("grid", False, "Time the research-size grid instead of one "
                            "configuration (--cells, --grid_points, --repeats, --json apply).")
GRID_CELLS = flags.DEFINE_list("cells", list(bench_lib.GRID_CELLS), "--grid: the cells.")
GRID_POINTS = flags.DEFINE_list(
    "grid_points", [], "--grid: points as BxTxFxH, e.g. 64x100x3x64,100x1000x2x128 (default: "
    f"the grid's {len(bench_lib.GRID_POINTS)} points, or the tiny one with --tiny).")
LAYOUTS = flags.DEFINE_boolean(
    "layouts", False, "--grid: also time the default with each backward layout forced (weight "
    "gradients after the loop / in the loop), the measurement behind seqjax._fused."
    "backward_layout's rule.")
SECTIONS = flags.DEFINE_list("sections", list(suite.SECTIONS),
                             f"--suite: the sections to run, from {', '.join(suite.SECTIONS)}.")

def main_suite():
  from seqjax.settings import RunError
  try:
    suite.main(BUDGET.value, SECTIONS.value, REPORT_DIR.value, tiny=TINY.value)
  except RunError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit("stopped; the sections finished so far are in the report")


def _grid_args():
  """(cells, points) of the --grid flags; a RunError naming the flag when they are wrong."""
  from launch.flags import parse_list
  from seqjax.settings import check
  names = parse_list("cells", GRID_CELLS.value, choices=bench_lib.GRID_CELLS)
  if not GRID_POINTS.value:
    return names, bench_lib.TINY_GRID_POINTS if TINY.value else bench_lib.GRID_POINTS
  points = []
  for spec in GRID_POINTS.value:
    sizes = spec.split("x")
    ok = len(sizes) == 4 and all(v.isdigit() and int(v) >= 1 for v in sizes)
    check(ok, "grid_points", ",".join(GRID_POINTS.value),
          f"{spec!r} is not BxTxFxH with four integers >= 1 (e.g. 64x100x3x64)")
    points.append(tuple(map(int, sizes)))
  return names, tuple(points)


def main_grid():
  from seqjax.settings import RunError
  try:
    names, points = _grid_args()
  except RunError as e:
    sys.exit(f"error: {e}")
  report = {"command": "python -m launch.benchmark " + " ".join(sys.argv[1:]), "rows": [],
            "notes": [], "versions": {}}
  print(f"{'cell':5s} {'B,T,F,H':>16s} {'implementation':40s} {'kind':5s} {'ms':>9s} "
        f"{'/default':>8s} {'cpu ms':>9s} {'/default':>8s} {'GFLOP/s':>8s} {'peak':>6s}",
        flush=True)
  for B, T, F, H in points:
    for name in names:
      rows, notes, versions = bench_lib.grid_point(name, B, T, F, H, REPEATS.value,
                                                   layouts=LAYOUTS.value)
      report["rows"] += rows
      report["notes"] += [f"{name} {B}x{T}x{F}x{H}: {n}" for n in notes]
      report["versions"].update(versions)
      for r in rows:
        print(f"{name:5s} {f'{B},{T},{F},{H}':>16s} {r['implementation']:40s} {r['kind']:5s} "
              f"{r['ms']:9.2f} {r['ratio']:8.2f} {r['cpu_ms']:9.2f} {r['cpu_ratio']:8.2f} "
              f"{r['gflops']:8.1f} {r['share_of_peak']:6.1%}",
              flush=True)
      if JSON.value:  # after every point, so a cut-off run keeps what it finished
        from seqjax.checkpoint import write_atomic
        write_atomic(JSON.value, json.dumps(report, indent=1))
  for note in dict.fromkeys(report["notes"]):
    print(f"note: {note}")


def main(argv):
  del argv
  if SUITE.value:
    return main_suite()
  if GRID.value:
    return main_grid()
  if RUNS.value:
    from .flags import parse_list
    from seqjax.settings import RunError
    try:
      counts = list(parse_list("runs", RUNS.value, int, minimum=1))
    except RunError as e:
      sys.exit(f"error: {e}")
  name = CELL.value
  B, T, F, H = BATCH.value, SEQ_LEN.value, INPUT.value, HIDDEN.value
  unrolls = [int(u) for u in UNROLL.value] or [seqjax.default_unroll()]
  contenders, notes, versions = bench_lib.contenders(
      name, B, T, F, H, unrolls=unrolls, num_layers=[int(n) for n in NUM_LAYERS.value],
      dtypes=(DTYPE.value,), versus=VERSUS.value, autodiff_row=AUTODIFF_ROW.value,
      anchors=ANCHORS.value, scan_variants=SCAN_VARIANTS.value)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  results = bench_lib.time_rows(contenders, REPEATS.value, B * T)
  print(f"B={B} T={T} F={F} H={H} seqjax unroll={','.join(map(str, unrolls))} | {versions}")
  print(f"{'implementation':42s} {'kind':6s} {'ms/step':>9s} {'tokens/s':>10s} {'anchor/seqjax':>14s}")
  for r in results:
    print(f"{r['implementation']:42s} {r['kind']:6s} {r['ms']:9.1f} {r['tokens_per_s']:10.0f} "
          f"{r['ratio']:14.2f}")
  report = {"command": "python -m launch.benchmark " + " ".join(sys.argv[1:]),
            "versions": versions, "rows": results, "notes": notes}
  # the memory and runs tables' cell: the first row's (layers, dtype)
  cell = cells.get(name, hidden_size=H, num_layers=int(NUM_LAYERS.value[0]),
                   dtype=None if DTYPE.value == "float32" else jnp.bfloat16)
  if MEMORY.value:
    report["memory"] = bench_lib.memory_table(cell, B, F, [int(t) for t in MEMORY.value])
    print("train-step XLA temporaries (MiB), outputs read at the last step | at every step")
    keys = ("plain", "remat", "plain_per_step", "remat_per_step")
    print(f"{'T':>8s} {'plain':>10s} {'remat':>10s} | {'plain':>10s} {'remat':>10s}")
    for row in report["memory"]:
      mib = ["no compile" if row[k] is None else f"{row[k] / 2**20:.1f}" for k in keys]
      print(f"{row['T']:8d} {mib[0]:>10s} {mib[1]:>10s} | {mib[2]:>10s} {mib[3]:>10s}")
  if RUNS.value:
    report["runs"] = bench_lib.runs_table(cell, B, T, F, counts, REPEATS.value)
    print(f"time(N runs) / (N x time(1 run)), {jax.default_backend()}; the runner's way here: "
          f"{'loop' if bench_lib.runs_looped() else 'vmap'}")
    print(f"{'runs N':>7s} {'vmap ms':>9s} {'ratio':>6s} {'loop ms':>9s} {'ratio':>6s}")
    for row in report["runs"]:
      print(f"{row['runs']:7d} {row['ms_vmap']:9.1f} {row['ratio_vmap']:6.3f} "
            f"{row['ms_loop']:9.1f} {row['ratio_loop']:6.3f}")
  if JSON.value:
    with open(JSON.value, "w") as f:
      json.dump(report, f, indent=2)


def cli():
  """The console script (seqjax-benchmark)."""
  _cli.start(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
