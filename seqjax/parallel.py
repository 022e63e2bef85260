"""Data parallelism with jax.sharding: the batch is split along a `data` mesh axis, everything
else is replicated, and the compiler inserts the gradient all-reduce (nothing by hand).

Works the same for one process or several (`jax.distributed`): arrays are built as global
arrays from values every process computes identically.
"""

from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A 1-D `data` mesh over the first num_devices devices of every process (None: all)."""
  local = jax.local_device_count()
  per_process = local if num_devices is None else num_devices
  if not 1 <= per_process <= local:
    raise ValueError(f"num_devices must be in [1, {local}] (local devices), got {num_devices}")
  by_process = {}
  for d in jax.devices():
    by_process.setdefault(d.process_index, []).append(d)
  devices = [d for _, devs in sorted(by_process.items()) for d in devs[:per_process]]
  # Auto axes: shardings are hints the compiler propagates (not part of the array types)
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
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
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)
