"""A real multi-process run: 2 processes on 127.0.0.1 with 4 CPU devices each (gloo).

``python -m llm_jax.main`` with --coordinator_address/--num_processes/--process_id on a
hybrid mesh (dcn_data=2: one process per "slice", fsdp=4 inside each) trains 2 steps
and checkpoints (Orbax, collectively), is started again and resumes to step 5. Its
per-step losses must match the 8-device single-process run of the same config
(data=2 × fsdp=4, from the worker), and only process 0 writes metrics. The same with
``parallelism='pmap'`` (8-way data parallel over both processes) is a slow test.
"""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.parallel import common


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, tmp, extra: dict, env: dict, expect_exit: int = 0) -> list[str]:
  port = free_port()
  flags = {**common.overrides(tmp), 'mesh.dcn_data': 2, 'mesh.data': 1, 'mesh.fsdp': 4, **extra}
  procs = []
  for i in range(2):
    cmd = [sys.executable, '-m', 'llm_jax.main', '--config=configs/default.py', f'--workdir={workdir}',
           *[f'--config.{k}={v}' for k, v in flags.items()],
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}']
    procs.append(subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=common.TIMEOUT_S)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == expect_exit, f'process {i} exited {proc.returncode}:\n{out[-6000:]}'
  return outputs


@pytest.mark.parametrize('parallelism', ['jit', pytest.param('pmap', marks=pytest.mark.slow)])
def test_two_processes_train_checkpoint_resume_and_match_one_process(worker, parallel_dir, parallelism):
  tmp = parallel_dir / 'tmp'
  workdir = parallel_dir / f'multihost_{parallelism}'
  mesh = ({'parallelism': 'pmap', 'mesh.dcn_data': 1, 'mesh.data': -1, 'mesh.fsdp': 1}
          if parallelism == 'pmap' else {})
  # The second start reuses the first one's compiled programs.
  env = common.cpu_env(4, JAX_COMPILATION_CACHE_DIR=str(parallel_dir / 'jax_cache'),
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  first = run_two_processes(workdir, tmp, {'train.stop_at': 2, **mesh}, env)
  assert all('done: step 2' in out for out in first)
  second = run_two_processes(workdir, tmp, mesh, env)
  assert all('resumed from step 2' in out and 'done: step 5' in out for out in second)

  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  steps = [r['step'] for r in rows if 'train_loss' in r]
  assert steps == [1, 2, 3, 4, 5]  # one line per step: only process 0 writes
  losses = [r['train_loss'] for r in rows if 'train_loss' in r]
  reference = worker['data_fsdp']
  assert 'error' not in reference, reference.get('error')
  np.testing.assert_allclose(losses, reference['losses'], rtol=1e-5)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())[-1] == '5'


def test_two_processes_refuse_a_batch_that_cannot_be_split_between_them(parallel_dir):
  """Batch rows over 'tensor' (4 ways inside each process): both would hold every row."""
  tmp = parallel_dir / 'tmp'
  tmp.mkdir(exist_ok=True)
  bad = {'mesh.dcn_data': 1, 'mesh.data': 1, 'mesh.fsdp': 2, 'mesh.tensor': 4, 'mesh.rules.act_batch': 'tensor'}
  outputs = run_two_processes(parallel_dir / 'refused', tmp, bad, common.cpu_env(4), expect_exit=2)
  for out in outputs:
    assert 'llm_jax: the batch is split 4 ways' in out and 'over 2 processes' in out, out[-3000:]


@pytest.mark.slow
def test_ctrl_c_on_one_process_saves_one_step_on_both(parallel_dir):
  """Ctrl-C reaches one host only: it is passed on as a preemption notice, so both processes
  save the same step and stop (the interrupted one with 130, the other with 75)."""
  import signal
  import time
  tmp = parallel_dir / 'tmp'
  tmp.mkdir(exist_ok=True)
  workdir = parallel_dir / 'ctrl_c'
  port = free_port()
  flags = {**common.overrides(tmp), 'mesh.dcn_data': 2, 'mesh.data': 1, 'mesh.fsdp': 4, 'train.steps': 100000,
           'checkpoint.every_steps': 100000}
  procs = [subprocess.Popen([sys.executable, '-m', 'llm_jax.main', '--config=configs/default.py',
                             f'--workdir={workdir}', *[f'--config.{k}={v}' for k, v in flags.items()],
                             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
                            cwd=common.ROOT, env=common.cpu_env(4), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    deadline = time.monotonic() + common.TIMEOUT_S
    metrics = workdir / 'metrics.jsonl'
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), 'no steps logged'
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGINT)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [75, 130], outputs[1][-3000:]
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert len(steps) == 1
  assert f'preempted (SIGTERM) at step {steps[0]}' in outputs[0]
  assert f'interrupted (Ctrl-C) at step {steps[0]}' in outputs[1]
