"""The variable copy problem (the RWA paper's version).

S = 10 symbols drawn from 7 data symbols are shown first; every later step shows "blank" except
one delimiter at a uniformly random position p in [S, S + T − 2]. The model must output the S
symbols at steps p+1 .. p+S and "blank" at every other step. Total length 2S + T; 9 one-hot input
channels (7 symbols, blank, delimiter), 8 output classes (7 symbols, blank). A model that
remembers nothing scores S·log2(7) / (2S + T) bits per step.
"""

import math

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import check_int
from seqjax.tasks.base import Batch, Task, accuracy, softmax_cross_entropy

NUM_RECALL = 10        # S
NUM_SYMBOLS = 7
BLANK, DELIMITER = 7, 8
NUM_CHANNELS, NUM_CLASSES = 9, 8

DEFAULTS = dict(seq_len=100, hidden_size=250, num_steps=50000, batch_size=100, learning_rate=1e-3)
OPTIONS = ()  # none besides seq_len


def make(seq_len: int = DEFAULTS["seq_len"]) -> Task:
  T = check_int("copy", "seq_len", seq_len, 2)
  S = NUM_RECALL
  total = 2 * S + T
  steps = jnp.arange(total)[None, :]

  def sample(key, batch_size):
    ks, kp = jax.random.split(key)
    symbols = jax.random.randint(ks, (batch_size, S), 0, NUM_SYMBOLS, dtype=jnp.int32)
    p = jax.random.randint(kp, (batch_size, 1), S, S + T - 1, dtype=jnp.int32)   # [S, S+T-2]
    shown = jnp.concatenate([symbols, jnp.full((batch_size, S + T), BLANK, jnp.int32)], axis=1)
    shown = jnp.where(steps == p, DELIMITER, shown)
    offset = steps - p - 1                                # 0..S-1 on the recall steps
    recall = (offset >= 0) & (offset < S)
    wanted = jnp.take_along_axis(symbols, jnp.clip(offset, 0, S - 1), axis=1)
    ys = jnp.where(recall, wanted, BLANK)
    return Batch(xs=jax.nn.one_hot(shown, NUM_CHANNELS, dtype=jnp.float32), ys=ys, lengths=None)

  def losses(logits, batch):
    ce = jnp.mean(softmax_cross_entropy(logits, batch.ys), axis=-1)
    # the recall steps are exactly the S steps after the delimiter
    after_delimiter = jnp.cumsum(batch.xs[..., DELIMITER], axis=1) - batch.xs[..., DELIMITER]
    recall = (after_delimiter > 0) & (jnp.cumsum(after_delimiter, axis=1) <= S)
    right = accuracy(logits, batch.ys)
    return {"loss": ce, "bits_per_step": ce / math.log(2),
            "accuracy": jnp.sum(right * recall, axis=-1) / S}

  return Task(name="copy", input_size=NUM_CHANNELS, output_size=NUM_CLASSES, per_step=True,
              classification=True, sample=sample, held_out=sample, losses=losses, seq_len=total)
