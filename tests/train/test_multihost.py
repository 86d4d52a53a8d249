"""Multi-process training on one machine: 2 CPU processes x 2 fake devices (JAX distributed runtime, gloo
collectives) train the same fold as 1 process x 4 devices, through the real entry `cross_validation.cross_validate`, and
end with the same parameters, metrics and held-out score; the 2-process checkpoint restores and evaluates in
one process on one device. Plus `mesh.initialize_distributed`'s decisions (cluster detection, config errors).

The workers are `tests/train/multihost_worker.py` subprocesses with their own XLA_FLAGS (the conftest's
4 fake devices are for this process).
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lumbar_jax import cross_validation, evaluate, rundir
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train.init import study_model_state
from lumbar_jax.train.state import CheckpointStore
from tests.train.multihost_worker import multihost_config

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
WORKER_TIMEOUT_S = 300
TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_workers(data_dir: str, workdir: str, out_dir, num_processes: int = 2, local_devices: int = 2):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}", JAX_PLATFORMS="cpu")
    address = f"localhost:{_free_port()}"
    workers = []
    for p in range(num_processes):
        log = open(out_dir / f"worker{p}.log", "w")
        cmd = [sys.executable, WORKER, "--data_dir", data_dir, "--workdir", workdir,
               "--out", str(out_dir / f"worker{p}.json"), "--coordinator_address", address,
               "--num_processes", str(num_processes), "--process_id", str(p)]
        workers.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return workers


def _wait(workers, out_dir) -> list[dict]:
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    codes = []
    try:
        for proc, _ in workers:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for proc, log in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if codes is None or any(codes):
        logs = "\n".join(f"--- worker {p} (exit {proc.returncode}) ---\n"
                         + open(out_dir / f"worker{p}.log").read()[-6000:] for p, (proc, _) in enumerate(workers))
        pytest.fail(f"worker processes {'timed out' if codes is None else 'failed'}:\n{logs}")
    return [json.load(open(out_dir / f"worker{p}.json")) for p in range(len(workers))]


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(rundir.fold_dir(workdir, 0), "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "train/studies_per_s"} for line in f]


def _checkpoint(config, workdir: str, which: str, mesh) -> tuple[dict, dict]:
    _, template = study_model_state(config, mesh)
    store = CheckpointStore(rundir.checkpoints_dir(workdir, 0))
    try:
        state, meta = store.restore(template, which)
    finally:
        store.close()
    return jax.device_get(state), meta


def _leaves(state) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def _abs_diff(key: str, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b| outside the attention key biases, max |a - b| of the key biases).

    A key bias adds the same q.b to every logit of a query, which softmax ignores: its gradient is zero but
    for float round-off, and round-off differs with the order of the gradient all-reduce (4 devices in one
    process vs 2 x 2 over gloo). Adam divides that noise by its own magnitude, so these entries move by
    noise-sized, sign-random steps (bounded by the learning rate) and are compared separately.
    """
    key_bias = np.zeros(a.shape, bool)
    for name, parts, index in (("['qkv']['bias']", 3, 1), ("['kv']['bias']", 2, 0)):  # q|k|v and k|v layouts
        if name in key and a.ndim == 1:  # (parameters and their Adam moments)
            width = a.size // parts
            key_bias[index * width:(index + 1) * width] = True
    d = np.abs(a - b)
    return float(d[~key_bias].max(initial=0.0)), float(d[key_bias].max(initial=0.0))


