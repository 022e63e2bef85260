"""Print a markdown table of finished runs: `python -m launch.summarize runs/a runs/b ...`.

Columns: settings, steps to the paper's threshold for the task (rolling mean of 5 evaluations),
final eval metrics (--metrics=accuracy,sequence_accuracy to choose), wall time. With
--over_seeds: one row per configuration, the final metrics' mean ± sample sd (n − 1) over seeds. With
--figure=PATH: also draw the runs' learning curves (one task) on one figure.
"""

import os
import sys

from absl import flags

from . import _cli

from seqjax import plots, report

METRICS = flags.DEFINE_list("metrics", None, "eval metrics to show (default: the task's).")
OVER_SEEDS = flags.DEFINE_boolean("over_seeds", False,
                                  "One row per configuration: mean ± sample sd of the final metrics "
                                  "over runs that differ only in --seed (needs --metrics).")
FIGURE = flags.DEFINE_string("figure", None, "Also draw the runs' eval curves into this PNG "
                             "(runs of one task; the paper's threshold dotted).")


def main(argv):
  try:
    _summarize(argv[1:])
  except report.RunError as e:
    sys.exit(f"error: {e}")


def _summarize(workdirs):
  missing = [w for w in workdirs if not os.path.exists(os.path.join(w, "metrics.jsonl"))]
  if not workdirs or missing:
    sys.exit(f"error: give workdirs of finished runs; no metrics.jsonl in {missing or '(none given)'}")
  if OVER_SEEDS.value:
    if not METRICS.value:
      sys.exit("error: --over_seeds needs --metrics (e.g. --metrics=mse,free_run_mse)")
    print(report.seed_table(workdirs, METRICS.value))
  else:
    print(report.summary_table(workdirs, METRICS.value))
  if FIGURE.value:
    runs = [report.read_run(w) for w in workdirs]
    tasks = {(report.task_label(c), c["task"], c["seq_len"]) for c, _, _ in runs}
    if len(tasks) != 1:
      sys.exit("error: --figure needs runs of one task, length and data; got "
               + "; ".join(f"{label} T={T}" for label, _, T in sorted(tasks)))
    (label, task, seq_len), = tasks
    rule_metric, _, value = report.threshold(task, seq_len)
    metric = (METRICS.value or [rule_metric or "loss"])[0]
    plots.compare_curves(report.curves_by_configuration(workdirs), FIGURE.value,
                         f"{label} (T={seq_len})", metric,
                         threshold=value if metric == rule_metric else None)
    print(f"figure: {FIGURE.value}")


def cli():
  """The console script (seqjax-summarize)."""
  _cli.start(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
