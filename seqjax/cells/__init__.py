"""Recurrent cells as pure functions: `cells.rwa(H)`, `cells.get("rwa", hidden_size=H)`."""

from seqjax.cells.base import Cell, autodiff_backward
from seqjax.cells.gru import GRUState, gru
from seqjax.cells.lstm import LSTMState, lstm
from seqjax.cells.rnn import RNNState, rnn
from seqjax.cells.rwa import RWAState, rwa
from seqjax.cells.stack import stack

REGISTRY = {"rnn": rnn, "lstm": lstm, "gru": gru, "rwa": rwa}
NAMES = tuple(REGISTRY)


def get(name: str, hidden_size: int, num_layers: int = 1, dtype=None) -> Cell:
  """The cell called `name`; with num_layers > 1, that many of them stacked. dtype: the
  matmul operand precision (None: the params'; jnp.bfloat16: mixed precision, float32 state)."""
  if name not in REGISTRY:
    raise ValueError(f"unknown cell {name!r}; allowed: {', '.join(NAMES)}")
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
  cell = REGISTRY[name](hidden_size, dtype=dtype)
  return cell if num_layers == 1 else stack([cell] * num_layers)


__all__ = ["Cell", "autodiff_backward", "get", "stack", "rnn", "lstm", "gru", "rwa", "NAMES",
           "RNNState", "LSTMState", "GRUState", "RWAState"]
