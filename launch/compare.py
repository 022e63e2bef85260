"""Train several configurations through launch.main's code path and compare them in one figure.

  python -m launch.compare --task=adding --seq_len=100 --models=rwa,lstm --seeds=0,1,2
  python -m launch.compare --task=binary_addition --models=lstm --bit_orders=lsb_first,msb_first
  python -m launch.compare --task=adding --models=rwa,lstm --num_layers=1,2 --learning_rates=1e-3,3e-3

Each (model, layers, bit order, readout) configuration trains its runs (--seeds x
--learning_rates) at once, as one program, in its own folder under --workdir (default
runs/compare-<task>[-<dataset>]-T<T>), one subfolder per run, so a comparison resumes like a
run. Then `compare.png` (eval metric vs step: mean and min-max band over seeds) and `results.md`
(steps to the paper's threshold, final metrics, wall time; from the runs' metrics) are written
there. All other flags are launch.main's.
"""

import dataclasses
import itertools
import os
import sys

from absl import flags

from . import _cli, flags as run_flags
from seqjax import cells, checkpoint, experiment, models, plots, report
from seqjax.settings import folder_name
from seqjax.tasks.binary_addition import BIT_ORDERS as ORDERS

run_flags.define_settings(skip=("model", "bit_order", "num_layers", "readout"))
MODELS = flags.DEFINE_list("models", ["rwa", "lstm"],
                          f"Cells to compare: {', '.join(cells.NAMES)}, or MODULE:NAME (a cell "
                          "factory of yours).")
BIT_ORDERS = flags.DEFINE_list("bit_orders", ["lsb_first"],
                               f"binary_addition: {' and/or '.join(ORDERS)}.")
NUM_LAYERS = flags.DEFINE_list("num_layers", ["1"], "Layer counts to compare, e.g. 1,2.")
READOUTS = flags.DEFINE_list("readouts", ["linear"],
                             f"Readouts to compare: {', '.join(models.READOUTS)}.")


def _distinct(flag: str, values) -> tuple:
  """A repeated item would make two groups share one folder (the second resuming the first)."""
  for v in values:
    if values.count(v) > 1:
      raise experiment.RunError(f"--{flag}={','.join(map(str, values))}: {v} is listed twice")
  return values


def configurations():
  """(root, [(label, group Settings)], metric) for every model x layers x bit order x readout;
  every setting checked before anything runs."""
  names = _distinct("models", run_flags.parse_list("models", MODELS.value))
  for name in names:  # each one's factory is tried with its group's settings by validate below
    try:
      cells.factory(name)
    except ValueError as e:
      raise experiment.RunError(f"--models={','.join(names)}: {e}") from None
  orders = _distinct("bit_orders", run_flags.parse_list("bit_orders", BIT_ORDERS.value,
                                                        choices=ORDERS))
  layers = _distinct("num_layers", run_flags.parse_list("num_layers", NUM_LAYERS.value, int,
                                                        minimum=1))
  readouts = _distinct("readouts", run_flags.parse_list("readouts", READOUTS.value,
                                                        choices=models.READOUTS))
  base = run_flags.settings()
  if not base.is_group:  # a comparison is always of groups (one seed at least)
    base = dataclasses.replace(base, seeds=(base.seed,), seed=None)
  dataset = f"-{base.task_options['dataset']}" if "dataset" in base.task_options else ""
  root = run_flags.HOLDERS["workdir"].value or \
      f"runs/compare-{folder_name(base.task)}{dataset}-T{base.seq_len}"
  groups = []
  for model, n, order, readout in itertools.product(names, layers, orders, readouts):
    label = model + (f" x{n}" if len(layers) > 1 or n > 1 else "")
    label += f" {order}" if len(orders) > 1 else ""
    label += f" {readout}" if len(readouts) > 1 else ""
    folder = os.path.join(root, folder_name(label.replace(" ", "-")))
    # --bit_orders given, or a task taking bit_order: each group's own (refused where not taken)
    options = dict(base.task_options, bit_order=order) if BIT_ORDERS.present or \
        "bit_order" in base.task_options else base.task_options
    group = dataclasses.replace(base, model=model, num_layers=n, task_options=options,
                                readout=readout, workdir=folder).resolved()
    task = experiment.validate(group)
    groups.append((label, group))
  return root, groups, experiment.main_metric(task)


def main(argv):
  def compare():
    root, groups, metric = configurations()
    curves, workdirs, failed = {}, [], []
    for label, group in groups:
      run_flags.log(f"== {label}: {group.workdir}")
      try:
        results = experiment.run(group, log=run_flags.log, argv=sys.argv)
      except experiment.Diverged as e:
        failed.append(f"{label}: {e}")
        results = {r.workdir: report.read_run(r.workdir)[1] for r in group.runs()}
      for run in group.runs():
        key = label + (f" lr {run.learning_rate:g}" if group.learning_rates else "")
        curves.setdefault(key, []).append(report.evaluations(results[run.workdir]))
        workdirs.append(run.workdir)
    first = groups[0][1]
    target = report.threshold(first.task, first.seq_len)
    # the data settings the groups share (bit orders may differ between them)
    title = first.task if first.task == "binary_addition" else report.task_label(first.recorded())
    plots.compare_curves(curves, os.path.join(root, "compare.png"),
                         f"{title} (T={first.seq_len}, H={first.hidden_size})", metric,
                         threshold=target[2] if target[0] == metric else None)
    table = report.summary_table(workdirs)
    if len(workdirs) > len(groups):  # several seeds per configuration: their spread too
      table += "\n\n" + report.seed_table(workdirs, [metric])
    checkpoint.write_atomic(os.path.join(root, "results.md"), table + "\n")
    run_flags.log(table)
    run_flags.log(f"figure: {os.path.join(root, 'compare.png')}")
    if failed:
      raise experiment.RunError("; ".join(failed))

  run_flags.run_or_exit(argv, compare)


def cli():
  """The console script (seqjax-compare)."""
  _cli.start(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
