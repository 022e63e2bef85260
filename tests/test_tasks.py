"""Task samplers against independent rules written here (Python ints, grammar acceptors,
closed forms), and their losses against NumPy."""

import gzip
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import tasks
from seqjax.tasks import copy as copy_task, digits, reber, trajectory


def _sample(task, n=128, seed=0):
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(seed), n)
  return jax.tree.map(lambda v: None if v is None else np.asarray(v), batch)


@pytest.mark.parametrize("order", ["lsb_first", "msb_first"])
@pytest.mark.parametrize("bits", [3, 8, 40])
def test_binary_addition_targets_are_the_sum_re_added_with_python_ints(order, bits):
  batch = _sample(tasks.get("binary_addition", seq_len=bits, bit_order=order))
  xs, ys = batch.xs.astype(int), batch.ys
  if order == "msb_first":
    xs, ys = xs[:, ::-1], ys[:, ::-1]
  weights = [1 << k for k in range(bits)]
  for x, y in zip(xs, ys):
    a = sum(w * int(v) for w, v in zip(weights, x[:, 0]))
    b = sum(w * int(v) for w, v in zip(weights, x[:, 1]))
    assert a < 2 ** (bits - 1) and b < 2 ** (bits - 1)
    assert sum(w * int(v) for w, v in zip(weights, y)) == a + b
  assert 0.4 < xs[:, : bits - 1].mean() < 0.6  # low bits are fair coins


def test_binary_addition_losses():
  task = tasks.get("binary_addition", seq_len=4)
  batch = _sample(task, 2)
  logits = np.where(jax.nn.one_hot(batch.ys, 2) > 0, 2.0, -1.0)
  logits[0, 1] = logits[0, 1][::-1]  # one wrong bit in example 0
  values = task.losses(jnp.asarray(logits), batch)
  np.testing.assert_allclose(values["accuracy"], [0.75, 1.0])
  np.testing.assert_array_equal(values["sequence_accuracy"], [0.0, 1.0])
  ce = -np.log(np.exp(2) / (np.exp(2) + np.exp(-1)))
  np.testing.assert_allclose(values["loss"], [(3 * ce + (3 + ce)) / 4, ce], rtol=1e-5)


def test_adding_has_exactly_two_markers_and_the_sum_as_target():
  batch = _sample(tasks.get("adding", seq_len=40), 512)
  values, markers = batch.xs[..., 0], batch.xs[..., 1]
  assert ((values >= 0) & (values < 1)).all()
  assert set(np.unique(markers)) == {0.0, 1.0}
  np.testing.assert_array_equal(markers.sum(axis=1), 2)
  np.testing.assert_allclose(batch.ys, (values * markers).sum(axis=1), rtol=1e-6)
  positions = np.nonzero(markers)[1]
  assert positions.min() == 0 and positions.max() == 39  # the whole range is used
  assert abs(positions.mean() - 19.5) < 1.5


def test_seq_length_labels_and_padding():
  batch = _sample(tasks.get("seq_length", seq_len=20), 512)
  lengths = batch.lengths
  assert lengths.min() == 0 and lengths.max() == 20
  np.testing.assert_array_equal(batch.ys, (lengths > 10).astype(int))
  past = np.arange(20)[None, :] >= lengths[:, None]
  assert (batch.xs[..., 0][past] == 0).all()
  assert (batch.xs[..., 0][~past] != 0).all()


