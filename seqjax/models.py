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

from seqjax.bidirectional_layer import Bidirectional
from seqjax.cells.base import Cell, bias
from seqjax.scanning import _check_lengths, default_unroll, scan

_readout_init = jax.nn.initializers.lecun_normal()

READOUTS = ("linear", "attention")  # models.init's `readout` choices


def init(cell: Cell, key, input_size: int, output_size: int, readout: str = "linear"):
  if readout not in READOUTS:
    raise ValueError(f"unknown readout {readout!r}; allowed: {', '.join(READOUTS)}")
  if isinstance(cell, Bidirectional) and readout != "linear":
    raise ValueError("models.init: a Bidirectional takes the linear readout only (the "
                     "attention readout attends causally, over one direction's states)")
  kc, kr = jax.random.split(key)
  H = cell.hidden_size  # a Bidirectional's: H_fwd + H_bwd
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
  if is_attention(params):
    raise ValueError("models.readout is the linear readout; the attention readout reads the "
                     "whole sequence: use models.apply")
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


def last_step_attention(params, hs, lengths=None):
  """alpha [B, T]: the attention readout's weights at each sequence's last valid step L over
  its steps i (softmax_i of q_L . k_i / sqrt(H) over i < L; 0 at padded steps, and a row of 0
  for length 0, which has no last step). hs [B, T, H], 0 at padded steps."""
  T = hs.shape[-2]
  scores = jnp.einsum("bth,bh->bt", hs, _attention_query(params, _select_last(hs, lengths)))
  if lengths is None:
    return jax.nn.softmax(scores, axis=-1)
  # Key 0 stays allowed even when padded so that every row has one finite score (no 0/0 and no
  # NaN gradient); length-0 rows are then zeroed.
  key_ok = (jnp.arange(T)[None] < lengths[:, None]) | (jnp.arange(T)[None] == 0)
  alpha = jax.nn.softmax(jnp.where(key_ok, scores, -jnp.inf), axis=-1)
  return jnp.where((lengths > 0)[:, None], alpha, jnp.zeros((), alpha.dtype))


def _attention_last(params, hs, h_last, lengths):
  """The output at each sequence's last valid step: one query row, O(T). hs [B, T, H]."""
  c = jnp.einsum("bt,bth->bh", last_step_attention(params, hs, lengths), hs) \
      @ params["readout"]["W_v"]
  return _finish_last(params, _attention_head(params, h_last, c), lengths)


def _finish_last(params, y, lengths):
  """Length-0 sequences have no last step: their output is b."""
  if lengths is None:
    return y
  return jnp.where((lengths > 0)[:, None], y, bias(params["readout"]["b"], y))


def _apply_bidirectional(bi, params, xs, lengths, per_step, unroll, remat):
  """`apply` over a Bidirectional (linear readout): per step, each step's concatenated states;
  at the last step, the forward direction's state after the last valid step with the reverse
  direction's after step 0 (torch's h_n of the top layer)."""
  if is_attention(params):
    raise ValueError("models.apply: a Bidirectional takes the linear readout only (the "
                     "attention readout attends causally, over one direction's states)")
  _, hs = bi.apply(params["cell"], xs, lengths, unroll=unroll, remat=remat)
  if per_step:
    return readout(params, hs)
  H = bi.cell_fwd.hidden_size
  return readout(params, jnp.concatenate([_select_last(hs[..., :H], lengths), hs[..., 0, H:]],
                                         axis=-1))


def _select_last(hs, lengths):
  """hs [B, T, H] -> h at each sequence's last valid step [B, H] (0 for length 0)."""
  if lengths is None:
    return hs[..., -1, :]
  last = jnp.maximum(lengths - 1, 0)
  h_last = jnp.take_along_axis(hs, last[:, None, None], axis=1)[:, 0]
  return jnp.where((lengths > 0)[:, None], h_last, jnp.zeros((), h_last.dtype))


def apply(cell: Cell, params, xs, lengths=None, per_step=True, unroll=None, remat=False):
  """xs [B, T, F] -> outputs [B, T, O] (per_step) or [B, O] at each sequence's last valid step.

  `cell` may be a `seqjax.Bidirectional` (`models.init` too; linear readout): its outputs are
  read per step, or, at the last step, its forward state after the last valid step with its
  reverse state after step 0.

  Takes either readout's params. A sequence of length 0 has no last step: its output is b (the
  readout of h = 0); so are the outputs at padded steps. The attention readout read per step
  costs O(T^2) per sequence ([B, T, T] scores); at the last step O(T).

  remat=True: the cell runs over time in nested checkpointed chunks (`_chunk_sizes`), each
  chunk emitting only its readout ([B, chunk, O]) or updating the carried last valid h, so no
  [B, T, H] array is kept through forward and backward: memory grows far slower than T, for a
  few extra forward passes of compute. The attention readout read at the last step streams over
  time twice (once for the query h, once for an online softmax over the keys); read per step it
  needs every key, so it keeps [B, T, H] (and [B, T, T]) whatever `remat` says.
  """
  if isinstance(cell, Bidirectional):
    return _apply_bidirectional(cell, params, xs, lengths, per_step, unroll, remat)
  attention = is_attention(params)
  if remat and xs.shape[-2] > 1 and not (attention and per_step):
    return _apply_streamed(cell, params, xs, lengths, per_step, attention, unroll)
  _, hs = scan(cell, params["cell"], xs, lengths=lengths, unroll=unroll, remat=remat)
  if per_step:
    return _attention_per_step(params, hs, lengths) if attention else readout(params, hs)
  h_last = _select_last(hs, lengths)
  if attention:
    return _attention_last(params, hs, h_last, lengths)
  return readout(params, h_last)


