"""Training objectives, registered by name. Each maps (logits, batch) to summed losses.

An objective returns sums, not means, so gradient accumulation over micro-batches and
sharded batches can divide once by the total weight of the full batch:

  objective(logits[B,T,V] float32, batch, z_loss) -> dict(loss_sum, nll_sum, weight_sum)

``loss_sum`` is what is differentiated; ``nll_sum / weight_sum`` is the reported
cross-entropy (nats per target token).

An objective may also have a memory-lean chunked form (``get(name, chunk_size=N)``,
``config.train.loss_chunk_size``) on the model's final hidden states and output
projection (``apply(..., return_hidden=True)``) instead of its logits:

  chunked((hidden[B,T,D], w[D,V] float32), batch, z_loss) -> the same dict

It forms the logits of N positions of every row at a time, so float32 logits of
more than B·N·V never exist, in the forward pass or the backward one. Same sums
and the same gradient of ``loss_sum`` as the plain form up to float rounding;
``nll_sum`` and ``weight_sum`` are reported, not differentiated (zero gradient).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.models import axes
from llm_jax.models import layers

_OBJECTIVES: dict[str, Callable] = {}
_CHUNKED: dict[str, Callable] = {}


def register(name: str):
  def wrap(fn):
    _OBJECTIVES[name] = fn
    return fn
  return wrap


def register_chunked(name: str):
  """Registers the chunked form of objective ``name``: fn(outputs, batch, z_loss, *, chunk_size)."""
  def wrap(fn):
    _CHUNKED[name] = fn
    return fn
  return wrap


def get(name: str, chunk_size: int = 0) -> Callable:
  """Objective ``name`` on logits; with ``chunk_size`` > 0 its chunked form on (hidden, w)."""
  if name not in _OBJECTIVES:
    raise ValueError(f'objective {name!r} is unknown; choose one of {", ".join(sorted(_OBJECTIVES))}.')
  if chunk_size <= 0:
    return _OBJECTIVES[name]
  if name not in _CHUNKED:
    raise ValueError(f'objective {name!r} has no chunked form; set config.train.loss_chunk_size=0.')
  return functools.partial(_CHUNKED[name], chunk_size=chunk_size)


def _log_z_and_nll(logits, targets):
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z, log_z - target_logit


def _weighted_sums(log_z, nll, weights, z_loss: float):
  weights = weights.astype(jnp.float32)
  nll_sum = jnp.sum(nll * weights)
  loss_sum = nll_sum
  if z_loss:
    loss_sum = loss_sum + z_loss * jnp.sum(jnp.square(log_z) * weights)
  return loss_sum, nll_sum, jnp.sum(weights)


def token_cross_entropy(logits, targets, weights, z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Weighted token cross-entropy in float32, with PaLM's z-loss z·log(Z)².

  Returns (loss_sum, nll_sum, weight_sum); positions with weight 0 (padding,
  document crossings) contribute nothing. With ``label_smoothing`` ε the loss (not the
  reported nll) is the cross-entropy against (1 - ε)·onehot + ε/V (Szegedy et al.;
  Vaswani et al. use ε = 0.1): (1 - ε)·nll + ε·(log Z - mean of the logits).
  """
  logits = logits.astype(jnp.float32)
  log_z, nll = _log_z_and_nll(logits, targets)
  loss_sum, nll_sum, weight_sum = _weighted_sums(log_z, nll, weights, z_loss)
  if label_smoothing:
    uniform = log_z - jnp.mean(logits, axis=-1)  # -mean over the vocabulary of log p
    smoothing = jnp.sum((uniform - nll) * weights.astype(jnp.float32))
    loss_sum = loss_sum + label_smoothing * smoothing
  return loss_sum, nll_sum, weight_sum


# ----------------------------------------------------------------------------- chunked

