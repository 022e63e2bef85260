"""scikit-learn's shipped 8×8 digits, one pixel per step (T = 64): a small stand-in for MNIST.

1797 images, pixel values 0..16 scaled to [0, 1]. A fixed held-out split: the images are shuffled
with SPLIT_SEED and the last TEST_FRACTION form the test set. `permute` applies one fixed pixel
permutation to every image (the permuted-MNIST idea).
"""

import numpy as np

from seqjax.tasks._dataset import classification_task

SPLIT_SEED, TEST_FRACTION = 0, 0.2
DEFAULTS = dict(seq_len=64, hidden_size=128, num_steps=3000, batch_size=100, learning_rate=1e-3)


def load_split():
  """(train_x, train_y, test_x, test_y) as NumPy arrays, pixels in [0, 1]."""
  from sklearn.datasets import load_digits  # reads a file shipped inside scikit-learn
  data = load_digits()
  x = data.images.reshape(len(data.images), 64).astype(np.float32) / 16.0
  y = data.target.astype(np.int32)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
  n_test = int(round(TEST_FRACTION * len(x)))
  train, test = order[:-n_test], order[-n_test:]
  return x[train], y[train], x[test], y[test]


def make(permute: bool = False):
  return classification_task("digits", *load_split(), permute=permute)
