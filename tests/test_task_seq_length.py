"""The seq_length task: lengths, padding and labels re-derived per example."""

import numpy as np
import pytest

from task_helpers import (cached_task, check_losses, cross_entropy, logits_with_mistakes,
                          sample_named)


@pytest.mark.parametrize("T", [7, 20])
def test_seq_length_lengths_padding_and_labels(T):
  batch = sample_named("seq_length", 256, seq_len=T)
  lengths = batch.lengths
  assert ((lengths >= 0) & (lengths <= T)).all()
  assert set(lengths.tolist()) == set(range(T + 1))  # the whole range 0..T, both ends included
  for x, length, y in zip(batch.xs[..., 0], lengths, batch.ys):
    assert (x[length:] == 0).all() and (x[:length] != 0).all()
    assert y == (1 if length > T / 2 else 0)
  valid = batch.xs[..., 0][np.arange(T)[None, :] < lengths[:, None]]
  assert abs(valid.mean()) < 0.1 and 0.9 < valid.std() < 1.1  # N(0, 1) values


def test_seq_length_losses():
  task, _ = cached_task("seq_length", seq_len=20)
  batch = sample_named("seq_length", 6, seq_len=20)
  wrong = np.array([False, True, False, True, False, False])
  logits = logits_with_mistakes(batch.ys, wrong, 2, seed=1)
  values = check_losses(task, logits, batch, {"accuracy"})
  np.testing.assert_array_equal(values["accuracy"], 1.0 - wrong)
  np.testing.assert_allclose(values["loss"], cross_entropy(logits, batch.ys), rtol=1e-5)