def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(data_dir, tmp_path, monkeypatch):
    assert jax.device_count() >= 4 and jax.process_count() == 1
    for name in CLUSTER_VARS:  # the reference run here is a single process, whatever CI runs under
        monkeypatch.delenv(name, raising=False)
    multi_dir, single_dir = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
    workers = _start_workers(data_dir, multi_dir, tmp_path)
    try:  # the 1-process x 4-device reference, here, while the workers run
        single_config = multihost_config(data_dir)
        single_config.mesh.num_devices = 4
        assert cross_validation.cross_validate(single_config, single_dir) is None  # one fold of two: no CV summary yet
    finally:
        reports = _wait(workers, tmp_path)

    # Both processes ran in one 4-device runtime and agree on the result process 0 wrote.
    assert [(r["process_index"], r["process_count"], r["local_devices"], r["devices"]) for r in reports] == [
        (0, 2, 2, 4), (1, 2, 2, 4)]
    multi, single = rundir.read_fold_result(multi_dir, 0), rundir.read_fold_result(single_dir, 0)
    assert all(r["val_score"] == multi["val"]["score"] and r["best_step"] == multi["best_step"] for r in reports)

    # Same held-out predictions, score and best step as 1 process x 4 devices.
    assert multi["best_step"] == single["best_step"]
    assert multi["val_indices"] == single["val_indices"]
    np.testing.assert_allclose(multi["val_probs"], single["val_probs"], atol=TOLERANCE)
    assert multi["val"]["score"] == pytest.approx(single["val"]["score"], abs=TOLERANCE)

    # Same metrics, written once (by process 0 only): same lines, same values.
    multi_metrics, single_metrics = _metrics(multi_dir), _metrics(single_dir)
    assert [sorted(m) for m in multi_metrics] == [sorted(m) for m in single_metrics]
    for m, s in zip(multi_metrics, single_metrics):
        np.testing.assert_allclose([m[k] for k in sorted(m)], [s[k] for k in sorted(s)], rtol=TOLERANCE,
                                   atol=TOLERANCE)
    assert len(os.listdir(os.path.join(rundir.fold_dir(multi_dir, 0), "tensorboard"))) == 1
    assert json.load(open(os.path.join(multi_dir, "config.json")))["distributed"]["num_processes"] == 2

    # Same parameters and optimizer state in the final (latest) checkpoints, restored on 1 device.
    one_device = mesh_lib.make_mesh(1)
    (multi_state, multi_meta), (single_state, single_meta) = (
        _checkpoint(single_config, d, "latest", one_device) for d in (multi_dir, single_dir))
    assert multi_meta["step"] == single_meta["step"] == single_config.train.steps
    assert multi_meta["best"]["step"] == single_meta["best"]["step"] == multi["best_step"]
    assert multi_meta["best"]["score"] == pytest.approx(single_meta["best"]["score"], abs=TOLERANCE)
    multi_leaves, single_leaves = _leaves(multi_state), _leaves(single_state)
    assert multi_leaves.keys() == single_leaves.keys() and multi_leaves
    diffs = {k: _abs_diff(k, multi_leaves[k], single_leaves[k]) for k in multi_leaves}
    max_diff, key_bias_diff = max(d for d, _ in diffs.values()), max(d for _, d in diffs.values())
    print(f"max |2-process - 1-process| over {len(diffs)} state leaves: {max_diff:.3g} "
          f"(attention key biases: {key_bias_diff:.3g})")
    assert max_diff < TOLERANCE
    assert key_bias_diff < single_config.train.lr * single_config.train.steps  # Adam's bound: see _abs_diff

    # The 2-process run's best checkpoint, evaluated in this (single) process on one device, reproduces its
    # held-out score.
    report = evaluate.evaluate_run(multi_dir, folds=[0], mesh=one_device)
    assert report["devices"] == 1 and report["folds"][0]["step"] == multi["best_step"]
    assert report["folds"][0]["val"]["score"] == pytest.approx(multi["val"]["score"], abs=TOLERANCE)


# ------------------------------------------------------------------ initialize_distributed's decisions

CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                "OMPI_MCA_orte_hnp_uri", "CUDA_VISIBLE_DEVICES", "JAX_COORDINATOR_PORT")


