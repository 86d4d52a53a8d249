"""Devices, the data-parallel mesh, and moving host batches onto it.

One `Mesh` with a single `data` axis spans every device of every process. Batches are sharded along
their leading axis (`NamedSharding(mesh, P('data'))`), the train state is replicated (`P()`), and jit
does the rest: gradients are all-reduced and BatchNorm statistics are global without pmap or axis names.
In a multi-process run each process holds its own slice of the global batch; `shard_batch` assembles
the global array from those slices with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Start JAX's distributed runtime when asked (or when the environment says so: SLURM, Cloud TPU).

    With no arguments and no cluster environment this is a no-op, so single-process runs are unchanged.
    """
    if coordinator_address or num_processes:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D `data` mesh over the first `num_devices` devices (default: all of them, every process)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 0 < num_devices <= len(devices):
            raise ValueError(f"mesh.num_devices={num_devices}, but {len(devices)} devices are available")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> None:
    """Refuse a batch that does not split evenly over the devices, naming the config field."""
    if global_batch_size % mesh.size:
        raise ValueError(f"{field}={global_batch_size} must be a multiple of the {mesh.size} devices of the mesh")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of a global batch (numpy, leading axis) -> global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def process_batch_size(global_batch_size: int) -> int:
    """How many examples of each global batch this process feeds."""
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch size {global_batch_size} must be a multiple of {jax.process_count()} processes")
    return global_batch_size // jax.process_count()
