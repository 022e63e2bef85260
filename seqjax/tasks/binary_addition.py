"""Binary addition one bit pair per step (the from-scratch NumPy RNN article's task).

a and b have `seq_len` bits with the top bit 0 (a, b < 2^(bits−1), as the article's a, b < 128
for 8 bits), so a + b < 2^bits. Inputs per step: (bit of a, bit of b); target per step: the bit
of a + b. `lsb_first` presents the least significant bit first, so the carry into every bit has
already been seen; `msb_first` reverses inputs and targets, and a causal model cannot know the
carry coming from bits it has not seen yet.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import check_choice, check_int
from seqjax.tasks.base import Batch, Option, Task, accuracy, softmax_cross_entropy

BIT_ORDERS = ("lsb_first", "msb_first")
DEFAULTS = dict(seq_len=8, hidden_size=16, num_steps=2000, batch_size=100, learning_rate=1e-3)
OPTIONS = (Option("bit_order", str, "lsb_first", "Which end of the numbers comes first.",
                  BIT_ORDERS),)


def add_bits(a_bits, b_bits):
  """Ripple-carry sum of [B, T] int bit arrays given least significant bit first."""
  def full_adder(carry, ab):
    a, b = ab
    total = a + b + carry
    return total // 2, total % 2

  _, s = jax.lax.scan(full_adder, jnp.zeros(a_bits.shape[:1], jnp.int32), (a_bits.T, b_bits.T))
  return s.T


def make(seq_len: int = DEFAULTS["seq_len"], bit_order: str = "lsb_first") -> Task:
  T = check_int("binary_addition", "seq_len", seq_len, 2)
  check_choice(OPTIONS[0], bit_order)

  def sample(key, batch_size):
    bits = jax.random.bernoulli(key, 0.5, (2, batch_size, T)).astype(jnp.int32)
    bits = bits.at[:, :, T - 1].set(0)  # top bit 0: the sum fits in T bits
    a, b = bits[0], bits[1]
    s = add_bits(a, b)
    xs = jnp.stack([a, b], axis=-1).astype(jnp.float32)
    if bit_order == "msb_first":
      xs, s = xs[:, ::-1], s[:, ::-1]
    return Batch(xs=xs, ys=s, lengths=None)

  def losses(logits, batch):
    right = accuracy(logits, batch.ys)
    return {"loss": jnp.mean(softmax_cross_entropy(logits, batch.ys), axis=-1),
            "accuracy": jnp.mean(right, axis=-1),
            "sequence_accuracy": jnp.min(right, axis=-1)}

  return Task(name="binary_addition", input_size=2, output_size=2, per_step=True,
              classification=True, sample=sample, held_out=sample, losses=losses, seq_len=T)
