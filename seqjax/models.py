"""A cell plus a readout, read at every step or at each sequence's last valid step.

Two readouts (`READOUTS`), told apart by their param keys:

  linear:     y_t = h_t W + b
              params = {"cell": ..., "readout": {"W": [H, O], "b": [O]}}
  attention:  causal single-head attention over the cell's own hidden states,
                q_t = h_t W_q,  k_i = h_i W_k,  v_i = h_i W_v                (no biases)
                alpha_{t,i} = softmax over the valid steps i <= t of q_t . k_i / sqrt(H)
                c_t = sum_i alpha_{t,i} v_i
                y_t = [h_t, c_t] W + b
              params = {"cell": ..., "readout": {"W_q", "W_k", "W_v": [H, H], "W": [2H, O],
                                                 "b": [O]}}

Cost of the attention readout: read at every step it builds [B, T, T] scores, O(T^2) time and
memory per sequence (fine at T = 1000 on a GPU, heavy beyond); read at the last valid step only
one query row is needed, O(T).
"""

import math

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, bias
from seqjax.scan import default_unroll, scan

_readout_init = jax.nn.initializers.lecun_normal()

READOUTS = ("linear", "attention")  # models.init's `readout` choices


def init(cell: Cell, key, input_size: int, output_size: int, readout: str = "linear"):
  if readout not in READOUTS:
    raise ValueError(f"unknown readout {readout!r}; allowed: {', '.join(READOUTS)}")
  kc, kr = jax.random.split(key)
  H = cell.hidden_size
  if readout == "linear":
    head = {"W": _readout_init(kr, (H, output_size), jnp.float32),
            "b": jnp.zeros((output_size,), jnp.float32)}
  else:
    kq, kk, kv, kw = jax.random.split(kr, 4)
    head = {"W_q": _readout_init(kq, (H, H), jnp.float32),
            "W_k": _readout_init(kk, (H, H), jnp.float32),
            "W_v": _readout_init(kv, (H, H), jnp.float32),
            "W": _readout_init(kw, (2 * H, output_size), jnp.float32),
            "b": jnp.zeros((output_size,), jnp.float32)}
  return {"cell": cell.init(kc, input_size), "readout": head}


def is_attention(params) -> bool:
  """Whether `params` carry the attention readout (else the linear one)."""
  return "W_q" in params["readout"]


def readout(params, h):
  """The linear readout: h [*batch, H] -> outputs [*batch, O]."""
  y = h @ params["readout"]["W"]
  return y + bias(params["readout"]["b"], y)


def _attention_head(params, h, c):
  """[h, c] W + b without building the concatenation: h, c [*batch, H] -> [*batch, O]."""
  W = params["readout"]["W"]
  H = h.shape[-1]
  y = h @ W[:H] + c @ W[H:]
  return y + bias(params["readout"]["b"], y)


def _attention_per_step(params, hs, lengths):
  """hs [B, T, H] (0 at padded steps) -> y [B, T, O]; [B, T, T] scores."""
  r = params["readout"]
  T, H = hs.shape[-2], hs.shape[-1]
  q, k, v = hs @ r["W_q"], hs @ r["W_k"], hs @ r["W_v"]
  scores = jnp.einsum("...th,...sh->...ts", q, k) / math.sqrt(H)
  t, s = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
  allowed = s <= t  # [T, T]
  if lengths is not None:
    # Key 0 stays allowed even when padded so that every row has one finite score (no 0/0);
    # such rows belong to padded queries (or length 0), whose outputs are replaced by b.
    key_ok = (s[None] < lengths[:, None, None]) | (s[None] == 0)  # [B, 1, T]
    allowed = allowed[None] & key_ok
  alpha = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  y = _attention_head(params, hs, alpha @ v)
  if lengths is None:
    return y
  valid = jnp.arange(T)[None, :] < lengths[:, None]  # [B, T]
  return jnp.where(valid[..., None], y, bias(params["readout"]["b"], y))


def _attention_query(params, h_last):
  """r [B, H] such that h_i . r = q . k_i / sqrt(H) for the query q = h_last W_q."""
  rd = params["readout"]
  return (h_last @ rd["W_q"]) @ rd["W_k"].T / math.sqrt(h_last.shape[-1])


def _attention_last(params, hs, h_last, lengths):
  """The output at each sequence's last valid step: one query row, O(T). hs [B, T, H]."""
  T = hs.shape[-2]
  scores = jnp.einsum("bth,bh->bt", hs, _attention_query(params, h_last))
  if lengths is None:
    alpha = jax.nn.softmax(scores, axis=-1)
  else:
    key_ok = (jnp.arange(T)[None] < lengths[:, None]) | (jnp.arange(T)[None] == 0)
    alpha = jax.nn.softmax(jnp.where(key_ok, scores, -jnp.inf), axis=-1)
  c = jnp.einsum("bt,bth->bh", alpha, hs) @ params["readout"]["W_v"]
  return _finish_last(params, _attention_head(params, h_last, c), lengths)


def _finish_last(params, y, lengths):
  """Length-0 sequences have no last step: their output is b."""
  if lengths is None:
    return y
  return jnp.where((lengths > 0)[:, None], y, bias(params["readout"]["b"], y))


def _select_last(hs, lengths):
  """hs [B, T, H] -> h at each sequence's last valid step [B, H] (0 for length 0)."""
  if lengths is None:
    return hs[..., -1, :]
  last = jnp.maximum(lengths - 1, 0)
  h_last = jnp.take_along_axis(hs, last[:, None, None], axis=1)[:, 0]
  return jnp.where((lengths > 0)[:, None], h_last, jnp.zeros((), h_last.dtype))


def apply(cell: Cell, params, xs, lengths=None, per_step=True, unroll=None, remat=False):
  """xs [B, T, F] -> outputs [B, T, O] (per_step) or [B, O] at each sequence's last valid step.

  Takes either readout's params. A sequence of length 0 has no last step: its output is b (the
  readout of h = 0); so are the outputs at padded steps. The attention readout read per step
  costs O(T^2) per sequence ([B, T, T] scores); at the last step O(T).
  """
  attention = is_attention(params)
  _, hs = scan(cell, params["cell"], xs, lengths=lengths, unroll=unroll, remat=remat)
  if per_step:
    return _attention_per_step(params, hs, lengths) if attention else readout(params, hs)
  h_last = _select_last(hs, lengths)
  if attention:
    return _attention_last(params, hs, h_last, lengths)
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
  teacher forcing, p = 0 free running. Linear readout only.

  Returns predictions [*batch, T, O]; on the prefix they equal the teacher-forced outputs.
  """
  if is_attention(params):
    raise ValueError("closed_loop takes the linear readout only; got attention readout params")
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
