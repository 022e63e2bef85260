"""A cell plus a linear readout, read at every step or at each sequence's last valid step.

params = {"cell": <the cell's params>, "readout": {"W": [H, O], "b": [O]}}
"""

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, bias
from seqjax.scanning import default_unroll, scan

_readout_init = jax.nn.initializers.lecun_normal()

READOUTS = ("linear",)  # models.init's `readout` choices


def init(cell: Cell, key, input_size: int, output_size: int, readout: str = "linear"):
  if readout not in READOUTS:
    raise ValueError(f"unknown readout {readout!r}; allowed: {', '.join(READOUTS)}")
  kc, kr = jax.random.split(key)
  return {"cell": cell.init(kc, input_size),
          "readout": {"W": _readout_init(kr, (cell.hidden_size, output_size), jnp.float32),
                      "b": jnp.zeros((output_size,), jnp.float32)}}


def readout(params, h):
  """h [*batch, H] -> outputs [*batch, O]."""
  y = h @ params["readout"]["W"]
  return y + bias(params["readout"]["b"], y)


def apply(cell: Cell, params, xs, lengths=None, per_step=True, unroll=None, remat=False):
  """xs [B, T, F] -> outputs [B, T, O] (per_step) or [B, O] at each sequence's last valid step.

  A sequence of length 0 has no last step: its outputs are the readout of h = 0 (the bias).
  """
  _, hs = scan(cell, params["cell"], xs, lengths=lengths, unroll=unroll, remat=remat)
  if per_step:
    return readout(params, hs)
  if lengths is None:
    return readout(params, hs[..., -1, :])
  last = jnp.maximum(lengths - 1, 0)
  h_last = jnp.take_along_axis(hs, last[:, None, None], axis=1)[:, 0]
  h_last = jnp.where((lengths > 0)[:, None], h_last, jnp.zeros((), h_last.dtype))
  return readout(params, h_last)


def closed_loop(cell: Cell, params, xs, prefix_len: int, feedback_channel: int = 0,
                teacher_prob=0.0, key=None, unroll: int = None):
  """Stateful prediction: the model feeds its own previous prediction back as input.

  xs [*batch, T, F] holds the observed inputs: at step t < prefix_len the input is xs[..., t, :]
  as given; from prefix_len on, channel `feedback_channel` is replaced by the model's own
  prediction from step t-1 (the other channels, e.g. exogenous series, are taken from xs).
  Gradients flow through the fed-back predictions (back-propagation through the loop).
  With `teacher_prob` p > 0 (and a `key`), each sequence takes the true value instead of its own
  prediction with probability p at each step past the prefix (scheduled sampling); p = 1 is
  teacher forcing, p = 0 free running.

  Returns predictions [*batch, T, O]; on the prefix they equal the teacher-forced outputs.
  """
  batch_shape, T = xs.shape[:-2], xs.shape[-2]
  if not 1 <= prefix_len <= T:
    raise ValueError(f"prefix_len must be in [1, T={T}], got {prefix_len}")
  if key is None:
    key = jax.random.key(0)
  state = cell.initial_state(params["cell"], batch_shape)
  xs_T = jnp.moveaxis(xs, -2, 0)
  coins = jax.random.uniform(key, (T, *batch_shape)) < teacher_prob

  def body(carry, inputs):
    state, prev_pred = carry
    t, x_t, use_true = inputs
    fed = jnp.where((t < prefix_len) | use_true, x_t[..., feedback_channel], prev_pred)
    x_t = x_t.at[..., feedback_channel].set(fed)
    state, h = cell.step(params["cell"], state, x_t)
    y = readout(params, h)
    return (state, y[..., 0].astype(x_t.dtype)), y

  init_pred = jnp.zeros(batch_shape, xs.dtype)
  _, ys = jax.lax.scan(body, (state, init_pred), (jnp.arange(T), xs_T, coins),
                       unroll=default_unroll() if unroll is None else unroll)
  return jnp.moveaxis(ys, 0, -2)
