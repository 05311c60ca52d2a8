"""The small float32 run every parallel test shares, and the environment of its subprocesses.

A simulated 8-device CPU needs ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
before jax is imported, so the multi-device work runs in subprocesses
(``tests/parallel/worker.py``, ``python -m llm_jax.main``) started with ``cpu_env``;
the pytest process itself keeps its single device and runs the single-device reference.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT = ''.join(f'Document line {i}: the quick brown fox {i % 7} jumps over the lazy dog.\n' for i in range(60))
STEPS = 5
TIMEOUT_S = 420  # a subprocess that takes longer is stuck (a collective waiting for a dead peer)

# Every strategy, and pmap, runs this config; the multi-host test passes it as flags.
# 8 heads so tensor=8 divides them; the char vocabulary (44) does not divide 8, which
# exercises the vocab fallback (left unsharded under tensor=8, split in 2 under tensor=2).
def overrides(tmp: pathlib.Path) -> dict:
  corpus = tmp / 'corpus.txt'
  if not corpus.exists():
    corpus.write_text(TEXT)
  return {
      'data.dataset': 'files', 'data.files': str(corpus), 'data.eval_fraction': 0.1,
      'data.seq_len': 32, 'data.cache_dir': str(tmp / 'cache'),
      'model.num_layers': 1, 'model.emb_dim': 64, 'model.num_heads': 8, 'model.dropout_rate': 0.0,
      'model.dtype': 'float32',
      'train.steps': STEPS, 'train.batch_size': 16, 'train.warmup_steps': 1, 'train.learning_rate': 1e-2,
      'eval.every_steps': 0, 'eval.max_batches': 1, 'checkpoint.every_steps': 2,
      'log_every_steps': 1, 'sample.prompt': '',
  }


# The encoder (BERT layout, masked LM) on the same corpus, shapes and steps: a trained WordPiece
# of 144 pieces, which 8 divides, so tensor=8 splits its vocabulary (the decoder's it does not).
ENCODER_VOCAB = 144
ENCODER = {'model.kind': 'encoder', 'model.head': 'mlm', 'model.type_vocab_size': 2, 'model.embed_norm': True,
           'model.norm_placement': 'post', 'model.mlp_activation': 'gelu_exact',
           'data.tokenizer': 'wordpiece', 'data.vocab_size': ENCODER_VOCAB}


# The encoder-decoder (T5's layout: relative buckets, RMS norms, tied and rescaled output) on pairs of a few
# words and the same words reversed, packed several to a row of 32 characters a side (char vocabulary of 30,
# which 8 does not divide); 1 block per stack, so the decoder's cross-attention is in every comparison.
WORDS = 'the quick brown fox jumps over the lazy dog and runs far away'.split()
PAIRS = [(' '.join(WORDS[i % 11:i % 11 + 2 + i % 3]), ' '.join(WORDS[i % 11:i % 11 + 2 + i % 3][::-1]))
         for i in range(60)]
# init_scheme 'normal' with init_std 0.2 (not T5's scheme): the rescaled output (D^-0.5) leaves 0.02's
# logits near uniform for 5 steps, and at 0.5 the strategies' losses part by ~1e-4 by step 5 (Adam turns float noise in near-zero gradients into whole steps).
ENCODER_DECODER = {'model.num_decoder_layers': 1, 'model.init_scheme': 'normal', 'model.init_std': 0.2,
                   'data.dataset': 'pairs', 'data.target_len': 32}


def encoder_decoder_overrides(tmp: pathlib.Path) -> dict:
  from llm_jax.models.encoder_decoder import T5_LAYOUT
  pairs = tmp / 'pairs.tsv'
  if not pairs.exists():
    pairs.write_text(''.join(f'{s}\t{t}\n' for s, t in PAIRS))
  return {**{f'model.{k}': v for k, v in T5_LAYOUT.items()}, **ENCODER_DECODER, 'data.files': str(pairs),
          'data.cache_dir': str(tmp / 'cache_encoder_decoder')}


def config(tmp: pathlib.Path, kind: str = 'decoder', **extra):
  from llm_jax import config as config_lib
  base = overrides(tmp)
  if kind == 'encoder':
    base.update(ENCODER, **{'data.cache_dir': str(tmp / 'cache_encoder')})
  elif kind == 'encoder_decoder':
    base.update(encoder_decoder_overrides(tmp))
  return config_lib.from_file(str(ROOT / 'configs' / 'default.py'), **{**base, **extra})


def cpu_env(devices: int, **extra) -> dict:
  """The environment of a subprocess with ``devices`` simulated CPU devices."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split() if 'force_host_platform_device_count' not in f]
  env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
  env.update(extra)
  return env


def flatten(tree) -> dict:
  """{path: numpy array} of a pytree (for bitwise comparisons across processes)."""
  import jax
  import numpy as np
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}
