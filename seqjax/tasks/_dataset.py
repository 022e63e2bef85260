"""Shared machinery of the dataset tasks: a class per sequence (digits, mnist: pixels one per
step; uea: a time series's channels per step, unequal lengths)."""

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.tasks.base import Batch, Option, Task, accuracy, softmax_cross_entropy

PERMUTATION_SEED = 0
# --eval_split: "test" (train on all training data, evaluate on the test split: the RWA paper's
# protocol) or "validation" (train on the training data less a fixed validation part, and
# evaluate on that; the test split is left untouched, for the end of a study)
EVAL_SPLITS = ("test", "validation")
PERMUTE = Option("permute", bool, False, "A fixed pixel permutation.")
EVAL_SPLIT = Option("eval_split", str, "test", "What a dataset task is evaluated on: test (train "
                    "on all its training data; the paper's protocol) or validation (train on the "
                    "training data less a fixed validation part, evaluate on that).", EVAL_SPLITS)


def split_off(train_x, train_y, num_validation: int):
  """(train_x, train_y, validation_x, validation_y): the last num_validation examples held out."""
  if not 1 <= num_validation < len(train_x):
    raise ValueError(f"a validation part of {num_validation} of {len(train_x)} training examples "
                     "leaves none to train on or none to evaluate")
  cut = len(train_x) - num_validation
  return train_x[:cut], train_y[:cut], train_x[cut:], train_y[cut:]


def pixel_permutation(num_pixels: int) -> np.ndarray:
  """The fixed permutation of --permute (the same for train and test, and run to run)."""
  return np.random.default_rng(PERMUTATION_SEED).permutation(num_pixels)


def classification_task(name, train_x, train_y, test_x, test_y, permute: bool,
                        num_classes: int = 10) -> Task:
  """train_x/test_x: [N, P] float32 pixels in [0, 1]; *_y: [N] int labels (test_*: the split
  evaluated on, the test or the validation split)."""
  if permute:
    perm = pixel_permutation(train_x.shape[1])
    train_x, test_x = train_x[:, perm], test_x[:, perm]
  return sequence_task(name, (train_x[..., None], train_y, None), (test_x[..., None], test_y, None),
                       num_classes)


def sequence_task(name, train, evaluated, num_classes: int) -> Task:
  """A class per sequence, read at its last valid step. train, evaluated: (xs [N, T, F] float32,
  ys [N] int, lengths [N] int valid steps or None when all N have T); the same T and F in both.
  Training batches are drawn uniformly from `train`; `held_out` is `evaluated`, whole."""
  # jnp constants: the sampler only draws indices, so batches never leave the device
  train_x, train_y, train_len = _on_device(*train)
  eval_x, eval_y, eval_len = _on_device(*evaluated)

  def sample(key, batch_size):
    idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
    return Batch(xs=train_x[idx], ys=train_y[idx],
                 lengths=None if train_len is None else train_len[idx])

  def held_out(key, size=None):
    del key  # the evaluated split is fixed
    n = eval_x.shape[0] if size is None else min(size, eval_x.shape[0])
    return Batch(xs=eval_x[:n], ys=eval_y[:n], lengths=None if eval_len is None else eval_len[:n])

  def losses(logits, batch):
    return {"loss": softmax_cross_entropy(logits, batch.ys),
            "accuracy": accuracy(logits, batch.ys)}

  return Task(name=name, input_size=int(train_x.shape[2]), output_size=num_classes,
              per_step=False, classification=True, sample=sample, held_out=held_out,
              losses=losses, seq_len=int(train_x.shape[1]), held_out_size=int(eval_x.shape[0]))


def _on_device(xs, ys, lengths):
  return (jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.int32),
          None if lengths is None else jnp.asarray(lengths, jnp.int32))
