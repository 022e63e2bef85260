"""The binary_addition task against sums re-added with Python ints."""

import numpy as np
import pytest

from task_helpers import (cached_task, check_losses, cross_entropy, logits_with_mistakes,
                          sample_named)


@pytest.mark.parametrize("order", ["lsb_first", "msb_first"])
@pytest.mark.parametrize("bits", [2, 8, 70])
def test_binary_addition_targets_are_the_sum_re_added_with_python_ints(bits, order):
  batch = sample_named("binary_addition", 128, seq_len=bits, bit_order=order)
  assert set(np.unique(batch.xs)) <= {0.0, 1.0}
  # position k of a row holds bit k (lsb_first) or bit bits-1-k (msb_first)
  weight = [1 << (k if order == "lsb_first" else bits - 1 - k) for k in range(bits)]
  top = 0 if order == "msb_first" else bits - 1
  for x, y in zip(batch.xs.astype(int), batch.ys):
    a = sum(w * int(bit) for w, bit in zip(weight, x[:, 0]))
    b = sum(w * int(bit) for w, bit in zip(weight, x[:, 1]))
    assert x[top, 0] == 0 and x[top, 1] == 0
    assert a < 2 ** (bits - 1) and b < 2 ** (bits - 1)
    total = a + b
    assert total < 2 ** bits
    assert [int(bit) for bit in y] == [(total // w) % 2 for w in weight]
  if bits >= 8:
    low = np.delete(batch.xs, top, axis=1)
    assert 0.45 < low.mean() < 0.55  # the low bits are fair coins
    # bits past 62 are sampled too (the sum is not limited to a machine integer)
    if bits == 70:
      high = batch.xs[:, 64:69] if order == "lsb_first" else batch.xs[:, 1:6]
      assert 0.3 < high.mean() < 0.7


def test_binary_addition_orders_share_one_rule():
  lsb = sample_named("binary_addition", 128, seed=3, seq_len=8, bit_order="lsb_first")
  msb = sample_named("binary_addition", 128, seed=3, seq_len=8, bit_order="msb_first")
  np.testing.assert_array_equal(msb.xs, lsb.xs[:, ::-1])
  np.testing.assert_array_equal(msb.ys, lsb.ys[:, ::-1])


def test_binary_addition_losses():
  task, _ = cached_task("binary_addition", seq_len=8, bit_order="lsb_first")
  batch = sample_named("binary_addition", 4, seq_len=8, bit_order="lsb_first")
  wrong = np.zeros((4, 8), bool)
  wrong[0, 3] = True                      # one bit wrong
  wrong[1, :] = True                      # every bit wrong
  wrong[3, [0, 7]] = True                 # two bits wrong; example 2 all right
  logits = logits_with_mistakes(batch.ys, wrong, 2, seed=0)
  values = check_losses(task, logits, batch, {"accuracy", "sequence_accuracy"})
  np.testing.assert_allclose(values["accuracy"], [7 / 8, 0.0, 1.0, 6 / 8])
  np.testing.assert_array_equal(values["sequence_accuracy"], [0.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(values["loss"], cross_entropy(logits, batch.ys).mean(axis=1),
                             rtol=1e-5)
