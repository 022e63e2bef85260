"""Train a recurrent net on a task: `python -m launch.main --model=rwa --task=adding --seq_len=1000`.

Intentionally kept short: shared flags are in launch/flags.py, the run loop in
seqjax/experiment.py.
"""

from absl import app, flags

from launch import flags as run_flags
from seqjax import cells, experiment

MODEL = flags.DEFINE_enum("model", "rwa", list(cells.NAMES), "Recurrent cell.")
BIT_ORDER = flags.DEFINE_enum("bit_order", "lsb_first", ["lsb_first", "msb_first"],
                              "binary_addition: which end of the numbers comes first.")
NUM_LAYERS = flags.DEFINE_integer("num_layers", 1, "Stacked recurrent layers.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for params, data stream and eval set.")
WORKDIR = flags.DEFINE_string("workdir", None,
                              "Output folder (default: runs/<task>-<model>-T<seq_len>-s<seed>).")


def main(argv):
  def train():
    cfg = run_flags.run_config(MODEL.value, BIT_ORDER.value, NUM_LAYERS.value, SEED.value,
                               WORKDIR.value)
    experiment.run(cfg, log=run_flags.log)

  run_flags.run_or_exit(argv, train)


if __name__ == "__main__":
  app.run(main)