def dropout(key, x, rate: float):
  """Inverted dropout: each entry of x zeroed with probability `rate`, the rest scaled by
  1 / (1 - rate); x itself when rate is 0."""
  if not rate:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def _scan_dropout(cell, params, xs, lengths, initial_state, rate, key, unroll, remat):
  """(final_state, hs [*batch, T, H]): the cell over xs, dropout on each layer's input (a
  stack: layer by layer, which equals stepping the whole stack); rate 0: `scan` itself."""
  if not rate:
    return scan(cell, params["cell"], xs, lengths=lengths, initial_state=initial_state,
                unroll=unroll, remat=remat)
  stacked = bool(cell.layers)
  layers, layer_params = (cell.layers, params["cell"]) if stacked else ((cell,), (params["cell"],))
  states = (initial_state if stacked else (initial_state,)) if initial_state is not None \
      else (None,) * len(layers)
  hs, finals = xs, []
  for i, (c, p, s) in enumerate(zip(layers, layer_params, states)):
    hs = dropout(jax.random.fold_in(key, i), hs, rate)
    s, hs = scan(c, p, hs, lengths=lengths, initial_state=s, unroll=unroll, remat=remat)
    finals.append(s)
  return (tuple(finals) if stacked else finals[0]), hs


def apply_dropout(cell: Cell, params, xs, lengths, per_step, rate: float, key, unroll=None,
                  remat=False):
  """`apply` (linear readout) with dropout of probability `rate` on the non-recurrent
  connections: each layer's input and the readout's input, masks drawn from `key`."""
  if is_attention(params):
    raise ValueError("dropout takes the linear readout only")
  _, hs = _scan_dropout(cell, params, xs, lengths, None, rate, key, unroll, remat)
  k_out = jax.random.fold_in(key, len(cell.layers) or 1)
  if per_step:
    return readout(params, dropout(k_out, hs, rate))
  return _finish_last(params, readout(params, dropout(k_out, _select_last(hs, lengths), rate)),
                      lengths)


def apply_from(cell: Cell, params, xs, initial_state, rate: float = 0.0, key=None, unroll=None,
               remat=False):
  """(final_state, outputs [*batch, T, O]): the linear readout at every step of the cell run
  over xs [*batch, T, F] from `initial_state` (stateful models: text), with dropout of
  probability `rate` (and its `key`) on each layer's input and the readout's input."""
  if is_attention(params):
    raise ValueError("a model run from a carried state takes the linear readout only")
  final, hs = _scan_dropout(cell, params, xs, None, initial_state, rate, key, unroll, remat)
  if rate:
    hs = dropout(jax.random.fold_in(key, len(cell.layers) or 1), hs, rate)
  return final, readout(params, hs)


# Largest fan-out (chunks per chunk, and steps per innermost chunk) of the nested checkpointing.
# Memory ~ levels * fan-out carries + one innermost chunk of stored steps; compute: one extra
# forward pass per level. 64: one level (sqrt(T) chunks) up to T = 4096, two (T^(1/3)) up to
# 262144. Measured (CPU, LSTM, B=100, H=128, last-step train step): 19.9 MiB at T = 10^3,
# 33.7 MiB at 10^5; with 32 (three levels at 10^5) 16.2 MiB, for a fourth forward pass.
MAX_FANOUT = 64


def _chunk_sizes(T: int):
  """Chunk lengths of the nested checkpointed loops, outermost first: k^L, ..., k with the
  fewest levels L whose fan-out k = ceil(T^(1/(L+1))) is at most MAX_FANOUT."""
  levels = 1
  while math.ceil(T ** (1 / (levels + 1)) - 1e-9) > MAX_FANOUT:
    levels += 1
  k = math.ceil(T ** (1 / (levels + 1)) - 1e-9)
  return [k ** i for i in range(levels, 0, -1)]


