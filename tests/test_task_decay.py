"""The decay task against its rule recomputed step by step in NumPy float64."""

import jax
import numpy as np
import pytest

from seqjax.tasks import decay


def test_decay_follows_its_rule_step_by_step():
  task = decay.make(seq_len=40)
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 64)
  xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
  assert xs.shape == (64, 40, 3) and ys.shape == (64, 40) and batch.lengths is None
  temp, hum, d = xs[..., 0], xs[..., 1], xs[:, 0, 2].copy()
  assert ((temp >= 0) & (temp <= 1) & (hum >= 0) & (hum <= 1)).all()
  assert ((d >= 0.5) & (d <= 1.0)).all()
  k = decay.K0 * np.exp(decay.ALPHA * temp) * (1 + decay.BETA * hum)
  for t in range(40):
    np.testing.assert_allclose(xs[:, t, 2], d, rtol=2e-6)   # the input is the previous value
    d = d * np.exp(-k[:, t])
    np.testing.assert_allclose(ys[:, t], d, rtol=2e-6)
  assert (np.diff(ys, axis=1) < 0).all()                    # k > 0: always decaying
  # smooth environment: steps are small next to the range the series covers
  assert np.abs(np.diff(temp, axis=1)).max() < 0.2 and np.ptp(temp, axis=1).mean() > 0.05
  assert task.feedback_channel == 2 and not task.classification


@pytest.mark.slow
def test_decay_losses_are_per_example_mse():
  task = decay.make(seq_len=5)
  batch = task.sample(jax.random.key(1), 3)
  outputs = np.asarray(batch.ys)[..., None] + np.arange(5.0)[None, :, None] * 0.1
  values = task.losses(outputs, batch)
  expected = np.mean((np.arange(5.0) * 0.1) ** 2)
  np.testing.assert_allclose(values["mse"], np.full(3, expected), rtol=1e-5)
  np.testing.assert_array_equal(values["loss"], values["mse"])


@pytest.mark.slow
def test_decay_same_key_same_batch():
  task = decay.make(seq_len=6)
  a, b = task.sample(jax.random.key(2), 4), task.sample(jax.random.key(2), 4)
  c = task.sample(jax.random.key(3), 4)
  np.testing.assert_array_equal(a.xs, b.xs)
  assert not np.array_equal(a.xs, c.xs)


@pytest.mark.parametrize("bad", [1, 0, 2.5, True])
def test_decay_rejects_bad_lengths(bad):
  with pytest.raises(ValueError, match="seq_len"):
    decay.make(seq_len=bad)
