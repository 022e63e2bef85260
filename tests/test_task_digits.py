"""The digits task against scikit-learn's shipped data split here."""

import jax
import numpy as np
import pytest

from seqjax import tasks
from seqjax.tasks import digits
from task_helpers import sample


@pytest.mark.parametrize("permute", [False, True])
def test_digits_samples_come_from_the_train_split_and_held_out_is_the_test_split(permute):
  from sklearn.datasets import load_digits
  data = load_digits()
  images = data.images.reshape(-1, 64) / 16.0
  order = np.random.default_rng(digits.SPLIT_SEED).permutation(len(images))
  n_test = round(0.2 * len(images))
  train_idx, test_idx = order[:-n_test], order[-n_test:]
  perm = np.random.default_rng(0).permutation(64) if permute else np.arange(64)
  assert sorted(perm) == list(range(64))
  task = tasks.get("digits", permute=permute)
  assert task.seq_len == 64 and task.held_out_size == n_test
  held = task.held_out(jax.random.key(0), None)
  np.testing.assert_allclose(held.xs[..., 0], images[test_idx][:, perm], rtol=1e-6)
  np.testing.assert_array_equal(held.ys, data.target[test_idx])
  batch = sample(task, 64)
  train_images = images[train_idx][:, perm]
  for x, y in zip(batch.xs[..., 0], batch.ys):
    match = np.nonzero(np.abs(train_images - x).max(axis=1) < 1e-6)[0]
    assert len(match) and y in data.target[train_idx][match]


def test_the_validation_split_is_a_fixed_fifth_of_the_training_part_left_out_of_training():
  from sklearn.datasets import load_digits
  data = load_digits()
  images = data.images.reshape(-1, 64) / 16.0
  order = np.random.default_rng(digits.SPLIT_SEED).permutation(len(images))
  n_test = round(0.2 * len(images))
  train_part, test_idx = order[:-n_test], order[-n_test:]
  n_val = round(0.2 * len(train_part))
  train_idx, val_idx = train_part[:-n_val], train_part[-n_val:]
  assert not set(val_idx) & set(test_idx) and not set(val_idx) & set(train_idx)
  task = tasks.get("digits", eval_split="validation")
  assert task.held_out_size == n_val == 288
  for key in (0, 7):  # the same split whatever the key (and seed)
    held = task.held_out(jax.random.key(key), None)
    np.testing.assert_allclose(held.xs[..., 0], images[val_idx], rtol=1e-6)
    np.testing.assert_array_equal(held.ys, data.target[val_idx])
  train_x = digits.load_split("validation")[0]
  np.testing.assert_allclose(train_x, images[train_idx], rtol=1e-6)  # the training set excludes it
  batch = sample(task, 128)  # and training draws only from it
  for x in batch.xs[..., 0]:
    assert np.abs(train_x - x).max(axis=1).min() < 1e-6
  with pytest.raises(tasks.OptionError, match="eval_split='train': must be one of test, validation"):
    tasks.get("digits", eval_split="train")


def test_a_validation_run_gets_its_own_default_workdir():
  # like --data_rules=authors: other data, another folder (not the test-split run's, which
  # would refuse to resume it)
  from seqjax.settings import Settings
  assert Settings(task="digits").resolved().workdir == "runs/digits-rwa-T64-s0"
  assert Settings(task="digits", task_options=dict(eval_split="validation")).resolved().workdir == \
      "runs/digits-validation-rwa-T64-s0"
