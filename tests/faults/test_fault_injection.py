"""Faults injected into real training processes (RELIABILITY.md rows 1, 4, 5, 6, 7; Ctrl-C; two runs
on one workdir).

Each test starts ``python -m llm_jax.main`` (through tests/faults/driver.py, which
patches the fault in) and checks the exit code, the message, the checkpoints left on
disk and, where the run can go on, that the finished run's per-step losses equal the
uninterrupted reference run's bitwise.
"""

import json
import os
import random
import re
import shutil
import signal
import time

import pytest

from tests.faults import runs

EXIT_NONFINITE, EXIT_CHECKPOINT, EXIT_SAVE, EXIT_DATASET, EXIT_BUSY, EXIT_PREEMPTED, EXIT_INTERRUPTED = (
    3, 4, 5, 7, 8, 75, 130)


def _finish(workdir, tmp, reference_losses, expect_resume_from=None, **extra):
  """Re-runs the same command to the end; checks where it resumed and the losses."""
  done = runs.run(workdir, tmp, **extra)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  if expect_resume_from is not None:
    assert runs.resumed_from(done.stdout) == expect_resume_from, done.stdout[-2000:]
  assert runs.losses(workdir) == reference_losses
  assert runs.tmp_dirs(workdir) == []
  return done


# ---- kill -9 during asynchronous saves (row 1) ---------------------------------------------

WRITTEN = '[fault driver] save of step '  # the driver's line: files written, commit not yet made


def _saves_written(started) -> list:
  """Steps whose save the driver reported written; found anywhere in the output, since the
  progress bar redraws with carriage returns and the driver's line may follow it."""
  return [int(m) for m in re.findall(re.escape(WRITTEN) + r'(\d+)', started.output())]


def test_kill9_before_commit_resumes_from_last_finalized_step(tmp_path, reference):
  workdir = tmp_path / 'run'
  started = runs.Started(workdir, tmp_path, tmp_path / 'killed.log', faults={'save_delay': 0.5})
  try:
    runs.wait_for(lambda: any(s >= 6 for s in _saves_written(started)), started.proc)
    started.proc.send_signal(signal.SIGKILL)
  finally:
    assert started.wait() == -signal.SIGKILL
  unfinished = max(_saves_written(started))
  assert f'{unfinished}{runs.TMP_MARK}' in runs.tmp_dirs(workdir)  # written, never committed
  last = runs.finalized_steps(workdir)[-1]
  assert last < unfinished
  assert (workdir / 'run.lock').exists()  # the dead process could not release it
  done = _finish(workdir, tmp_path, reference[1], expect_resume_from=last)
  assert f'taking over the lock of a stopped run in {workdir} (PID {started.proc.pid} on host ' in done.stderr
  assert f'process {started.proc.pid} has ended' in done.stderr


