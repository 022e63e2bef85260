"""Shared machinery of the image-classification tasks (digits, mnist): pixels one per step."""

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.tasks.base import Batch, Option, OptionError, Task, accuracy, softmax_cross_entropy

PERMUTATION_SEED = 0
# --eval_split: "test" (train on all training data, evaluate on the test split: the RWA paper's
# protocol) or "validation" (train on the training data less a fixed validation part, and
# evaluate on that; the test split is left untouched, for the end of a study)
EVAL_SPLITS = ("test", "validation")
PERMUTE = Option("permute", bool, False, "A fixed pixel permutation.")
EVAL_SPLIT = Option("eval_split", str, "test", "What a dataset task is evaluated on: test (train "
                    "on all its training data; the paper's protocol) or validation (train on the "
                    "training data less a fixed validation part, evaluate on that).", EVAL_SPLITS)


def check_eval_split(task: str, eval_split: str) -> str:
  if eval_split not in EVAL_SPLITS:
    raise OptionError("eval_split", eval_split,
                      f"must be one of {', '.join(EVAL_SPLITS)} for the {task} task")
  return eval_split


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
  num_pixels = train_x.shape[1]
  if permute:
    perm = pixel_permutation(num_pixels)
    train_x, test_x = train_x[:, perm], test_x[:, perm]
  # jnp constants: the sampler only draws indices, so batches never leave the device
  train_x, test_x = jnp.asarray(train_x, jnp.float32), jnp.asarray(test_x, jnp.float32)
  train_y, test_y = jnp.asarray(train_y, jnp.int32), jnp.asarray(test_y, jnp.int32)

  def sample(key, batch_size):
    idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
    return Batch(xs=train_x[idx][..., None], ys=train_y[idx], lengths=None)

  def held_out(key, size=None):
    del key  # the test split is fixed
    n = test_x.shape[0] if size is None else min(size, test_x.shape[0])
    return Batch(xs=test_x[:n, :, None], ys=test_y[:n], lengths=None)

  def losses(logits, batch):
    return {"loss": softmax_cross_entropy(logits, batch.ys),
            "accuracy": accuracy(logits, batch.ys)}

  return Task(name=name, input_size=1, output_size=num_classes, per_step=False,
              classification=True, sample=sample, held_out=held_out, losses=losses,
              seq_len=num_pixels, held_out_size=int(test_x.shape[0]))
