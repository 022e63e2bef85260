"""Train a recurrent net on a task: `python -m launch.main --model=rwa --task=adding --seq_len=1000`.

Intentionally kept short: flags are in launch/flags.py, the run loop in seqjax/experiment.py.
"""

import sys

import jax
from absl import app

from launch import flags as run_flags
from seqjax import checkpoint, experiment


def _log(line):
  if jax.process_index() == 0:
    print(line, flush=True)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; all settings are --flags (see --help)")
  try:
    if run_flags.DISTRIBUTED.value:
      jax.distributed.initialize(coordinator_address=run_flags.COORDINATOR.value,
                                 num_processes=run_flags.NUM_PROCESSES.value,
                                 process_id=run_flags.PROCESS_ID.value)
    experiment.run(run_flags.run_config(), log=_log)
  except (experiment.RunError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
