"""Ctrl-C and SIGTERM as requests to stop at the next step, so a run saves where it stands.

SIGTERM is what SLURM, Kubernetes and most schedulers send before they kill a preempted
job; SIGINT is Ctrl-C. Either sets `StopRequest.signum`; the loop saves at the next step
where it checks and raises `Interrupted`.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["Interrupted", "StopRequest", "STOP_SIGNALS", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """Raised by `fit` when it stopped on a signal, after saving (with a workdir).

  Attributes:
    signum: the signal's number (`signal.SIGINT` or `signal.SIGTERM`).
    step: the step the run stopped at.
  """

  def __init__(self, signum: int, step: int):
    self.signum, self.step = signum, step
    super().__init__(f"stopped at step {step} on {signal.Signals(signum).name}")


class StopRequest:
  """Set by the first stop signal; the loop polls `requested` after each step."""

  def __init__(self):
    self.signum: int | None = None

  @property
  def requested(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
  """Within the block, the first of `signals` sets `StopRequest.signum` instead of acting;
  a second one raises `KeyboardInterrupt` at once. Outside the main thread (where signal
  handlers cannot be set) the signals keep their usual behaviour."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return
  previous = {signum: signal.getsignal(signum) for signum in signals}

  def handle(signum, frame):
    if request.requested:
      raise KeyboardInterrupt
    request.signum = signum

  for signum in signals:
    signal.signal(signum, handle)
  try:
    yield request
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
