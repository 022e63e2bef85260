"""Classify a sequence by its length (the RWA paper's "classify by length" task).

data_rules="paper" (the paper's prose): values ~ N(0, 1); each sequence's length is uniform over
0..seq_len (inclusive). data_rules="authors" (the authors' code): values ~ U[0, 1), lengths
uniform over 0..seq_len − 1, label round(length / seq_len) rounded half to even. Either way the
batch is padded to seq_len (zeros, masked via `lengths`) and the label is 1 iff
length > seq_len / 2: on 0..seq_len − 1 that is exactly the authors' rounding (a tie,
length = seq_len / 2, rounds to the even 0), computed in integers so no float rounding can flip it.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import DATA_RULES_OPTION, check_choice, check_int
from seqjax.tasks.base import Batch, Task, accuracy, softmax_cross_entropy

DEFAULTS = dict(seq_len=100, hidden_size=250, num_steps=20000, batch_size=100, learning_rate=1e-3)
OPTIONS = (DATA_RULES_OPTION,)


def make(seq_len: int = DEFAULTS["seq_len"], data_rules: str = "paper") -> Task:
  T = check_int("seq_length", "seq_len", seq_len, 2)
  authors = check_choice(DATA_RULES_OPTION, data_rules) == "authors"

  def sample(key, batch_size):
    kv, kl = jax.random.split(key)
    lengths = jax.random.randint(kl, (batch_size,), 0, T if authors else T + 1, dtype=jnp.int32)
    valid = jnp.arange(T)[None, :] < lengths[:, None]
    draw = jax.random.uniform if authors else jax.random.normal
    values = jnp.where(valid, draw(kv, (batch_size, T)), 0.0)
    ys = (2 * lengths > T).astype(jnp.int32)
    return Batch(xs=values[..., None], ys=ys, lengths=lengths)

  def losses(logits, batch):
    return {"loss": softmax_cross_entropy(logits, batch.ys),
            "accuracy": accuracy(logits, batch.ys)}

  return Task(name="seq_length", input_size=1, output_size=2, per_step=False,
              classification=True, sample=sample, held_out=sample, losses=losses, seq_len=T)