@pytest.mark.slow
def test_kill9_at_random_moments_during_20_async_saves(tmp_path, reference):
  """A seeded schedule of SIGKILLs, every other one inside a save's window between its
  files being written and its commit, the others at random moments: during start-up, or
  a random number of steps into training plus a random fraction of a step. Every restart
  resumes from the last finalized step, and the finished run's losses are the
  uninterrupted run's, bitwise.

  Kills are placed by the run's progress (saves written, steps logged), not by the
  clock, so a faster machine does not let the run finish before the schedule is through:
  a window kill lets the run advance at most 4 saves (8 steps), a random one at most 4
  logged steps plus two tenths of a second (about 6 steps; start-up itself outlasts its
  kill), so the first three window kills and two random ones advance the 40-step run at
  most 36 steps and all five are certain to happen."""
  workdir = tmp_path / 'run'
  rng = random.Random(20)
  kills = {'in a save window': 0, 'at random': 0}
  step_delay = 0.1  # seconds per step: a random fraction of a step is a tenth of a second
  for attempt in range(10):
    last = (runs.finalized_steps(workdir) or [None])[-1] if (workdir / 'checkpoints').exists() else None
    logged = runs.logged_steps(workdir)
    started = runs.Started(workdir, tmp_path, tmp_path / f'attempt{attempt}.log',
                           faults={'save_delay': 0.2, 'step_delay': step_delay})
    mode = 'in a save window' if attempt % 2 == 0 else 'at random'
    try:
      if mode == 'in a save window':
        k = rng.randint(1, 4)  # this attempt's k-th save
        runs.wait_for(lambda: len(_saves_written(started)) >= k, started.proc)
      elif rng.random() < 0.3:  # during start-up: imports, restore, compilation
        time.sleep(rng.uniform(0.2, 1.0))
      else:
        steps = rng.randint(1, 4)
        runs.wait_for(lambda: runs.logged_steps(workdir) >= logged + steps, started.proc)
        time.sleep(rng.uniform(0, 2 * step_delay))
      started.proc.send_signal(signal.SIGKILL)
    except AssertionError:
      pass  # the run reached its end first
    finally:
      rc = started.wait()
    out = started.output()
    if last is not None and 'train:' in out:  # it got past restoring: it must say from where
      assert runs.resumed_from(out) == last, f'attempt {attempt} resumed from {runs.resumed_from(out)}, not {last}'
    if rc == 0:
      break
    assert rc == -signal.SIGKILL
    kills[mode] += 1
    if mode == 'in a save window':  # the killed save left its temporary directory behind
      assert f'{max(_saves_written(started))}{runs.TMP_MARK}' in runs.tmp_dirs(workdir)
  print(f'kills: {kills}; finalized before the last restart: {runs.finalized_steps(workdir)}')
  assert kills['in a save window'] >= 3 and kills['at random'] >= 2, kills
  _finish(workdir, tmp_path, reference[1], expect_resume_from=runs.finalized_steps(workdir)[-1])


# ---- SIGTERM and Ctrl-C (row 4) ---------------------------------------------------------------


@pytest.mark.parametrize('signum, code, said, line', [
    (signal.SIGTERM, EXIT_PREEMPTED, '[llm_jax] SIGTERM: saving a checkpoint at the end of this step',
     'llm_jax: preempted (SIGTERM) at step '),
    (signal.SIGINT, EXIT_INTERRUPTED, '[llm_jax] Ctrl-C: saving a checkpoint at the end of this step',
     'llm_jax: interrupted (Ctrl-C) at step ')], ids=['SIGTERM', 'Ctrl-C'])
def test_signal_between_saves_checkpoints_that_step_and_resumes_bitwise(tmp_path, reference, signum, code, said,
                                                                        line):
  workdir = tmp_path / 'run'
  # Saves only at the end; batches are served slowly so the signal lands mid-run.
  started = runs.Started(workdir, tmp_path, tmp_path / 'signal.log', faults={'step_delay': 0.05},
                         **{'checkpoint.every_steps': 1000})
  try:
    runs.wait_for(lambda: runs.logged_steps(workdir) >= 8, started.proc)
    started.proc.send_signal(signum)
    sent = time.monotonic()
    rc = started.wait(timeout=60)
  finally:
    if started.proc.poll() is None:
      started.proc.kill()
  assert time.monotonic() - sent < 30
  out = started.output()
  assert rc == code, out[-3000:]
  assert said in out and 'Traceback' not in out
  step = int(next(l for l in out.splitlines() if l.startswith(line))[len(line):].split(':')[0])
  assert 8 <= step < runs.STEPS
  assert runs.finalized_steps(workdir) == [step]
  assert max(runs.losses(workdir)) == step
  assert not (workdir / 'run.lock').exists()
  _finish(workdir, tmp_path, reference[1], expect_resume_from=step)


# ---- non-finite loss (row 7) ------------------------------------------------------------------


@pytest.mark.parametrize('fault,step,metric', [
    ('poison_step', 7, 'train_loss'),
    pytest.param('lr_spike_step', 9, 'param_norm', marks=pytest.mark.slow),
])
def test_nonfinite_stops_at_exactly_that_step_without_saving_it(tmp_path, fault, step, metric):
  workdir = tmp_path / 'run'
  done = runs.run(workdir, tmp_path, faults={fault: step})
  assert done.returncode == EXIT_NONFINITE, done.stderr[-3000:]
  assert f'llm_jax: non-finite {metric} (' in done.stderr and f') at step {step};' in done.stderr
  assert max(runs.finalized_steps(workdir)) < step
  assert runs.tmp_dirs(workdir) == []
  assert max(runs.losses(workdir)) == step - 1  # nothing of the bad step was logged either


