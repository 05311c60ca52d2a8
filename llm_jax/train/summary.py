"""The block a run prints before its first step: what is trained, where, on what, and where outputs go."""

import math
import os

import jax
import jax.numpy as jnp

from llm_jax.models import attention_kernels
from llm_jax.models import layers


def _count(n: float) -> str:
  for unit, size in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= size:
      return f'{n / size:.3g} {unit}'
  return f'{n:g}'


def attention_choice(trainer) -> str:
  """The kernel the train step's attention runs, and for 'auto' why (what ``choose`` decides)."""
  cfg = trainer.model_cfg
  name = cfg.attention_kernel
  if name != 'auto':
    return name
  per_device = max(1, trainer.config.train.batch_size // trainer.config.train.micro_batches
                   // max(1, math.prod(trainer.mesh.devices.shape)))
  t = trainer.config.data.seq_len
  q = jax.ShapeDtypeStruct((per_device, t, cfg.num_heads, cfg.head_dim), cfg.dtype)
  k = jax.ShapeDtypeStruct((per_device, t, cfg.num_kv_heads, cfg.head_dim), cfg.dtype)
  dropout = (lambda p: p) if cfg.attention_dropout_rate > 0 else None
  bias = layers.position_bias(cfg.pos_encoding) or cfg.pos_encoding in layers.LEARNED_BIAS or None
  choice = attention_kernels.choose(q, k, mask=True, bias=bias, dropout=dropout, causal=cfg.causal,
                                    block=cfg.attention_block, devices=jax.device_count())
  return f'{choice.name} (auto: {choice.reason}{"; a fallback" if choice.fallback else ""})'


def _depth(cfg, kind: str) -> str:
  if kind == 'encoder_decoder':
    return f'{cfg.num_layers}+{cfg.num_decoder_layers or cfg.num_layers} (encoder+decoder)'
  return str(cfg.num_layers)


def startup(trainer, workdir: str, first: int, last: int) -> str:
  """The start-up block as text (one '[llm_jax] key  value' line each)."""
  config, cfg, data = trainer.config, trainer.model_cfg, trainer.dataset
  m, t = config.model, config.train
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state.params))
  mesh = ' × '.join(f'{name}={size}' for name, size in trainer.mesh.shape.items())
  devices = jax.devices()
  tokens_per_step = t.batch_size * config.data.seq_len
  lines = [
      ('run', f'resumes at step {first} of {last}' if first else f'starts at step 0 of {last}'),
      ('model', f'{m.kind}, {_count(params)} parameters: {_depth(cfg, m.kind)} layers, width {m.emb_dim}, '
                f'{m.num_heads} heads, context {cfg.max_len}, {m.pos_encoding} positions, '
                f'{jnp.dtype(cfg.dtype).name} compute'),
      ('devices', f'{len(devices)} × {devices[0].device_kind} ({devices[0].platform})'
                  + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else '')
                  + f'; mesh {mesh}; parallelism {config.parallelism}'),
      ('attention', attention_choice(trainer)),
  ]
  d = config.data
  rows = getattr(data, 'rows_per_epoch', None)
  data_line = f'{d.dataset}, {d.tokenizer} tokenizer ({data.tokenizer.vocab_size} ids)'
  if hasattr(data, 'train_tokens'):
    data_line += (f'; {_count(data.train_tokens)} training tokens per epoch = {rows} rows of {d.seq_len} '
                  f'= {rows / t.batch_size:.1f} steps')
    if data.eval_tokens:
      data_line += f'; {_count(data.eval_tokens)} eval tokens'
  lines.append(('data', data_line))
  lines.append(('steps', f'batch {t.batch_size} × {d.seq_len} = {tokens_per_step:,} tokens, '
                         f'learning rate {t.learning_rate:g} ({t.schedule}, warmup {t.warmup_steps})'))
  every = config.eval.every_steps
  lines.append(('outputs', f'{os.path.abspath(workdir)}: metrics.jsonl, tensorboard/, checkpoints/ every '
                           f'{config.checkpoint.every_steps} steps (newest {config.checkpoint.max_to_keep} '
                           f'kept); eval {"every " + str(every) + " steps" if every else "at the end"}'
                           + ('' if d.eval_split else ' (off: no eval split)')))
  width = max(len(k) for k, _ in lines)
  return '\n'.join(f'[llm_jax] {k.ljust(width)}  {v}' for k, v in lines)

