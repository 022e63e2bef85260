"""The adding task: two distinct markers, their values' sum as the target."""

import numpy as np

from task_helpers import cached_task, check_losses, sample_named


def test_adding_has_two_distinct_markers_and_their_sum_as_target():
  T = 40
  batch = sample_named("adding", 256, seq_len=T)
  values, markers = batch.xs[..., 0], batch.xs[..., 1]
  assert ((values >= 0) & (values < 1)).all()
  positions = []
  for v, m, y in zip(values, markers, batch.ys):
    marked = np.flatnonzero(m)
    assert len(marked) == 2 and marked[0] != marked[1]
    assert (m[marked] == 1.0).all()
    np.testing.assert_allclose(y, float(v[marked[0]]) + float(v[marked[1]]), rtol=1e-6)
    positions.extend(marked)
  positions = np.array(positions)
  assert (positions < T // 4).any() and (positions >= T - T // 4).any()
  assert positions.min() == 0 and positions.max() == T - 1
  assert abs(positions.mean() - (T - 1) / 2) < 1.5  # uniform, not biased to one end


def test_adding_loss_is_the_squared_error():
  task, _ = cached_task("adding", seq_len=40)
  batch = sample_named("adding", 8, seq_len=40)
  outputs = np.linspace(0.0, 2.0, 8, dtype=np.float32)[:, None]
  values = check_losses(task, outputs, batch, {"mse"})
  expected = (outputs[:, 0].astype(np.float64) - batch.ys) ** 2
  np.testing.assert_allclose(values["loss"], expected, rtol=1e-5)
  np.testing.assert_array_equal(values["mse"], values["loss"])
