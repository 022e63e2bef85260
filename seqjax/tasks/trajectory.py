"""Heights of a thrown ball, predicted one step ahead (the teacher-forcing Q&A's example).

Per sequence: start height h0 ~ U[H0_MIN, H0_MAX] m and vertical speed v0 ~ U[V0_MIN, V0_MAX] m/s;
y_k = h0 + v0·k·DT − G·(k·DT)²/2 for k = 0..T, divided by SCALE to be O(1). With these ranges
the ball stays above the ground for T ≤ 50 steps (2 s): the lowest point is 60 − 5·2 − 19.6 > 0.
Teacher-forced inputs xs[t] = y_t (the true previous value), targets ys[t] = y_{t+1}; channel 0
is what a free-running model replaces with its own prediction.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import check_int
from seqjax.tasks.base import Batch, Task

G, DT, SCALE = 9.81, 0.04, 100.0
H0_MIN, H0_MAX, V0_MIN, V0_MAX = 60.0, 100.0, -5.0, 15.0
MAX_LEN = 50  # keeps the ball in the air (see above)

DEFAULTS = dict(seq_len=50, hidden_size=64, num_steps=3000, batch_size=100, learning_rate=1e-3)


def heights(h0, v0, T):
  """[B, T+1] scaled heights y_0..y_T for start heights and speeds [B]."""
  t = jnp.arange(T + 1, dtype=jnp.float32)[None, :] * DT
  return (h0[:, None] + v0[:, None] * t - 0.5 * G * t ** 2) / SCALE


def make(seq_len: int = DEFAULTS["seq_len"]) -> Task:
  T = check_int("trajectory", "seq_len", seq_len, 4)
  if T > MAX_LEN:
    raise ValueError(f"seq_len must be <= {MAX_LEN} for trajectory (the ball would hit the "
                     f"ground), got {T}")

  def sample(key, batch_size):
    kh, kv = jax.random.split(key)
    h0 = jax.random.uniform(kh, (batch_size,), minval=H0_MIN, maxval=H0_MAX)
    v0 = jax.random.uniform(kv, (batch_size,), minval=V0_MIN, maxval=V0_MAX)
    y = heights(h0, v0, T)
    return Batch(xs=y[:, :-1, None], ys=y[:, 1:], lengths=None)

  def losses(outputs, batch):
    se = jnp.mean((outputs[..., 0] - batch.ys) ** 2, axis=-1)
    return {"loss": se, "mse": se}

  return Task(name="trajectory", input_size=1, output_size=1, per_step=True,
              classification=False, sample=sample, held_out=sample, losses=losses, seq_len=T,
              feedback_channel=0)
