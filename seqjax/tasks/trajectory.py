"""Heights of a thrown ball, predicted one step ahead (the teacher-forcing Q&A's example).

Per sequence: start height h0 ~ U[H0_MIN, H0_MAX] m and vertical speed v0 ~ U[V0_MIN, V0_MAX] m/s;
the heights h_k = h0 + v0·k·DT − G·(k·DT)²/2 for k = 0..T are fed standardised,

  y_k = (h_k − OFFSET) / SCALE,

OFFSET the middle of the start heights and SCALE = 10 m. Why this scale: the whole task is to
read the throw speed off the first observed steps and continue the parabola, and the speed is
only visible in the step-to-step differences. With SCALE = 10 one step moves |Δy| = |v|·DT/SCALE
≈ 0.026 on average (0.004–0.05 for 80% of the steps at T = 40), and the heights stay O(1)
(|y| < 5, sd ≈ 1.3), centred on 0 so no constant offset swamps the differences. Scaled by 100
instead (inputs ≈ 0.6–1.0 moving ≈ 0.004 a step), both a teacher-forced and a free-running LSTM got stuck
at the same free-running error: differences that small were lost next to the inputs' offset, so
neither could infer the speed.

With these ranges the ball stays above the ground for T ≤ 50 steps (2 s): the lowest point is
60 − 5·2 − 19.6 > 0 m. Teacher-forced inputs xs[t] = y_t (the true previous value), targets
ys[t] = y_{t+1}; channel 0 is what a free-running model replaces with its own prediction.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import check_int
from seqjax.tasks._series import SERIES_OPTIONS
from seqjax.tasks.base import Batch, OptionError, Task

G, DT = 9.81, 0.04
H0_MIN, H0_MAX, V0_MIN, V0_MAX = 60.0, 100.0, -5.0, 15.0
OFFSET, SCALE = (H0_MIN + H0_MAX) / 2, 10.0
MAX_LEN = 50  # keeps the ball in the air (see above)

DEFAULTS = dict(seq_len=50, hidden_size=64, num_steps=3000, batch_size=100, learning_rate=1e-3)
OPTIONS = SERIES_OPTIONS  # read by the training loop, not by make


def heights(h0, v0, T):
  """[B, T+1] standardised heights y_0..y_T for start heights and speeds [B] (in m, m/s)."""
  t = jnp.arange(T + 1, dtype=jnp.float32)[None, :] * DT
  return (h0[:, None] - OFFSET + v0[:, None] * t - 0.5 * G * t ** 2) / SCALE


def make(seq_len: int = DEFAULTS["seq_len"]) -> Task:
  T = check_int("trajectory", "seq_len", seq_len, 4)
  if T > MAX_LEN:
    raise OptionError("seq_len", T, f"must be <= {MAX_LEN} for trajectory (the ball would hit "
                      "the ground)")

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
