"""Trajectory, digits and mnist against independent rules written here (closed forms, the
shipped data, hand-written IDX files); the synthetic tasks are in test_tasks_synthetic.py."""

import gzip
import struct

import jax
import numpy as np
import pytest

from seqjax import tasks
from seqjax.tasks import digits, trajectory


def _sample(task, n=128, seed=0):
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(seed), n)
  return jax.tree.map(lambda v: None if v is None else np.asarray(v), batch)


def test_trajectory_is_the_closed_form_parabola():
  batch = _sample(tasks.get("trajectory", seq_len=30), 64)
  y = np.concatenate([batch.xs[:, :, 0], batch.ys[:, -1:]], axis=1).astype(np.float64)
  t = np.arange(31) * trajectory.DT
  h0 = y[:, 0] * trajectory.SCALE
  v0 = (y[:, 1] * trajectory.SCALE - h0 + 0.5 * trajectory.G * trajectory.DT ** 2) / trajectory.DT
  expected = (h0[:, None] + v0[:, None] * t - 0.5 * trajectory.G * t ** 2) / trajectory.SCALE
  np.testing.assert_allclose(y, expected, atol=1e-5)
  np.testing.assert_array_equal(batch.ys[:, :-1], batch.xs[:, 1:, 0])   # teacher-forcing shift
  assert (y > 0).all()
  assert (trajectory.H0_MIN <= h0).all() and (h0 <= trajectory.H0_MAX).all()
  assert (v0 > trajectory.V0_MIN - 1e-2).all() and (v0 < trajectory.V0_MAX + 1e-2).all()


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
  batch = _sample(task, 64)
  train_images = images[train_idx][:, perm]
  for x, y in zip(batch.xs[..., 0], batch.ys):
    match = np.nonzero(np.abs(train_images - x).max(axis=1) < 1e-6)[0]
    assert len(match) and y in data.target[train_idx][match]


def _idx_bytes(array, magic):
  return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def fake_mnist(tmp_path):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
                y_train=rng.integers(0, 10, 20, dtype=np.uint8),
                x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
                y_test=rng.integers(0, 10, 10, dtype=np.uint8))
  npz_dir, idx_dir = tmp_path / "npz", tmp_path / "idx"
  npz_dir.mkdir(), idx_dir.mkdir()
  np.savez(npz_dir / "mnist.npz", **arrays)
  for key, name in [("x_train", "train-images-idx3-ubyte"), ("y_train", "train-labels-idx1-ubyte"),
                    ("x_test", "t10k-images-idx3-ubyte"), ("y_test", "t10k-labels-idx1-ubyte")]:
    data = _idx_bytes(arrays[key], 0x803 if key.startswith("x") else 0x801)
    if key == "x_test":
      (idx_dir / (name + ".gz")).write_bytes(gzip.compress(data))
    else:
      (idx_dir / name).write_bytes(data)
  return arrays, npz_dir, idx_dir


def test_mnist_reads_npz_and_idx_alike(fake_mnist):
  arrays, npz_dir, idx_dir = fake_mnist
  for folder in (npz_dir, idx_dir):
    task = tasks.get("mnist", data_dir=str(folder))
    held = task.held_out(jax.random.key(0), None)
    assert task.seq_len == 784 and task.held_out_size == 10
    np.testing.assert_allclose(held.xs[..., 0], arrays["x_test"].reshape(10, 784) / 255.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(held.ys, arrays["y_test"])
    batch = _sample(task, 8)
    train = arrays["x_train"].reshape(20, 784) / 255.0
    for x in batch.xs[..., 0]:
      assert np.abs(train - x).max(axis=1).min() < 1e-6


def test_mnist_errors_name_what_is_wrong(fake_mnist, tmp_path):
  arrays, npz_dir, idx_dir = fake_mnist
  with pytest.raises(ValueError, match="needs --data_dir"):
    tasks.get("mnist")
  with pytest.raises(ValueError, match="not a folder"):
    tasks.get("mnist", data_dir=str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
    tasks.get("mnist", data_dir=str(tmp_path / "empty"))
  labels = idx_dir / "train-labels-idx1-ubyte"
  good = labels.read_bytes()
  labels.write_bytes(good[:-3])
  with pytest.raises(ValueError, match="train-labels-idx1-ubyte: 17 data bytes"):
    tasks.get("mnist", data_dir=str(idx_dir))
  labels.write_bytes(struct.pack(">I", 0x803) + good[4:])
  with pytest.raises(ValueError, match="magic number"):
    tasks.get("mnist", data_dir=str(idx_dir))
  labels.write_bytes(_idx_bytes(np.full(20, 12, np.uint8), 0x801))
  with pytest.raises(ValueError, match="labels outside 0..9"):
    tasks.get("mnist", data_dir=str(idx_dir))
  labels.write_bytes(_idx_bytes(np.zeros(19, np.uint8), 0x801))
  with pytest.raises(ValueError, match="20 train images but labels"):
    tasks.get("mnist", data_dir=str(idx_dir))
  (npz_dir / "mnist.npz").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="mnist.npz"):
    tasks.get("mnist", data_dir=str(npz_dir))


@pytest.mark.parametrize("name", ["trajectory", "decay", "digits"])
def test_samplers_are_deterministic_in_the_key(name):
  task = tasks.get(name)
  a, b, c = _sample(task, 4, 0), _sample(task, 4, 0), _sample(task, 4, 1)
  np.testing.assert_array_equal(a.xs, b.xs)
  assert not np.array_equal(a.xs, c.xs)


@pytest.mark.parametrize("name,kwargs,message", [
    ("trajectory", dict(seq_len=51), "seq_len must be <= 50"),
    ("trajectory", dict(seq_len=3), "seq_len must be an int >= 4"),
    ("nonsense", {}, "unknown task 'nonsense'; allowed: binary_addition"),
])
def test_bad_task_arguments_are_named(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tasks.get(name, **kwargs)