def test_nonfinite_skip_drops_the_update_and_counts_it(tmp_path):
  workdir = tmp_path / 'run'
  done = runs.run(workdir, tmp_path, faults={'poison_step': 7}, **{'train.nonfinite': 'skip', 'train.steps': 10})
  assert done.returncode == 0, done.stderr[-3000:]
  rows = {r['step']: r for r in map(json.loads, open(workdir / 'metrics.jsonl'))}
  assert rows[7]['skipped'] == 1 and rows[6]['skipped_steps'] == 0 and rows[10]['skipped_steps'] == 1
  assert all(v == v for k, v in rows[10].items())  # finite again after the skip
  assert runs.finalized_steps(workdir)[-1] == 10


# ---- save failures (row 6) -------------------------------------------------------------------


def _read_only_prefix():
  if os.geteuid() != 0:
    return ()
  setpriv = shutil.which('setpriv')
  if setpriv is None:
    pytest.skip('running as root without setpriv: a read-only directory cannot be made')
  return (setpriv, '--bounding-set=-dac_override,-dac_read_search')  # root that obeys permissions


@pytest.mark.parametrize('fault', ['full_from_save', pytest.param('read_only_from_save', marks=pytest.mark.slow)])
def test_failed_save_surfaces_keeps_last_good_checkpoint_and_exits_nonzero(tmp_path, reference, fault):
  workdir = tmp_path / 'run'
  prefix = _read_only_prefix() if fault == 'read_only_from_save' else ()
  try:
    done = runs.run(workdir, tmp_path, faults={fault: 3}, prefix=prefix, **{'checkpoint.every_steps': 4})
  finally:
    if (workdir / 'checkpoints').exists():
      os.chmod(workdir / 'checkpoints', 0o755)
  assert done.returncode == EXIT_SAVE, done.stderr[-3000:]
  message = next(l for l in done.stderr.splitlines() if l.startswith('llm_jax: saving checkpoint step '))
  failed = int(message.split()[4])
  good = runs.finalized_steps(workdir)
  assert good and good[-1] < failed and f'the newest intact checkpoint is step {good[-1]}' in message
  assert 'done:' not in done.stdout
  _finish(workdir, tmp_path, reference[1], expect_resume_from=good[-1])  # and it resumes from there


# ---- corrupt checkpoints (row 5) -------------------------------------------------------------


