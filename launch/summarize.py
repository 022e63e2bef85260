"""Print a markdown table of finished runs: `python -m launch.summarize runs/a runs/b ...`.

Columns: settings, steps to the paper's threshold for the task (rolling mean of 5 evaluations),
final eval metrics (--metrics=accuracy,sequence_accuracy to choose), wall time.
"""

import os
import sys

from absl import app, flags

from seqjax import report

METRICS = flags.DEFINE_list("metrics", None, "eval metrics to show (default: the task's).")


def main(argv):
  workdirs = argv[1:]
  missing = [w for w in workdirs if not os.path.exists(os.path.join(w, "metrics.jsonl"))]
  if not workdirs or missing:
    sys.exit(f"error: give workdirs of finished runs; no metrics.jsonl in {missing or '(none given)'}")
  print(report.summary_table(workdirs, METRICS.value))


if __name__ == "__main__":
  app.run(main)
