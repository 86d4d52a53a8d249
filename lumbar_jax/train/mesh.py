"""Devices, the data-parallel mesh, and moving host batches onto it.

One `Mesh` with a single `data` axis spans every device of every process. Batches are sharded along
their leading axis (`NamedSharding(mesh, P('data'))`), the train state is replicated (`P()`), and jit
does the rest: gradients are all-reduced and BatchNorm statistics are global without pmap or axis names.
In a multi-process run each process holds its own slice of the global batch; `shard_batch` assembles
the global array from those slices with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def detect_cluster():
    """JAX's cluster environment (a `jax._src.clusters.ClusterEnv` class) that launched this process together
    with others, or None for a single-process launch.

    Uses JAX's own detection (what `jax.distributed.initialize()` with no arguments would pick), restricted
    to launches of more than one process, so single-process runs stay single-process:
      - SLURM: `srun` with more than one task (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
        SLURM_LOCALID set and SLURM_STEP_NUM_TASKS > 1). A batch script that runs python itself (no srun),
        or `srun -n 1`, is one process.
      - Open MPI: `mpirun -np N`, N > 1 (OMPI_COMM_WORLD_SIZE > 1).
      - Cloud TPU: a TPU VM whose slice has more than one worker (GCE metadata `agent-worker-number` /
        `worker-network-endpoints`, or TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES on GKE). A single-host
        TPU VM is one process.
    """
    try:  # JAX's detection; private, hence imported here only
        from jax._src import cloud_tpu_init, clusters
    except ImportError:  # moved in a later JAX: no auto-detection, explicit config.distributed still works
        log.warning("jax._src.clusters not found: cluster auto-detection is off; set config.distributed.*")
        return None

    env = os.environ
    if clusters.SlurmCluster.is_env_present() and int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"])) > 1:
        return clusters.SlurmCluster
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return clusters.OmpiCluster
    if cloud_tpu_init.running_in_cloud_tpu_vm:
        for cluster in (clusters.GkeTpuCluster, clusters.GceTpuCluster):
            if cluster.is_env_present() and cluster.get_process_count() > 1:
                return cluster
    return None


def _local_device_ids(cluster) -> list[int] | None:
    """GPUs this process drives: None = every visible one. One task per node drives all of the node's GPUs;
    several tasks per node drive one GPU each (the task's local rank), unless the launcher already left each
    task a single visible GPU (`srun --gpus-per-task=1`, CUDA_VISIBLE_DEVICES=one id). TPUs: always None."""
    env = os.environ
    if cluster.__name__ == "SlurmCluster":
        tasks = int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]))
        tasks_per_node = tasks / int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", tasks)))
    elif cluster.__name__ == "OmpiCluster":
        tasks_per_node = int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
    else:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES", env.get("ROCR_VISIBLE_DEVICES", ""))
    if tasks_per_node <= 1 or (visible and len(visible.split(",")) == 1):
        return None
    return [cluster.get_local_process_id()]


def _config_error(field: str, message: str) -> Exception:
    from lumbar_jax.train.config import ConfigError  # the error main.py reports as `error: config.<field>: ...`

    return ConfigError(f"config.distributed.{field}: {message}")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Start JAX's distributed runtime for a multi-process run; a no-op for a single-process one.

    Multi-process when the arguments say so (`config.distributed.*`: all three, or on a detected cluster any
    subset, the rest taken from the cluster) or when `detect_cluster()` finds a launch of several processes
    (srun, mpirun, a multi-host Cloud TPU slice). With no arguments and no such launch (a plain
    `python -m lumbar_jax.main`, one process driving every local GPU), nothing is started. Must run before
    anything touches a JAX device; a second call (the runtime already up) only logs. An impossible
    combination raises `ConfigError` naming the `config.distributed` field.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if num_processes is not None and num_processes < 1:
        raise _config_error("num_processes", f"must be >= 1, got {num_processes}")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise _config_error("process_id", f"{process_id} must be in 0..config.distributed.num_processes - 1 "
                            f"(num_processes={num_processes})")
    if jax.distributed.is_initialized():
        log.info("distributed runtime already initialised: process %d of %d", jax.process_index(),
                 jax.process_count())
        return
    cluster = detect_cluster()
    explicit = any(v is not None for v in given.values())
    if cluster is None and (not explicit or (num_processes == 1 and coordinator_address is None)):
        if process_id not in (None, 0):
            raise _config_error("process_id", f"{process_id} given for a single-process run "
                                "(config.distributed.num_processes is unset or 1)")
        log.info("single process: %d local devices", jax.local_device_count())
        return
    local_device_ids = None
    if cluster is None:
        missing = [f for f, v in given.items() if v is None]
        if missing:
            raise _config_error(missing[0], "required for a multi-process run outside SLURM (srun), Open MPI "
                                "(mpirun) or a Cloud TPU pod slice (got " + ", ".join(
                                    f"config.distributed.{f}={v!r}" for f, v in given.items()) + ")")
    else:
        if num_processes is None:
            num_processes = cluster.get_process_count()
        if process_id is None:
            process_id = cluster.get_process_id()
        if coordinator_address is None:
            if cluster.__name__ == "OmpiCluster" and "OMPI_MCA_orte_hnp_uri" not in os.environ:
                raise _config_error("coordinator_address", "Open MPI >= 5 does not tell JAX where process 0 "
                                    "runs: set it to HOST:PORT of rank 0 (any free port)")
            coordinator_address = cluster.get_coordinator_address(
                timeout_secs=300, override_coordinator_port=os.environ.get("JAX_COORDINATOR_PORT"))
        local_device_ids = _local_device_ids(cluster)
    log.info("starting JAX distributed runtime: process %d of %d, coordinator %s%s", process_id, num_processes,
             coordinator_address, f" ({cluster.__name__})" if cluster else "")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               cluster_detection_method="deactivate")
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D `data` mesh over the first `num_devices` devices (default: all of them, every process)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 0 < num_devices <= len(devices):
            raise ValueError(f"mesh.num_devices={num_devices}, but {len(devices)} devices are available")
        devices = devices[:num_devices]
    per_process = np.bincount([d.process_index for d in devices], minlength=jax.process_count())
    if len(set(per_process)) > 1:  # every process feeds its share of each batch to its own devices
        raise ValueError(f"mesh.num_devices={num_devices} leaves the {jax.process_count()} processes "
                         f"{per_process.tolist()} devices; use all devices or the same number from each")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> None:
    """Refuse a batch that does not split evenly over the devices, naming the config field."""
    if global_batch_size % mesh.size:
        from lumbar_jax.train.config import ConfigError

        raise ConfigError(f"config.{field}={global_batch_size} must be a multiple of the {mesh.size} devices of "
                          f"the mesh ({jax.process_count()} process(es)); the batch size is global")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of a global batch (numpy, leading axis) -> global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def process_batch_size(global_batch_size: int) -> int:
    """How many examples of each global batch this process feeds."""
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch size {global_batch_size} must be a multiple of {jax.process_count()} processes")
    return global_batch_size // jax.process_count()
