"""Material durability under a changing environment (a series task with exogenous inputs).

Per step t: temperature temp_t and humidity hum_t in [0, 1] are smooth random series (a constant
plus three random low-frequency sinusoids each), and durability decays as

  d_{t+1} = d_t · exp(−k(temp_t, hum_t)),   k(temp, hum) = K0 · exp(ALPHA·temp) · (1 + BETA·hum)

(an Arrhenius-like rate: hotter and wetter wears faster; k > 0 always), with d_0 ~ U[0.5, 1].
Inputs xs[t] = (temp_t, hum_t, d_t): the previous durability is channel 2, the one a free-running
model replaces with its own prediction. Target ys[t] = d_{t+1}.
"""

import jax
import jax.numpy as jnp

from seqjax.tasks._checks import check_int
from seqjax.tasks._series import SERIES_OPTIONS
from seqjax.tasks.base import Batch, Task

K0, ALPHA, BETA = 0.01, 1.0, 1.0
NUM_WAVES = 3          # sinusoids per environment series
MAX_CYCLES = 2.0       # the fastest wave completes this many periods over the sequence
DURABILITY_CHANNEL = 2

DEFAULTS = dict(seq_len=50, hidden_size=64, num_steps=3000, batch_size=100, learning_rate=1e-3)
OPTIONS = SERIES_OPTIONS  # read by the training loop, not by make


def rate(temp, hum):
  """k(temp, hum) > 0: the fraction of log-durability lost in one step."""
  return K0 * jnp.exp(ALPHA * temp) * (1 + BETA * hum)


def _smooth_series(key, batch_size, T):
  """[B, T] values in [0, 1]: 0.5 + sum of NUM_WAVES sinusoids of amplitude <= 0.5/NUM_WAVES."""
  ka, kf, kp = jax.random.split(key, 3)
  amp = jax.random.uniform(ka, (batch_size, NUM_WAVES, 1), maxval=0.5 / NUM_WAVES)
  cycles = jax.random.uniform(kf, (batch_size, NUM_WAVES, 1), minval=0.1, maxval=MAX_CYCLES)
  phase = jax.random.uniform(kp, (batch_size, NUM_WAVES, 1), maxval=2 * jnp.pi)
  t = jnp.arange(T, dtype=jnp.float32)[None, None, :] / T
  return 0.5 + jnp.sum(amp * jnp.sin(2 * jnp.pi * cycles * t + phase), axis=1)


def make(seq_len: int = DEFAULTS["seq_len"]) -> Task:
  T = check_int("decay", "seq_len", seq_len, 2)

  def sample(key, batch_size):
    kt, kh, kd = jax.random.split(key, 3)
    temp = _smooth_series(kt, batch_size, T)
    hum = _smooth_series(kh, batch_size, T)
    d0 = jax.random.uniform(kd, (batch_size, 1), minval=0.5, maxval=1.0)
    # d_t = d_0 · exp(−Σ_{s<t} k_s): the exact solution, so no error accumulates over T.
    log_decay = jnp.cumsum(rate(temp, hum), axis=1)
    d_next = d0 * jnp.exp(-log_decay)                              # d_1 .. d_T
    d_prev = jnp.concatenate([d0, d_next[:, :-1]], axis=1)          # d_0 .. d_{T-1}
    xs = jnp.stack([temp, hum, d_prev], axis=-1)
    return Batch(xs=xs, ys=d_next, lengths=None)

  def losses(outputs, batch):
    se = jnp.mean((outputs[..., 0] - batch.ys) ** 2, axis=-1)
    return {"loss": se, "mse": se}

  return Task(name="decay", input_size=3, output_size=1, per_step=True, classification=False,
              sample=sample, held_out=sample, losses=losses, seq_len=T,
              feedback_channel=DURABILITY_CHANNEL)
