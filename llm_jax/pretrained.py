"""A trained model from wherever it lives: ``from_pretrained(source)``.

``source`` is a training run's workdir (its newest finished checkpoint, or ``step``), or a
Hugging Face model directory or Hub id (converted by ``llm_jax.convert``). Either way the
result is a ``convert.Pretrained``: ``.kind`` (the model kind; ``.kind.cfg`` its
``TransformerConfig``), ``.params``, ``.tokenizer`` (None when a Hugging Face directory
has none) and ``.report``. It is what ``llm_jax.generate`` and ``python -m llm_jax.sample``
take.
"""

import json
import os
import re
from typing import Optional

from llm_jax import errors

_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*(/[\w.-]+)?')  # 'gpt2', 'bigscience/bloom-560m'


def is_run(source: str) -> bool:
  """Whether ``source`` is a directory holding an llm_jax run (its config.json has model/train sections)."""
  path = os.path.join(source, 'config.json')
  if not os.path.isfile(path):
    return False
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
  except (ValueError, UnicodeDecodeError, OSError):
    return False
  return isinstance(record, dict) and isinstance(record.get('model'), dict) and 'train' in record


def from_pretrained(source: str, step: Optional[int] = None, **overrides):
  """The model at ``source`` (module docstring). ``step`` picks a run's checkpoint; ``overrides``
  replace ``TransformerConfig`` fields of a Hugging Face model (``dtype='bfloat16'``)."""
  from llm_jax import convert
  if os.path.isdir(source) and is_run(source):
    from llm_jax import checkpoint
    if overrides:
      raise errors.ConfigError(f'{source} is a training run; its model is fixed by its config.json (give '
                               f'no {", ".join(overrides)}).')
    config, kind, params, tokenizer = checkpoint.load_for_inference(source, step)
    return convert.Pretrained(kind, params, tokenizer, {'workdir': source, 'step': step, 'config': config},
                              eos_id=tokenizer.eos_id)
  if step is not None:
    raise errors.ConfigError(f'step={step} picks a checkpoint of a training run, and {source} is not one.')
  if not os.path.isdir(source) and not _HUB_ID.fullmatch(source):
    raise errors.ConfigError(f'{source} does not exist; give a training run\'s workdir, a Hugging Face model '
                             'directory, or a Hub id such as gpt2.')
  return convert.from_pretrained(source, **overrides)
