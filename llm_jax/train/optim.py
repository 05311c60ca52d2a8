"""The Optax optimizer from the config: schedule, clipping, AdamW with a decay mask."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax


def rsqrt_decay(peak: float, warmup: int) -> optax.Schedule:
  """peak · sqrt(warmup / step) from step ``warmup`` on (counting steps from the end of the warmup:
  ``optax.join_schedules`` restarts the count). With the linear warmup before it this is Vaswani et
  al.'s d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), whose peak is d_model^-0.5 · warmup^-0.5."""
  def fn(count):
    return peak * jnp.sqrt(warmup / jnp.maximum(count + warmup, 1).astype(jnp.float32))
  return fn


def schedule(t: ml_collections.ConfigDict, steps: int = 0) -> optax.Schedule:
  """Linear warmup 0 → peak over warmup_steps, then cosine/linear decay to end_learning_rate
  at decay_steps (default: the run's steps: ``steps``, else train.steps), constant, or the
  inverse square root ('rsqrt', ``rsqrt_decay``: no end)."""
  total = (steps or t.steps) if t.decay_steps == -1 else t.decay_steps
  warmup = optax.linear_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1))
  decay_len = max(total - t.warmup_steps, 1)
  if t.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(t.learning_rate, decay_len, alpha=t.end_learning_rate / t.learning_rate)
  elif t.schedule == 'rsqrt':
    decay = rsqrt_decay(t.learning_rate, max(t.warmup_steps, 1))
  elif t.schedule == 'linear':
    decay = optax.linear_schedule(t.learning_rate, t.end_learning_rate, decay_len)
  else:
    decay = optax.constant_schedule(t.learning_rate)
  if t.warmup_steps == 0:
    return decay
  return optax.join_schedules([warmup, decay], [t.warmup_steps])


_NORM = re.compile(r'norm')
_BIAS = re.compile(r'bias$')
_EMBED = re.compile(r'(token_embed|position_embed)')


def decay_mask(params, t: ml_collections.ConfigDict):
  """True where weight decay applies: matrices always; norms, biases, embeddings by config."""
  def decide(path, _):
    names = '/'.join(str(getattr(p, 'key', p)) for p in path)
    if _NORM.search(names):
      return t.decay_norms
    if _BIAS.search(names):
      return t.decay_biases
    if _EMBED.search(names):
      return t.decay_embeddings
    return True
  return jax.tree_util.tree_map_with_path(decide, params)


def make(t: ml_collections.ConfigDict, steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping over a run of ``steps`` (default train.steps). Returns
  (optimizer, learning-rate schedule)."""
  lr = schedule(t, steps)
  parts = []
  if t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  parts.append(optax.adamw(lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                           mask=lambda p: decay_mask(p, t)))
  return optax.chain(*parts), lr
