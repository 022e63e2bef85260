"""Checkpoints as msgpack (flax.serialization: arrays and containers only, no pickle), written
atomically: a crash mid-write leaves the previous checkpoint as it was."""

import os

import jax
from flax import serialization

FILENAME = "checkpoint.msgpack"


class CheckpointError(Exception):
  """A checkpoint that exists but cannot be used; the message names the file."""


def path_in(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def save(path: str, state) -> None:
  data = serialization.to_bytes(jax.device_get(state))
  write_atomic(path, data)


def restore(path: str, target):
  """Restores into the structure of `target` (shapes and dtypes must match exactly)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    restored = serialization.from_bytes(target, data)
  except Exception as e:  # msgpack, structure and shape errors all mean the same to the user
    raise CheckpointError(f"checkpoint {path} is corrupt or does not match this configuration "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    if got.shape != want.shape or got.dtype != want.dtype:
      raise CheckpointError(f"checkpoint {path} does not match this configuration: an array is "
                            f"{got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}")
  return restored


def write_atomic(path: str, data) -> None:
  """Writes bytes or str to `path` via a temporary file and rename (atomic on POSIX)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
