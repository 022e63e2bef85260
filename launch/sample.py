"""Text from a trained text run, written to stdout as it is made:

  python -m launch.sample --workdir=RUN [--checkpoint=best|last] --prime=TEXT --length=N \
      --temperature=T --seed=S

The prime is fed through the model (its state carried), then each next byte is drawn from the
softmax of the logits / temperature and fed back. The same arguments give the same text. The work
is `seqjax.sampling`; this module only reads the flags.
"""

import sys

from absl import flags

from . import _cli
from seqjax import checkpoint, experiment, sampling
from seqjax.settings import check, check_int

WORKDIR = flags.DEFINE_string("workdir", None, "A trained text run's folder.")
CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "last"],
                               "Which state: the one at the best evaluation "
                               "(checkpoint_best.msgpack) or the last (checkpoint.msgpack).")
PRIME = flags.DEFINE_string("prime", "\n", "Text the model reads first (its bytes must be in the "
                            "run's vocabulary).")
LENGTH = flags.DEFINE_integer("length", 500, "Bytes to generate after the prime.")
TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature (> 0; lower: more "
                                 "likely bytes).")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws.")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if WORKDIR.value is None:
    sys.exit("error: --workdir: give a trained text run's folder")
  try:
    check_int("length", LENGTH.value, 0)
    check_int("seed", SEED.value, 0)
    check(TEMPERATURE.value > 0, "temperature", TEMPERATURE.value, "must be a number > 0")
    model = sampling.load(WORKDIR.value, CHECKPOINT.value)
    prime = PRIME.value.encode("utf-8")
    sampling.check_prime(model, prime)
    out = sys.stdout.buffer
    out.write(prime)
    for byte in sampling.generate(model, prime, LENGTH.value, TEMPERATURE.value, SEED.value):
      out.write(byte)
      out.flush()
    out.write(b"\n")
    out.flush()
  except (experiment.RunError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")


def cli():
  """The console script (seqjax-sample)."""
  _cli.start(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
