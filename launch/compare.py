"""Train several configurations through launch.main's code path and compare them in one figure.

  python -m launch.compare --task=adding --seq_len=100 --models=rwa,lstm --seeds=0,1,2
  python -m launch.compare --task=binary_addition --models=lstm --bit_orders=lsb_first,msb_first
  python -m launch.compare --task=adding --models=rwa,lstm --num_layers=1,2

Each configuration runs in its own workdir under --workdir (so a comparison resumes like a run),
then `compare.png` (eval metric vs step: mean and min-max band over seeds) and `results.md`
(steps to the paper's threshold, final metrics, wall time; generated from the runs' metrics)
are written there. All other flags are launch.main's.
"""

import itertools
import os

from absl import app, flags

from launch import flags as run_flags
from seqjax import cells, checkpoint, experiment, plots, report

MODELS = flags.DEFINE_list("models", ["rwa", "lstm"], f"Cells to compare: {', '.join(cells.NAMES)}.")
BIT_ORDERS = flags.DEFINE_list("bit_orders", ["lsb_first"],
                               "binary_addition: lsb_first and/or msb_first.")
NUM_LAYERS = flags.DEFINE_list("num_layers", ["1"], "Layer counts to compare, e.g. 1,2.")
SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds per configuration (the figure shows the spread).")
WORKDIR = flags.DEFINE_string("workdir", None, "Root folder (default: runs/compare-<task>-T<T>).")


def _ints(flag, values, minimum):
  try:
    out = [int(v) for v in values]
  except ValueError:
    out = []
  if not out or min(out) < minimum:
    raise experiment.RunError(f"--{flag}={','.join(values)}: a list of integers >= {minimum}")
  return out


def configurations():
  """(label, [RunConfig per seed]) for every model x layers x bit order; validated up front."""
  for model in MODELS.value:
    if model not in cells.NAMES:
      raise experiment.RunError(f"--models={','.join(MODELS.value)}: {model!r} is not one of "
                                f"{', '.join(cells.NAMES)}")
  for order in BIT_ORDERS.value:
    if order not in ("lsb_first", "msb_first"):
      raise experiment.RunError(f"--bit_orders={','.join(BIT_ORDERS.value)}: allowed "
                                "lsb_first, msb_first")
  layers = _ints("num_layers", NUM_LAYERS.value, 1)
  seeds = _ints("seeds", SEEDS.value, 0)
  orders = BIT_ORDERS.value if run_flags.TASK.value == "binary_addition" else ["lsb_first"]
  probe = run_flags.run_config(MODELS.value[0], orders[0], layers[0], seeds[0])
  root = WORKDIR.value or f"runs/compare-{probe.task}-T{probe.seq_len}"
  groups = []
  for model, n, order in itertools.product(MODELS.value, layers, orders):
    label = model + (f" x{n}" if len(layers) > 1 or n > 1 else "")
    label += f" {order}" if len(orders) > 1 else ""
    runs = []
    for seed in seeds:
      name = label.replace(" ", "-") + f"-s{seed}"
      cfg = run_flags.run_config(model, order, n, seed, os.path.join(root, name))
      task = experiment.validate(cfg)
      runs.append(cfg)
    groups.append((label, runs))
  return root, groups, experiment.main_metric(task)


def main(argv):
  def compare():
    root, groups, metric = configurations()
    curves, workdirs = {}, []
    for label, runs in groups:
      curves[label] = []
      for cfg in runs:
        run_flags.log(f"== {label}, seed {cfg.seed}: {cfg.workdir}")
        curves[label].append(experiment.run(cfg, log=run_flags.log))
        workdirs.append(cfg.workdir)
    first = groups[0][1][0]
    target = report.threshold(first.task, first.seq_len)
    plots.compare_curves(curves, os.path.join(root, "compare.png"),
                         f"{first.task} (T={first.seq_len}, H={first.hidden_size})", metric,
                         threshold=target[2] if target[0] == metric else None)
    table = report.summary_table(workdirs)
    checkpoint.write_atomic(os.path.join(root, "results.md"), table + "\n")
    run_flags.log(table)
    run_flags.log(f"figure: {os.path.join(root, 'compare.png')}")

  run_flags.run_or_exit(argv, compare)

if __name__ == "__main__":
  app.run(main)
