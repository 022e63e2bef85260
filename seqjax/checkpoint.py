"""Checkpoints as msgpack (flax.serialization: arrays and containers only, no pickle), written
atomically: a crash mid-write leaves the previous checkpoint as it was."""

import os
from typing import Optional

import jax
from flax import serialization

FILENAME = "checkpoint.msgpack"


class CheckpointError(Exception):
  """A checkpoint that exists but cannot be used; the message names the file."""


def path_in(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


# The key of the host-side values (a dict of arrays) saved next to the state in the same file,
# so both are written in one atomic replace.
HOST = "host"


def save(path: str, state, host: Optional[dict] = None) -> None:
  """state, and `host` (arrays the training loop keeps on the host, e.g. the running train-loss
  sum) read back by `read_host`."""
  tree = serialization.to_state_dict(jax.device_get(state))
  if host:
    tree = dict(tree, **{HOST: host})
  write_atomic(path, serialization.msgpack_serialize(tree))


def _read(path: str) -> dict:
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def read_host(path: str) -> dict:
  """The host values saved with the state ({} where none were)."""
  try:
    return dict(_read(path).get(HOST) or {})
  except Exception as e:  # restore has already read it; anything here is a corrupt file
    raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__})") from None


def restore(path: str, target):
  """Restores into the structure of `target` (shapes and dtypes must match exactly)."""
  try:
    tree = _read(path)
    tree.pop(HOST, None)
    restored = serialization.from_state_dict(target, tree)
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
