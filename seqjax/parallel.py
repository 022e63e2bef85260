"""Data parallelism with jax.sharding: the batch is split along a `data` mesh axis, everything
else is replicated, and the compiler inserts the gradient all-reduce (nothing by hand).

Several runs trained as one program (a leading `runs` axis on every array of their state) may
instead be spread whole over the devices along a `runs` mesh axis.

Works the same for one process or several (`jax.distributed`): arrays are built as global
arrays from values every process computes identically.
"""

from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "data"
RUNS = "runs"


def make_mesh(num_devices: Optional[int] = None, axis: str = AXIS) -> jax.sharding.Mesh:
  """A 1-D mesh (axis `data` or `runs`) over the first num_devices devices of every process
  (None: all)."""
  local = jax.local_device_count()
  per_process = local if num_devices is None else num_devices
  if not 1 <= per_process <= local:
    raise ValueError(f"num_devices must be in [1, {local}] (local devices), got {num_devices}")
  by_process = {}
  for d in jax.devices():
    by_process.setdefault(d.process_index, []).append(d)
  devices = [d for _, devs in sorted(by_process.items()) for d in devs[:per_process]]
  # Auto axes: shardings are hints the compiler propagates (not part of the array types)
  return jax.make_mesh((len(devices),), (axis,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh, batch_axis: int = 0):
  return NamedSharding(mesh, P(*([None] * batch_axis), AXIS))


def shard_batch(mesh, batch, batch_axis: int = 0):
  """Inside jit: constrains every leaf of `batch` to be split along its batch axis."""
  if mesh is None:
    return batch
  return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh, batch_axis))


def put_replicated(mesh, tree):
  """A copy of `tree` on every device of the mesh (each process holds the same values)."""
  return put(tree, replicated(mesh))


def put(tree, sharding):
  """`tree`'s values (the same in each process) as global arrays with this sharding."""
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree)


def fetch(tree):
  """NumPy copies of global arrays, also of those whose parts live in other processes (then
  every process must call it: it gathers)."""
  from jax.experimental import multihost_utils

  def one(x):
    if x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)
