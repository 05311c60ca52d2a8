"""Benchmark harness: training speed, MFU and memory, reference numerics, decoding, sweeps.

  # training: step time, tokens/s, MFU, compile time, per-device memory of the compiled step
  python -m llm_jax.bench --config=configs/shakespeare_char.py --config.model.dropout_rate=0
  # KV-cache decoding against full recomputation (greedy), batch 1 and 64, 256 new tokens
  python -m llm_jax.bench --config=configs/shakespeare_char.py --mode=decode --config.model.dropout_rate=0
  # per-device memory of the step on 1 device vs fsdp=8 on 8 devices (simulated here)
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m llm_jax.bench \\
      --config=configs/shakespeare_char.py --config.train.batch_size=16 --mode=memory
  # several configs, each in a fresh process, into PREFIX.json and PREFIX.md
  python -m llm_jax.bench --mode=all --sweep_out=/tmp/sweep \\
      --sweep='configs/default.py,configs/shakespeare_char.py:model.dtype=bfloat16;train.micro_batches=2'

``--mode`` is 'train' (default), 'decode', 'all' (both) or 'memory'. The last line
printed is one JSON object; for 'train' its keys are those of ``benchmark_training``,
'decode' adds a 'decode' entry (``bench_decode``), 'memory' a 'memory' entry
(``bench_sweep.benchmark_memory``). The GPU table (GPT-2 124M and 1.3B MFU, Tiny
Shakespeare to 1.47, decoding) is one command: ``experiments/gpu_bench/run.py``.

Reference numerics: before timing, the config trains ``REFERENCE_STEPS`` steps from
one initialization on synthetic batches next to its reference, the same config with
``REFERENCE_SETTINGS`` (plain 'xla' attention, no remat, unrolled layers, one
micro-batch, float32; and ``train.loss_chunk_size=0`` where that key exists), dropout
off in both. If any loss differs by more than ``RTOL_BF16`` (bfloat16 compute) or
``RTOL_FLOAT32`` relatively, the bench prints one line naming the differing keys and
the losses and exits with ``ReferenceMismatch.exit_code`` (6), reporting no figures: a
fast step that computes something else is no result. ``--nocheck_reference`` skips it;
``--reference_rtol`` replaces the tolerance. Decoding refuses the same way (exit 6) when
float32 cached tokens differ from recomputed ones.

Timing: on a shared machine other processes slow both the steps and the peak matmul,
so the bench alternates ``--rounds`` rounds of (``--steps`` timed steps, one peak
measurement) and reports the fastest round's step time against the highest peak.
``compile_s`` is tracing + lowering + XLA compilation of the train step, timed apart
from its first run (``first_step_s``). ``peak_memory_bytes`` is per device, from the
compiled step's ``memory_analysis()``: arguments + outputs + temporaries - aliased
(donated) buffers; None where the backend does not report it.
"""

if __name__ == '__main__':
  from llm_jax import hostmem
  hostmem.setup()  # before anything starts threads (see llm_jax/hostmem.py)

import json  # noqa: E402
import math
import tempfile
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from llm_jax import cli
from llm_jax import errors
from llm_jax import perf
from llm_jax.data.synthetic import SyntheticDataset

REFERENCE_STEPS = 3     # updates before the last compared loss (losses of steps 0..3 compared)
RTOL_BF16 = 2e-2        # relative loss tolerance against the float32 reference, bfloat16 compute
RTOL_FLOAT32 = 1e-4     # ... float32 compute
REFERENCE_TOKENS = 2048  # the check's batch: about this many tokens (whole rows fitting the mesh; <= the config's)
REFERENCE_SETTINGS = {'model.attention_kernel': 'xla', 'model.remat': 'none', 'model.scan_layers': False,
                      'train.micro_batches': 1, 'model.dtype': 'float32'}
