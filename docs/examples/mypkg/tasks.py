"""A task for the seqjax launcher: --task=mypkg.tasks:parity.

Is the number of ones in a random bit string odd? One bit per step, the class read at the last
step. DEFAULTS gives the launcher its defaults; a flag overrides each."""
import jax
import jax.numpy as jnp

from seqjax import tasks
from seqjax.tasks.base import accuracy, softmax_cross_entropy

DEFAULTS = dict(seq_len=10, hidden_size=32, batch_size=64, num_steps=2000, learning_rate=1e-2)


def parity(seq_len):
  def sample(key, batch_size):
    bits_BxT = jax.random.bernoulli(key, 0.5, (batch_size, seq_len)).astype(jnp.int32)
    return tasks.Batch(xs=bits_BxT[..., None].astype(jnp.float32),
                       ys=jnp.sum(bits_BxT, axis=1) % 2, lengths=None)

  def losses(logits_Bx2, batch):
    return {"loss": softmax_cross_entropy(logits_Bx2, batch.ys),
            "accuracy": accuracy(logits_Bx2, batch.ys)}

  return tasks.Task(name="parity", input_size=1, output_size=2, per_step=False,
                    classification=True, sample=sample, held_out=sample, losses=losses,
                    seq_len=seq_len)
