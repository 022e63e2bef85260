"""Look inside trained runs: `python -m launch.inspect --workdir=runs/...` (one run) or
`--workdirs=a,b,c` (several runs of one task, drawn side by side on the same sequences).

Writes:
- states.png in the run's folder (with --workdirs: states_side_by_side.png in the first run's
  folder; --output to choose): per run (a column) and held-out sequence (a row), the --top_units
  units that move most at the task's landmarks (adding: the markers; copy: the shown symbols and
  the delimiter; other tasks: every step), ranked by mean |h_t − h_{t−1}| there, as a heatmap
  units x time with the landmarks drawn; under it the RWA's share of each step in n/d at the last
  step (mean over the shown units), or the attention readout's weights alpha_{T,i} of the last
  step, or for other cells the shown units' mean |Δh|;
- per run, seq_length: accuracy_by_length.png and accuracy_by_length.md (accuracy against the
  true length; the task is hardest near T/2);
- per run, series tasks: series.png (true vs teacher-forced vs free-running predictions).
The work is `seqjax.introspect.inspect_runs`; this module only reads the flags.
"""

import sys

from absl import flags

from . import _cli

from seqjax import checkpoint, experiment, introspect
from seqjax.settings import check_int

WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's folder.")
WORKDIRS = flags.DEFINE_list("workdirs", None,
                             "Several trained runs of one task (same T), drawn side by side.")
OUTPUT = flags.DEFINE_string("output", None, "Path of the states picture (default: states.png "
                             "in the run's folder; states_side_by_side.png in the first of "
                             "--workdirs).")
NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 4, "Sequences to draw.")
CHECKPOINT = flags.DEFINE_enum("checkpoint", "last", ["last", "best"],
                               "Which state to look at: the last (checkpoint.msgpack) or the one "
                               "at the best evaluation (checkpoint_best.msgpack).")
TOP_UNITS = flags.DEFINE_integer("top_units", 16, "Units drawn per run (those that move most).")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if (WORKDIR.value is None) == (not WORKDIRS.value):
    sys.exit("error: give exactly one of --workdir=RUN and --workdirs=RUN1,RUN2,...")
  workdirs = [WORKDIR.value] if WORKDIR.value is not None else WORKDIRS.value
  if len(set(workdirs)) != len(workdirs):
    sys.exit(f"error: --workdirs={','.join(workdirs)}: a run is listed twice")
  try:
    check_int("num_examples", NUM_EXAMPLES.value)
    check_int("top_units", TOP_UNITS.value)
    _, written = introspect.inspect_runs(workdirs, OUTPUT.value, NUM_EXAMPLES.value,
                                         TOP_UNITS.value, which=CHECKPOINT.value)
  except (experiment.RunError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {', '.join(written)}")


def cli():
  """The console script (seqjax-inspect)."""
  _cli.start(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
