"""What every task promises, checked across the registry: the Task record and batch shapes,
the defaults, bad arguments named in one line, the same key giving the same batch. Each task's
own rules are tested in test_task_<module>.py."""

import jax
import numpy as np
import pytest

from seqjax import tasks
from task_helpers import BATCH, MODULES, cached_task, sample, sample_named


@pytest.mark.parametrize("name,options,fields,shapes", [
    ("binary_addition", dict(seq_len=8), (2, 2, True, True, 8),
     ((8, 2), np.float32, (8,), np.int32, False)),
    ("adding", dict(seq_len=30), (2, 1, False, False, 30),
     ((30, 2), np.float32, (), np.float32, False)),
    ("seq_length", dict(seq_len=20), (1, 2, False, True, 20),
     ((20, 1), np.float32, (), np.int32, True)),
    ("copy", dict(seq_len=30), (9, 8, True, True, 50),
     ((50, 9), np.float32, (50,), np.int32, False)),
    ("multi_copy", dict(seq_len=6, num_segments=2), (9, 8, True, True, 52),
     ((52, 9), np.float32, (52,), np.int32, False)),
    ("reber", dict(seq_len=12), (7, 2, False, True, 12),
     ((12, 7), np.float32, (), np.int32, True)),
    ("reber", dict(seq_len=12, data_rules="authors"), (7, 2, False, True, 12),
     ((12, 7), np.float32, (), np.int32, True)),
])
def test_task_records_and_batch_shapes(name, options, fields, shapes):
  task, _ = cached_task(name, **options)
  assert task.name == name
  assert (task.input_size, task.output_size, task.per_step, task.classification,
          task.seq_len) == fields
  x_shape, x_dtype, y_shape, y_dtype, has_lengths = shapes
  batch = sample_named(name, 16, **options)
  assert batch.xs.shape == (16, *x_shape) and batch.xs.dtype == x_dtype
  assert batch.ys.shape == (16, *y_shape) and batch.ys.dtype == y_dtype
  if has_lengths:
    assert batch.lengths.shape == (16,) and batch.lengths.dtype == np.int32
  else:
    assert batch.lengths is None


@pytest.mark.parametrize("name,seq_len,hidden_size,num_steps", [
    ("binary_addition", 8, 16, 2000), ("adding", 100, 250, 50000),
    ("seq_length", 100, 250, 20000), ("copy", 100, 250, 50000), ("reber", 50, 250, 10000)])
def test_defaults(name, seq_len, hidden_size, num_steps):
  assert MODULES[name].DEFAULTS == dict(seq_len=seq_len, hidden_size=hidden_size,
                                        num_steps=num_steps, batch_size=100, learning_rate=1e-3)


@pytest.mark.parametrize("name,options,argument,allowed", [
    ("binary_addition", dict(seq_len=1), "seq_len", ">= 2"),
    ("binary_addition", dict(seq_len=8.0), "seq_len", ">= 2"),
    ("binary_addition", dict(seq_len=True), "seq_len", ">= 2"),
    ("binary_addition", dict(bit_order="middle"), "bit_order", "lsb_first, msb_first"),
    ("binary_addition", dict(bit_order=None), "bit_order", "lsb_first, msb_first"),
    ("adding", dict(seq_len=1), "seq_len", ">= 2"),
    ("adding", dict(seq_len="100"), "seq_len", ">= 2"),
    ("seq_length", dict(seq_len=0), "seq_len", ">= 2"),
    ("seq_length", dict(seq_len=-5), "seq_len", ">= 2"),
    ("copy", dict(seq_len=1), "seq_len", ">= 2"),
    ("copy", dict(seq_len=None), "seq_len", ">= 2"),
    ("reber", dict(seq_len=4), "seq_len", ">= 5"),
    ("reber", dict(seq_len=50.5), "seq_len", ">= 5"),
    ("reber", dict(data_rules="code"), "data_rules", "paper, authors"),
    ("seq_length", dict(data_rules=None), "data_rules", "paper, authors"),
    ("multi_copy", dict(num_segments=0), "num_segments", ">= 1"),
    ("multi_copy", dict(seq_len=1), "seq_len", ">= 2"),
])
def test_make_rejects_bad_arguments_by_name(name, options, argument, allowed):
  with pytest.raises(ValueError) as error:
    MODULES[name].make(**options)
  message = str(error.value)
  assert message.startswith(argument), message
  assert allowed in message and repr(options[argument]) in message, message
  assert "\n" not in message


CONFIGS = [("binary_addition", dict(seq_len=8, bit_order="lsb_first")),
           ("adding", dict(seq_len=40)), ("seq_length", dict(seq_len=20)),
           ("copy", dict(seq_len=30)), ("reber", dict(seq_len=12)),
           ("multi_copy", dict(seq_len=6, num_segments=2)),
           ("seq_length", dict(seq_len=20, data_rules="authors")),
           ("reber", dict(seq_len=12, data_rules="authors"))]


@pytest.mark.parametrize("name,options", CONFIGS,
                         ids=[name + ("-authors" if "data_rules" in options else "")
                              for name, options in CONFIGS])
def test_same_key_same_batch_other_key_other_batch(name, options):
  a, b, c = (sample_named(name, 16, seed, **options) for seed in (7, 7, 8))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.xs, c.xs) and not np.array_equal(a.ys, c.ys)
  task, _ = cached_task(name, **options)
  held = jax.jit(task.held_out, static_argnums=1)(jax.random.key(7), BATCH)
  held = jax.tree.map(lambda v: np.asarray(v)[:16], held)
  for x, y in zip(a, held):
    np.testing.assert_array_equal(x, y)  # synthetic held-out data is drawn like the samples


@pytest.mark.parametrize("name", ["trajectory", "decay", "digits"])
def test_samplers_are_deterministic_in_the_key(name):
  task = tasks.get(name)
  a, b, c = sample(task, 4, 0), sample(task, 4, 0), sample(task, 4, 1)
  np.testing.assert_array_equal(a.xs, b.xs)
  assert not np.array_equal(a.xs, c.xs)


@pytest.mark.parametrize("name,kwargs,message", [
    ("nonsense", {}, "unknown task 'nonsense'; allowed: binary_addition"),
])
def test_bad_task_arguments_are_named(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tasks.get(name, **kwargs)
