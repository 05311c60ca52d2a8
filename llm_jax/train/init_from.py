"""``config.init_from``: start a run from another run's parameters or from published weights.

The source is a workdir of an llm_jax run (its newest finished checkpoint), or a Hugging
Face model directory or Hub id (``llm_jax.convert``). Parameters the model has and the
source holds at the same path are taken over; parameters the source lacks (a new
classification head) keep their fresh initialization; parameters only the source has
(the masked-LM head a classifier does without) are left out. All three are listed. A
parameter both have with different shapes is an error naming it: a new head starts
fresh, a changed body is never silently replaced.
"""

import os

import jax

from llm_jax import checkpoint as ckpt_lib
from llm_jax import errors


def is_run(source: str) -> bool:
  return os.path.isdir(os.path.join(source, 'checkpoints'))


def load(source: str, trainer, fresh_params):
  """The run's parameters (the tree of ``fresh_params``, on its shardings) started from ``source``."""
  if is_run(source):
    params, report, where = _from_run(source, trainer, fresh_params)
  else:
    from llm_jax import convert
    params, report = convert.load_params(source, trainer.kind, fresh_params)
    where = source
  if jax.process_index() == 0:
    print(f'[llm_jax] init_from {where}: {len(report["restored"])} parameters restored'
          + _listed('initialized fresh (not in the source)', report['fresh'])
          + _listed('left out (not in this model)', report['unused']), flush=True)
  return params


def _listed(what: str, paths) -> str:
  if not paths:
    return ''
  shown = ', '.join(paths[:6]) + (f' and {len(paths) - 6} more' if len(paths) > 6 else '')
  return f'; {len(paths)} {what}: {shown}'


def _from_run(source: str, trainer, fresh_params):
  other = ckpt_lib.Checkpoints(source, trainer.config.checkpoint, read_only=True)
  try:
    step = other.latest_step()
    if step is None:
      raise errors.ConfigError(f'config.init_from={source!r} holds no finished checkpoint; give the workdir '
                               'of a run that has saved one.')
    kind = other.read_meta(step).get('model_kind', trainer.config.model.kind)
    if kind != trainer.config.model.kind:
      raise errors.ConfigError(f'config.init_from={source!r} is a run of model.kind={kind!r}; this config trains '
                               f'model.kind={trainer.config.model.kind!r}. Start from a run of the same kind.')
    params, report = other.restore_matching(step, trainer.abstract_state.params, fresh_params)
  finally:
    other.close()
  return params, report, f'{source} step {step}'