def _corrupt(step_dir, kind):
  if kind == 'truncated':
    sizes = json.loads((step_dir / 'llm_jax_files.json').read_text())
    biggest = max(sizes, key=sizes.get)
    os.truncate(step_dir / biggest, sizes[biggest] // 2)
    return biggest
  name = {'metadata': 'params/_METADATA', 'commit': 'commit_success.txt'}[kind]
  (step_dir / name).unlink()
  return name


@pytest.mark.parametrize('kind', ['truncated', pytest.param('metadata', marks=pytest.mark.slow),
                                  pytest.param('commit', marks=pytest.mark.slow)])
def test_corrupt_newest_checkpoint_errors_or_falls_back(tmp_path, reference, kind):
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  steps = runs.finalized_steps(workdir)
  newest, previous = steps[-1], steps[-2]
  broken = _corrupt(workdir / 'checkpoints' / str(newest), kind)

  refused = runs.run(workdir, tmp_path)
  assert refused.returncode == EXIT_CHECKPOINT, refused.stderr[-3000:]
  assert f'llm_jax: checkpoint step {newest} is corrupt: ' in refused.stderr
  assert str(workdir / 'checkpoints' / str(newest) / broken) in refused.stderr
  assert f'fallback=True to set it aside and resume from step {previous}' in refused.stderr

  done = _finish(workdir, tmp_path, reference[1], expect_resume_from=previous, **{'checkpoint.fallback': True})
  assert f'[llm_jax] checkpoint step {newest} is corrupt: ' in done.stdout
  assert f'falling back to step {previous}.' in done.stdout
  assert [p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()] == [str(newest)]


# ---- a second Ctrl-C --------------------------------------------------------------------------


def test_second_ctrl_c_while_saving_stops_at_once_keeping_the_newest_checkpoint(tmp_path, reference):
  """The first Ctrl-C asks for a save; a second one while that save is written (its commit
  held back 10 s) ends the process at once, naming the newest finished checkpoint, which
  the re-run resumes from."""
  workdir = tmp_path / 'run'
  first = runs.run(workdir, tmp_path, **{'checkpoint.every_steps': 1000, 'train.stop_at': 4})
  assert first.returncode == 0, first.stderr[-3000:]  # a finished checkpoint at step 4
  started = runs.Started(workdir, tmp_path, tmp_path / 'int3.log', faults={'save_delay': 10, 'step_delay': 0.05},
                         **{'checkpoint.every_steps': 1000})
  try:
    runs.wait_for(lambda: runs.logged_steps(workdir) >= 8, started.proc)
    started.proc.send_signal(signal.SIGINT)
    runs.wait_for(lambda: WRITTEN in started.output().split('Ctrl-C: saving')[-1], started.proc)
    started.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    rc = started.wait(timeout=60)
  finally:
    if started.proc.poll() is None:
      started.proc.kill()
  assert time.monotonic() - sent < 6  # not the 10 s the commit waits for
  out = started.output()
  assert rc == EXIT_INTERRUPTED, out[-3000:]
  assert 'Traceback' not in out
  assert ('llm_jax: stopped at once by a second Ctrl-C; the save in flight is discarded, the newest finished '
          'checkpoint is step 4; re-run the same command to resume from it.') in out
  assert runs.finalized_steps(workdir) == [4] and len(runs.tmp_dirs(workdir)) == 1
  assert not (workdir / 'run.lock').exists()
  _finish(workdir, tmp_path, reference[1], expect_resume_from=4)


# ---- one run per workdir -------------------------------------------------------------------------


def test_a_second_run_on_the_same_workdir_refuses_naming_the_first(tmp_path, reference):
  workdir = tmp_path / 'run'
  first = runs.Started(workdir, tmp_path, tmp_path / 'first.log', faults={'step_delay': 0.05})
  try:
    runs.wait_for(lambda: runs.logged_steps(workdir) >= 2, first.proc)
    second = runs.run(workdir, tmp_path)
    assert second.returncode == EXIT_BUSY, second.stderr[-3000:]
    message = next(l for l in second.stderr.splitlines() if l.startswith('llm_jax: '))
    assert f'is in use by another training run (PID {first.proc.pid} on host ' in message
    assert first.wait() == 0
  finally:
    if first.proc.poll() is None:
      first.proc.kill()
  assert runs.losses(workdir) == reference[1]  # every step once: the second run trained nothing
  assert not (workdir / 'run.lock').exists()


# ---- a dataset that cannot be downloaded ------------------------------------------------------


def test_offline_tfds_dataset_exits_7_in_one_line_naming_manual_dir(tmp_path):
  """No network, no manual files: the run says what to do at once, without a traceback."""
  pytest.importorskip('tensorflow_datasets')
  workdir = tmp_path / 'run'
  done = runs.run(workdir, tmp_path, faults={'offline': 1}, timeout=120,
                  **{'data.dataset': 'tiny_shakespeare', 'data.data_dir': str(tmp_path / 'tfds')})
  assert done.returncode == EXIT_DATASET, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr
  line = next(l for l in done.stderr.splitlines() if l.startswith('llm_jax: '))
  assert "llm_jax: TFDS dataset 'tiny_shakespeare' could not be downloaded or prepared" in line
  assert str(tmp_path / 'tfds' / 'downloads' / 'manual') in line and '--config.data.manual_dir=DIR' in line
  assert 'looks offline' in done.stderr  # tried once, not through TFDS's minutes of retries
  assert not (workdir / 'checkpoints').exists() or runs.finalized_steps(workdir) == []