def _stream(cell, params, xs, lengths, unroll, extra, piece_fn):
  """Runs the cell over xs [*batch, T, F] in nested checkpointed chunks.

  piece_fn(extra, hs [*batch, n, H], start) -> (extra, out [*batch, n, ...] or None) sees each
  innermost piece's outputs (steps start .. start+n-1; 0 past `lengths`) once, in order.
  Returns (extra, outs [*batch, T, ...] or None). Only the carries (the cell state and `extra`)
  at chunk boundaries are kept for the backward pass; streaming pieces equal the whole scan.
  """
  time_axis = xs.ndim - 2

  def run(carry, start, n, sizes):
    sizes = [c for c in sizes if c < n]
    if not sizes:
      state, extra = carry
      xs_piece = jax.lax.dynamic_slice_in_dim(xs, start, n, axis=time_axis)
      piece_lengths = None if lengths is None else jnp.clip(lengths - start, 0, n)
      state, hs = scan(cell, params["cell"], xs_piece, lengths=piece_lengths,
                       initial_state=state, unroll=unroll)
      extra, out = piece_fn(extra, hs, start)
      return (state, extra), out
    C, count = sizes[0], n // sizes[0]
    chunk = jax.checkpoint(lambda c, s: run(c, s, C, sizes[1:]))
    carry, outs = jax.lax.scan(lambda c, i: chunk(c, start + i * C), carry,
                               jnp.arange(count, dtype=jnp.int32))
    # [count, *batch, C, ...] -> [*batch, count * C, ...]
    outs = jax.tree.map(lambda a: jnp.moveaxis(a, 0, time_axis).reshape(
        *a.shape[1:time_axis + 1], count * C, *a.shape[time_axis + 2:]), outs)
    if n > count * C:
      rest = n - count * C
      carry, out = jax.checkpoint(lambda c, s: run(c, s, rest, sizes[1:]))(
          carry, start + count * C)
      outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=time_axis), outs, out)
    return carry, outs

  state = cell.initial_state(params["cell"], xs.shape[:-2])
  (_, extra), outs = run((state, extra), jnp.zeros((), jnp.int32), xs.shape[-2],
                         _chunk_sizes(xs.shape[-2]))
  return extra, outs


def _last_in_piece(h_last, hs, start, lengths):
  """Carries h at each sequence's last valid step through the pieces of `_stream`."""
  if lengths is None:
    return hs[..., -1, :]
  n = hs.shape[-2]
  idx = lengths - 1 - start  # position of the last valid step within this piece
  row = jnp.take_along_axis(hs, jnp.clip(idx, 0, n - 1)[:, None, None], axis=1)[:, 0]
  return jnp.where(((idx >= 0) & (idx < n))[:, None], row, h_last)


def _apply_streamed(cell, params, xs, lengths, per_step, attention, unroll):
  """`apply` with remat: the readout inside the nested checkpointed loop (see `apply`)."""
  if lengths is not None:  # checked whole here: the streamed pieces see them clipped to themselves
    lengths = _check_lengths(lengths, xs.shape[:-2], xs.shape[-2])
  if per_step:  # linear readout
    _, ys = _stream(cell, params, xs, lengths, unroll, (),
                    lambda extra, hs, start: (extra, readout(params, hs)))
    return ys
  h_type = jax.eval_shape(lambda: scan(cell, params["cell"], xs[..., :1, :])[1])
  zeros_h = jnp.zeros((*xs.shape[:-2], cell.hidden_size), h_type.dtype)
  h_last, _ = _stream(cell, params, xs, lengths, unroll, zeros_h,
                      lambda h, hs, start: (_last_in_piece(h, hs, start, lengths), None))
  if not attention:
    return readout(params, h_last)
  # Second pass: an online softmax over the keys for the one query row (q from h_last).
  r = _attention_query(params, h_last)  # scores_i = h_i . r

  def accumulate(acc, hs, start):
    m, den, num = acc  # running max [*batch], sum of exp [*batch], weighted sum of h [*batch, H]
    scores = jnp.einsum("...th,...h->...t", hs, r)
    if lengths is None:
      valid = jnp.ones(scores.shape, bool)
    else:
      valid = start + jnp.arange(hs.shape[-2])[None] < lengths[:, None]
    # m only keeps exp from overflowing; the result does not depend on it.
    m_new = jax.lax.stop_gradient(jnp.maximum(
        m, jnp.max(jnp.where(valid, scores, jnp.finfo(scores.dtype).min), axis=-1)))
    # masked before exp: exp of a padded score may overflow, and 0 * inf in its VJP is NaN
    p = jnp.exp(jnp.where(valid, scores - m_new[..., None], -jnp.inf))
    scale = jnp.exp(m - m_new)
    return (m_new, den * scale + jnp.sum(p, axis=-1),
            num * scale[..., None] + jnp.einsum("...t,...th->...h", p, hs)), None

  lowest = jnp.full(xs.shape[:-2], jnp.finfo(zeros_h.dtype).min, zeros_h.dtype)
  (_, den, num), _ = _stream(cell, params, xs, lengths, unroll,
                             (lowest, jnp.zeros(xs.shape[:-2], zeros_h.dtype), zeros_h),
                             accumulate)
  den = jnp.where(den > 0, den, jnp.ones((), den.dtype))  # length 0: no keys at all
  c = (num / den[..., None]) @ params["readout"]["W_v"]
  return _finish_last(params, _attention_head(params, h_last, c), lengths)


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
