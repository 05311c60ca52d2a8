"""Pure train and eval steps: ``(state, batch) -> (state, metrics)``.

A batch is what the model kind's schema says (``models.kinds``); the kind's ``loss``
applies the model and returns sums, its ``metrics`` turns sums into figures. The steps
are compiled by the trainer with ``jax.jit`` (state donated) under the mesh's
logical-axis rules.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax



@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  rng: jax.Array           # uint32 key data; dropout key of step s = fold_in(rng, s)


def init_state(kind, optimizer: optax.GradientTransformation, seed: int, example_batch) -> TrainState:
  """Fresh parameters and optimizer state, unboxed (``parallel`` derives their shardings)."""
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  params = nn.meta.unbox(kind.init(params_key, example_batch)['params'])
  return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(dropout_key))


def _scan_accumulate(grads_of, params, split, base, micro_batches, dropout):
  def accumulate(carry, xs):
    i, micro = xs
    g, o = grads_of(params, micro, jax.random.fold_in(base, i) if dropout else None)
    return jax.tree.map(jnp.add, carry, (g, o)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      lambda: grads_of(params, jax.tree.map(lambda x: x[0], split), None)))
  (grads, out), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(micro_batches), split))
  return grads, out


def make_train_step(kind, optimizer: optax.GradientTransformation, lr_schedule: Callable,
                    *, z_loss: float, micro_batches: int, dropout: bool,
                    axis_name: str | None = None, micro_batch_mode: str = 'scan', loss_chunk_size: int = 0):
  """Returns train_step(state, batch) -> (state, metrics).

  With micro_batches > 1 the batch is split along B and gradients of the summed loss
  are accumulated, with ``lax.scan`` (``micro_batch_mode='scan'``: one micro-batch's
  activations live at a time) or unrolled (``'parallel'``: independent chains the
  runtime may execute at the same time; on a 2-core CPU at small shapes this keeps
  both cores busy where single small ops cannot). Either way the micro-batch
  gradients are added in order 0, 1, ... and the update divides once by the full
  batch's target count, so accumulation gives the same update as one big batch.

  With ``axis_name`` (the pmap path) each device holds a slice of the batch; gradient
  and loss sums are all-reduced over that axis before the division (the token-weighted
  ``pmean`` of per-device gradients), so the update is the jit path's on the whole batch.

  With ``loss_chunk_size`` N > 0 a language model's loss forms the logits N positions
  at a time (``objectives``): no [B, T, V] logits, same update up to float rounding.
  """
  def grads_of(params, batch, key):
    def loss_fn(p):
      out = kind.loss(p, batch, dropout_key=key, z_loss=z_loss, chunk_size=loss_chunk_size)
      return out['loss_sum'], out
    return jax.grad(loss_fn, has_aux=True)(params)

  def train_step(state: TrainState, batch):
    base = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if axis_name is not None:  # distinct dropout masks per device
      base = jax.random.fold_in(base, jax.lax.axis_index(axis_name))
    if micro_batches == 1:
      grads, out = grads_of(state.params, batch, base if dropout else None)
    else:
      split = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)
      if micro_batch_mode == 'parallel':
        parts = [grads_of(state.params, jax.tree.map(lambda x, i=i: x[i], split),
                          jax.random.fold_in(base, i) if dropout else None)
                 for i in range(micro_batches)]
        grads, out = functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), parts)
      else:
        grads, out = _scan_accumulate(grads_of, state.params, split, base, micro_batches, dropout)
    if axis_name is not None:
      grads, out = jax.lax.psum((grads, out), axis_name)
    denom = jnp.maximum(out['weight_sum'], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(kind.metrics(out, 'train_'), grad_norm=optax.tree.norm(grads),
                   learning_rate=lr_schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(kind, *, loss_chunk_size: int = 0):
  """Returns eval_step(params, batch) -> the kind's sums (added over batches, then
  ``kind.metrics(sums, 'eval_')``); ``loss_chunk_size`` as in ``make_train_step``."""
  def eval_step(params, batch):
    out = kind.loss(params, batch, chunk_size=loss_chunk_size)
    return {k: v for k, v in out.items() if k != 'loss_sum'}

  return eval_step
