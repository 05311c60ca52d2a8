"""Training objectives, registered by name. Each maps (logits, batch) to summed losses.

An objective returns sums, not means, so gradient accumulation over micro-batches and
sharded batches can divide once by the total weight of the full batch:

  objective(logits[B,T,V] float32, batch, z_loss) -> dict(loss_sum, nll_sum, weight_sum)

``loss_sum`` is what is differentiated; ``nll_sum / weight_sum`` is the reported
cross-entropy (nats per target token).
"""

from typing import Callable

import jax
import jax.numpy as jnp

_OBJECTIVES: dict[str, Callable] = {}


def register(name: str):
  def wrap(fn):
    _OBJECTIVES[name] = fn
    return fn
  return wrap


def get(name: str) -> Callable:
  if name not in _OBJECTIVES:
    raise ValueError(f'objective {name!r} is unknown; choose one of {", ".join(sorted(_OBJECTIVES))}.')
  return _OBJECTIVES[name]


def token_cross_entropy(logits, targets, weights, z_loss: float = 0.0):
  """Weighted token cross-entropy in float32, with PaLM's z-loss z·log(Z)².

  Returns (loss_sum, nll_sum, weight_sum); positions with weight 0 (padding,
  document crossings) contribute nothing.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  weights = weights.astype(jnp.float32)
  nll_sum = jnp.sum(nll * weights)
  loss_sum = nll_sum
  if z_loss:
    loss_sum = loss_sum + z_loss * jnp.sum(jnp.square(log_z) * weights)
  return loss_sum, nll_sum, jnp.sum(weights)


@register('causal_lm')
def causal_lm(logits, batch, z_loss: float = 0.0):
  loss_sum, nll_sum, weight_sum = token_cross_entropy(logits, batch['targets'], batch['weights'], z_loss)
  return dict(loss_sum=loss_sum, nll_sum=nll_sum, weight_sum=weight_sum)


OBJECTIVE_OF_KIND = {'decoder': 'causal_lm'}
