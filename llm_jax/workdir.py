"""A training workdir's record: who trains in it, with which config, and what changed.

  WORKDIR/run.lock              the one training process that holds the workdir (JSON)
  WORKDIR/config.json           the config of the run that last trained in this workdir
  WORKDIR/config_history.jsonl  one line per start: the step, time, host, and every key that changed

**One training process per workdir.** ``Lock`` creates ``run.lock`` atomically
(``O_EXCL``) with the holder's host, PID, start time and a heartbeat its thread renews
every ``HEARTBEAT_S``; a second process refuses with ``BusyError`` naming the holder. A
lock left by a process that died without releasing it (``kill -9``, power loss) is
stale: on the same host its PID is gone (or belongs to a later process), on another host
its heartbeat is older than ``STALE_AFTER_S``; it is taken over with a notice. Several
processes of one multi-host run hold it once, through process 0.

**The record changes only when a run continues from it.** ``check_resume`` compares the
config with ``config.json`` before anything is loaded or compiled. Where the workdir
holds a finished checkpoint, a change to a key that alters the model, its parameters'
shapes, or which batches come next (``resume_sensitive``: ``model.*`` but the compute
choices in ``COMPUTE_ONLY``, ``data.*`` but the directories in ``DATA_PATHS``,
``train.batch_size``, ``seed``) is refused with ``ConfigChangeError`` naming each key
with its old and new value, unless the caller allows those keys (``--allow_change``).
Every other key (run length, learning rate and schedule, optimizer settings, intervals,
mesh, kernels, remat) may change: the change is printed and recorded. ``record`` writes
``config.json`` and appends the history line once the run has restored its state, so
a refused or failed resume leaves both byte-identical.
"""

import contextlib
import datetime
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Iterator, Optional, Sequence

from llm_jax import errors

LOCK_FILE = 'run.lock'
CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a lock of another host without a heartbeat for this long is stale

# Keys of model.* and data.* that change neither the parameters nor the batches: how the
# step is computed, and where data is read from or cached.
COMPUTE_ONLY = ('model.attention_kernel', 'model.attention_block', 'model.remat', 'model.remat_names',
                'model.dtype')
DATA_PATHS = ('data.data_dir', 'data.manual_dir', 'data.cache_dir')


class BusyError(errors.Error):
  """Another live training process holds the workdir."""
  exit_code = errors.BUSY


class ConfigChangeError(errors.Error):
  """A resume whose config changes the model, the data or the batch without being allowed to."""
  exit_code = errors.CHECKPOINT


def resume_sensitive(key: str) -> bool:
  """Whether changing config key ``key`` (dotted) on resume alters the model or the data order."""
  if key in ('seed', 'train.batch_size'):
    return True
  if key.startswith('model.'):
    return key not in COMPUTE_ONLY
  if key.startswith('data.'):
    return key not in DATA_PATHS
  return False


# ----------------------------------------------------------------------------- config record

def flat(config) -> dict:
  """{'model.num_layers': 4, ...} of a ConfigDict or a nested dict, values as JSON has them."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = json.loads(json.dumps(value, default=str))

  walk(config, '')
  return out


def _atomic_write(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_config(workdir: str) -> Optional[dict]:
  """The recorded config of ``workdir`` as a nested dict, or None when there is none.

  A record that is not valid JSON is a ConfigError naming the file (never silently ignored).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.ConfigError(f'{path} is not valid JSON ({e}); restore it from config_history.jsonl '
                             'or move it away to start the record afresh.') from None


def load_config(workdir: str):
  """The ``ml_collections.ConfigDict`` a workdir's run trained with (for sampling, init_from)."""
  import ml_collections
  if not os.path.isdir(workdir):
    raise errors.ConfigError(f'--workdir={workdir} does not exist; give the workdir of a training run '
                             f'(python -m llm_jax.main --config=... --workdir=DIR).')
  record = read_config(workdir)
  if record is None:
    raise errors.ConfigError(f'{workdir} holds no training run (no {CONFIG_FILE}); give the workdir of a '
                             f'run of python -m llm_jax.main.')
  return ml_collections.ConfigDict(with_defaults(record))


def with_defaults(record: dict) -> dict:
  """``record`` laid over ``config.base_config()``: keys a recorded run predates take their defaults.

  A workdir written before a config key existed (``model.init_scheme``, ``data.target_len``,
  ...) still loads for sampling, export and ``init_from``; the defaults are the values that
  reproduce what the code did before the key was added. Keys the record has and the base
  config lacks are kept.
  """
  from llm_jax import config as config_lib

  def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
      if isinstance(value, dict) and isinstance(out.get(key), dict):
        out[key] = merge(out[key], value)
      else:
        out[key] = value
    return out

  return merge(config_lib.base_config().to_dict(), record)


