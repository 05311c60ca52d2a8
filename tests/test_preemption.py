"""SIGTERM and Ctrl-C in one process (llm_jax/preemption.py); the real runs are in tests/faults/."""

import os
import signal
import subprocess
import sys

import pytest

from llm_jax import errors
from llm_jax import preemption


def test_ctrl_c_before_training_is_a_plain_keyboard_interrupt():
  with preemption.Watch() as watch:
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
    assert not watch.reached(1)
  assert errors.report(KeyboardInterrupt()) == errors.INTERRUPTED


def test_signals_while_training_ask_for_a_stop_at_the_next_step(capsys):
  with preemption.Watch(kept=lambda: 6) as watch:
    watch.arm()
    assert not watch.reached(7)
    os.kill(os.getpid(), signal.SIGINT)
    assert watch.reached(8) and watch.interrupted
    stopped = watch.stopped(8, '/w/checkpoints')
    assert isinstance(stopped, errors.Interrupted) and stopped.exit_code == 130 and stopped.step == 8
    assert 'interrupted (Ctrl-C) at step 8: checkpoint 8 is finalized in /w/checkpoints' in str(stopped)
  assert 'Ctrl-C again stops at once, keeping step 6' in capsys.readouterr().err
  with preemption.Watch() as watch:
    watch.arm()
    os.kill(os.getpid(), signal.SIGTERM)
    assert watch.reached(3)
    assert isinstance(watch.stopped(3, 'd'), preemption.Preempted) and watch.stopped(3, 'd').exit_code == 75
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


_SECOND = """
import os, signal, sys
from llm_jax import preemption
released = []
with preemption.Watch(kept=lambda: 4, on_abort=lambda: print('released', flush=True)) as watch:
  watch.arm()
  os.kill(os.getpid(), signal.SIGINT)
  watch.saving()
  os.kill(os.getpid(), signal.SIGINT)
  print('not reached', flush=True)
"""


def test_second_ctrl_c_while_saving_exits_130_at_once_naming_the_kept_step():
  done = subprocess.run([sys.executable, '-c', _SECOND], capture_output=True, text=True, timeout=120)
  assert done.returncode == errors.INTERRUPTED
  assert done.stdout == 'released\n'
  assert 'stopped at once by a second Ctrl-C; the save in flight is discarded, the newest finished ' \
         'checkpoint is step 4; re-run the same command to resume from it.' in done.stderr
