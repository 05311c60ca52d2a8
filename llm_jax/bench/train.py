"""The training bench: step time, tokens/s, MFU and memory of a config, after a check that its
losses are those of the plain reference path (``llm_jax.bench``'s docstring)."""

import math
import tempfile
import time

import jax
import ml_collections
import numpy as np

from llm_jax import errors
from llm_jax import perf
from llm_jax.bench.common import compile_step, flatten, synthetic_dataset, with_overrides

REFERENCE_STEPS = 3     # updates before the last compared loss (losses of steps 0..3 compared)
RTOL_BF16 = 2e-2        # relative loss tolerance against the float32 reference, bfloat16 compute
RTOL_FLOAT32 = 1e-4     # ... float32 compute
REFERENCE_TOKENS = 2048  # the check's batch: about this many tokens (whole rows fitting the mesh; <= the config's)
REFERENCE_SETTINGS = {'model.attention_kernel': 'xla', 'model.remat': 'none', 'model.scan_layers': False,
                      'train.micro_batches': 1, 'model.dtype': 'float32'}
_NO_DROPOUT = {'model.dropout_rate': 0.0, 'model.attention_dropout_rate': 0.0}


class ReferenceMismatch(errors.Error, RuntimeError):
  """The config's losses differ from its reference path's beyond the tolerance (``result``: the figures)."""
  exit_code = errors.REFERENCE

  def __init__(self, message: str, result: dict):
    super().__init__(message)
    self.result = result

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
  from llm_jax.train import trainer as trainer_lib
  with tempfile.TemporaryDirectory() as workdir:
    trainer = trainer_lib.build_trainer(config, workdir, dataset=dataset)
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
  from llm_jax.models import blocks
  from llm_jax.train import optim
  params = blocks.to_unrolled(initial.params)
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
  from llm_jax.train import trainer as trainer_lib
  t = config.train
  reference, initial = _check(config, vocab_size, REFERENCE_STEPS, rtol) if check else ({}, None)
  dataset = synthetic_dataset(config, vocab_size)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = trainer_lib.build_trainer(config, workdir, dataset=dataset)
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