_NO_DROPOUT = {'model.dropout_rate': 0.0, 'model.attention_dropout_rate': 0.0}
MODES = ('train', 'decode', 'all', 'memory')

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined on demand, so that importing this module (as
  bench_decode and bench_sweep do) never defines them twice."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_enum('mode', 'train', MODES, 'What to measure (see the module docstring).')
  flags.DEFINE_integer('steps', 10, 'Timed train steps per round.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  flags.DEFINE_integer('rounds', 3, 'Rounds of timed steps alternating with peak measurements.')
  flags.DEFINE_integer('vocab_size', -1, 'Synthetic vocabulary (-1: data.vocab_size for sentencepiece, '
                       '259 for bytes, 65 for characters as in Tiny Shakespeare).')
  flags.DEFINE_bool('check_reference', True, 'Refuse to report a config whose losses differ from the reference path.')
  flags.DEFINE_float('reference_rtol', -1.0, 'Relative loss tolerance of the reference check (-1: by dtype).')
  flags.DEFINE_string('decode_batch_sizes', '1,64', 'Decode batch sizes, comma-separated.')
  flags.DEFINE_integer('decode_new_tokens', 256, 'Tokens generated per row.')
  flags.DEFINE_integer('decode_prompt_len', 16, 'Prompt tokens per row.')
  flags.DEFINE_integer('decode_no_cache_max_tokens', 16,
                       'Time at most this many no-cache tokens and extrapolate the rest (0: time all).')
  flags.DEFINE_integer('decode_repeats', 2, 'Timed repeats of each cached decode (the fastest counts).')
  flags.DEFINE_integer('memory_devices', -1, 'Devices of the fsdp mesh in --mode=memory (-1: this process\'s '
                       'devices when more than one, else 8 simulated CPU devices).')
  flags.DEFINE_string('sweep', '', 'Configs to run one after another in fresh processes: comma-separated '
                      '"configs/NAME.py[:key=value;key=value]" entries, or a .txt (one a line) or .json file.')
  flags.DEFINE_string('sweep_out', 'bench_sweep', 'Sweep output prefix: PREFIX.json and PREFIX.md.')


class ReferenceMismatch(errors.Error, RuntimeError):
  """The config's losses differ from its reference path's beyond the tolerance (``result``: the figures)."""
  exit_code = errors.REFERENCE

  def __init__(self, message: str, result: dict):
    super().__init__(message)
    self.result = result


def synthetic_vocab(config, vocab_size: int = -1) -> int:
  if vocab_size > 0:
    return vocab_size
  return {'sentencepiece': config.data.vocab_size, 'byte': 259}.get(config.data.tokenizer, 65)


def synthetic_dataset(config, vocab_size: int = -1, batch_size: int = 0) -> SyntheticDataset:
  return SyntheticDataset(synthetic_vocab(config, vocab_size), config.data.seq_len,
                          batch_size or config.train.batch_size, config.seed,
                          jax.process_index(), jax.process_count())


def with_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of ``config`` (locked as it was) with dotted keys set."""
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(overrides)
  return config


def flatten(config: ml_collections.ConfigDict) -> dict:
  """{'model.dtype': 'float32', ...}: every leaf of a config under its dotted key."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f'{key}.{k}': v for k, v in flatten(value).items()})
    else:
      out[key] = value
  return out


def memory_stats(compiled) -> dict:
  """Per-device bytes of a compiled executable: peak_memory_bytes / _gib (None if unreported)."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):
    stats = None
  if isinstance(stats, (list, tuple)):  # one entry per device on some paths
    stats = stats[0] if stats else None
  parts = {name: getattr(stats, f'{name}_size_in_bytes', None)
           for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  if stats is None or any(parts[k] is None for k in ('argument', 'output', 'temp')):
    return dict(peak_memory_bytes=None, peak_memory_gib=None, memory_breakdown=None)
  total = parts['argument'] + parts['output'] + parts['temp'] - (parts['alias'] or 0)
  parts['xla_peak'] = getattr(stats, 'peak_memory_in_bytes', None)  # XLA's own figure, where exposed
  return dict(peak_memory_bytes=int(total), peak_memory_gib=round(total / 2 ** 30, 4),
              memory_breakdown={k: v for k, v in parts.items() if v is not None})


def compile_step(trainer, state, batch, compiler_options: Optional[dict] = None):
  """(callable step, seconds to trace + lower + compile or None, memory_stats) of the train step.

  ``compiler_options``: XLA options for this compilation alone (``{'xla_...': value}``).
  The pmap path has no ``lower``; its step compiles on the first call (timed by the caller).
  """
  if not hasattr(trainer.train_step, 'lower'):
    if compiler_options:
      raise ValueError('compiler_options need a jit-compiled step; the pmap path compiles on its first call.')
    return trainer.train_step, None, memory_stats(None)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch).compile(compiler_options=compiler_options or None)
  return compiled, time.perf_counter() - start, memory_stats(compiled)


# ----------------------------------------------------------------------------- reference numerics

def reference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  overrides = dict(REFERENCE_SETTINGS, **_NO_DROPOUT)
  if 'loss_chunk_size' in config.train:
    overrides['train.loss_chunk_size'] = 0
  return with_overrides(config, overrides)


def config_differences(config, reference) -> list[str]:
  """['model.dtype=bfloat16 (reference float32)', ...] for every key whose value differs."""
  a, b = flatten(config), flatten(reference)
  return [f'{k}={a[k]} (reference {b[k]})' for k in sorted(a) if a[k] != b.get(k)]


def _start_state(trainer, initial):
  """``initial`` (a host TrainState) placed on the trainer's shardings, or a fresh init."""
  if initial is None:
    return trainer.init()
  if jax.tree.structure(initial) != jax.tree.structure(trainer.abstract_state):
    raise ValueError('the reference model\'s state tree differs from the config\'s; cannot start both '
                     'from one initialization.')
  return jax.device_put(initial, trainer.state_shardings)


def _train_losses(config, dataset, steps: int, initial=None) -> tuple[list[float], object]:
  """Losses of steps 0..steps from ``initial`` (a host TrainState) or a fresh init; and the start (host)."""
  from llm_jax.train import loop
  with tempfile.TemporaryDirectory() as workdir:
    trainer = loop.build_trainer(config, workdir, dataset=dataset)
  with trainer.context():
    state = _start_state(trainer, initial)
    initial = jax.device_get(state)  # before the step donates the state
    losses = []
    for i in range(steps + 1):
      state, metrics = trainer.train_step(state, trainer.device_batch(dataset.train_batch(i)))
      losses.append(metrics['train_loss'])
  return [float(x) for x in jax.device_get(losses)], initial


def _as_reference(initial, config):
  """The config's initial TrainState in the reference's layout: layers unstacked, optimizer state anew.

  Compiling the reference's own init would cost as much as its step; its optimizer
  state at step 0 is ``optimizer.init`` of the same parameters, computed eagerly.
  """
  from llm_jax.models import transformer
  from llm_jax.train import optim
  params = transformer.to_unrolled(initial.params)
  optimizer, _ = optim.make(config.train)
  return initial.replace(params=params, opt_state=jax.device_get(optimizer.init(params)))


def _check(config, vocab_size: int, steps: int, rtol: float) -> tuple[dict, object]:
  tested = with_overrides(config, _NO_DROPOUT)
  reference = reference_config(config)
  differs = config_differences(tested, reference)
  unit = config.train.micro_batches * jax.device_count()
  rows = min(config.train.batch_size, unit * math.ceil(REFERENCE_TOKENS / (unit * config.data.seq_len)))
  tested, reference = (with_overrides(c, {'train.batch_size': rows}) for c in (tested, reference))
  dataset = synthetic_dataset(config, vocab_size, rows)
  losses, initial = _train_losses(tested, dataset, steps)
  if differs:
    reference_losses, _ = _train_losses(reference, dataset, steps, _as_reference(initial, reference))
  else:
    reference_losses = losses
  rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference_losses))
  tolerance = rtol if rtol > 0 else RTOL_BF16 if config.model.dtype == 'bfloat16' else RTOL_FLOAT32
  result = dict(reference_loss=reference_losses[-1], reference_delta=losses[-1] - reference_losses[-1],
                reference_max_rel_delta=rel, reference_rtol=tolerance, reference_steps=steps,
                reference_rows=rows, reference_losses=reference_losses, check_losses=losses,
                reference_differs=differs)
  if not rel <= tolerance:  # NaN fails too
    raise ReferenceMismatch(
        f'refusing to report: losses differ from the reference path by {rel:.3g} relative (tolerance '
        f'{tolerance:g}) after {steps} steps; config {", ".join(differs) or "(identical)"}; losses '
        f'{[round(x, 6) for x in losses]} vs reference {[round(x, 6) for x in reference_losses]}.', result)
  return result, initial


