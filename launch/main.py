"""Train a recurrent net on a task: `python -m launch.main --model=rwa --task=adding --seq_len=1000`.

`--seeds=0,1,2` and/or `--learning_rates=0.001,0.003` train every (seed, learning rate) run at once,
as one compiled program, each run in its own subfolder of --workdir.

Intentionally kept short: the flags are built from seqjax/settings.py (launch/flags.py), the run
loop is seqjax/experiment.py.
"""

import sys

from . import _cli, flags as run_flags
from seqjax import experiment

run_flags.define_settings()


def main(argv):
  run_flags.run_or_exit(argv, lambda: experiment.run(run_flags.settings(), log=run_flags.log,
                                                     argv=sys.argv))


def cli():
  """The console script (seqjax-train)."""
  _cli.start(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
