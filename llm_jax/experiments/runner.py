"""Runs a study's variant x seed runs, each as its own ``python -m llm_jax.main`` process.

Each run trains in ``ROOT/VARIANT/seed_S`` (``ROOT``: ``--workdir``, by default
``runs/studies/NAME/SCALE``), through the normal training path, so checkpoints and
resume work as for any run. When its process ends the runner writes
``study_run.json`` there: the status (``ok`` or ``failed`` with the exit code and
the error line), the final metric and the eval curve. Runs with the same data settings
share a data cache, ``ROOT/.data/KEY`` (unless the study sets ``data.cache_dir``). A run with that record is
skipped the next time; a run without one (interrupted, preempted, or never started)
is started again and resumes from its newest checkpoint.

Two runner processes never run the same run: each takes ``ROOT/.claims/VARIANT/seed_S/
run.lock`` (``workdir.Lock``: held by a live process, a stale one taken over) before
starting it and skips runs another process holds. ``--shard=I/N`` takes every N-th run
starting at the I-th (1-based), so N machines with a shared ``ROOT`` (or separate roots
merged by ``report``) split a study.

A run's own exit codes keep their meaning: 75 (SIGTERM, saved) and 130 (Ctrl-C, saved)
stop the runner with the same code and record nothing, so the next invocation resumes
the run; any other non-zero code is recorded as ``failed`` and the runner goes on.
"""

import datetime
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

from llm_jax import errors
from llm_jax import workdir as workdir_lib
from llm_jax.experiments import study as study_lib

RECORD = 'study_run.json'
LOG = 'study.log'
CLAIMS = '.claims'
DATA_CACHE = '.data'
STOPPED = (errors.PREEMPTED, errors.INTERRUPTED)


def default_root(study: study_lib.Study, scale: str) -> str:
  return os.path.join('runs', 'studies', study.name, scale)


def run_dir(root: str, run: study_lib.Run) -> str:
  return os.path.join(root, run.variant, f'seed_{run.seed}')