@pytest.fixture
def launch(monkeypatch):
    """Fake a launcher's environment; returns the list of jax.distributed.initialize calls made."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))

    def set_env(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        return calls
    return set_env


def _slurm(tasks: int, nodes: int, procid: int = 1, localid: int = 1) -> dict:
    return dict(SLURM_JOB_ID=4242, SLURM_STEP_NODELIST="gpu[003-004]", SLURM_NTASKS=tasks, SLURM_PROCID=procid,
                SLURM_LOCALID=localid, SLURM_STEP_NUM_TASKS=tasks, SLURM_STEP_NUM_NODES=nodes)


def test_single_process_launches_start_nothing(launch):
    calls = launch()
    mesh_lib.initialize_distributed()  # plain python
    mesh_lib.initialize_distributed(num_processes=1)
    launch(**_slurm(tasks=1, nodes=1, procid=0, localid=0))  # srun -n 1 / one task
    mesh_lib.initialize_distributed()
    launch(OMPI_COMM_WORLD_SIZE=1, OMPI_COMM_WORLD_RANK=0)  # mpirun -np 1
    mesh_lib.initialize_distributed()
    assert mesh_lib.detect_cluster() is None and calls == []


@pytest.mark.parametrize("tasks, nodes, env, local_device_ids", [
    (2, 2, {}, None),  # one task per node: it drives every GPU of its node
    (8, 2, {}, [1]),  # one task per GPU: the task's local rank
    (8, 2, {"CUDA_VISIBLE_DEVICES": "5"}, None),  # srun --gpus-per-task=1 already left it one GPU
])
def test_slurm_srun_is_detected(launch, tasks, nodes, env, local_device_ids):
    calls = launch(**_slurm(tasks, nodes), **env)
    assert mesh_lib.detect_cluster().__name__ == "SlurmCluster"
    mesh_lib.initialize_distributed()
    port = 4242 % 2**12 + 65535 - 2**12 + 1  # JAX's SLURM port choice (from the job id)
    assert calls == [dict(coordinator_address=f"gpu003:{port}", num_processes=tasks, process_id=1,
                          local_device_ids=local_device_ids, cluster_detection_method="deactivate")]


def test_open_mpi_is_detected_and_explicit_fields_win(launch):
    calls = launch(OMPI_COMM_WORLD_SIZE=4, OMPI_COMM_WORLD_RANK=3, OMPI_COMM_WORLD_LOCAL_RANK=1,
                   OMPI_COMM_WORLD_LOCAL_SIZE=2, OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1:34911")
    mesh_lib.initialize_distributed()
    mesh_lib.initialize_distributed(coordinator_address="head:1234")
    assert [(c["coordinator_address"], c["num_processes"], c["process_id"], c["local_device_ids"]) for c in calls] == [
        ("10.96.0.1:" + str(1531576320 // 2**12 % 2**12 + 65535 - 2**12 + 1), 4, 3, [1]), ("head:1234", 4, 3, [1])]


@pytest.mark.parametrize("kwargs, env, field", [
    (dict(num_processes=2, process_id=0), {}, "config.distributed.coordinator_address"),
    (dict(coordinator_address="head:1234", process_id=1), {}, "config.distributed.num_processes"),
    (dict(coordinator_address="head:1234", num_processes=2), {}, "config.distributed.process_id"),
    (dict(coordinator_address="head:1234", num_processes=2, process_id=2), {}, "config.distributed.process_id"),
    (dict(num_processes=0), {}, "config.distributed.num_processes"),
    (dict(process_id=1), {}, "config.distributed.process_id"),
    ({}, dict(OMPI_COMM_WORLD_SIZE=2, OMPI_COMM_WORLD_RANK=0), "config.distributed.coordinator_address"),
])
def test_impossible_distributed_settings_name_the_config_field(launch, kwargs, env, field):
    calls = launch(**env)
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
        mesh_lib.initialize_distributed(**kwargs)
    assert calls == []


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size"])
def test_global_batch_that_does_not_split_over_the_devices_is_refused(tmp_path, field):
    config = config_lib.default_config()
    config.train[field] = 6  # global: 6 rows cannot be spread over the 4 devices
    with pytest.raises(config_lib.ConfigError, match=rf"config\.train\.{field}=6 must be a multiple of the 4"):
        cross_validation.cross_validate(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