def check_reference(config, *, vocab_size: int = -1, steps: int = REFERENCE_STEPS, rtol: float = -1.0) -> dict:
  """Trains ``config`` and its ``reference_config`` from one init; raises ReferenceMismatch if they differ.

  Both run with dropout off on the same synthetic batches of about ``REFERENCE_TOKENS``
  tokens (whole rows, a multiple of micro-batches × devices, at most the config's batch):
  a float32 unfused reference of a large model at full batch may not fit where the
  config does. The config's initial state (layers unstacked if scanned) starts the
  reference. Returns the losses and the largest relative difference (``rtol`` > 0
  replaces the tolerance of the compute dtype).
  """
  return _check(config, vocab_size, steps, rtol)[0]


# ----------------------------------------------------------------------------- training

def benchmark_training(config, *, steps: int, warmup: int = 2, rounds: int = 3, vocab_size: int = -1,
                       check: bool = True, rtol: float = -1.0) -> dict:
  """Times compiled train steps of ``config``; returns the figures as a dict.

  With ``check`` the reference numerics check runs first (ReferenceMismatch if it fails)
  and the timed steps start from its initial state.
  """
  from llm_jax.train import loop
  t = config.train
  reference, initial = _check(config, vocab_size, REFERENCE_STEPS, rtol) if check else ({}, None)
  dataset = synthetic_dataset(config, vocab_size)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = loop.build_trainer(config, workdir, dataset=dataset)
  with trainer.context():
    state = _start_state(trainer, initial)  # the check's initial state: no second init to compile
    batches = [trainer.device_batch(dataset.train_batch(i)) for i in range(4)]
    step_fn, compile_s, memory = compile_step(trainer, state, batches[0])
    start = time.perf_counter()
    state, metrics = step_fn(state, batches[0])
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - start
    compile_s = first_step_s if compile_s is None else compile_s
    for i in range(1, warmup):
      state, metrics = step_fn(state, batches[i % 4])
    jax.block_until_ready(metrics)
    elapsed, peak = float('inf'), 0.0
    for _ in range(rounds):
      start = time.perf_counter()
      for i in range(steps):
        state, metrics = step_fn(state, batches[i % 4])
      jax.block_until_ready(metrics)
      elapsed = min(elapsed, time.perf_counter() - start)
      round_peak, source = perf.measure_peak_flops(config.model.dtype)
      peak = max(peak, round_peak)
  peak *= jax.device_count()
  tokens_per_sec = steps * t.batch_size * config.data.seq_len / elapsed
  achieved = tokens_per_sec * trainer.flops_per_token
  return dict(config=dict(layers=config.model.num_layers, width=config.model.emb_dim,
                          seq_len=config.data.seq_len, batch=t.batch_size, micro_batches=t.micro_batches,
                          dtype=config.model.dtype, attention_kernel=config.model.attention_kernel,
                          remat=config.model.remat, scan_layers=config.model.scan_layers,
                          vocab=dataset.tokenizer.vocab_size),
              params=sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state.params)),
              device=jax.devices()[0].device_kind, num_devices=jax.device_count(),
              compile_s=round(compile_s, 2), first_step_s=round(first_step_s, 3),
              step_ms=round(1000 * elapsed / steps, 2), rounds=rounds,
              tokens_per_sec=round(tokens_per_sec, 1), flops_per_token=trainer.flops_per_token,
              attention_flops_halved_for_causal=False,
              achieved_tflops=round(achieved / 1e12, 4), peak_tflops=round(peak / 1e12, 4),
              peak_source=source, mfu=round(achieved / peak, 4),
              final_loss=float(np.asarray(metrics['train_loss'])), **memory, **reference)


