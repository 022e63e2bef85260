"""rda with another initial forget-gate bias b_f, for the launcher: how BUILD_NOTES.md chose
b_f's default (PYTHONPATH=docs/examples python -m launch.main --model=forget_bias:rda_b3 ...)."""
from seqjax import cells


def _rda(b_f):
  return lambda hidden_size, dtype=None: cells.rda(hidden_size, dtype=dtype, forget_bias=b_f)


rda_b1, rda_b3, rda_b5 = _rda(1.0), _rda(3.0), _rda(5.0)
