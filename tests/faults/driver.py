"""``python -m llm_jax.main`` with faults injected, for the fault tests only.

The product has no fault hooks; this driver patches them in from environment
variables, then runs the real entry point (flags, loop, exit codes):

  LLM_JAX_TEST_POISON_STEP=P     the batch of step P has NaN weights (a poisoned batch)
  LLM_JAX_TEST_LR_SPIKE_STEP=P   the update of step P is scaled by 1e30 (a learning-rate spike)
  LLM_JAX_TEST_STEP_DELAY=S      every batch takes S seconds more to make (a slower run)
  LLM_JAX_TEST_SAVE_DELAY=S      every save prints a line once its files are written, then
                                 waits S seconds before its commit (the window a kill -9 must hit)
  LLM_JAX_TEST_FULL_FROM_SAVE=N  from the N-th save on, files over 16 KiB cannot be written
                                 (RLIMIT_FSIZE: EFBIG, as on a full disk)
  LLM_JAX_TEST_READ_ONLY_FROM_SAVE=N  before the N-th save the checkpoint directory becomes
                                 read-only (as root, start the driver without CAP_DAC_OVERRIDE)
  LLM_JAX_TEST_OFFLINE=1         no host name resolves and no connection opens (a machine
                                 without network, whatever the test machine has)

  python tests/faults/driver.py --config=configs/default.py --workdir=DIR [--config.key=value ...]
"""

import os
import resource
import signal
import time


def _int(name):
  value = os.environ.get(name)
  return None if value is None else int(value)


def _patch_data(poison_step, step_delay):
  import numpy as np
  from llm_jax.data import pipeline
  original = pipeline.Dataset.train_batch

  def train_batch(self, step):  # batch index s feeds step s + 1
    batch = original(self, step)
    if step + 1 == poison_step:
      batch = dict(batch, weights=np.full_like(batch['weights'], np.nan))
    time.sleep(step_delay)
    return batch

  pipeline.Dataset.train_batch = train_batch


def _patch_optimizer(spike_step):
  import jax.numpy as jnp
  import optax
  from llm_jax.train import optim
  original = optim.make

  def make(train_cfg, *args):
    optimizer, schedule = original(train_cfg, *args)
    spike = lambda count: jnp.where(count == spike_step - 1, 1e30, 1.0)
    return optax.chain(optimizer, optax.scale_by_schedule(spike)), lambda s: schedule(s) * spike(s)

  optim.make = make


def _patch_saves(delay, full_from, read_only_from):
  from llm_jax import checkpoint
  record, save = checkpoint.Checkpoints._record_files, checkpoint.Checkpoints.save
  calls = []

  def record_files(self):
    print(f'[fault driver] save of step {self._pending} written, committing in {delay} s', flush=True)
    time.sleep(delay)
    record(self)

  def guarded_save(self, step, *args, **kwargs):
    calls.append(step)
    if full_from is not None and len(calls) == full_from:
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, resource.RLIM_INFINITY))
    if read_only_from is not None and len(calls) == read_only_from:
      os.chmod(self.directory, 0o555)
    return save(self, step, *args, **kwargs)

  if delay:
    checkpoint.Checkpoints._record_files = record_files
  checkpoint.Checkpoints.save = guarded_save


def _patch_offline():
  import socket

  def refuse(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known (LLM_JAX_TEST_OFFLINE)')

  socket.getaddrinfo = refuse
  socket.create_connection = refuse


def main():
  from llm_jax import hostmem
  hostmem.setup()  # as `python -m llm_jax.main` does first: the faults hit the production settings
  if os.environ.get('LLM_JAX_TEST_OFFLINE') == '1':
    _patch_offline()
  poison, spike = _int('LLM_JAX_TEST_POISON_STEP'), _int('LLM_JAX_TEST_LR_SPIKE_STEP')
  delay = float(os.environ.get('LLM_JAX_TEST_SAVE_DELAY', 0))
  full_from, read_only_from = _int('LLM_JAX_TEST_FULL_FROM_SAVE'), _int('LLM_JAX_TEST_READ_ONLY_FROM_SAVE')
  step_delay = float(os.environ.get('LLM_JAX_TEST_STEP_DELAY', 0))
  if poison is not None or step_delay:
    _patch_data(poison, step_delay)
  if spike is not None:
    _patch_optimizer(spike)
  if delay or full_from is not None or read_only_from is not None:
    _patch_saves(delay, full_from, read_only_from)
  from llm_jax import main as entry
  entry.run()


if __name__ == '__main__':
  main()
