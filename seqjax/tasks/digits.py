"""scikit-learn's shipped 8×8 digits, one pixel per step (T = 64): a small stand-in for MNIST.

1797 images, pixel values 0..16 scaled to [0, 1]. A fixed held-out split: the images are shuffled
with SPLIT_SEED and the last TEST_FRACTION form the test set. eval_split="validation" trains on
the training part less its last VALIDATION_FRACTION (a fixed fifth, the same in every run) and
evaluates on that fifth. `permute` applies one fixed pixel permutation to every image (the
permuted-MNIST idea).
"""

import numpy as np

from seqjax.tasks._checks import check_choice
from seqjax.tasks._dataset import (EVAL_SPLIT, PERMUTE, classification_task,
                                   split_off)

SPLIT_SEED, TEST_FRACTION, VALIDATION_FRACTION = 0, 0.2, 0.2
DEFAULTS = dict(seq_len=64, hidden_size=128, num_steps=3000, batch_size=100, learning_rate=1e-3)
OPTIONS = (PERMUTE, EVAL_SPLIT)


def load_split(eval_split: str = "test"):
  """(train_x, train_y, eval_x, eval_y) as NumPy arrays, pixels in [0, 1]; eval_*: the test
  split, or (eval_split="validation") the last fifth of the training part, then left out of
  train_*."""
  check_choice(EVAL_SPLIT, eval_split)
  from sklearn.datasets import load_digits  # reads a file shipped inside scikit-learn
  data = load_digits()
  x = data.images.reshape(len(data.images), 64).astype(np.float32) / 16.0
  y = data.target.astype(np.int32)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
  n_test = int(round(TEST_FRACTION * len(x)))
  train, test = order[:-n_test], order[-n_test:]
  if eval_split == "validation":
    return split_off(x[train], y[train], int(round(VALIDATION_FRACTION * len(train))))
  return x[train], y[train], x[test], y[test]


def make(permute: bool = False, eval_split: str = "test"):
  return classification_task("digits", *load_split(eval_split), permute=permute)
