"""The non-finite guard: a NaN or Inf never reaches a checkpoint.

``wrap`` adds ``param_norm`` to a train step's metrics (an absurd learning rate shows
there first: the loss and gradient of the step that applies it are still finite) and,
with ``train.nonfinite='skip'``, keeps the previous parameters and optimizer state
whenever ``train_loss``, ``grad_norm`` or ``param_norm`` is not finite, reporting
``skipped=1``. The step counter still advances, so the batch, dropout key and learning
rate of every later step are those of a run without the bad batch.

``Watch`` checks those metrics on the host without a device sync per step: the loop
hands it every step's (still on-device) metrics and calls ``check`` where it syncs
anyway, at a log step, and before every evaluation and save. With 'abort', ``check``
raises ``NonFiniteError`` naming the first bad step and metric, so nothing computed
from it is logged, evaluated or saved.

Why not ``optax.apply_if_finite``: it looks only at the updates, changes the
optimizer state's tree (and so the checkpoint's) with the config, and after
``max_consecutive_errors`` applies the bad update anyway.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm_jax import errors

CHECKED = ('train_loss', 'grad_norm', 'param_norm')


class NonFiniteError(errors.Error, RuntimeError):
  """A NaN/Inf at ``step`` in ``metric``; the run stopped without saving that state."""
  exit_code = errors.NON_FINITE

  def __init__(self, step: int, metric: str, value: float, newest_checkpoint=None):
    self.step, self.metric, self.value = step, metric, value
    kept = (f'the newest checkpoint is step {newest_checkpoint}' if newest_checkpoint is not None
            else 'no checkpoint was written')
    super().__init__(
        f'non-finite {metric} ({value}) at step {step}; stopped without saving the state of that step '
        f'({kept}). Lower train.learning_rate or check the data of step {step}; '
        f'--config.train.nonfinite=skip drops such updates instead.')


def wrap(train_step: Callable, mode: str) -> Callable:
  """``train_step`` plus ``param_norm`` (and, for mode 'skip', the skip and ``skipped``)."""

  def guarded(state, batch):
    new, metrics = train_step(state, batch)
    metrics = dict(metrics, param_norm=optax.tree.norm(new.params))
    if mode == 'skip':
      finite = jnp.all(jnp.stack([jnp.isfinite(metrics[k]) for k in CHECKED]))
      keep = lambda n, o: jnp.where(finite, n, o)
      new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                        opt_state=jax.tree.map(keep, new.opt_state, state.opt_state))
      metrics['skipped'] = jnp.logical_not(finite).astype(jnp.int32)
    return new, metrics

  return guarded


class Watch:
  """Collects per-step metrics on device; ``check`` fetches them in one go."""

  def __init__(self, mode: str, skipped: int = 0):
    self.mode = mode
    self.skipped = skipped  # steps skipped so far in the run (carried in checkpoint meta)
    self._pending: list = []

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, {k: metrics[k] for k in CHECKED + ('skipped',) if k in metrics}))

  def check(self, newest_checkpoint: Callable[[], Optional[int]] = lambda: None) -> None:
    """Raises NonFiniteError at the first bad step (mode 'abort'); counts skips ('skip')."""
    pending, self._pending = jax.device_get(self._pending), []
    for step, values in pending:
      if self.mode == 'skip':
        self.skipped += int(values.get('skipped', 0))
        continue
      for metric in CHECKED:
        value = float(values[metric])
        if not np.isfinite(value):
          raise NonFiniteError(step, metric, value, newest_checkpoint())