def _slice_terms(h, targets, weights, w, z_loss: float, grads: bool):
  """One slice of n positions of every row: the three sums and, with ``grads``, the
  gradients of loss_sum: d/dh [B,n,D] (h's dtype), d/dw [D,V] float32 and
  d/dweights [B,n] (the per-token loss).

  The logits are formed as in the model (``h · w`` in h's dtype, then float32); with
  p = softmax(logits), d loss_sum / d logits = weights·((1 + 2z·log Z)·p - onehot(targets)).
  """
  logits = layers.dense(h, w.astype(h.dtype)).astype(jnp.float32)
  logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_VOCAB))
  log_z, nll = _log_z_and_nll(logits, targets)
  sums = _weighted_sums(log_z, nll, weights, z_loss)
  if not grads:
    return sums, None
  probs = jnp.exp(logits - log_z[..., None])
  if z_loss:
    probs = probs * (1 + 2 * z_loss * log_z)[..., None]
  onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  dlogits = (weights.astype(jnp.float32)[..., None] * (probs - onehot)).astype(h.dtype)
  dlogits = nn.with_logical_constraint(dlogits, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_VOCAB))
  dh = layers.dense(dlogits, w.astype(h.dtype).T)
  dw = jax.lax.dot_general(h.reshape(-1, h.shape[-1]), dlogits.reshape(-1, dlogits.shape[-1]),
                           (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  token_loss = nll + z_loss * jnp.square(log_z) if z_loss else nll
  return sums, (dh, dw, token_loss)


def _over_slices(h, w, targets, weights, z_loss: float, size: int, grads: bool):
  """``_slice_terms`` over the T positions in slices of ``size``: a ``lax.scan`` over
  the whole slices, then the remainder (T mod size positions) as one shorter slice.
  Returns (sums, None) or (sums, (dh[B,T,D], dw[D,V], token_loss[B,T]))."""
  b, t = targets.shape
  whole, rest = divmod(t, size)
  terms = functools.partial(_slice_terms, w=w, z_loss=z_loss, grads=grads)
  sums = (jnp.zeros((), jnp.float32),) * 3
  dw = jnp.zeros(w.shape, jnp.float32) if grads else None
  pieces = []

  def add(total, part):
    return tuple(a + p for a, p in zip(total, part))

  if whole:
    def split(x):  # [B, whole·size, ...] -> [whole, B, size, ...]
      return jnp.moveaxis(x[:, :whole * size].reshape(b, whole, size, *x.shape[2:]), 1, 0)

    def body(carry, xs):
      acc, acc_dw = carry
      part, g = terms(*xs)
      if not grads:
        return (add(acc, part), acc_dw), None
      dh, dw_part, token_loss = g
      return (add(acc, part), acc_dw + dw_part), (dh, token_loss)

    (sums, dw), ys = jax.lax.scan(body, (sums, dw), tuple(split(x) for x in (h, targets, weights)))
    if grads:
      pieces.append(tuple(jnp.moveaxis(y, 0, 1).reshape(b, whole * size, *y.shape[3:]) for y in ys))
  if rest:
    part, g = terms(h[:, whole * size:], targets[:, whole * size:], weights[:, whole * size:])
    sums = add(sums, part)
    if grads:
      dh, dw_part, token_loss = g
      dw = dw + dw_part
      pieces.append((dh, token_loss))
  if not grads:
    return sums, None
  dh, token_loss = (jnp.concatenate(p, axis=1) if len(pieces) > 1 else p[0] for p in zip(*pieces))
  return sums, (dh, dw, token_loss)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_sums(h, w, targets, weights, z_loss, size):
  return _over_slices(h, w, targets, weights, z_loss, size, grads=False)[0]


def _chunked_sums_fwd(h, w, targets, weights, z_loss, size):
  # The gradients are formed with the logits, slice by slice, and kept (dh is the
  # size of h, dw of w): the backward pass needs no logits at all.
  return _over_slices(h, w, targets, weights, z_loss, size, grads=True)


def _chunked_sums_bwd(z_loss, size, residuals, cotangents):
  del z_loss, size
  dh, dw, token_loss = residuals
  g = cotangents[0]  # nll_sum and weight_sum leave through stop_gradient: their cotangents are 0
  return (g * dh).astype(dh.dtype), g * dw, None, g * token_loss


_chunked_sums.defvjp(_chunked_sums_fwd, _chunked_sums_bwd)


def chunked_token_cross_entropy(hidden, w, targets, weights, z_loss: float = 0.0, *, chunk_size: int):
  """``token_cross_entropy(hidden · w, ...)`` over slices of ``chunk_size`` positions.

  hidden[B,T,D] in the compute dtype, w[D,V] float32 (cast to hidden's dtype for the
  product, as the model does), targets[B,T] int32, weights[B,T] float32. A T that
  ``chunk_size`` does not divide ends in one shorter slice. The forward pass also
  forms d loss_sum / d(hidden, w) slice by slice (a ``custom_vjp``), so the backward
  pass recomputes nothing; nll_sum and weight_sum carry no gradient.
  """
  if chunk_size <= 0:
    raise ValueError(f'chunk_size={chunk_size} must be positive.')
  loss_sum, nll_sum, weight_sum = _chunked_sums(hidden, w, targets, weights, float(z_loss), int(chunk_size))
  return loss_sum, jax.lax.stop_gradient(nll_sum), jax.lax.stop_gradient(weight_sum)


@register('causal_lm')
def causal_lm(logits, batch, z_loss: float = 0.0, label_smoothing: float = 0.0):
  loss_sum, nll_sum, weight_sum = token_cross_entropy(logits, batch['targets'], batch['weights'], z_loss,
                                                      label_smoothing)
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum)


@register_chunked('causal_lm')
def causal_lm_chunked(outputs, batch, z_loss: float = 0.0, *, chunk_size: int):
  hidden, w = outputs
  loss_sum, nll_sum, weight_sum = chunked_token_cross_entropy(hidden, w, batch['targets'], batch['weights'],
                                                              z_loss, chunk_size=chunk_size)
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum)




