"""Multi-process (multi-host) start-up: one call before anything touches a device.

    from hobs_jax.train import distributed
    info = distributed.initialize()          # no-op on a single process

Where the process group comes from, in order:
  1. explicit arguments (``main.py`` passes its --coordinator_address / --num_processes /
     --process_id flags);
  2. the environment variables HOBS_COORDINATOR_ADDRESS, HOBS_NUM_PROCESSES,
     HOBS_PROCESS_ID (``launch/local_multihost.sh`` sets them);
  3. a cluster JAX detects by itself: a multi-worker Cloud TPU slice, a SLURM job step
     with more than one task (srun), or an Open MPI launch (mpirun) -> plain
     ``jax.distributed.initialize()``;
  4. otherwise a single process: nothing to do.

On CPU, cross-process collectives need gloo (``jax_cpu_collectives_implementation``),
which this function selects whenever more than one process is involved.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

log = logging.getLogger(__name__)

ENV_ADDRESS = "HOBS_COORDINATOR_ADDRESS"
ENV_NUM = "HOBS_NUM_PROCESSES"
ENV_ID = "HOBS_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    process_index: int
    process_count: int
    local_device_count: int
    device_count: int
    how: str  # 'single', 'explicit', 'env', 'cluster'


def detected_cluster() -> str | None:
    """The name of a multi-process launcher JAX can auto-detect, from the environment."""
    env = os.environ
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or "," in env.get("TPU_HOSTNAMES", ""):
        return "tpu_pod"
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "open_mpi"
    return None


def _info(how: str) -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(),
                       jax.device_count(), how)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               local_device_ids: list[int] | None = None) -> ProcessInfo:
    """Joins the process group (idempotent); returns this process's place in it.

    Args:
      coordinator_address: 'host:port' of process 0's coordinator service.
      num_processes: total processes.
      process_id: this process's rank in [0, num_processes).
      local_device_ids: restrict this process to some local devices (e.g. one GPU each).
    Raises:
      ValueError: a one-line message when only some of the three are given or they are
        inconsistent.
    """
    if jax.distributed.is_initialized():
        return _info("already")
    how = "explicit"
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        env = os.environ
        if any(k in env for k in (ENV_ADDRESS, ENV_NUM, ENV_ID)):
            how = "env"
            coordinator_address = env.get(ENV_ADDRESS)
            num_processes = int(env[ENV_NUM]) if ENV_NUM in env else None
            process_id = int(env[ENV_ID]) if ENV_ID in env else None
        else:
            cluster = detected_cluster()
            if cluster is None:
                return _info("single")
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            log.info("jax.distributed.initialize(): auto-detected %s", cluster)
            jax.distributed.initialize(local_device_ids=local_device_ids)
            return _info("cluster")
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"distributed.initialize ({how}): {', '.join(missing)} missing; give "
                         f"all of coordinator_address, num_processes, process_id")
    assert num_processes is not None and process_id is not None  # none is missing (above)
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"distributed.initialize: process_id={process_id} not in "
                         f"[0, num_processes={num_processes})")
    if num_processes == 1:
        return _info("single")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
    return _info(how)
