"""The copy task (module variable_copy): the layout re-derived per example, its losses."""

import math

import numpy as np
import pytest

from seqjax.tasks import variable_copy as copy_task
from task_helpers import (cached_task, check_losses, cross_entropy, logits_with_mistakes,
                          sample_named)


@pytest.mark.parametrize("T", [2, 30])
def test_copy_layout_is_re_derived_per_example(T):
  S = 10
  assert (copy_task.NUM_RECALL, copy_task.NUM_SYMBOLS) == (S, 7)
  assert (copy_task.BLANK, copy_task.DELIMITER) == (7, 8)
  batch = sample_named("copy", 256, seq_len=T)
  total = 2 * S + T
  assert batch.xs.shape == (256, total, 9)
  assert set(np.unique(batch.xs)) == {0.0, 1.0} and (batch.xs.sum(axis=-1) == 1).all()
  shown = batch.xs.argmax(axis=-1)
  delimiters = []
  for x, y in zip(shown, batch.ys):
    symbols = x[:S]
    assert (symbols <= 6).all()
    (p,) = np.flatnonzero(x == 8)                  # exactly one delimiter
    assert S <= p <= S + T - 2
    delimiters.append(p)
    rest = np.delete(np.arange(S, total), p - S)
    assert (x[rest] == 7).all()                    # blanks everywhere else
    expected = np.full(total, 7)
    expected[p + 1:p + 1 + S] = symbols
    np.testing.assert_array_equal(y, expected)
  assert min(delimiters) == S and max(delimiters) == S + T - 2
  counts = np.bincount(shown[:, :S].ravel(), minlength=7)
  assert (counts > 0.5 * counts.mean()).all()     # all seven symbols are drawn


def test_copy_losses_count_accuracy_over_recalled_symbols_only():
  S, T = 10, 30
  task, _ = cached_task("copy", seq_len=T)
  batch = sample_named("copy", 3, seq_len=T)
  p = [int(np.flatnonzero(x.argmax(axis=-1) == 8)[0]) for x in batch.xs]
  wrong = np.zeros(batch.ys.shape, bool)
  wrong[0, p[0] + 4] = True                        # one recalled symbol wrong
  wrong[1, 0] = wrong[1, -1] = True                # two blank steps wrong: recall unaffected
  logits = logits_with_mistakes(batch.ys, wrong, 8, seed=2)
  values = check_losses(task, logits, batch, {"accuracy", "bits_per_step"})
  np.testing.assert_allclose(values["accuracy"], [(S - 1) / S, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(values["loss"], cross_entropy(logits, batch.ys).mean(axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(values["bits_per_step"], values["loss"] / math.log(2), rtol=1e-6)