def read_record(root: str, run: study_lib.Run) -> Optional[dict]:
  try:
    with open(os.path.join(run_dir(root, run), RECORD)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return None  # a record cut off mid-write: the run is judged again


def parse_shard(text: str) -> tuple[int, int]:
  """'I/N' -> (I, N) with 1 <= I <= N."""
  try:
    i, n = (int(x) for x in text.split('/'))
  except ValueError:
    raise study_lib.StudyError(f'--shard={text} must be I/N, e.g. --shard=1/2 and --shard=2/2 on two '
                               f'machines.') from None
  if not 1 <= i <= n:
    raise study_lib.StudyError(f'--shard={text}: I must be in 1..{n} (shards count from 1).')
  return i, n


def shard_runs(runs: Sequence[study_lib.Run], shard: tuple[int, int]) -> list[study_lib.Run]:
  i, n = shard
  return list(runs[i - 1::n])


def command(study: study_lib.Study, run: study_lib.Run, root: str, extra: Sequence[str] = ()) -> list[str]:
  """The training command of ``run`` (what a user would type to run it alone)."""
  settings = study.settings(run)
  if 'data.cache_dir' not in settings:  # runs with the same data settings share a tokenizer and token arrays
    data = json.dumps(sorted((k, v) for k, v in settings.items() if k.startswith('data.')))
    key = hashlib.sha256(data.encode()).hexdigest()[:12]
    settings['data.cache_dir'] = os.path.abspath(os.path.join(root, DATA_CACHE, key))
  flags = [f'--config.{k}={study_lib.flag_value(k, v, study, run.variant)}' for k, v in settings.items()]
  return [sys.executable, '-m', 'llm_jax.main', f'--config={study.config_path()}',
          f'--workdir={os.path.abspath(run_dir(root, run))}', *flags, *extra]


def _metric_curve(workdir: str, metric: str) -> list[list]:
  """[[step, value], ...] of ``metric`` in ``workdir/metrics.jsonl``, the last value per step."""
  values = {}
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue  # a line cut off by a kill
        if metric in row and 'step' in row:
          values[int(row['step'])] = row[metric]
  except FileNotFoundError:
    pass
  return [[s, values[s]] for s in sorted(values)]


def _error_line(log_text: str) -> str:
  lines = [line.strip() for line in log_text.splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith('llm_jax: '):
      return line[len('llm_jax: '):]
  return lines[-1][:500] if lines else 'no output'


def _record(study: study_lib.Study, run: study_lib.Run, workdir: str, code: int, seconds: float,
            log_text: str) -> dict:
  curve = _metric_curve(workdir, study.curve)
  final = _metric_curve(workdir, study.metric)
  value = final[-1][1] if final else None
  status, error = 'ok', ''
  if code != 0:
    status = 'failed'
    error = ('diverged: ' if code == errors.NON_FINITE else '') + _error_line(log_text)
  elif value is None:
    status, error = 'failed', f'the run wrote no {study.metric} to metrics.jsonl'
  elif not math.isfinite(value):
    status, error = 'failed', f'diverged: final {study.metric} is {value}'
  return dict(study=study.name, variant=run.variant, seed=run.seed, status=status, exit_code=code, error=error,
              metric=study.metric, value=value, curve_metric=study.curve, curve=curve, seconds=round(seconds, 1),
              host=socket.gethostname(),
              finished=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


class _Child:
  """The run's process; SIGTERM to the runner goes on to it (it saves and exits 75)."""

  def __init__(self):
    self.proc: Optional[subprocess.Popen] = None

  def forward(self, signum, frame):
    del frame
    if self.proc is not None and self.proc.poll() is None:
      self.proc.send_signal(signum)
    else:
      raise SystemExit(errors.PREEMPTED)


def run_one(study: study_lib.Study, run: study_lib.Run, root: str, child: _Child, extra: Sequence[str] = (),
            echo: bool = False) -> dict | int:
  """Trains ``run`` to its end; returns its record, or the exit code 75/130 when it was stopped."""
  workdir = run_dir(root, run)
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, LOG)
  cmd = command(study, run, root, extra)
  start = time.time()
  with open(log_path, 'a') as log:
    log.write(f'\n=== {datetime.datetime.now().astimezone().isoformat(timespec="seconds")} on '
              f'{socket.gethostname()}: {" ".join(cmd)}\n')
    log.flush()
    offset = log.tell()
    child.proc = subprocess.Popen(cmd, stdout=None if echo else log, stderr=subprocess.STDOUT if not echo else None,
                                  start_new_session=False)
    try:
      code = child.proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save
      code = child.proc.wait()
    finally:
      child.proc = None
  if code in STOPPED:
    return code
  with open(log_path) as f:
    f.seek(offset)
    text = f.read()
  record = _record(study, run, workdir, code, time.time() - start, text)
  workdir_lib._atomic_write(os.path.join(workdir, RECORD), json.dumps(record, indent=1))  # pylint: disable=protected-access
  return record


def run_study(study: study_lib.Study, scale: str, root: str, *, shard=(1, 1), retry_failed: bool = False,
              extra: Sequence[str] = (), echo: bool = False, out=sys.stdout) -> int:
  """Runs this shard's runs that have no record yet; returns 0, or 75/130 when a run was stopped."""
  runs = shard_runs(study.runs(), shard)
  total = len(runs)
  child = _Child()
  previous = signal.signal(signal.SIGTERM, child.forward)
  done_here, seconds_here, skipped, failed = 0, 0.0, 0, 0
  start = time.time()
  shard_text = f' (shard {shard[0]}/{shard[1]})' if shard[1] > 1 else ''
  say = lambda text: print(f'[study] {text}', file=out, flush=True)
  say(f'{study.name} at scale {scale}: {total} runs{shard_text} in {os.path.abspath(root)}')
  try:
    def settled(i, run) -> bool:  # recorded already (a failed run counts unless retry_failed): says so
      record = read_record(root, run)
      if record is None or (retry_failed and record.get('status') == 'failed'):
        return False
      say(f'run {i}/{total} {run.id}: already {record.get("status")}, skipped')
      return True

    for i, run in enumerate(runs, 1):
      if settled(i, run):
        skipped += 1
        continue
      claim_dir = os.path.join(root, CLAIMS, run.variant, f'seed_{run.seed}')
      os.makedirs(claim_dir, exist_ok=True)
      lock = workdir_lib.Lock(claim_dir)
      try:
        lock.acquire()
      except workdir_lib.BusyError:
        skipped += 1
        say(f'run {i}/{total} {run.id}: another runner has it, skipped')
        continue
      try:
        if settled(i, run):  # finished by another runner between the look and the claim
          skipped += 1
          continue
        left = sum(1 for r in runs[i - 1:] if read_record(root, r) is None)
        eta = f', ETA {_duration(seconds_here / done_here * left)}' if done_here else ''
        say(f'run {i}/{total} {run.id}: starting ({_duration(time.time() - start)} elapsed{eta})')
        t0 = time.time()
        result = run_one(study, run, root, child, extra, echo)
      finally:
        lock.release()
      if isinstance(result, int):
        say(f'run {i}/{total} {run.id}: stopped (exit {result}) after saving; run the same command to resume.')
        return result
      done_here += 1
      seconds_here += time.time() - t0
      left = sum(1 for r in runs[i:] if read_record(root, r) is None)
      eta = f', ETA {_duration(seconds_here / done_here * left)}' if left else ''
      if result['status'] == 'ok':
        say(f'run {i}/{total} {run.id}: {study.metric} {result["value"]:.4f} in {result["seconds"]:.0f} s{eta}')
      else:
        failed += 1
        say(f'run {i}/{total} {run.id}: FAILED (exit {result["exit_code"]}): {result["error"]}{eta}')
  finally:
    signal.signal(signal.SIGTERM, previous)
  say(f'{done_here} run here, {skipped} skipped, {failed} failed, {_duration(time.time() - start)}')
  return 0
