"""Sequential MNIST: 784 steps of one pixel (/255); `permute` for permuted MNIST.

Reads `data_dir/mnist.npz` (keys x_train, y_train, x_test, y_test, as Keras ships it) or the four
IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each optionally .gz). Nothing is ever downloaded.
"""

import gzip
import os
import struct
import zipfile

import numpy as np

from seqjax.tasks._dataset import classification_task

IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
DEFAULTS = dict(seq_len=784, hidden_size=250, num_steps=250000, batch_size=100,
                learning_rate=1e-3)


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


def _find(data_dir: str, name: str):
  for candidate in (name, name + ".gz"):
    path = os.path.join(data_dir, candidate)
    if os.path.exists(path):
      return path
  return None


def load(data_dir: str):
  """(train_x [N, 784] float32 in [0, 1], train_y, test_x, test_y); ValueError naming the file."""
  if data_dir is None:
    raise ValueError("the mnist task needs --data_dir: a folder with mnist.npz or the four IDX "
                     "files (nothing is downloaded)")
  if not os.path.isdir(data_dir):
    raise ValueError(f"--data_dir={data_dir} is not a folder")
  npz = os.path.join(data_dir, "mnist.npz")
  if os.path.exists(npz):
    try:
      with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
      raise ValueError(f"{npz}: not a usable mnist.npz with x_train, y_train, x_test, y_test "
                       f"({e})") from None
    arrays = [arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]]
    source = npz
  else:
    paths = {k: _find(data_dir, v) for k, v in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
      raise ValueError(f"--data_dir={data_dir} has no mnist.npz and lacks the IDX files "
                       f"{', '.join(missing)} (optionally .gz)")
    arrays = [_read_idx(paths["train_x"], IMAGE_MAGIC, 3), _read_idx(paths["train_y"], LABEL_MAGIC, 1),
              _read_idx(paths["test_x"], IMAGE_MAGIC, 3), _read_idx(paths["test_y"], LABEL_MAGIC, 1)]
    source = data_dir
  out = []
  for split, (x, y) in (("train", arrays[:2]), ("test", arrays[2:])):
    if x.ndim != 3 or x.shape[1:] != (28, 28):
      raise ValueError(f"{source}: {split} images have shape {x.shape}, expected [N, 28, 28]")
    if y.shape != (x.shape[0],):
      raise ValueError(f"{source}: {x.shape[0]} {split} images but labels of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
      raise ValueError(f"{source}: {split} labels outside 0..9")
    out += [x.reshape(len(x), 784).astype(np.float32) / 255.0, y.astype(np.int32)]
  return tuple(out)


def make(data_dir: str = None, permute: bool = False):
  return classification_task("mnist", *load(data_dir), permute=permute)
