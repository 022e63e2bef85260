"""Recurrent cells as pure functions: `cells.rwa(H)`, `cells.get("rwa", hidden_size=H)`;
rda is the rwa with a forget gate; the min cells (min_rwa, min_rda, min_gru, min_lstm) read x_t
only in their gates and run in parallel over time. `cells.get` also takes a name given to
`cells.register` or `MODULE:NAME` (a cell factory of yours)."""

from seqjax import _plugins

from seqjax.cells.base import Cell, FastLoop, positive_int
from seqjax.cells.base import LoopParts, UpdateBackward, fused_step
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
NAMES = tuple(REGISTRY)  # the built-in cells
_REGISTERED = {}  # name -> factory, from `register`


def register(name: str, factory) -> None:
  """Makes `name` a cell of this process, like a built-in: `get(name, ...)`,
  `Settings(model=name)`. factory(hidden_size[, dtype=...]) -> Cell, as for `MODULE:NAME`."""
  _plugins.check_register(name, factory, NAMES)
  _REGISTERED[name] = factory


def factory(name: str):
  """The factory `get` calls for `name` (a built-in, registered or MODULE:NAME); ValueError
  naming what is wrong (a `MODULE:NAME` that cannot be used: `_plugins.PluginError`)."""
  if name in REGISTRY:
    return REGISTRY[name]
  if name in _REGISTERED:
    return _REGISTERED[name]
  if _plugins.is_spec(name):
    return _plugins.load(name)[1]
  raise ValueError(f"unknown cell {name!r}; allowed: {', '.join(NAMES + tuple(_REGISTERED))}, "
                   "or MODULE:NAME (a cell factory of yours)")


def get(name: str, hidden_size: int, num_layers: int = 1, dtype=None) -> Cell:
  """The cell called `name`; with num_layers > 1, that many of them stacked. dtype: the
  matmul operand precision (None: the params'; jnp.bfloat16: mixed precision, float32 state).
  A factory of yours is called factory(hidden_size), plus dtype=dtype when dtype is not None."""
  make = factory(name)
  num_layers = positive_int("num_layers", num_layers)
  if name in REGISTRY:
    cell = make(hidden_size, dtype=dtype)
  else:
    cell = _plugins.call(make, "Cell", Cell, hidden_size,
                         **({} if dtype is None else dict(dtype=dtype)))
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


__all__ = ["Cell", "FastLoop", "LoopParts", "UpdateBackward", "autodiff_backward", "factory",
           "fused_step", "get", "register", "stack", "NAMES",
           "rnn", "lstm", "gru", "rwa", "rda", "min_rwa", "min_rda", "min_gru", "min_lstm",
           "RNNState", "LSTMState", "GRUState", "RWAState", "RDAState", "MinRWAState",
           "MinRDAState", "MinGRUState", "MinLSTMState"]