# ----------------------------------------------------------------------------- command line

def passthrough_flags() -> list[str]:
  """The measurement flags of this process, for the bench processes a sweep starts."""
  names = ('mode', 'steps', 'warmup', 'rounds', 'vocab_size', 'check_reference', 'reference_rtol',
           'decode_batch_sizes', 'decode_new_tokens', 'decode_prompt_len', 'decode_no_cache_max_tokens',
           'decode_repeats', 'memory_devices')
  return [f'--{n}={FLAGS[n].value}' for n in names]


def run(config, mode: str) -> dict:
  """The measurements of ``mode`` for one config, from the flags (the bench never samples text,
  so ``sample.prompt`` is cleared: its length checks do not apply)."""
  from llm_jax import bench_decode
  from llm_jax import bench_sweep
  from llm_jax import hostmem
  config = with_overrides(config, {'sample.prompt': ''})
  # how the host allocates XLA:CPU's buffers changes CPU step times (llm_jax/hostmem.py)
  result = {'mode': mode, 'host_memory': hostmem.describe()}
  if mode in ('train', 'all'):
    result.update(benchmark_training(config, steps=FLAGS.steps, warmup=FLAGS.warmup, rounds=FLAGS.rounds,
                                     vocab_size=FLAGS.vocab_size, check=FLAGS.check_reference,
                                     rtol=FLAGS.reference_rtol))
  if mode in ('decode', 'all'):
    result['decode'] = bench_decode.benchmark_decoding(
        config, batch_sizes=[int(b) for b in FLAGS.decode_batch_sizes.split(',') if b.strip()],
        new_tokens=FLAGS.decode_new_tokens, prompt_len=FLAGS.decode_prompt_len,
        no_cache_max_tokens=FLAGS.decode_no_cache_max_tokens, repeats=FLAGS.decode_repeats,
        vocab_size=FLAGS.vocab_size)
  if mode == 'memory':
    result['memory'] = bench_sweep.benchmark_memory(config, devices=FLAGS.memory_devices,
                                                    vocab_size=FLAGS.vocab_size)
  return result


def main(argv):
  cli.no_positional(argv)
  from llm_jax import bench_sweep
  if FLAGS.sweep:
    result = bench_sweep.run_sweep(bench_sweep.parse_entries(FLAGS.sweep), passthrough_flags(),
                                   FLAGS.sweep_out, mode=FLAGS.mode)
  elif FLAGS.config is None:
    raise errors.ConfigError('give --config=configs/NAME.py (or --sweep=...).')
  else:
    result = run(FLAGS.config, FLAGS.mode)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  from llm_jax import bench as _bench  # one module object, also when run with -m
  _bench.define_flags()
  cli.run(_bench.main)