@pytest.mark.parametrize("T", [2, 30])
def test_copy_layout_follows_the_paper(T):
  S = copy_task.NUM_RECALL
  batch = _sample(tasks.get("copy", seq_len=T), 256)
  shown = batch.xs.argmax(-1)
  assert batch.xs.shape == (256, 2 * S + T, 9) and (batch.xs.sum(-1) == 1).all()
  delimiters = []
  for x, y in zip(shown, batch.ys):
    symbols = x[:S]
    assert (symbols < 7).all()
    (p,), = np.nonzero(x == 8)
    delimiters.append(p)
    assert S <= p <= S + T - 2
    expected_in = np.full(2 * S + T, 7)
    expected_in[:S], expected_in[p] = symbols, 8
    np.testing.assert_array_equal(x, expected_in)
    expected_out = np.full(2 * S + T, 7)
    expected_out[p + 1:p + 1 + S] = symbols
    np.testing.assert_array_equal(y, expected_out)
  assert min(delimiters) == S and max(delimiters) == S + T - 2


def test_copy_metrics_count_only_recalled_symbols():
  task = tasks.get("copy", seq_len=5)
  batch = _sample(task, 3)
  logits = 5.0 * np.asarray(jax.nn.one_hot(batch.ys, 8))
  p = int(np.nonzero(batch.xs[0].argmax(-1) == 8)[0][0])
  logits[0, p + 4] = np.roll(logits[0, p + 4], 1)          # one recalled symbol wrong
  logits[1, 0] = np.roll(logits[1, 0], 1)                  # one blank step wrong
  values = task.losses(jnp.asarray(logits), batch)
  np.testing.assert_allclose(values["accuracy"], [0.9, 1.0, 1.0])
  np.testing.assert_allclose(values["bits_per_step"], values["loss"] / math.log(2), rtol=1e-6)


REBER = {0: {"B": 1}, 1: {"T": 2, "P": 3}, 2: {"S": 2, "X": 4}, 3: {"T": 3, "V": 5},
         4: {"X": 3, "S": 6}, 5: {"P": 4, "V": 6}, 6: {"E": "end"}}


def _reber_valid(word):
  node = 0
  for letter in word:
    if node == "end" or letter not in REBER[node]:
      return False
    node = REBER[node][letter]
  return node == "end"


@pytest.mark.parametrize("T", [5, 12, 50])
def test_reber_labels_agree_with_an_independent_acceptor(T):
  batch = _sample(tasks.get("reber", seq_len=T), 512)
  assert batch.lengths.max() <= T and batch.lengths.min() >= 5
  labels = []
  for x, L, y in zip(batch.xs, batch.lengths, batch.ys):
    assert (x[:L].sum(-1) == 1).all() and (x[L:] == 0).all()
    word = "".join(reber.LETTERS[i] for i in x[:L].argmax(-1))
    assert _reber_valid(word) == bool(y), word
    if y:
      assert word[0] == "B" and word[-1] == "E"
    labels.append(y)
  assert 0.3 < np.mean(labels) < 0.7
  if T == 50:
    assert len(set(batch.lengths.tolist())) > 5  # varied lengths, not just the shortest path


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


@pytest.mark.parametrize("name", [n for n in tasks.NAMES if n != "mnist"])
def test_samplers_are_deterministic_in_the_key(name):
  task = tasks.get(name)
  a, b, c = _sample(task, 4, 0), _sample(task, 4, 0), _sample(task, 4, 1)
  np.testing.assert_array_equal(a.xs, b.xs)
  assert not np.array_equal(a.xs, c.xs)


@pytest.mark.parametrize("name,kwargs,message", [
    ("binary_addition", dict(seq_len=1), "seq_len must be an int >= 2"),
    ("binary_addition", dict(bit_order="middle"), "bit_order must be one of lsb_first, msb_first"),
    ("adding", dict(seq_len=0), "seq_len"),
    ("copy", dict(seq_len=1), "seq_len"),
    ("reber", dict(seq_len=4), "seq_len must be an int >= 5"),
    ("trajectory", dict(seq_len=51), "seq_len must be <= 50"),
    ("seq_length", dict(seq_len=1), "seq_len"),
    ("nonsense", {}, "unknown task 'nonsense'; allowed: binary_addition"),
])
def test_bad_task_arguments_are_named(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tasks.get(name, **kwargs)