def _shown(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 60 else text[:57] + '...'


def describe_changes(changes: dict, limit: int = 8) -> str:
  """'model.num_layers 4 -> 6, seed 0 -> 1' (the first ``limit``, then a count)."""
  parts = [f'{k} {_shown(old)} -> {_shown(new)}' for k, (old, new) in sorted(changes.items())]
  return ', '.join(parts[:limit]) + (f' and {len(parts) - limit} more' if len(parts) > limit else '')


def check_allowed(config, allowed: Sequence[str]) -> None:
  """ConfigError for a key in ``allowed`` (``--allow_change``) that the config does not have."""
  new = flat(config)
  unknown = [k for k in allowed if k not in new]
  if unknown:
    raise errors.ConfigError(f'--allow_change names {", ".join(unknown)}, which the config does not have; '
                             f'name config keys such as train.batch_size or model.dropout_rate.')


def check_resume(workdir: str, config, allowed: Sequence[str] = (), *, resuming: bool) -> dict:
  """{key: (old, new)} of every key that differs from the workdir's record (see the module docstring).

  ``resuming``: the workdir holds a finished checkpoint this run will continue from. Then
  a change of a ``resume_sensitive`` key not in ``allowed`` raises ConfigChangeError.
  A key in ``allowed`` that the config does not have is a ConfigError. Nothing is written.
  """
  check_allowed(config, allowed)
  new = flat(config)
  record = read_config(workdir)
  if record is None:
    return {}
  old = flat(record)
  changes = {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}
  refused = {k: v for k, v in changes.items() if resume_sensitive(k) and k not in allowed}
  if resuming and refused:
    keys = ','.join(sorted(refused))
    raise ConfigChangeError(
        f'{workdir} holds a run this config would change: {describe_changes(refused)}. These alter the model '
        f'or the batches that come next; nothing was changed. Resume with the recorded config '
        f'({os.path.join(workdir, CONFIG_FILE)}), use a fresh --workdir, or pass --allow_change={keys} to '
        f'continue with the change (recorded in {HISTORY_FILE}).')
  return changes


def record(workdir: str, config, *, step: int, event: str, changes: dict,
           allowed: Sequence[str] = ()) -> None:
  """Writes the config as the workdir's record and appends one history line (process 0 only).

  ``event``: 'start' (step 0, no record before), 'restart' (step 0 over a record without a
  checkpoint) or 'resume'.
  """
  import jax
  if jax.process_index() != 0:
    return
  _atomic_write(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True))
  line = dict(time=datetime.datetime.now().astimezone().isoformat(timespec='seconds'), event=event,
              step=step, host=socket.gethostname(), pid=os.getpid(),
              changes={k: list(v) for k, v in sorted(changes.items())},
              allowed=sorted(k for k in allowed if k in changes))
  with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
    f.write(json.dumps(line) + '\n')


# ----------------------------------------------------------------------------- lock

_HELD: set = set()  # lock paths this process holds (a lock of our own PID not in here is stale)


