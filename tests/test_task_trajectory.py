"""The trajectory task against the closed-form parabola recomputed here in NumPy float64."""

import jax
import numpy as np
import pytest

from seqjax import tasks
from seqjax.tasks import trajectory
from task_helpers import sample


def test_trajectory_is_the_closed_form_parabola():
  batch = sample(tasks.get("trajectory", seq_len=30), 64)
  y = np.concatenate([batch.xs[:, :, 0], batch.ys[:, -1:]], axis=1).astype(np.float64)
  t = np.arange(31) * trajectory.DT
  # invert y = (h - OFFSET) / SCALE at k = 0 and k = 1 for the start height and speed
  h0 = y[:, 0] * trajectory.SCALE + trajectory.OFFSET
  v0 = ((y[:, 1] * trajectory.SCALE + trajectory.OFFSET) - h0
        + 0.5 * trajectory.G * trajectory.DT ** 2) / trajectory.DT
  heights_m = h0[:, None] + v0[:, None] * t - 0.5 * trajectory.G * t ** 2
  expected = (heights_m - trajectory.OFFSET) / trajectory.SCALE
  np.testing.assert_allclose(y, expected, atol=1e-5)
  np.testing.assert_array_equal(batch.ys[:, :-1], batch.xs[:, 1:, 0])   # teacher-forcing shift
  assert (heights_m > 0).all()                                           # above the ground
  assert (trajectory.H0_MIN - 1e-3 <= h0).all() and (h0 <= trajectory.H0_MAX + 1e-3).all()
  # v0 comes from a float32 difference of O(1) values divided by DT: about 2e-2 m/s of slack
  assert (v0 > trajectory.V0_MIN - 2e-2).all() and (v0 < trajectory.V0_MAX + 2e-2).all()


def test_trajectory_steps_are_visible_next_to_the_heights():
  """The normalisation's point: inputs O(1) and centred, one step moving ~0.025 on average."""
  batch = sample(tasks.get("trajectory", seq_len=40), 2048)
  y = np.concatenate([batch.xs[:, :, 0], batch.ys[:, -1:]], axis=1).astype(np.float64)
  step = np.abs(np.diff(y, axis=1))
  assert 0.015 < step.mean() < 0.04, step.mean()
  assert np.abs(y.mean()) < 0.5 and 0.7 < y.std() < 2.0 and np.abs(y).max() < 5
  # the largest step (fast fall at the end) against the smallest (near the apex): both resolved
  assert step.max() < 0.1


@pytest.mark.slow
def test_trajectory_sampler_is_pure_under_jit():
  task = tasks.get("trajectory", seq_len=12)
  eager = task.sample(jax.random.key(3), 5)
  jitted = jax.jit(task.sample, static_argnums=1)(jax.random.key(3), 5)
  np.testing.assert_allclose(np.asarray(eager.xs), np.asarray(jitted.xs), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(eager.ys), np.asarray(jitted.ys), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(seq_len=51), "seq_len=51: must be <= 50"),
    (dict(seq_len=3), "seq_len=3: must be an int >= 4"),
])
def test_trajectory_rejects_bad_lengths(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tasks.get("trajectory", **kwargs)
