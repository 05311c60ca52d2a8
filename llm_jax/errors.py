"""The errors a user can cause or meet, and the exit code of each; imports nothing of llm_jax.

Every entry point (``llm_jax.main``, ``llm_jax.sample``, ``llm_jax.bench``) ends an
``Error`` with one line on stderr, ``llm_jax: <message>``, and the error's exit code;
the message names what is wrong and the fix. Anything else is a bug: a traceback and
exit code 1.
"""

import sys

OK = 0
UNEXPECTED = 1     # a bug: the traceback is printed
USAGE = 2          # a bad flag, config, or input data; nothing was started
NON_FINITE = 3     # a NaN/Inf loss, gradient or parameter norm; nothing of that step saved
CHECKPOINT = 4     # the workdir cannot be resumed with this config (corrupt, or another model or data)
SAVE_FAILED = 5    # a checkpoint save failed; the previous one is intact
REFERENCE = 6      # the bench's reference check failed: the figures would measure something else
DATASET = 7        # a dataset could not be downloaded or prepared (offline, no manual files)
BUSY = 8           # another training process holds the workdir
PREEMPTED = 75     # SIGTERM: saved at that step; re-run to resume (sysexits' EX_TEMPFAIL)
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): saved at that step when training had started

CODES = {
    OK: 'finished',
    USAGE: 'a bad flag, config or input data (one line: what, and the fix); nothing was started',
    NON_FINITE: 'NaN/Inf in the loss, gradient norm or parameter norm; nothing of that step saved',
    CHECKPOINT: 'the workdir cannot be resumed with this config: a corrupt checkpoint, another model, '
                'or a change to the model, data or batch that was not allowed',
    SAVE_FAILED: 'a checkpoint save failed (disk full, read-only); the previous checkpoint survives',
    REFERENCE: 'the bench refused to report: the config computes other losses than its reference path',
    DATASET: 'a dataset could not be downloaded or prepared (offline, no manual files)',
    BUSY: 'another training process holds the workdir (its host, PID and start are named)',
    PREEMPTED: 'preempted (SIGTERM): a checkpoint was saved at that exact step',
    INTERRUPTED: 'interrupted (Ctrl-C): a checkpoint was saved at that step (a second Ctrl-C stops '
                 'at once, keeping the newest finished checkpoint)',
}


class Error(Exception):
  """An error the user can act on: its message says what happened and what to do."""
  exit_code = UNEXPECTED


class ConfigError(Error, ValueError):
  """A config, flag or input that cannot run; the message names the key and the fix."""
  exit_code = USAGE


class DataError(ConfigError):
  """Input data that cannot be used (no files matched, an empty split, a corpus shorter than a row)."""


class Interrupted(Error):
  """Ctrl-C. ``step`` is the checkpoint saved on the way out, or None when nothing was saved."""
  exit_code = INTERRUPTED

  def __init__(self, message: str, step=None):
    super().__init__(message)
    self.step = step


def report(error: BaseException) -> int:
  """Prints ``error`` as the one line an entry point ends with; returns its exit code."""
  if isinstance(error, KeyboardInterrupt):
    message, code = 'interrupted (Ctrl-C).', INTERRUPTED
  else:
    message, code = str(error), getattr(error, 'exit_code', UNEXPECTED)
  sys.stdout.flush()
  print(f'llm_jax: {message}', file=sys.stderr, flush=True)
  return code
