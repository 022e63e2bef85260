"""Several variable copy problems back to back: a copy task that needs forgetting.

`num_segments` R segments, each a whole `copy` problem drawn with its own key (laid out exactly
as copy's: S = 10 symbols, blanks, one delimiter at p in [S, S + T − 2] of the segment, the S
symbols to recall right after it; length 2S + T) and concatenated: total length R(2S + T). Each
segment's symbols must be recalled after its own delimiter, so a model has to let go of the
previous segment once recalled. Targets, loss and metrics are copy's over the whole sequence:
cross-entropy at every step, `bits_per_step`, `accuracy` over all R·S recalled symbols.

A model that remembers nothing scores R·S·log2(7) / (R(2S + T)) = S·log2(7) / (2S + T) bits per
step, as on copy: 0.702 at the default T = 20.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks import variable_copy
from seqjax.tasks._checks import check_int
from seqjax.tasks.base import Batch, Option, Task

NUM_SEGMENTS = 3
# T = 20 per segment gives R(2S + T) = 120 steps at R = 3, as long as the paper's copy at T = 100,
# so the paper's run length for that length is kept.
DEFAULTS = dict(seq_len=20, hidden_size=250, num_steps=50000, batch_size=100, learning_rate=1e-3)
OPTIONS = (Option("num_segments", int, NUM_SEGMENTS, "Copy problems back to back, each "
                  "--seq_len long between its symbols and their recall.", minimum=1),)


def make(seq_len: int = DEFAULTS["seq_len"], num_segments: int = NUM_SEGMENTS) -> Task:
  T = check_int("multi_copy", "seq_len", seq_len, 2)
  R = check_int("multi_copy", "num_segments", num_segments, 1)
  one = variable_copy.make(T)
  L = one.seq_len                                        # 2S + T steps per segment

  def sample(key, batch_size):
    # segment r is copy's batch for the r-th key (vmap over keys draws what a loop would)
    seg = jax.vmap(lambda k: one.sample(k, batch_size))(jax.random.split(key, R))
    xs_BxRxLxF = jnp.swapaxes(seg.xs, 0, 1)
    ys_BxRxL = jnp.swapaxes(seg.ys, 0, 1)
    return Batch(xs=xs_BxRxLxF.reshape(batch_size, R * L, one.input_size),
                 ys=ys_BxRxL.reshape(batch_size, R * L), lengths=None)

  def losses(logits, batch):
    # copy's losses per segment; every segment has L steps and S recalls, so their means are
    # the means over the whole sequence
    B = logits.shape[0]
    per_segment = one.losses(
        logits.reshape(B * R, L, logits.shape[-1]),
        Batch(xs=batch.xs.reshape(B * R, L, one.input_size), ys=batch.ys.reshape(B * R, L),
              lengths=None))
    return {k: jnp.mean(v.reshape(B, R), axis=1) for k, v in per_segment.items()}

  return Task(name="multi_copy", input_size=one.input_size, output_size=one.output_size,
              per_step=True, classification=True, sample=sample, held_out=sample, losses=losses,
              seq_len=R * L)
