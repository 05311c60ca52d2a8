"""A study: a base config, named variants as config overrides, seeds, a metric and the paper's claims.

A study is a folder ``experiments/NAME/`` whose ``study.py`` defines ``get_study(scale)``
returning a ``Study`` for ``scale`` (``'cpu'`` or ``'accelerator'``)::

  from llm_jax.experiments import Claim, Study

  def get_study(scale):
    return Study(
        name='glu_variants', paper='Shazeer 2020, GLU Variants Improve Transformer, Table 1',
        config='configs/shakespeare_char_cpu.py', overrides={'train.steps': 400},
        variants={'relu': {'model.mlp_activation': 'relu'}, 'swiglu': {...}},
        seeds=(0, 1), metric='eval_loss',
        published={'relu': '1.997', 'swiglu': '1.944'},
        claims=[Claim('swiglu', '<=', 'relu')])

``config`` is a path relative to the study's folder or the current directory (the
repository root); ``overrides`` apply to every variant and a variant's own overrides
on top of them; the seed goes to ``config.seed`` (parameters, dropout, data order).
A claim says that one variant's mean metric is below (``'<'``, ``'<='``) or above
another's: the report's "reproduced?" column is judged by it.
"""

import dataclasses
import importlib.util
import os
import re
from typing import Any, Mapping, Optional, Sequence

from llm_jax import errors

SCALES = ('cpu', 'accelerator')
STUDY_FILE = 'study.py'
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
_OPS = {'<': lambda a, b: a < b, '<=': lambda a, b: a <= b, '>': lambda a, b: a > b, '>=': lambda a, b: a >= b}


class StudyError(errors.ConfigError):
  """A study definition that cannot run (exit code 2, before any run starts)."""


@dataclasses.dataclass(frozen=True)
class Claim:
  """``variant``'s mean metric ``op`` ``reference``'s mean (op: '<', '<=', '>', '>=')."""
  variant: str
  op: str
  reference: str
  text: str = ''  # the paper's wording; default: the comparison itself

  def describe(self, metric: str) -> str:
    return self.text or f'{metric}: {self.variant} {self.op} {self.reference}'

  def holds(self, value: float, reference: float) -> bool:
    return _OPS[self.op](value, reference)


@dataclasses.dataclass(frozen=True)
class Study:
  """What one scale of a study runs (see the module docstring)."""
  name: str
  paper: str
  config: str
  variants: Mapping[str, Mapping[str, Any]]
  seeds: Sequence[int] = (0, 1)
  metric: str = 'eval_loss'
  lower_is_better: bool = True
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  published: Mapping[str, str] = dataclasses.field(default_factory=dict)  # variant -> the paper's number
  claims: Sequence[Claim] = ()
  curve: str = 'eval_loss'  # the metric drawn per step in the curves plot
  folder: str = ''          # set by load(): the study's folder

  def runs(self) -> list['Run']:
    """Every variant x seed, in the study's order (variants as written, then seeds)."""
    return [Run(variant, seed) for variant in self.variants for seed in self.seeds]

  def settings(self, run: 'Run') -> dict:
    """The config overrides of ``run``: the study's, the variant's, then the seed."""
    return {**self.overrides, **self.variants[run.variant], 'seed': run.seed}

  def config_path(self) -> str:
    for path in (os.path.join(self.folder, self.config), self.config):
      if os.path.isfile(path):
        return os.path.abspath(path)
    raise StudyError(f'study {self.name}: config {self.config!r} is neither in {self.folder or "."} nor '
                     f'under the current directory; run from the repository root or fix Study.config.')


@dataclasses.dataclass(frozen=True, order=True)
class Run:
  variant: str
  seed: int

  @property
  def id(self) -> str:
    return f'{self.variant}/seed_{self.seed}'


def load(folder: str, scale: str) -> Study:
  """The ``Study`` of ``folder/study.py`` at ``scale``, checked (StudyError otherwise)."""
  if scale not in SCALES:
    raise StudyError(f'--scale={scale} is not a scale; use one of {", ".join(SCALES)}.')
  path = os.path.join(folder, STUDY_FILE)
  if not os.path.isfile(path):
    raise StudyError(f'{folder} has no {STUDY_FILE}; a study folder defines get_study(scale) there '
                     f'(see llm_jax/experiments/study.py).')
  spec = importlib.util.spec_from_file_location(f'llm_jax_study_{os.path.basename(os.path.abspath(folder))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_study'):
    raise StudyError(f'{path} defines no get_study(scale).')
  study = module.get_study(scale)
  if not isinstance(study, Study):
    raise StudyError(f'{path}: get_study({scale!r}) returned {type(study).__name__}, not a Study.')
  study = dataclasses.replace(study, folder=os.path.abspath(folder))
  check(study)
  return study


def check(study: Study) -> None:
  """StudyError for a study that cannot run as written; every config key and value is checked
  against the config file (as the command line would apply them) before any run starts."""
  if not study.variants:
    raise StudyError(f'study {study.name} has no variants.')
  if not study.seeds or len(set(study.seeds)) != len(study.seeds):
    raise StudyError(f'study {study.name}: seeds {list(study.seeds)} must be distinct and at least one.')
  for name in study.variants:
    if not _NAME.match(name):
      raise StudyError(f'study {study.name}: variant name {name!r} must be letters, digits, _ . - '
                       f'(it names a folder).')
  for claim in study.claims:
    for v in (claim.variant, claim.reference):
      if v not in study.variants:
        raise StudyError(f'study {study.name}: a claim names variant {v!r}, which the study does not have '
                         f'(variants: {", ".join(study.variants)}).')
    if claim.op not in _OPS:
      raise StudyError(f'study {study.name}: claim op {claim.op!r} must be one of {", ".join(_OPS)}.')
  for v in study.published:
    if v not in study.variants:
      raise StudyError(f'study {study.name}: published names variant {v!r}, which the study does not have.')
  from llm_jax import config as config_lib  # imports jax: only once the study file itself is fine
  path = study.config_path()
  for variant in study.variants:
    settings = study.settings(Run(variant, study.seeds[0]))
    for key, value in settings.items():
      flag_value(key, value, study, variant)
    try:
      config = config_lib.from_file(path)
      for key, value in settings.items():
        try:
          config.update_from_flattened_dict({key: value})
        except (KeyError, AttributeError):
          raise errors.ConfigError(config_lib.unknown_key_message(config, key)) from None
        except (TypeError, ValueError) as e:
          raise errors.ConfigError(f'config.{key}={value!r}: {e}') from None
      config_lib.validate(config, check_memory=False)  # memory: checked by each run on its own devices
    except errors.ConfigError as e:
      raise StudyError(f'study {study.name}, variant {variant}: {e}') from None


def flag_value(key: str, value: Any, study: Optional[Study] = None, variant: str = '') -> str:
  """``value`` as ``--config.KEY=`` text that ml_collections parses back to it."""
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, (int, float)):
    return repr(value)
  if isinstance(value, str):
    return value
  where = f'study {study.name}, variant {variant}: ' if study else ''
  raise StudyError(f'{where}config.{key}={value!r} is a {type(value).__name__}; a study override is a bool, '
                   f'number or string.')
