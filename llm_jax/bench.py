"""Throughput and MFU of compiled train steps.

  python -m llm_jax.bench --config=configs/shakespeare_char.py --config.train.batch_size=16 \\
      --config.model.dropout_rate=0 --steps=10

Runs on synthetic tokens (the step's cost does not depend on the data), times ``--steps``
compiled steps after warm-up, and prints one JSON line last: step_ms, tokens_per_sec,
flops_per_token (6N + 12·L·T·D, PaLM appendix B, attention *not* halved for causal),
achieved_tflops, peak_tflops, peak_source and mfu. On the CPU the peak is a float32
(or the compute dtype's) 2048² matmul measured in this process; on GPU/TPU it is the
chip's datasheet figure.

On a shared machine other processes slow both the steps and the peak matmul. The
bench therefore alternates ``--rounds`` rounds of (``--steps`` timed steps, one peak
measurement) and reports the fastest round's step time against the highest peak:
the ratio each would have on a quiet machine, taken in one run.
"""

import json
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from llm_jax import perf
from llm_jax.data.synthetic import SyntheticDataset

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_integer('steps', 10, 'Timed train steps after warm-up.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps first (the first compiles).')
flags.DEFINE_integer('rounds', 3, 'Rounds of timed steps alternating with peak measurements.')
flags.DEFINE_integer('vocab_size', -1, 'Synthetic vocabulary (-1: data.vocab_size for sentencepiece, '
                     '259 for bytes, 65 for characters as in Tiny Shakespeare).')
flags.mark_flags_as_required(['config'])


def synthetic_vocab(config, vocab_size: int = -1) -> int:
  if vocab_size > 0:
    return vocab_size
  return {'sentencepiece': config.data.vocab_size, 'byte': 259}.get(config.data.tokenizer, 65)


def benchmark_training(config, *, steps: int, warmup: int = 2, rounds: int = 3, vocab_size: int = -1) -> dict:
  """Times compiled train steps of ``config``; returns the figures as a dict."""
  from llm_jax.train import loop
  t = config.train
  dataset = SyntheticDataset(synthetic_vocab(config, vocab_size), config.data.seq_len, t.batch_size,
                             config.seed, jax.process_index(), jax.process_count())
  trainer = loop.build_trainer(config, tempfile.mkdtemp(), dataset=dataset)
  with trainer.context():
    state = trainer.init()
    batches = [trainer.device_batch(dataset.train_batch(i)) for i in range(4)]
    t0 = time.perf_counter()
    state, metrics = trainer.train_step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for i in range(1, warmup):
      state, metrics = trainer.train_step(state, batches[i % 4])
    jax.block_until_ready(metrics)
    elapsed, peak = float('inf'), 0.0
    for _ in range(rounds):
      t0 = time.perf_counter()
      for i in range(steps):
        state, metrics = trainer.train_step(state, batches[i % 4])
      jax.block_until_ready(metrics)
      elapsed = min(elapsed, time.perf_counter() - t0)
      round_peak, source = perf.measure_peak_flops(config.model.dtype)
      peak = max(peak, round_peak)
  peak *= jax.device_count()
  tokens_per_sec = steps * t.batch_size * config.data.seq_len / elapsed
  achieved = tokens_per_sec * trainer.flops_per_token
  return dict(config=dict(layers=config.model.num_layers, width=config.model.emb_dim,
                          seq_len=config.data.seq_len, batch=t.batch_size, dtype=config.model.dtype,
                          vocab=dataset.tokenizer.vocab_size),
              device=jax.devices()[0].device_kind, num_devices=jax.device_count(),
              compile_s=round(compile_s, 2), step_ms=round(1000 * elapsed / steps, 2), rounds=rounds,
              tokens_per_sec=round(tokens_per_sec, 1), flops_per_token=trainer.flops_per_token,
              attention_flops_halved_for_causal=False,
              achieved_tflops=round(achieved / 1e12, 4), peak_tflops=round(peak / 1e12, 4),
              peak_source=source, mfu=round(achieved / peak, 4),
              final_loss=float(np.asarray(metrics['train_loss'])))


def main(argv):
  del argv
  result = benchmark_training(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup, rounds=FLAGS.rounds,
                              vocab_size=FLAGS.vocab_size)
  print(json.dumps(result), flush=True)
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
