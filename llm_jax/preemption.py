"""Stopping a run without losing it: SIGTERM (preemption) and Ctrl-C save the step in flight.

While the loop trains (``Watch.arm``), SIGTERM or a first Ctrl-C (SIGINT) asks it to
save a checkpoint at the end of the current step, wait for the commit, and stop:
``Preempted`` (exit 75) for SIGTERM, ``errors.Interrupted`` (exit 130) for Ctrl-C. A
second Ctrl-C while that save (or any save the run waits for) is being written stops
the process at once: the unfinished save is discarded at the next start, and the line
printed names the newest finished checkpoint, which is what a re-run resumes from.
Before training starts (data preparation, compilation) and after its last save, Ctrl-C
is an ordinary ``KeyboardInterrupt``: nothing is lost, since nothing new was trained.

On several processes only some may get the signal, and all must save the same step, so
the loop asks JAX's preemption sync point (``multihost_utils.reached_preemption_sync_point``,
fed by the coordination service, which installs its own SIGTERM handler at
``jax.distributed.initialize``) at every step instead; there a Ctrl-C is passed on as a
SIGTERM to this process, so the coordination service stops every process at one step.
"""

import os
import signal
import sys
import threading
from typing import Callable, Optional

import jax
from absl import logging

from llm_jax import errors

EXIT_CODE = errors.PREEMPTED


class Preempted(errors.Error):
  """The run stopped on a preemption notice after finalizing a checkpoint at ``step``."""
  exit_code = EXIT_CODE

  def __init__(self, step: int, directory: str):
    self.step = step
    super().__init__(f'preempted (SIGTERM) at step {step}: checkpoint {step} is finalized in {directory}; '
                     f're-run the same command to resume from it.')


class Watch:
  """A context manager; ``reached(step)`` says whether to save at ``step`` and stop.

  ``kept()`` returns the newest finished checkpoint step (or None), for the line a second
  Ctrl-C prints; ``on_abort()`` runs just before that exit (e.g. releasing the workdir lock).
  """

  def __init__(self, kept: Callable[[], Optional[int]] = lambda: None,
               on_abort: Callable[[], None] = lambda: None):
    self._multi = jax.process_count() > 1
    self._kept, self._on_abort = kept, on_abort
    self._signalled = False    # SIGTERM (single process)
    self._interrupted = False  # Ctrl-C
    self._armed = False
    self._saving = False
    self._previous: dict = {}
    self._sync_point_broken = False

  def __enter__(self) -> 'Watch':
    if threading.current_thread() is threading.main_thread():
      if not self._multi:
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_term)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_int)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def arm(self) -> None:
    """Training has begun: from now on a signal saves the current step before stopping."""
    self._armed = True

  def disarm(self) -> None:
    """Every save is done: Ctrl-C is a plain KeyboardInterrupt again."""
    self._armed = self._saving = False

  def saving(self) -> None:
    """The run now waits for a save; a (further) Ctrl-C stops at once."""
    self._saving = True

  @property
  def interrupted(self) -> bool:
    return self._interrupted

  def _on_term(self, signum, frame) -> None:
    del signum, frame
    self._signalled = True
    print('\n[llm_jax] SIGTERM: saving a checkpoint at the end of this step, then stopping.',
          file=sys.stderr, flush=True)

  def _on_int(self, signum, frame) -> None:
    del signum, frame
    if not self._armed:
      raise KeyboardInterrupt
    if self._interrupted or self._saving:
      self._abort()
    self._interrupted = True
    kept = self._kept()
    print(f'\n[llm_jax] Ctrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again '
          f'stops at once, keeping {"step " + str(kept) if kept is not None else "no checkpoint"}).',
          file=sys.stderr, flush=True)
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # to the coordination service: every process stops at one step

  def _abort(self) -> None:
    kept = self._kept()
    what = (f'the newest finished checkpoint is step {kept}; re-run the same command to resume from it'
            if kept is not None else 'no checkpoint was finished; a re-run starts from the beginning')
    print(f'\nllm_jax: stopped at once by a second Ctrl-C; the save in flight is discarded, {what}.',
          file=sys.stderr, flush=True)
    try:
      self._on_abort()
    finally:
      os._exit(errors.INTERRUPTED)  # pylint: disable=protected-access

  def reached(self, step: int) -> bool:
    if self._interrupted and not self._multi:
      return True
    if not self._multi:
      return self._signalled
    if self._sync_point_broken:
      return self._interrupted
    from jax.experimental import multihost_utils
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # jax_enable_preemption_service is off
      logging.warning('No preemption sync point (%s); preemption notices are not handled.', e)
      self._sync_point_broken = True
      return self._interrupted

  def stopped(self, step: int, directory: str) -> errors.Error:
    """The error that ends a run stopped at ``step`` (its checkpoint finalized in ``directory``)."""
    if self._interrupted:
      return errors.Interrupted(f'interrupted (Ctrl-C) at step {step}: checkpoint {step} is finalized in '
                                f'{directory}; re-run the same command to resume from it.', step)
    return Preempted(step, directory)
