"""Ctrl-C as a request to stop at the next step boundary, so a run saves where it stands."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["StopRequest", "stop_on_interrupt"]


class StopRequest:
  """Set by the first SIGINT; the loop polls `requested` after each step."""

  def __init__(self):
    self.requested = False


@contextlib.contextmanager
def stop_on_interrupt():
  """Within the block, the first Ctrl-C sets `StopRequest.requested` instead of raising;
  a second one raises `KeyboardInterrupt` at once. Outside the main thread (where signal
  handlers cannot be set) Ctrl-C keeps its usual behaviour."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return
  previous = signal.getsignal(signal.SIGINT)

  def handle(signum, frame):
    if request.requested:
      raise KeyboardInterrupt
    request.requested = True

  signal.signal(signal.SIGINT, handle)
  try:
    yield request
  finally:
    signal.signal(signal.SIGINT, previous)
