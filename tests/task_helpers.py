"""Utilities shared by the task test modules (test_task_*.py, test_tasks.py)."""

import os

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(task, n=128, seed=0):
  """A NumPy copy of a jitted batch of n examples drawn with key `seed`."""
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(seed), n)
  return jax.tree.map(lambda v: None if v is None else np.asarray(v), batch)