def _start_ticks(pid: int) -> Optional[int]:
  """The start time of process ``pid`` in clock ticks since boot (/proc), None where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return None if fields[0] == 'Z' else int(fields[19])  # a zombie has exited
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int, start_ticks: Optional[int]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  if os.path.exists('/proc/self/stat'):
    ticks = _start_ticks(pid)
    if ticks is None:
      return False
    if start_ticks is not None and ticks != start_ticks:
      return False  # the PID was reused by a later process
  return True


def _holder_text(h: dict) -> str:
  return f'PID {h.get("pid")} on host {h.get("host")}, started {h.get("started")}'


class Lock:
  """``run.lock`` of a workdir, held by one process (see the module docstring)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._mine: Optional[dict] = None
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def __enter__(self) -> 'Lock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _read(self) -> Optional[dict]:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (ValueError, UnicodeDecodeError, OSError):
      return {}  # being written, or damaged: judged by its age below

  def stale_reason(self, holder: dict) -> Optional[str]:
    """Why ``holder``'s lock is stale, or None while its process may still be running."""
    if not holder:
      try:
        age = time.time() - os.path.getmtime(self.path)
      except OSError:
        return 'it is gone'
      return f'it is unreadable and {age:.0f} s old' if age > 10 else None
    if holder.get('host') == socket.gethostname():
      pid = int(holder.get('pid', -1))
      if pid == os.getpid():
        return None if self.path in _HELD else 'it was left by an earlier run of this process'
      if not _alive(pid, holder.get('start_ticks')):
        return f'process {pid} has ended'
      return None
    age = time.time() - float(holder.get('heartbeat', 0))
    return f'its heartbeat stopped {age / 60:.0f} min ago' if age > STALE_AFTER_S else None

  def acquire(self) -> None:
    """Takes the lock, or raises BusyError naming the live holder."""
    for _ in range(5):
      mine = dict(host=socket.gethostname(), pid=os.getpid(), start_ticks=_start_ticks(os.getpid()),
                  started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                  heartbeat=time.time(), command=' '.join(sys.argv)[:500], token=os.urandom(8).hex())
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:
          continue  # released in between: try again
        why = self.stale_reason(holder)
        if why is None:
          raise BusyError(
              f'{os.path.dirname(self.path)} is in use by another training run ({_holder_text(holder)}); '
              f'wait for it to end or stop it, or use another --workdir. If that process is gone, delete '
              f'{self.path}.') from None
        self._take_over(holder, why)
        continue
      except OSError as e:
        raise errors.ConfigError(f'cannot write {self.path} ({e.strerror}); give a --workdir you can write '
                                 'to.') from None
      with os.fdopen(fd, 'w') as f:
        json.dump(mine, f)
      self._mine = mine
      _HELD.add(self.path)
      self._stop.clear()
      self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
      self._thread.start()
      return
    raise BusyError(f'could not take {self.path}: other processes keep taking it; start one run at a time.')

  def _take_over(self, holder: dict, why: str) -> None:
    """Moves a stale lock aside (one process wins the rename) and says so."""
    aside = f'{self.path}.stale-{socket.gethostname()}-{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another process took it over first
    moved = {}
    try:
      with open(aside) as f:
        moved = json.load(f)
    except (OSError, ValueError):
      pass
    if holder and moved.get('token') != holder.get('token'):
      try:  # a live process locked it between our read and the rename: give it back
        os.link(aside, self.path)
      except OSError:
        pass
      os.remove(aside)
      raise BusyError(f'{os.path.dirname(self.path)} is in use by another training run '
                      f'({_holder_text(moved)}); use another --workdir.')
    os.remove(aside)
    print(f'[llm_jax] taking over the lock of a stopped run in {os.path.dirname(self.path)} '
          f'({_holder_text(holder) if holder else "no holder recorded"}): {why}.', file=sys.stderr, flush=True)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      mine = dict(self._mine, heartbeat=time.time())
      try:
        if (self._read() or {}).get('token') == mine['token']:
          _atomic_write(self.path, json.dumps(mine))
      except OSError:
        pass  # a full or read-only disk: the saves will say so

  def release(self) -> None:
    """Removes the lock if it is still this process's; safe to call twice."""
    if self._mine is None:
      return
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=5)
    try:
      if (self._read() or {}).get('token') == self._mine['token']:
        os.remove(self.path)
    except OSError:
      pass
    _HELD.discard(self.path)
    self._mine = None


@contextlib.contextmanager
def held(workdir: str) -> Iterator[Optional[Lock]]:
  """``hold(workdir)`` for the body of a ``with``, released however the body ends.

  A Ctrl-C while the lock is being taken is held back until the lock is taken and the
  release is certain, so an interrupted start never leaves a lock behind.
  """
  lock = None
  try:
    with _interrupts_deferred():
      lock = hold(workdir)
    yield lock
  finally:
    if lock is not None:
      lock.release()


@contextlib.contextmanager
def _interrupts_deferred():
  """Holds SIGINT back for the body (main thread only); raises KeyboardInterrupt after it if one came."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  came = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if came:
    raise KeyboardInterrupt


def hold(workdir: str) -> Optional[Lock]:
  """The workdir's Lock, taken once per run: by process 0, the outcome shared with all processes.

  Returns the held Lock (process 0) or None (other processes); raises BusyError on every
  process when process 0 could not take it.
  """
  import jax
  if jax.process_count() == 1:
    lock = Lock(workdir)
    lock.acquire()
    return lock
  import numpy as np
  from jax.experimental import multihost_utils
  lock, message = None, ''
  if jax.process_index() == 0:
    try:
      lock = Lock(workdir)
      lock.acquire()
    except errors.Error as e:
      lock, message = None, str(e)
  ok = multihost_utils.broadcast_one_to_all(np.int32(0 if message else 1))
  if not int(ok):
    raise BusyError(message or f'process 0 could not take the lock of {workdir} (its log says why).')
  return lock