@register('seq2seq')
def seq2seq(logits, batch, z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Teacher-forced cross-entropy on the target tokens (``weights`` 0 elsewhere), optionally label-smoothed;
  correct_sum counts the weighted targets that are the argmax."""
  loss_sum, nll_sum, weight_sum = token_cross_entropy(logits, batch['targets'], batch['weights'], z_loss,
                                                      label_smoothing)
  correct = (jnp.argmax(logits, axis=-1) == batch['targets']).astype(jnp.float32)
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum,
              correct_sum=jnp.sum(correct * batch['weights']))


@register_chunked('seq2seq')
def seq2seq_chunked(outputs, batch, z_loss: float = 0.0, label_smoothing: float = 0.0, *, chunk_size: int):
  if label_smoothing:
    raise ValueError('config.train.label_smoothing has no chunked form; set config.train.loss_chunk_size=0.')
  hidden, w = outputs
  loss_sum, nll_sum, weight_sum = chunked_token_cross_entropy(hidden, w, batch['targets'], batch['weights'],
                                                              z_loss, chunk_size=chunk_size)
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum)


def seq2seq_metrics(sums, prefix: str) -> dict:
  n = jnp.maximum(sums['weight_sum'], 1.0)
  loss = sums['nll_sum'] / n
  out = {f'{prefix}loss': loss, f'{prefix}perplexity': jnp.exp(jnp.minimum(loss, 50.0))}
  if 'correct_sum' in sums:
    out[f'{prefix}token_accuracy'] = sums['correct_sum'] / n
  return out


# ----------------------------------------------------------------------------- encoder objectives

def masked_lm(logits, batch, z_loss: float = 0.0):
  """Cross-entropy at the chosen positions: logits [B, P, V] against mlm_targets [B, P],
  weighted by mlm_weights (0 where a row has fewer than P chosen positions). Adds
  correct_sum, the weighted count of positions whose argmax is the target."""
  targets, weights = batch['mlm_targets'], batch['mlm_weights']
  loss_sum, nll_sum, weight_sum = token_cross_entropy(logits, targets, weights, z_loss)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum, correct_sum=jnp.sum(correct * weights))


def masked_lm_metrics(sums, prefix: str) -> dict:
  n = jnp.maximum(sums['weight_sum'], 1.0)
  loss = sums['nll_sum'] / n
  return {f'{prefix}loss': loss, f'{prefix}mlm_accuracy': sums['correct_sum'] / n,
          f'{prefix}perplexity': jnp.exp(jnp.minimum(loss, 50.0))}


def classification(logits, batch, z_loss: float = 0.0, *, num_classes: int):
  """Cross-entropy of logits [B, C] against labels [B], weighted by example_weights (0 for
  the rows that pad an eval batch). Adds the confusion matrix counts [C, C] (row: label,
  column: prediction) for accuracy, F1 and Matthews correlation."""
  labels, weights = batch['labels'], batch['example_weights']
  loss_sum, nll_sum, weight_sum = token_cross_entropy(logits, labels, weights, z_loss)
  predicted = jnp.argmax(logits, axis=-1)
  confusion = jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, predicted].add(
      weights.astype(jnp.float32))
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum, confusion=confusion)


def classification_metrics(sums, prefix: str, full: bool = False) -> dict:
  """loss and accuracy; with ``full`` also Matthews correlation (any number of classes,
  Gorodkin's R_K) and, for two classes, F1 of class 1 (GLUE's positive class)."""
  c = sums['confusion']
  n = jnp.maximum(sums['weight_sum'], 1.0)
  out = {f'{prefix}loss': sums['nll_sum'] / n, f'{prefix}accuracy': jnp.trace(c) / n}
  if not full:
    return out
  truth, predicted, correct = c.sum(axis=1), c.sum(axis=0), jnp.trace(c)
  total = c.sum()
  denominator = jnp.sqrt((total ** 2 - jnp.sum(predicted ** 2)) * (total ** 2 - jnp.sum(truth ** 2)))
  out[f'{prefix}mcc'] = jnp.where(denominator > 0, (correct * total - jnp.sum(predicted * truth)) /
                                  jnp.where(denominator > 0, denominator, 1.0), 0.0)
  if c.shape[0] == 2:
    tp, fp, fn = c[1, 1], c[0, 1], c[1, 0]
    out[f'{prefix}f1'] = jnp.where(tp > 0, 2 * tp / jnp.maximum(2 * tp + fp + fn, 1.0), 0.0)
  return out
