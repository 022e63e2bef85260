"""The adding problem (Hochreiter & Schmidhuber 1997; the RWA paper's setting).

x_t = (value ~ U[0, 1), marker): exactly two markers (1.0) at two distinct uniformly random
positions anywhere in the sequence, 0 elsewhere. Target: the sum of the two marked values, read
at the last step. Always predicting 1 scores MSE 2/12 ≈ 0.167.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import check_int
from seqjax.tasks.base import Batch, Task

DEFAULTS = dict(seq_len=100, hidden_size=250, num_steps=50000, batch_size=100, learning_rate=1e-3)
OPTIONS = ()  # none besides seq_len


def make(seq_len: int = DEFAULTS["seq_len"]) -> Task:
  T = check_int("adding", "seq_len", seq_len, 2)

  def sample(key, batch_size):
    kv, km = jax.random.split(key)
    values = jax.random.uniform(kv, (batch_size, T))
    # the two largest of T iid uniforms sit at two distinct, uniformly random positions
    _, marked = jax.lax.top_k(jax.random.uniform(km, (batch_size, T)), 2)      # [B, 2]
    markers = jnp.sum(jax.nn.one_hot(marked, T, dtype=jnp.float32), axis=1)    # [B, T]
    ys = jnp.sum(values * markers, axis=1)
    return Batch(xs=jnp.stack([values, markers], axis=-1), ys=ys, lengths=None)

  def losses(outputs, batch):
    se = (outputs[:, 0] - batch.ys) ** 2
    return {"loss": se, "mse": se}

  return Task(name="adding", input_size=2, output_size=1, per_step=False, classification=False,
              sample=sample, held_out=sample, losses=losses, seq_len=T)
