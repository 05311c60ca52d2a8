"""Preemption: save at the current step, wait for it, and exit with a distinct code.

Cloud TPU VMs and most schedulers announce an eviction with SIGTERM and a grace
period. On one process ``Watch`` catches SIGTERM and the loop sees it after the step
in flight. On several processes only some may get the signal and all must save the
same step, so the loop asks JAX's preemption sync point
(``multihost_utils.reached_preemption_sync_point``, fed by the coordination service,
which installs its own SIGTERM handler at ``jax.distributed.initialize``) at every
step instead.
"""

import signal
import threading

import jax
from absl import logging

EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: "temporary failure, try again" (re-run to resume)


class Preempted(Exception):
  """The run stopped on a preemption notice after finalizing a checkpoint at ``step``."""
  exit_code = EXIT_CODE

  def __init__(self, step: int, directory: str):
    self.step = step
    super().__init__(f'preempted (SIGTERM) at step {step}: checkpoint {step} is finalized in {directory}; '
                     f're-run the same command to resume from it.')


class Watch:
  """A context manager; ``reached(step)`` says whether to save at ``step`` and stop."""

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._signalled = False
    self._previous = None
    self._sync_point_broken = False

  def __enter__(self) -> 'Watch':
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_signal(self, signum, frame) -> None:
    del frame
    self._signalled = True
    logging.warning('Received signal %d: saving at the end of the current step, then exiting.', signum)

  def reached(self, step: int) -> bool:
    if not self._multi:
      return self._signalled
    if self._sync_point_broken:
      return False
    from jax.experimental import multihost_utils
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # jax_enable_preemption_service is off
      logging.warning('No preemption sync point (%s); preemption notices are not handled.', e)
      self._sync_point_broken = True
      return False
