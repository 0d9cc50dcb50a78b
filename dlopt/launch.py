"""Starts N local processes of one training script, joined as one multi-process JAX run.

    python -m dlopt.launch --num-processes 2 --devices-per-process 2 -- \\
        examples/mnist_cnn.py --tiny --parallel fsdp --workdir runs/two

Each child gets `DLOPT_COORDINATOR` (a free port on 127.0.0.1), `DLOPT_NUM_PROCESSES` and
`DLOPT_PROCESS_ID`, which `dlopt.train.fit` hands to `jax.distributed.initialize`;
`--devices-per-process K` makes each child a CPU process with K fake devices, for trying
multi-process training on one machine (without it every child sees all of the machine's
devices: for the GPUs of one host, run one process with `--parallel mesh` instead). The
children's output is streamed with a `[i]` prefix. When one exits non-zero the others are
terminated and the launcher exits with that code, so no process waits forever on a dead
peer; `--timeout` bounds the whole run; Ctrl-C asks all to save a checkpoint and stop.

This is a local stand-in for a cluster's launcher (SLURM, mpirun, a TPU pod's): on real
hosts start one process per host with the same variables set (see
`dlopt.train.distributed`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

__all__ = ["main", "launch", "child_environment", "free_port"]

GRACE_SECONDS = 5.0      # between SIGTERM and SIGKILL
STOP_SECONDS = 60.0      # after Ctrl-C, for the children to save a checkpoint and exit
HEARTBEAT_SECONDS = 10   # children on one machine: a dead peer is noticed this fast


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def child_environment(base: dict, *, process_id: int, num_processes: int, port: int,
                      devices_per_process: int | None, stamp: str) -> dict:
  """The environment of child `process_id`: `base` plus the variables that join it."""
  env = dict(base)
  env.update({
      "DLOPT_COORDINATOR": f"127.0.0.1:{port}",
      "DLOPT_NUM_PROCESSES": str(num_processes),
      "DLOPT_PROCESS_ID": str(process_id),
      "DLOPT_RUN_STAMP": stamp,  # one default run directory name for all children
      "PYTHONUNBUFFERED": "1",
  })
  env.setdefault("DLOPT_HEARTBEAT_TIMEOUT", str(HEARTBEAT_SECONDS))
  if devices_per_process is not None:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
  return env


def _command(argv: Sequence[str]) -> list[str]:
  """A script path or `-m module` runs under this Python; anything else as given."""
  if argv[0].endswith(".py") or argv[0] == "-m":
    return [sys.executable, *argv]
  return list(argv)


def _stream(prefix: str, source: IO[bytes], sink: IO[str], lock: threading.Lock) -> None:
  for raw in iter(source.readline, b""):
    line = raw.decode(errors="replace").rstrip("\n")
    with lock:
      sink.write(f"{prefix}{line}\n")
      sink.flush()
  source.close()


class _Terminated(Exception):
  """The launcher got SIGTERM."""


def _raise_terminated(signum, frame):
  raise _Terminated


def _stop(processes: list[subprocess.Popen], first_signal=signal.SIGTERM,
          grace: float = GRACE_SECONDS) -> None:
  """Signals every running child, then kills those still alive after `grace` seconds (or
  at once on another Ctrl-C)."""
  for process in processes:
    if process.poll() is None:
      process.send_signal(first_signal)
  deadline = time.monotonic() + grace
  try:
    for process in processes:
      try:
        process.wait(timeout=max(deadline - time.monotonic(), 0.01))
      except subprocess.TimeoutExpired:
        pass
  except KeyboardInterrupt:
    pass
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()


def launch(command: Sequence[str], num_processes: int, *, devices_per_process: int | None = None,
           timeout: float | None = None, sink: IO[str] = sys.stdout) -> int:
  """Runs `command` as `num_processes` joined processes; returns the exit code.

  Args:
    command: the child's command line (a script path or `-m module` runs under this Python).
    num_processes: how many processes, >= 1.
    devices_per_process: fake CPU devices per child; None keeps the machine's devices.
    timeout: seconds before every child is stopped (exit code 124); None: no limit.
    sink: where the children's prefixed output goes.

  Returns:
    0 when every child succeeded; else the first failing child's code (124 on timeout,
    130 on Ctrl-C).
  """
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1; got {num_processes}")
  if devices_per_process is not None and devices_per_process < 1:
    raise ValueError(f"devices_per_process must be >= 1; got {devices_per_process}")
  if not command:
    raise ValueError("command is empty: give the script to run after --")
  port, stamp = free_port(), time.strftime("%Y%m%d-%H%M%S")
  lock = threading.Lock()
  processes, streams = [], []
  for process_id in range(num_processes):
    env = child_environment(os.environ, process_id=process_id, num_processes=num_processes,
                            port=port, devices_per_process=devices_per_process, stamp=stamp)
    # A session of its own: Ctrl-C reaches the launcher alone, which passes one SIGINT on
    # (two would make `fit` quit without saving).
    process = subprocess.Popen(_command(command), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    processes.append(process)
    stream = threading.Thread(target=_stream, args=(f"[{process_id}] ", process.stdout, sink,
                                                    lock), daemon=True)
    stream.start()
    streams.append(stream)

  def report(message: str) -> None:
    with lock:
      sink.write(f"[launch] {message}\n")
      sink.flush()

  deadline = None if timeout is None else time.monotonic() + timeout
  code = 0
  previous = signal.getsignal(signal.SIGTERM)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    while True:
      codes = [process.poll() for process in processes]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        process_id, code = failed[0]
        code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as shells say
        report(f"process {process_id} exited with code {code}; stopping the other "
               f"{sum(c is None for c in codes)} still running")
        _stop(processes)
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        report(f"timed out after {timeout:g} s; stopping all {num_processes} processes")
        _stop(processes)
        code = 124
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    report(f"interrupted; asking all processes to save and stop (up to {STOP_SECONDS:g} s)")
    _stop(processes, signal.SIGINT, STOP_SECONDS)
    code = 130
  except _Terminated:
    report("terminated; stopping all processes")
    _stop(processes)
    code = 143
  finally:
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, previous)
  for stream in streams:
    stream.join(timeout=GRACE_SECONDS)
  return code


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: `python -m dlopt.launch [options] -- script.py [args...]`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
  else:
    own, command = argv, []
  parser = argparse.ArgumentParser(
      prog="python -m dlopt.launch", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      usage="python -m dlopt.launch [options] -- script.py [args ...]")
  parser.add_argument("--num-processes", type=int, required=True,
                      help="processes to start, joined by jax.distributed.initialize")
  parser.add_argument("--devices-per-process", type=int, default=None,
                      help="fake CPU devices per process (default: the machine's devices)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds before all processes are stopped (default: none)")
  args = parser.parse_args(own)
  if not command:
    parser.error("give the command to run after --, e.g. -- examples/mnist_cnn.py --tiny")
  try:
    code = launch(command, args.num_processes, devices_per_process=args.devices_per_process,
                  timeout=args.timeout)
  except ValueError as error:
    parser.error(str(error))
  if code:
    print(f"[launch] failed with exit code {code}", file=sys.stderr)
  return code


if __name__ == "__main__":
  sys.exit(main())
