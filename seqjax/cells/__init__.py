"""Recurrent cells as pure functions: `cells.rwa(H)`, `cells.get("rwa", hidden_size=H)`;
rda is the rwa with a forget gate; the min cells (min_rwa, min_rda, min_gru, min_lstm) read x_t
only in their gates and run in parallel over time."""

from seqjax.cells.base import Cell, FastLoop, positive_int
from seqjax.cells.gru import GRUState, gru
from seqjax.cells.lstm import LSTMState, lstm
from seqjax.cells.min_gru import MinGRUState, min_gru
from seqjax.cells.min_lstm import MinLSTMState, min_lstm
from seqjax.cells.min_rda import MinRDAState, min_rda
from seqjax.cells.min_rwa import MinRWAState, min_rwa
from seqjax.cells.rda import RDAState, rda
from seqjax.cells.rnn import RNNState, rnn
from seqjax.cells.rwa import RWAState, rwa
from seqjax.cells.stack import stack

REGISTRY = {"rnn": rnn, "lstm": lstm, "gru": gru, "rwa": rwa, "rda": rda,
            "min_rwa": min_rwa, "min_rda": min_rda, "min_gru": min_gru, "min_lstm": min_lstm}
NAMES = tuple(REGISTRY)


def get(name: str, hidden_size: int, num_layers: int = 1, dtype=None) -> Cell:
  """The cell called `name`; with num_layers > 1, that many of them stacked. dtype: the
  matmul operand precision (None: the params'; jnp.bfloat16: mixed precision, float32 state)."""
  if name not in REGISTRY:
    raise ValueError(f"unknown cell {name!r}; allowed: {', '.join(NAMES)}")
  num_layers = positive_int("num_layers", num_layers)
  cell = REGISTRY[name](hidden_size, dtype=dtype)
  return cell if num_layers == 1 else stack([cell] * num_layers)


def autodiff_backward(cell: Cell) -> Cell:
  """The same cell without a hand-written backward pass: `seqjax.scan` then differentiates it
  with JAX's own rules, which also gives forward mode (`jax.jvp`, `jax.jacfwd`)."""
  fast = cell.fast_loop
  if fast is None or fast.step is not cell.step:
    return cell  # scan runs its step with JAX's rules already
  if cell.layers:
    return stack([autodiff_backward(c) for c in cell.layers])
  return cell if fast.forward_mode else cell._replace(fast_loop=None)


__all__ = ["Cell", "FastLoop", "autodiff_backward", "get", "stack", "NAMES",
           "rnn", "lstm", "gru", "rwa", "rda", "min_rwa", "min_rda", "min_gru", "min_lstm",
           "RNNState", "LSTMState", "GRUState", "RWAState", "RDAState", "MinRWAState",
           "MinRDAState", "MinGRUState", "MinLSTMState"]
