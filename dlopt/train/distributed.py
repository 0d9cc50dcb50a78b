"""Several processes (hosts) joined into one JAX runtime by `jax.distributed.initialize`.

Every process runs the same program; `initialize` must come before any JAX computation.
`dlopt.train.fit` calls it first thing, so a script that only calls `fit` needs nothing
more than the environment:

    DLOPT_COORDINATOR=10.0.0.1:1234 DLOPT_NUM_PROCESSES=2 DLOPT_PROCESS_ID=0 python train.py
    DLOPT_COORDINATOR=10.0.0.1:1234 DLOPT_NUM_PROCESSES=2 DLOPT_PROCESS_ID=1 python train.py

(`python -m dlopt.launch --num-processes 2 -- train.py` does this on one machine). JAX's
own variables, `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, work
the same (the `DLOPT_` ones win where both are set). On
clusters JAX knows (Cloud TPU pods, SLURM, Open MPI, Kubernetes) set `DLOPT_DISTRIBUTED=auto`
instead and JAX reads the cluster's own variables.

>>> from dlopt.train import initialize_distributed
>>> initialize_distributed()        # no variables set: one process, nothing to do
False
"""

from __future__ import annotations

import os

import jax

__all__ = ["initialize", "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]

ENV_COORDINATOR = "DLOPT_COORDINATOR"          # host:port of process 0's coordinator
ENV_NUM_PROCESSES = "DLOPT_NUM_PROCESSES"
ENV_PROCESS_ID = "DLOPT_PROCESS_ID"
ENV_AUTO = "DLOPT_DISTRIBUTED"                 # "auto": let JAX detect the cluster
ENV_HEARTBEAT = "DLOPT_HEARTBEAT_TIMEOUT"      # seconds until a silent process counts as dead
ENV_INIT_TIMEOUT = "DLOPT_INIT_TIMEOUT"        # seconds to wait for every process to join
ENV_SHUTDOWN_TIMEOUT = "DLOPT_SHUTDOWN_TIMEOUT"
# JAX's own names for the first three, read when dlopt's are not set.
JAX_ENV = {ENV_COORDINATOR: "JAX_COORDINATOR_ADDRESS", ENV_NUM_PROCESSES: "JAX_NUM_PROCESSES",
           ENV_PROCESS_ID: "JAX_PROCESS_ID"}


def _env_name(name: str) -> str:
  """`name`, or JAX's variable for it when only that one is set."""
  if not os.environ.get(name) and os.environ.get(JAX_ENV.get(name, "")):
    return JAX_ENV[name]
  return name


def _env_int(name: str, value: int | None) -> int | None:
  name = _env_name(name)
  if value is not None or not os.environ.get(name):
    return value
  try:
    return int(os.environ[name])
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer; got "
                     f"{os.environ[name]!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool | None = None,
               heartbeat_timeout_seconds: int | None = None,
               initialization_timeout: int | None = None,
               shutdown_timeout_seconds: int | None = None) -> bool:
  """Joins this process to the others with `jax.distributed.initialize`, once.

  Each argument left None is read from its environment variable (`DLOPT_COORDINATOR`,
  `DLOPT_NUM_PROCESSES`, `DLOPT_PROCESS_ID`, `DLOPT_HEARTBEAT_TIMEOUT`, `DLOPT_INIT_TIMEOUT`,
  `DLOPT_SHUTDOWN_TIMEOUT`; `DLOPT_DISTRIBUTED=auto` for `auto`), the first three else
  from JAX's `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. With neither a
  coordinator nor `auto`, or with one process, there is nothing to join and nothing happens.
  CPU collectives go through gloo (a no-op for GPU and TPU).

  Args:
    coordinator_address: "host:port" of process 0, where it serves the coordinator.
    num_processes: the number of processes, >= 1.
    process_id: this process's id in [0, num_processes).
    auto: let JAX detect the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes) for the
      values not given.
    heartbeat_timeout_seconds: a process silent this long counts as dead, and the others
      fail instead of waiting (JAX's default 100).
    initialization_timeout: seconds to wait for all processes to join (default 300).
    shutdown_timeout_seconds: seconds a finishing process waits for the others (300).

  Returns:
    True when this process is part of a multi-process run (now or already), else False.

  Raises:
    ValueError: on inconsistent or malformed values.
    RuntimeError: when JAX has already computed something in this process (initialize
      must come first).
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = (coordinator_address or os.environ.get(_env_name(ENV_COORDINATOR))
                         or None)
  num_processes = _env_int(ENV_NUM_PROCESSES, num_processes)
  process_id = _env_int(ENV_PROCESS_ID, process_id)
  if auto is None:
    auto = os.environ.get(ENV_AUTO, "").strip().lower() == "auto"
  if coordinator_address is None and not auto:
    if num_processes not in (None, 1):
      raise ValueError(f"num_processes={num_processes} needs a coordinator_address (or "
                       f"{ENV_COORDINATOR}, or {ENV_AUTO}=auto on a cluster JAX knows)")
    return False
  if num_processes == 1:
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes must be >= 1; got {num_processes}")
  if (num_processes is not None and process_id is not None
      and not 0 <= process_id < num_processes):
    raise ValueError(f"process_id must be in [0, {num_processes}); got {process_id}")
  if not auto and (num_processes is None or process_id is None):
    raise ValueError(f"coordinator_address={coordinator_address!r} needs num_processes "
                     f"({ENV_NUM_PROCESSES} or {JAX_ENV[ENV_NUM_PROCESSES]}) and process_id "
                     f"({ENV_PROCESS_ID} or {JAX_ENV[ENV_PROCESS_ID]})")
  timeouts = {
      "heartbeat_timeout_seconds": _env_int(ENV_HEARTBEAT, heartbeat_timeout_seconds),
      "initialization_timeout": _env_int(ENV_INIT_TIMEOUT, initialization_timeout),
      "shutdown_timeout_seconds": _env_int(ENV_SHUTDOWN_TIMEOUT, shutdown_timeout_seconds),
  }
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               **{k: v for k, v in timeouts.items() if v is not None})
  except RuntimeError as error:
    if "must be called before" in str(error):
      raise RuntimeError("dlopt.train.initialize_distributed() (or fit with "
                         f"{ENV_COORDINATOR} set) must run before any JAX computation in "
                         f"the process: {error}") from error
    raise
  return True
