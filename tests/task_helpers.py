"""Utilities shared by the task test modules (test_task_*.py, test_tasks.py)."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import experiment
from seqjax.settings import FIELDS, RunError, Settings
from seqjax.tasks import adding, binary_addition, multi_copy, reber, seq_length, variable_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(task, n=128, seed=0):
  """A NumPy copy of a jitted batch of n examples drawn with key `seed`."""
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(seed), n)
  return jax.tree.map(lambda v: None if v is None else np.asarray(v), batch)


# The synthetic tasks by name; each configuration is compiled once per test session.
MODULES = {"binary_addition": binary_addition, "adding": adding, "seq_length": seq_length,
           "copy": variable_copy, "multi_copy": multi_copy, "reber": reber}
BATCH = 256


@functools.lru_cache(maxsize=None)
def cached_task(name, **options):
  task = MODULES[name].make(**options)
  return task, jax.jit(task.sample, static_argnums=1)


def sample_named(name, n, seed=0, **options):
  """A NumPy copy of the first n examples of a jitted batch drawn with key `seed`.

  Always BATCH examples, so every configuration compiles once whatever n a test wants."""
  _, sampler = cached_task(name, **options)
  batch = sampler(jax.random.key(seed), BATCH)
  return jax.tree.map(lambda v: np.asarray(v)[:n], batch)


def log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits, labels):
  return -np.take_along_axis(log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def logits_with_mistakes(labels, wrong, classes, seed):
  """float32 logits [*labels.shape, classes] whose argmax is `labels` except where `wrong`
  (there it is another class); random values elsewhere so the CE is not a constant."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=labels.shape + (classes,))
  other = (labels + rng.integers(1, classes, labels.shape)) % classes
  winner = np.where(wrong, other, labels)
  np.put_along_axis(logits, winner[..., None], logits.max(axis=-1, keepdims=True) + 1.0, axis=-1)
  return logits.astype(np.float32)


def check_losses(task, outputs, batch, keys):
  values = jax.jit(task.losses)(jnp.asarray(outputs), batch)
  assert set(values) == {"loss", *keys}
  for name, value in values.items():
    assert value.shape == (len(batch.xs),) and value.dtype == jnp.float32, name
  return {name: np.asarray(value) for name, value in values.items()}


def refused(tmp_path, **settings):
  """The one-line RunError message experiment.run gives for tiny `settings`; checks that
  nothing was written. Names that are no Settings field go to its task_options."""
  workdir = tmp_path / "run"
  general = {k: v for k, v in settings.items() if k in FIELDS}
  options = {k: v for k, v in settings.items() if k not in FIELDS}
  try:
    experiment.run(Settings(workdir=str(workdir), seq_len=6, hidden_size=4, batch_size=4,
                            num_steps=1, task_options=options, **general), log=lambda line: None)
  except RunError as error:
    assert not workdir.exists()
    return str(error)
  raise AssertionError(f"{settings} ran")
