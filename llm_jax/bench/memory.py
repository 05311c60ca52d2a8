"""FSDP memory scaling: the compiled step's per-device memory on one device and on fsdp = N.

The train step is compiled for one config twice (nothing runs): on one device, and on a
mesh with fsdp = N devices (data = tensor = 1). A process sees a fixed number of devices,
so a count this process does not have is measured in a child process on N simulated CPU
devices (``python -m llm_jax.bench.memory CONFIG_JSON VOCAB``).
"""

import json
import math
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections

from llm_jax.bench import common
from llm_jax.bench.sweep import last_json

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_env(devices: int) -> dict:
  """This process's environment with ``devices`` simulated CPU devices (for a child process)."""
  env = dict(os.environ)
  kept = [f for f in env.get('XLA_FLAGS', '').split() if 'force_host_platform_device_count' not in f]
  env['XLA_FLAGS'] = ' '.join(kept + [f'--xla_force_host_platform_device_count={devices}'])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join([_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  return env


def state_bytes_per_device(abstract_state) -> int:
  """Bytes of the train state (params, optimizer, step, rng) one device holds, from the shardings."""
  total = 0
  for leaf in jax.tree.leaves(abstract_state):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def compiled_step_memory(config, vocab_size: int = -1) -> dict:
  """Per-device memory of ``config``'s train step compiled for this process's devices (nothing runs)."""
  from llm_jax.train import trainer as trainer_lib
  b, t = config.train.batch_size, config.data.seq_len
  with tempfile.TemporaryDirectory() as workdir:
    trainer = trainer_lib.build_trainer(config, workdir, dataset=common.synthetic_dataset(config, vocab_size))
  batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding)
           for k, s in trainer.kind.schema(b, t).items()}
  with trainer.context():
    compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
  state = state_bytes_per_device(trainer.abstract_state)
  return dict(devices=jax.device_count(), platform=jax.default_backend(), mesh=dict(trainer.mesh.shape),
              state_bytes=state, state_gib=round(state / 2 ** 30, 4), **common.memory_stats(compiled))


def _measure(config, devices: int, vocab_size: int) -> dict:
  if devices == jax.device_count() and jax.process_count() == 1:
    return compiled_step_memory(config, vocab_size)
  with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
    f.write(config.to_json())
  try:
    proc = subprocess.run([sys.executable, '-m', 'llm_jax.bench.memory', f.name, str(vocab_size)],
                          capture_output=True, text=True, env=cpu_env(devices), cwd=_ROOT)
  finally:
    os.unlink(f.name)
  result = last_json(proc.stdout)
  if proc.returncode or result is None:
    raise RuntimeError(f'memory on {devices} simulated devices failed (exit {proc.returncode}): '
                       f'{proc.stderr.strip().splitlines()[-1:] or "no output"}')
  return result


def benchmark_memory(config, *, devices: int = -1, vocab_size: int = -1) -> dict:
  """Per-device memory of the compiled step: 1 device vs fsdp=``devices``; their ratio.

  ``devices`` -1 takes this process's device count when above one, else 8 (simulated
  CPU devices in a child process). The ideal ratio is 1/devices; the target for a
  working FSDP is <= 1.2/devices.
  """
  devices = devices if devices > 0 else jax.device_count() if jax.device_count() > 1 else 8
  plain = {'mesh.dcn_data': 1, 'mesh.dcn_fsdp': 1, 'mesh.tensor': 1}
  single = _measure(common.with_overrides(config, dict(plain, **{'mesh.data': 1, 'mesh.fsdp': 1})), 1, vocab_size)
  sharded = _measure(common.with_overrides(config, dict(plain, **{'mesh.data': 1, 'mesh.fsdp': devices})), devices,
                     vocab_size)
  ratio = lambda key: (round(sharded[key] / single[key], 4) if single.get(key) and sharded.get(key) is not None
                       else None)
  total = ratio('peak_memory_bytes')
  return dict(devices=devices, batch=config.train.batch_size, seq_len=config.data.seq_len,
              width=config.model.emb_dim, layers=config.model.num_layers, dtype=config.model.dtype,
              scan_layers=config.model.scan_layers, single=single, sharded=sharded, ratio=total,
              state_ratio=ratio('state_bytes'), target_ratio=round(1.2 / devices, 4),
              meets_target=None if total is None else total <= 1.2 / devices)


def _child(config_json: str, vocab_size: str) -> None:
  with open(config_json) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.lock()
  print(json.dumps(compiled_step_memory(config, int(vocab_size))), flush=True)


if __name__ == '__main__':
  _child(*sys.argv[1:3])
